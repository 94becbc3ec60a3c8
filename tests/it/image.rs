//! Shipping: the binary away from the checkout, KooDrive behind a private CA, and the
//! container image itself, started with runc against the API emulator and the simulator.
//!
//! The image test reads the archive `scripts/build-image.sh` writes (`scripts/test` builds
//! it first and exports its path in `KOODRIVE_IMAGE_ARCHIVE`).

use crate::support::*;
use koodrive_client::{
    Client, ClientConfig, Credentials, ErrorClass, ExtraRoots, RegisterUser, SecretKey,
};
use kube::api::PostParams;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const BIN: &str = env!("CARGO_BIN_EXE_koodrive-operator");
const VERSION: &str = env!("CARGO_PKG_VERSION");
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
        .create_batch(
            &register_users("86171", 1),
            &koodrive_client::new_trace_id(),
        )
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
                &koodrive_client::new_trace_id(),
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
    ub.spec.endpoint = Some(endpoint.clone());
    env.userbatches()
        .create(&PostParams::default(), &ub)
        .await
        .unwrap();

    // A long retry delay, so that once the failure is recorded no new request (with its
    // recorded intent) is under way when this operator stops.
    let mut untrusting = operator_without_extra_trust(
        &env,
        "untrusting",
        &[
            "--allowed-endpoints",
            &endpoint,
            "--retry-base-delay",
            "1h",
            "--retry-max-delay",
            "1h",
        ],
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
    let trusting = operator_without_extra_trust(
        &env,
        "trusting",
        &["--allowed-endpoints", &endpoint, "--ca-bundle", bundle],
    );
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

// --- the container image --------------------------------------------------------------

/// Host names the container resolves through its /etc/hosts: with no NSS module in the
/// image, this is what proves the static binary resolves names at all.
const API_HOST: &str = "kube-api.koodrive.test";
const SIMULATOR_HOST: &str = "koodrive-simulator.koodrive.test";
const IMAGE_UID: u32 = 65532;

fn image_archive() -> PathBuf {
    let path = std::env::var_os("KOODRIVE_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/image")
                .join(format!("koodrive-operator-{VERSION}.oci.tar"))
        });
    assert!(
        path.is_file(),
        "no image archive at {} (KOODRIVE_IMAGE_ARCHIVE); build it with scripts/build-image.sh, or run the whole suite with scripts/test",
        path.display()
    );
    path
}

fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not on PATH; install it with scripts/install-test-tools.sh (or run scripts/test)"
    );
}

fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

/// A container started with runc; killed and deleted on drop.
struct Container {
    id: String,
    /// runc's state directory, private to the test so nothing else's containers are touched.
    state: PathBuf,
}

