//! Shipping: the binary away from the checkout, and KooDrive behind a private CA.

mod support;

use koodrive_operator::koodrive::{
    self, Client, ClientConfig, Credentials, ErrorClass, ExtraRoots, RegisterUser, SecretKey,
};
use kube::api::PostParams;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const BIN: &str = env!("CARGO_BIN_EXE_koodrive-operator");
/// Variables that would make the binary trust CAs besides the test's own choice.
const TRUST_VARIABLES: [&str; 3] = ["SSL_CERT_FILE", "SSL_CERT_DIR", "KOODRIVE_CA_BUNDLE"];

// --- demo away from the checkout -------------------------------------------------------

#[test]
fn demo_runs_from_any_directory_with_the_built_in_examples() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--timeout", "60s"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed outside the checkout:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied UserBatch default/onboarding-2026-11 (3 users)")
            && stdout.contains("applied UserBatch default/contractors-2026-11 (2 users)"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("all UserBatches Ready"),
        "{stdout}"
    );
    // The examples' placeholder secrets and passwords stay out of the output.
    assert!(!stdout.contains("Change-Me-2026"), "{stdout}");
    assert!(!stdout.contains("REPLACE-WITH-SECRET-KEY"), "{stdout}");
}

// --- KooDrive behind a private CA ------------------------------------------------------

/// A private CA and a server certificate it issued for 127.0.0.1, as a company gateway or
/// TLS-inspecting proxy in front of KooDrive would present.
struct PrivateCa {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    bundle: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "koodrive-operator test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("private-ca.pem");
        std::fs::write(&bundle, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .unwrap();
        PrivateCa {
            dir,
            bundle,
            server: Arc::new(server),
        }
    }

    /// A directory holding only the CA, for `SSL_CERT_DIR`.
    fn bundle_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&self.bundle, dir.join("private-ca.pem")).unwrap();
        dir
    }

    /// Terminates TLS on a fresh loopback port and forwards the bytes to `upstream`; returns
    /// the `https://` endpoint. Runs until the test's runtime ends.
    async fn serve_in_front_of(&self, upstream: SocketAddr) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(self.server.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the CA aborts the handshake: nothing to do.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut backend) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
                });
            }
        });
        format!("https://127.0.0.1:{port}")
    }
}

fn credentials() -> Credentials {
    Credentials {
        access_key: ACCESS_KEY.into(),
        secret_key: SecretKey::new(SECRET_KEY.into()),
        user_id: USER_ID.into(),
    }
}

fn register_users(prefix: &str, n: usize) -> Vec<RegisterUser> {
    users(prefix, n, None)
        .into_iter()
        .map(|u| RegisterUser {
            firstname: u.firstname,
            surname: u.surname,
            phone: u.phone,
            email: u.email,
            password: None,
        })
        .collect()
}

