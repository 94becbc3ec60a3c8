//! Shared end-to-end fixtures: an API emulator, a KooDrive simulator and the real
//! `koodrive-operator run` binary as a child process.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use koodrive_operator::crd::{
    CredentialsRef, SecretKeyRef, User, UserBatch, UserBatchSpec, UserBatchStatus,
};
use koodrive_simulator::{Account, Simulator, SimulatorConfig};
use kube::Api;
use kube::api::PostParams;
use kube_emulator::{Emulator, EmulatorConfig, Identity, Rbac};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "e2e-access-key-0001";
pub const SECRET_KEY: &str = "e2e-SECRET-key-must-never-leak-4242";
pub const USER_ID: &str = "1505084218764547200";
pub const NAMESPACE: &str = "default";
/// Every password used by the tests starts with this, so a leak is easy to find.
pub const PASSWORD_PREFIX: &str = "Pw-never-leak-";

/// The operator runs as the Helm chart installs it: release `koodrive-operator` in this
/// namespace, which is also where its leader-election Lease lives.
pub const RELEASE: &str = "koodrive-operator";
pub const RELEASE_NAMESPACE: &str = "koodrive-system";
pub const LEASE_NAMESPACE: &str = RELEASE_NAMESPACE;
/// The chart's ServiceAccount (the release's full name).
pub const SERVICE_ACCOUNT: &str = "koodrive-operator";

/// Long enough for a slow, loaded CI machine; waits end as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub struct Env {
    pub emulator: Emulator,
    pub simulator: Simulator,
    pub dir: tempfile::TempDir,
    /// The test's own (admin) kubeconfig.
    pub kubeconfig: PathBuf,
    /// The operator's kubeconfig: its ServiceAccount's token, bound by the chart's RBAC.
    pub operator_kubeconfig: PathBuf,
    pub client: kube::Client,
}

/// `helm` from PATH or the project's `.tools/bin` (scripts/install-test-tools.sh).
pub fn helm() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([root.join(".tools/bin")])
        .map(|dir| dir.join("helm"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`helm` renders the operator's RBAC for the end-to-end tests but is neither on \
                 PATH nor in .tools/bin; run scripts/install-test-tools.sh"
            )
        })
}

/// The RBAC objects of the chart rendered with its default values (`helm template`), once
/// per test process: every end-to-end test runs the operator with exactly these grants.
pub fn chart_rbac() -> &'static [serde_json::Value] {
    static RBAC: std::sync::OnceLock<Vec<serde_json::Value>> = std::sync::OnceLock::new();
    RBAC.get_or_init(|| {
        let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/koodrive-operator");
        let output = Command::new(helm())
            .args(["template", RELEASE])
            .arg(&chart)
            .args(["--namespace", RELEASE_NAMESPACE])
            .output()
            .expect("helm runs");
        assert!(
            output.status.success(),
            "helm template failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let objects =
            Rbac::objects_from_manifests(&String::from_utf8_lossy(&output.stdout)).unwrap();
        assert!(
            objects.len() >= 4,
            "the chart renders its RBAC: {objects:?}"
        );
        objects
    })
}