impl Container {
    fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }

    fn state(&self) -> serde_json::Value {
        let out = self.runc(&["state", &self.id]);
        assert!(
            out.status.success(),
            "runc state: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc(&["kill", &self.id, "KILL"]);
        let _ = self.runc(&["delete", "--force", &self.id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_the_operator_as_non_root_on_a_read_only_root() {
    let archive = image_archive();
    require_tool("umoci");
    require_tool("runc");
    let env = Env::start().await;
    let work = env.dir.path();

    // The archive: an OCI layout that containerd imports under the right name, plus the
    // manifest.json that Docker's classic image store reads.
    let layout = work.join("layout");
    std::fs::create_dir(&layout).unwrap();
    run_tool(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
        ],
    );
    let index = read_json(&layout.join("index.json"));
    let descriptor = &index["manifests"][0];
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        format!("docker.io/library/koodrive-operator:{VERSION}").as_str()
    );
    let tag = descriptor["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap();
    let manifest = read_json(&blob(&layout, descriptor["digest"].as_str().unwrap()));
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let docker = read_json(&layout.join("manifest.json"));
    assert_eq!(
        docker[0]["RepoTags"][0],
        format!("koodrive-operator:{VERSION}").as_str()
    );
    for file in std::iter::once(&docker[0]["Config"]).chain(docker[0]["Layers"].as_array().unwrap())
    {
        assert!(layout.join(file.as_str().unwrap()).is_file(), "{file}");
    }
    let image = &config["config"];
    assert_eq!(image["User"], "65532:65532");
    assert_eq!(
        image["Entrypoint"],
        serde_json::json!(["/koodrive-operator"])
    );
    assert_eq!(image["Cmd"], serde_json::json!(["run"]));
    assert!(image["ExposedPorts"].get("8080/tcp").is_some(), "{image}");
    assert_eq!(image["Labels"]["org.opencontainers.image.version"], VERSION);
    assert_eq!(config["os"], "linux");

    // Unpacked as runc would run it under Kubernetes: the image's user, no rlimits (this
    // machine may not set them), a read-only root, the host's loopback, a kubeconfig and an
    // /etc/hosts mounted read-only.
    let bundle = work.join("bundle");
    run_tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let files: Vec<_> = std::fs::read_dir(bundle.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        files,
        ["koodrive-operator"],
        "the image holds only the binary"
    );

    let kubeconfig = work.join("container-kubeconfig");
    std::fs::write(
        &kubeconfig,
        env.emulator
            .kubeconfig_yaml()
            .replace("127.0.0.1", API_HOST),
    )
    .unwrap();
    let hosts = work.join("container-hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost {API_HOST} {SIMULATOR_HOST}\n"),
    )
    .unwrap();
    for file in [&kubeconfig, &hosts] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let simulator_port = env.simulator.local_addr().port();

    let spec_path = bundle.join("config.json");
    let mut spec = read_json(&spec_path);
    let process = &mut spec["process"];
    assert_eq!(
        process["user"]["uid"], IMAGE_UID,
        "umoci takes the image's USER"
    );
    assert_eq!(process["user"]["gid"], IMAGE_UID);
    assert_eq!(
        process["args"],
        serde_json::json!(["/koodrive-operator", "run"])
    );
    let args = process["args"].as_array_mut().unwrap();
    for arg in [
        "--metrics-addr".to_string(),
        "127.0.0.1:0".to_string(),
        "--default-endpoint".to_string(),
        format!("http://{SIMULATOR_HOST}:{simulator_port}"),
        "--allow-insecure-endpoints".to_string(),
        "--poll-interval".to_string(),
        "300ms".to_string(),
        "--requests-per-second".to_string(),
        "0".to_string(),
    ] {
        args.push(arg.into());
    }
    process["env"].as_array_mut().unwrap().extend([
        "KUBECONFIG=/etc/koodrive/kubeconfig".into(),
        "POD_NAME=image-test".into(),
    ]);
    process["terminal"] = false.into();
    process.as_object_mut().unwrap().remove("rlimits");
    spec["root"]["readonly"] = true.into();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != "network");
    for (source, destination) in [
        (&kubeconfig, "/etc/koodrive/kubeconfig"),
        (&hosts, "/etc/hosts"),
    ] {
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["bind", "ro", "nosuid", "nodev"],
            }));
    }
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let container = Container {
        id: format!(
            "koodrive-image-test-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ),
        state: work.join("runc-state"),
    };
    let log = work.join("container.log");
    // A file, not a pipe: the detached container keeps writing to it after runc exits.
    let output = std::fs::File::create(&log).unwrap();
    let started = Command::new("runc")
        .arg("--root")
        .arg(&container.state)
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(&container.id)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .status()
        .unwrap();
    assert!(started.success(), "runc run: {}", read_to_string(&log));

    let deadline = Instant::now() + DEADLINE;
    let metrics_addr = loop {
        let text = read_to_string(&log);
        let logged = text
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|rest| rest.split_whitespace().next());
        if let Some(addr) = logged {
            break addr.to_string();
        }
        assert_eq!(
            container.state()["status"],
            "running",
            "the operator stopped in the container:\n{text}"
        );
        assert!(
            Instant::now() < deadline,
            "no metrics address logged within {DEADLINE:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eventually("/readyz to answer 200", || {
        let url = format!("http://{metrics_addr}/readyz");
        async move { http_get(&url).await.filter(|(code, _)| *code == 200) }
    })
    .await;

    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("from-the-image", "creds", users("86177", 3, None))
        .await;
    let ub = env.wait_for("from-the-image", "Ready", is_ready).await;
    assert_eq!(ub.status.unwrap().summary.unwrap().succeeded, 3);

    let state = container.state();
    assert_eq!(state["status"], "running", "{state}");
    let pid = state["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for field in ["Uid:", "Gid:"] {
        let ids: Vec<&str> = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect();
        assert_eq!(
            ids,
            [IMAGE_UID.to_string().as_str(); 4],
            "{field} real, effective, saved, filesystem"
        );
    }
    // Root on the host, so no permission check stops this write: only a read-only mount does.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("koodrive-operator").is_file());
    let write = std::fs::write(root.join("probe"), b"x");
    assert_eq!(
        write.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(30)),
        "writing the container's root must fail with EROFS: {write:?}"
    );

    // Kubernetes stops a pod with SIGTERM to PID 1, which the operator is here.
    let out = container.runc(&["kill", &container.id, "TERM"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + DEADLINE;
    while container.state()["status"] != "stopped" {
        assert!(
            Instant::now() < deadline,
            "the operator ignored SIGTERM: {}",
            read_to_string(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = read_to_string(&log);
    assert!(logs.contains("shutdown signal received"), "{logs}");
    assert_no_secrets("the container's logs", &logs);
}

#[test]
fn the_dockerfile_labels_the_image_with_the_package_version() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("ARG VERSION={VERSION}\n")),
        "the Dockerfile's `ARG VERSION=` must be {VERSION}, the version in Cargo.toml"
    );
    assert!(dockerfile.contains("USER 65532:65532"));
}