fn client(endpoint: &str, extra_roots: ExtraRoots) -> Client {
    Client::new(
        endpoint,
        credentials(),
        ClientConfig {
            extra_roots,
            allow_insecure_endpoints: true,
            max_attempts: 1,
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_trusts_a_private_ca_only_when_given_it() {
    let env = Env::start().await;
    let ca = PrivateCa::new();
    let endpoint = ca.serve_in_front_of(env.simulator.local_addr()).await;

    let err = client(&endpoint, ExtraRoots::default())
        .create_batch(&register_users("86171", 1), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Transient { retry_after: None },
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("certificate") && message.contains("--ca-bundle"),
        "{message}"
    );
    assert!(
        env.simulator.submissions().is_empty(),
        "nothing may be sent over an untrusted connection"
    );

    // The same CA through each way of naming it: the flag's file, SSL_CERT_FILE, SSL_CERT_DIR.
    let ways = [
        ExtraRoots::load(Some(&ca.bundle), None, None),
        ExtraRoots::load(None, Some(&ca.bundle), None),
        ExtraRoots::load(None, None, Some(&ca.bundle_dir())),
    ];
    for (i, roots) in ways.into_iter().enumerate() {
        let roots = roots.unwrap();
        assert_eq!(roots.len(), 1);
        let task = client(&endpoint, roots)
            .create_batch(
                &register_users(&format!("8617{}", 2 + i), 1),
                &koodrive::new_trace_id(),
            )
            .await
            .unwrap_or_else(|e| panic!("way {i}: {e}"));
        assert_eq!(task.code, "0");
    }
}

/// Runs the binary with no trust settings but those in `trust`, and KooDrive credentials.
async fn run_cli(args: &[&str], trust: &[(&str, &Path)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env("KOODRIVE_ACCESS_KEY", ACCESS_KEY)
        .env("KOODRIVE_SECRET_KEY", SECRET_KEY)
        .env("KOODRIVE_USER_ID", USER_ID);
    for name in TRUST_VARIABLES {
        command.env_remove(name);
    }
    for (name, value) in trust {
        command.env(name, value);
    }
    command.output().await.unwrap()
}

fn assert_succeeded(what: &str, out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_task_trust_a_private_ca_from_the_flag_or_the_environment() {
    let env = Env::start().await;
    let ca = PrivateCa::new();
    let endpoint = ca.serve_in_front_of(env.simulator.local_addr()).await;
    let manifest = ca.dir.path().join("batch.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: koodrive.io/v1alpha1\nkind: UserBatch\nmetadata: {name: b}\n\
         spec:\n  credentialsRef: {name: c}\n  users: [{firstname: Ada, phone: \"8617500000001\"}]\n",
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    let bundle = ca.bundle.to_str().unwrap();

    let out = run_cli(&["submit", "-f", manifest, "--endpoint", &endpoint], &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate") && stderr.contains("--ca-bundle"),
        "{stderr}"
    );

    let out = run_cli(
        &[
            "submit",
            "-f",
            manifest,
            "--endpoint",
            &endpoint,
            "--ca-bundle",
            bundle,
        ],
        &[],
    )
    .await;
    let stdout = assert_succeeded("submit --ca-bundle", &out);
    let task_id = stdout
        .strip_prefix("task ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no task in {stdout}"))
        .to_string();

    let task = ["task", task_id.as_str(), "--endpoint", endpoint.as_str()];
    let out = run_cli(&task, &[]).await;
    assert!(!out.status.success(), "task without the CA succeeded");
    let dir = ca.bundle_dir();
    for (name, value) in [
        ("KOODRIVE_CA_BUNDLE", ca.bundle.as_path()),
        ("SSL_CERT_FILE", ca.bundle.as_path()),
        ("SSL_CERT_DIR", dir.as_path()),
    ] {
        let out = run_cli(&task, &[(name, value)]).await;
        let stdout = assert_succeeded(&format!("task with {name}"), &out);
        assert!(stdout.starts_with(&format!("task {task_id} ")), "{stdout}");
    }
}

#[test]
fn commands_refuse_to_start_with_an_unusable_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-bundle.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (args, variable, file, why) in [
        (
            vec!["run", "--metrics-addr", "127.0.0.1:0"],
            "KOODRIVE_CA_BUNDLE",
            &not_pem,
            "holds no PEM certificate",
        ),
        (
            vec!["run", "--metrics-addr", "127.0.0.1:0"],
            "SSL_CERT_FILE",
            &missing,
            "cannot read",
        ),
        (
            vec!["task", "1", "--endpoint", "https://127.0.0.1:1"],
            "KOODRIVE_CA_BUNDLE",
            &missing,
            "cannot read",
        ),
    ] {
        let mut command = Command::new(BIN);
        command
            .args(&args)
            // Were the bundle ignored, `run` would fail on this instead, without the name.
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .env("KOODRIVE_ACCESS_KEY", ACCESS_KEY)
            .env("KOODRIVE_SECRET_KEY", SECRET_KEY)
            .env("KOODRIVE_USER_ID", USER_ID);
        for name in TRUST_VARIABLES {
            command.env_remove(name);
        }
        let out = command.env(variable, file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} with {variable}: {stderr}");
        assert!(
            stderr.contains(file.to_str().unwrap())
                && stderr.contains(why)
                && stderr.contains(variable),
            "{args:?} with {variable}: {stderr}"
        );
    }
}

/// Starts `run` with nothing trusted but the built-in roots and `extra` flags.
fn operator_without_extra_trust(env: &Env, name: &str, extra: &[&str]) -> Operator {
    let log = env.dir.path().join(format!("{name}.log"));
    let mut command = Command::new(BIN);
    command
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--default-endpoint",
            &env.simulator.url(),
            "--allow-insecure-endpoints",
            "--requests-per-second",
            "0",
            "--log-level",
            "debug",
        ])
        .args(extra)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("POD_NAME", name)
        .env_remove("KOODRIVE_WATCH_NAMESPACE");
    for variable in TRUST_VARIABLES {
        command.env_remove(variable);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Operator {
        child: Some(child),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reaches_koodrive_behind_a_private_ca_with_ca_bundle() {
    let env = Env::start().await;
    let ca = PrivateCa::new();
    let endpoint = ca.serve_in_front_of(env.simulator.local_addr()).await;
    env.create_credentials("creds", SECRET_KEY).await;
    let mut ub = userbatch("private", "creds", users("86176", 2, None));
    ub.spec.endpoint = Some(endpoint);
    env.userbatches()
        .create(&PostParams::default(), &ub)
        .await
        .unwrap();

    // A long retry delay, so that once the failure is recorded no new request (with its
    // recorded intent) is under way when this operator stops.
    let mut untrusting = operator_without_extra_trust(
        &env,
        "untrusting",
        &["--retry-base-delay", "1h", "--retry-max-delay", "1h"],
    );
    let ub = env
        .wait_for("private", "KooDriveUnavailable, intent withdrawn", |s| {
            ready_reason(s) == Some("KooDriveUnavailable") && s.tasks.is_empty()
        })
        .await;
    let message = &condition(ub.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("certificate") && message.contains("--ca-bundle"),
        "{message}"
    );
    assert!(untrusting.terminate().success());
    assert!(env.simulator.submissions().is_empty());

    let bundle = ca.bundle.to_str().unwrap();
    let trusting = operator_without_extra_trust(&env, "trusting", &["--ca-bundle", bundle]);
    env.wait_for("private", "Ready", is_ready).await;
    assert_eq!(env.simulator.submissions().len(), 2);
    assert!(
        trusting
            .logs()
            .contains("trusting extra CA certificates for KooDrive"),
        "{}",
        trusting.logs()
    );
}