/// The chart's RBAC, and the operator's ServiceAccount token.
pub fn chart_rbac_config(token: &str) -> Rbac {
    Rbac {
        objects: chart_rbac().to_vec(),
        identities: vec![Identity::service_account(
            RELEASE_NAMESPACE,
            SERVICE_ACCOUNT,
            token,
        )],
    }
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(
            koodrive_operator::devtools::emulator_config(),
            SimulatorConfig::default(),
        )
        .await
    }

    pub async fn start_with(emulator_config: EmulatorConfig, sim_config: SimulatorConfig) -> Env {
        Self::start_on(emulator_config, sim_config, None, None).await
    }

    /// [`Env::start_with`], serving the emulator and the simulator from the given runtimes
    /// (the current one when `None`), so that a benchmark can tell their CPU apart.
    pub async fn start_on(
        emulator_config: EmulatorConfig,
        mut sim_config: SimulatorConfig,
        emulator_runtime: Option<&tokio::runtime::Handle>,
        simulator_runtime: Option<&tokio::runtime::Handle>,
    ) -> Env {
        if sim_config.accounts.is_empty() {
            sim_config.accounts.push(Account {
                access_key: ACCESS_KEY.into(),
                secret_key: koodrive_client::SecretKey::new(SECRET_KEY.into()),
                user_id: USER_ID.into(),
            });
        }
        let token = format!("operator-token-{}", rand::random::<u64>());
        let mut emulator_config = emulator_config;
        if emulator_config.rbac.is_none() {
            emulator_config.rbac = Some(chart_rbac_config(&token));
        }
        let operator_token = emulator_config
            .rbac
            .as_ref()
            .and_then(|r| r.identities.first())
            .map(|i| i.token.clone())
            .unwrap_or(token);
        let start_emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), emulator_config);
        let emulator = match emulator_runtime {
            Some(runtime) => runtime.spawn(start_emulator).await.unwrap(),
            None => start_emulator.await,
        }
        .unwrap();
        let start_simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), sim_config);
        let simulator = match simulator_runtime {
            Some(runtime) => runtime.spawn(start_simulator).await.unwrap(),
            None => start_simulator.await,
        }
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        emulator.write_kubeconfig(&kubeconfig).unwrap();
        let operator_kubeconfig = dir.path().join("operator-kubeconfig");
        emulator
            .write_kubeconfig_as(&operator_kubeconfig, &operator_token)
            .unwrap();
        let client = emulator.client().await.unwrap();
        Env {
            emulator,
            simulator,
            dir,
            kubeconfig,
            operator_kubeconfig,
            client,
        }
    }

    pub fn userbatches(&self) -> Api<UserBatch> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// Starts `koodrive-operator run` against this environment.
    pub fn operator(&self, name: &str, extra: &[&str]) -> Operator {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut args: Vec<String> = [
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--allow-insecure-endpoints",
            "--default-endpoint",
            &self.simulator.url(),
            "--poll-interval",
            "300ms",
            "--retry-base-delay",
            "200ms",
            "--retry-max-delay",
            "2s",
            "--requests-per-second",
            "0",
            "--max-in-flight",
            "8",
            "--log-level",
            "trace",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
            .args(&args)
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("POD_NAME", name)
            // As the chart's Deployment sets it: the Lease lives in the release namespace.
            .env("POD_NAMESPACE", RELEASE_NAMESPACE)
            .env_remove("KOODRIVE_WATCH_NAMESPACE")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator {
            child: Some(child),
            log,
        }
    }

    pub async fn create_credentials(&self, name: &str, secret_key: &str) {
        let secret = credentials_secret(name, secret_key);
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    pub async fn create_passwords(&self, name: &str, users: &[User]) {
        let data: BTreeMap<String, String> = users
            .iter()
            .map(|u| (u.phone.clone(), password_for(&u.phone)))
            .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            string_data: Some(data),
            ..Default::default()
        };
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    pub async fn create_batch(&self, name: &str, credentials: &str, users: Vec<User>) -> UserBatch {
        let ub = userbatch(name, credentials, users);
        self.userbatches()
            .create(&PostParams::default(), &ub)
            .await
            .unwrap()
    }

    /// Polls the UserBatch until `ready` holds for its status, or panics with the last status.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        ready: impl Fn(&UserBatchStatus) -> bool,
    ) -> UserBatch {
        wait_for_batch(&self.userbatches(), name, what, ready).await
    }
}

pub async fn wait_for_batch(
    api: &Api<UserBatch>,
    name: &str,
    what: &str,
    ready: impl Fn(&UserBatchStatus) -> bool,
) -> UserBatch {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < DEADLINE {
        if let Ok(ub) = api.get(name).await {
            if let Some(status) = &ub.status
                && ready(status)
            {
                return ub;
            }
            last = Some(ub);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "UserBatch {name} did not reach {what} within {DEADLINE:?}; last status: {:#?}",
        last.and_then(|u| u.status)
    );
}

/// Polls `check` until it returns Some, or panics.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {DEADLINE:?}");
}

