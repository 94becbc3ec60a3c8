//! The `submit`, `task` and `simulator` commands as processes, against a simulator on
//! loopback.

use koodrive_client::SecretKey;
use koodrive_simulator::{Account, Call, Fault, FaultKind, Simulator, SimulatorConfig};
use std::collections::HashSet;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_koodrive-operator");
const AK: &str = "cli-access-key";
const SK: &str = "cli-secret-key-must-never-print";
const USER_ID: &str = "1505084218764547200";
const PASSWORD: &str = "Initial-Passw0rd-never-print";
const FAILING: &str = "8613900000001";

async fn simulator() -> Simulator {
    Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorConfig {
            accounts: vec![Account {
                access_key: AK.into(),
                secret_key: SecretKey::new(SK.into()),
                user_id: USER_ID.into(),
            }],
            failing_phones: HashSet::from([FAILING.to_string()]),
            ..SimulatorConfig::default()
        },
    )
    .await
    .unwrap()
}

fn phone(i: usize) -> String {
    format!("86138{i:08}")
}

/// A UserBatch manifest with `count` users, the first with an inline password.
fn manifest(count: usize, extra_phones: &[&str]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut yaml = String::from(
        "apiVersion: koodrive.io/v1alpha1\nkind: UserBatch\nmetadata: {name: onboarding, namespace: team-a}\n\
         spec:\n  credentialsRef: {name: koodrive-credentials}\n  users:\n",
    );
    for i in 0..count {
        yaml.push_str(&format!(
            "    - firstname: User{i}\n      phone: \"{}\"\n",
            phone(i)
        ));
        if i == 0 {
            yaml.push_str(&format!(
                "      surname: Lovelace\n      password: \"{PASSWORD}\"\n"
            ));
        }
    }
    for extra in extra_phones {
        yaml.push_str(&format!(
            "    - firstname: Extra\n      phone: \"{extra}\"\n"
        ));
    }
    file.write_all(yaml.as_bytes()).unwrap();
    file
}

async fn cli(args: &[&str], secret_key: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("KOODRIVE_ENDPOINT")
        .env_remove("KOODRIVE_ALLOW_INSECURE_ENDPOINTS")
        .env("KOODRIVE_ACCESS_KEY", AK)
        .env("KOODRIVE_USER_ID", USER_ID);
    match secret_key {
        Some(sk) => command.env("KOODRIVE_SECRET_KEY", sk),
        None => command.env_remove("KOODRIVE_SECRET_KEY"),
    };
    command.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_secrets(output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        let shown = text(stream);
        assert!(!shown.contains(SK), "SK leaked: {shown}");
        assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
    }
}

async fn submit(
    sim: &Simulator,
    file: &tempfile::NamedTempFile,
    sk: &str,
    extra: &[&str],
) -> Output {
    let path = file.path().to_str().unwrap();
    let url = sim.url();
    let mut args = vec![
        "submit",
        "-f",
        path,
        "--endpoint",
        &url,
        "--allow-insecure-endpoints",
    ];
    args.extend_from_slice(extra);
    cli(&args, Some(sk)).await
}

#[tokio::test]
async fn submit_splits_2500_users_into_three_tasks_and_sends_each_phone_once() {
    let sim = simulator().await;
    let file = manifest(2500, &[]);
    let output = submit(&sim, &file, SK, &[]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_no_secrets(&output);
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, users) in lines.iter().zip([1000, 1000, 500]) {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 8, "{line}");
        assert_eq!(
            (words[0], words[2], words[3], words[4], words[6]),
            ("task", "code", "0", "users", "trace")
        );
        assert!(words[1].bytes().all(|b| b.is_ascii_digit()), "{line}");
        assert_eq!(words[5], users.to_string());
        assert_eq!(words[7].len(), 58);
    }
    let submissions = sim.submissions();
    assert_eq!(submissions.len(), 2500);
    assert!(submissions.values().all(|&count| count == 1));
}

#[tokio::test]
async fn submit_with_a_wrong_secret_key_fails_with_both_canonical_requests() {
    let sim = simulator().await;
    let file = manifest(3, &[]);
    let wrong = "a-wrong-secret-key-never-print";
    let output = submit(&sim, &file, wrong, &[]).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("APIG.0303"), "{stderr}");
    assert!(
        stderr.contains("KooDrive's canonical request:\nPOST\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("They are identical, so the secret key"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong) && !text(&output.stdout).contains(wrong));
    assert_no_secrets(&output);
    assert_eq!(
        sim.request_count(),
        1,
        "no retry after an authentication failure"
    );
}

#[tokio::test]
async fn dry_run_prints_the_signing_material_and_sends_nothing() {
    let sim = simulator().await;
    let file = manifest(1500, &[]);
    let output = submit(&sim, &file, SK, &["--dry-run"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_no_secrets(&output);
    let stdout = text(&output.stdout);
    assert_eq!(
        stdout
            .matches("## canonical request\nPOST\n/koodrive/ose/v1/user/batchRegister/create/\n\n")
            .count(),
        2,
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("## string to sign\nHMAC-SHA256\n").count(),
        2
    );
    assert!(stdout.contains(&format!(
        "Authorization: HMAC-SHA256 AppId={AK},SignedHeaders=host;x-date;x-user-id,Signature="
    )));
    assert!(stdout.contains(&format!("X-User-Id: {USER_ID}")));
    assert!(stdout.contains(&format!("Host: {}", sim.local_addr())));
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn transient_faults_are_retried_and_the_submission_succeeds_once() {
    let sim = simulator().await;
    // Only faults that prove KooDrive did not act are retried on a create (a 5xx is in doubt).
    sim.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 0,
        },
    });
    sim.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 1,
        },
    });
    let file = manifest(5, &[]);
    let output = submit(&sim, &file, SK, &[]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).lines().count(), 1);
    assert_eq!(sim.request_count(), 3);
    assert!(sim.submissions().values().all(|&count| count == 1));
    assert_eq!(sim.submissions().len(), 5);
}

#[tokio::test]
async fn a_persistent_fault_gives_a_clear_non_zero_exit() {
    let sim = simulator().await;
    sim.inject(Fault {
        call: None,
        times: 1000,
        kind: FaultKind::Status5xx(503),
    });
    let file = manifest(1200, &[]);
    let output = submit(&sim, &file, SK, &[]).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: request 1 of 2 (1000 users"),
        "{stderr}"
    );
    assert!(stderr.contains("KooDrive is unavailable"), "{stderr}");
    assert!(
        stderr.contains("200 users in 1 later requests were not sent"),
        "{stderr}"
    );
    assert!(sim.submissions().is_empty());
}

#[tokio::test]
async fn task_prints_counts_and_failed_users() {
    let sim = simulator().await;
    let file = manifest(2, &[FAILING]);
    let output = submit(&sim, &file, SK, &[]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let task_id = stdout.split(' ').nth(1).unwrap().to_string();
    let url = sim.url();
    let output = cli(
        &[
            "task",
            &task_id,
            "--endpoint",
            &url,
            "--allow-insecure-endpoints",
        ],
        Some(SK),
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with(&format!(
            "task {task_id} status FINISHED total 3 succeeded 2 failed 1 skipped 0 finished yes\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("user {FAILING} code ")),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 2);
}

#[tokio::test]
async fn insecure_endpoints_and_missing_credentials_are_refused_before_sending() {
    let sim = simulator().await;
    let file = manifest(1, &[]);
    let path = file.path().to_str().unwrap();
    let url = sim.url();
    let output = cli(&["submit", "-f", path, "--endpoint", &url], Some(SK)).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("plain http:// is refused"),
        "{}",
        text(&output.stderr)
    );
    let output = cli(
        &[
            "submit",
            "-f",
            path,
            "--endpoint",
            &url,
            "--allow-insecure-endpoints",
        ],
        None,
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("KOODRIVE_SECRET_KEY is not set"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn the_simulator_command_serves_koodrive_and_its_control_endpoints() {
    let mut credentials = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        credentials,
        "- accessKey: {AK}\n  secretKey: {SK}\n  userId: \"{USER_ID}\""
    )
    .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--result-delay",
            "0s",
            "--credentials-file",
        ])
        .arg(credentials.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first_line = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::io::BufReader::new(stdout).lines().next_line().await
    })
    .await
    .expect("simulator printed its URL")
    .unwrap()
    .unwrap();
    let url = first_line.rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first_line}");

    let http = reqwest::Client::new();
    let response = http
        .post(format!("{url}/_sim/faults"))
        .json(&serde_json::json!({"call": "create", "kind": {"too_many_requests": {"retry_after_secs": 0}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    let file = manifest(3, &[]);
    let path = file.path().to_str().unwrap();
    let output = cli(
        &[
            "submit",
            "-f",
            path,
            "--endpoint",
            &url,
            "--allow-insecure-endpoints",
        ],
        Some(SK),
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));

    let counts: std::collections::HashMap<String, u32> = http
        .get(format!("{url}/_sim/submissions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");

    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let logs = text(&output.stderr);
    assert!(logs.contains("task created"), "{logs}");
    assert!(!logs.contains(SK) && !logs.contains(PASSWORD), "{logs}");
}