pub fn condition<'a>(
    status: &'a UserBatchStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_ready(status: &UserBatchStatus) -> bool {
    condition(status, "Ready").is_some_and(|c| c.status == "True")
}

pub fn ready_reason(status: &UserBatchStatus) -> Option<&str> {
    condition(status, "Ready").map(|c| c.reason.as_str())
}

pub fn password_for(phone: &str) -> String {
    format!("{PASSWORD_PREFIX}{phone}")
}

pub fn users(prefix: &str, n: usize, passwords: Option<&str>) -> Vec<User> {
    (0..n)
        .map(|i| User {
            firstname: format!("User{i}"),
            surname: Some("Example".into()),
            phone: format!("{prefix}{i:06}"),
            email: Some(format!("user{i}@example.com")),
            password: None,
            password_secret_ref: passwords.map(|name| SecretKeyRef {
                name: name.into(),
                key: format!("{prefix}{i:06}"),
            }),
        })
        .collect()
}

pub fn userbatch(name: &str, credentials: &str, users: Vec<User>) -> UserBatch {
    let mut ub = UserBatch::new(
        name,
        UserBatchSpec {
            credentials_ref: Some(CredentialsRef {
                name: credentials.into(),
                access_key_key: None,
                secret_key_key: None,
                user_id_key: None,
            }),
            account_ref: None,
            endpoint: None,
            users,
            in_doubt_policy: None,
            suspend: None,
            deletion_policy: None,
        },
    );
    ub.metadata.namespace = Some(NAMESPACE.into());
    ub
}

pub fn credentials_secret(name: &str, secret_key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([
            ("accessKey".to_string(), ACCESS_KEY.to_string()),
            ("secretKey".to_string(), secret_key.to_string()),
            ("userId".to_string(), USER_ID.to_string()),
        ])),
        ..Default::default()
    }
}

/// The operator child process; killed on drop.
pub struct Operator {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Operator {
    pub fn logs(&self) -> String {
        read_to_string(&self.log)
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("operator running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "operator did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("operator running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "operator did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics address, read back from the operator's own log line.
    pub async fn metrics_addr(&self) -> String {
        let log = self.log.clone();
        eventually("the operator to log its metrics address", || {
            let text = read_to_string(&log);
            async move {
                text.lines()
                    .find(|l| l.contains("serving /metrics"))
                    .and_then(|l| l.split("address=").nth(1))
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
                    .filter(|a| !a.is_empty())
            }
        })
        .await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn read_to_string(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// Fails if a secret or a password appears anywhere in `haystack`.
pub fn assert_no_secrets(what: &str, haystack: &str) {
    assert!(
        !haystack.contains(SECRET_KEY),
        "the secret key leaked into {what}"
    );
    assert!(
        !haystack.contains("WRONG-secret"),
        "a (wrong) secret key leaked into {what}"
    );
    assert!(
        !haystack.contains(PASSWORD_PREFIX),
        "a password leaked into {what}"
    );
}

/// Plain HTTP GET on loopback, for /metrics, /readyz.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Users of ordinary size, as a real onboarding list has them: full names, a company e-mail
/// and a password from a Secret (key = phone). About 90 characters of text each.
pub fn ordinary_users(prefix: &str, n: usize, passwords: &str) -> Vec<User> {
    const FIRST: [&str; 4] = ["Alexandra", "Maximilian", "Guinevere", "Bartholomew"];
    const LAST: [&str; 4] = ["Montgomery", "Castellanos", "Oyelaran", "Vasquez-Ortiz"];
    (0..n)
        .map(|i| {
            let (first, last) = (FIRST[i % 4], LAST[(i / 4) % 4]);
            let phone = format!("{prefix}{i:06}");
            User {
                firstname: first.into(),
                surname: Some(last.into()),
                email: Some(format!(
                    "{}.{}.{i:04}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                )),
                password: None,
                password_secret_ref: Some(SecretKeyRef {
                    name: passwords.into(),
                    key: phone.clone(),
                }),
                phone,
            }
        })
        .collect()
}
