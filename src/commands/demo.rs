//! `koodrive-operator demo`: the whole product on one machine, with no cluster and no
//! KooDrive account. It starts the Kubernetes API emulator and the KooDrive simulator in this
//! process, runs the real controller against them, applies the example manifests (those of
//! `examples/`, compiled into the binary, or `--examples DIR`: Namespaces, Secrets, accounts,
//! UserBatches — both ways of naming credentials: a Secret in `spec.credentialsRef`, or an
//! account in `spec.accountRef`), and prints every status
//! transition until each UserBatch is Ready.

use crate::cli::CliError;
use crate::controller::{self, Settings};
use crate::crd::UserBatch;
use crate::crd::account::{ClusterKooDriveAccount, KooDriveAccount};
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use koodrive_simulator::{Account, Simulator, SimulatorConfig};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use kube_emulator::Emulator;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory (or file) of manifests to apply (Namespaces, Secrets, KooDriveAccounts,
    /// ClusterKooDriveAccounts and UserBatches) instead of the built-in copy of the
    /// repository's examples/.
    #[arg(long, value_name = "DIR")]
    pub examples: Option<PathBuf>,
    /// Give up, with the reason, if not every UserBatch is Ready by then.
    #[arg(long, default_value = "60s", value_parser = crate::commands::shared::parse_duration)]
    pub timeout: Duration,
    /// How long the simulator takes to report per-user results.
    #[arg(long, default_value = "1s", value_parser = crate::commands::shared::parse_duration)]
    pub result_delay: Duration,
    /// Log filter for the components (they are quiet by default so transitions stand out).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Write a kubeconfig for the emulator here and keep serving after Ready, so `kubectl`
    /// can look around (stop with Ctrl-C).
    #[arg(long)]
    pub keep_running: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} is not valid YAML (at {location})")]
    Yaml { path: PathBuf, location: String },
    #[error("{path} holds no UserBatch to demonstrate")]
    NoUserBatch { path: PathBuf },
    #[error("the examples hold no credentials Secret with accessKey, secretKey and userId")]
    NoCredentials,
    #[error("cannot apply {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name} in the examples is malformed")]
    Malformed {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("timed out after {timeout:?}; not Ready: {pending}")]
    Timeout { timeout: Duration, pending: String },
}

/// The operator's namespace in the demo, as the Helm chart's release namespace: where
/// ClusterKooDriveAccount Secrets are.
pub const OPERATOR_NAMESPACE: &str = "koodrive-system";

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    crate::telemetry::init(crate::telemetry::LogFormat::Text, &args.log_level)?;
    let (documents, origin) = match &args.examples {
        Some(path) => (load_documents(path)?, path.clone()),
        None => (built_in_documents()?, PathBuf::from(BUILT_IN_LABEL)),
    };
    let namespaces: Vec<Namespace> = of_kind(&documents, "Namespace")?;
    let secrets: Vec<Secret> = of_kind(&documents, "Secret")?;
    let accounts_here: Vec<KooDriveAccount> = of_kind(&documents, "KooDriveAccount")?;
    let cluster_accounts: Vec<ClusterKooDriveAccount> =
        of_kind(&documents, "ClusterKooDriveAccount")?;
    let batches: Vec<UserBatch> = of_kind(&documents, "UserBatch")?;
    if batches.is_empty() {
        return Err(DemoError::NoUserBatch { path: origin }.into());
    }

    // The simulator accepts whatever credentials the example Secrets carry, so the demo
    // signs and verifies real requests without a real account.
    let accounts: Vec<Account> = secrets.iter().filter_map(account_of).collect();
    if accounts.is_empty() {
        return Err(DemoError::NoCredentials.into());
    }
    let simulator = Simulator::start(
        loopback(),
        SimulatorConfig {
            accounts,
            result_delay: args.result_delay,
            ..SimulatorConfig::default()
        },
    )
    .await?;
    let emulator = Emulator::start(loopback(), crate::devtools::emulator_config()).await?;
    println!("KooDrive simulator listening on {}", simulator.url());
    println!("Kubernetes API emulator listening on {}", emulator.url());
    if let Some(path) = &args.keep_running {
        emulator.write_kubeconfig(path)?;
        println!("kubeconfig written to {}", path.display());
    }

    let client = emulator.client().await?;
    let mut settings = Settings::new(simulator.url());
    settings.koodrive.allow_insecure_endpoints = true;
    settings.poll_interval = Duration::from_millis(500);
    settings.retry_base_delay = Duration::from_millis(500);
    settings.retry_max_delay = Duration::from_secs(5);
    settings.cluster_account_secret_namespace = Some(OPERATOR_NAMESPACE.into());
    let stop = CancellationToken::new();
    let controller_task = tokio::spawn(controller::run(
        client.clone(),
        settings,
        Arc::new(Metrics::new()),
        stop.clone(),
        || {},
    ));

    for namespace in &namespaces {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), namespace)
            .await
            .map_err(|source| DemoError::Apply {
                kind: "Namespace".into(),
                name: namespace.name_any(),
                source,
            })?;
        println!("applied Namespace {}", namespace.name_any());
    }
    for secret in &secrets {
        let namespace = secret.namespace().unwrap_or_else(|| "default".into());
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), secret)
            .await
            .map_err(|source| DemoError::Apply {
                kind: "Secret".into(),
                name: format!("{namespace}/{}", secret.name_any()),
                source,
            })?;
        println!("applied Secret {namespace}/{}", secret.name_any());
    }
    let mut account_keys = Vec::new();
    for account in &accounts_here {
        let namespace = account.namespace().unwrap_or_else(|| "default".into());
        Api::<KooDriveAccount>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), account)
            .await
            .map_err(|source| DemoError::Apply {
                kind: "KooDriveAccount".into(),
                name: format!("{namespace}/{}", account.name_any()),
                source,
            })?;
        println!("applied KooDriveAccount {namespace}/{}", account.name_any());
        account_keys.push(AccountKey::Namespaced(namespace, account.name_any()));
    }
    for account in &cluster_accounts {
        Api::<ClusterKooDriveAccount>::all(client.clone())
            .create(&PostParams::default(), account)
            .await
            .map_err(|source| DemoError::Apply {
                kind: "ClusterKooDriveAccount".into(),
                name: account.name_any(),
                source,
            })?;
        println!("applied ClusterKooDriveAccount {}", account.name_any());
        account_keys.push(AccountKey::Cluster(account.name_any()));
    }
    let mut keys = Vec::new();
    for batch in &batches {
        let namespace = batch.namespace().unwrap_or_else(|| "default".into());
        Api::<UserBatch>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), batch)
            .await
            .map_err(|source| DemoError::Apply {
                kind: "UserBatch".into(),
                name: format!("{namespace}/{}", batch.name_any()),
                source,
            })?;
        println!(
            "applied UserBatch {namespace}/{} ({} users)",
            batch.name_any(),
            batch.spec.users.len()
        );
        keys.push((namespace, batch.name_any()));
    }

    let outcome = follow_until_ready(&client, &account_keys, &keys, args.timeout).await;
    if outcome.is_ok()
        && let Some(path) = &args.keep_running
    {
        println!(
            "all Ready. Try: kubectl --kubeconfig {} get userbatches -A -o wide   (Ctrl-C to stop)",
            path.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    stop.cancel();
    let _ = controller_task.await;
    outcome?;
    println!("all UserBatches Ready");
    Ok(ExitCode::SUCCESS)
}

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An account the demo applied.
enum AccountKey {
    Namespaced(String, String),
    Cluster(String),
}

/// `Ready=… (reason): message` of an account, once the operator wrote one.
fn account_line(status: Option<&crate::crd::account::AccountStatus>) -> Option<String> {
    let ready = status?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(format!(
        "Ready={} ({}): {}",
        ready.status, ready.reason, ready.message
    ))
}

/// Prints one line per change of (phase, Ready reason, message) until all UserBatches are
/// Ready; the accounts' Ready changes too.
async fn follow_until_ready(
    client: &kube::Client,
    accounts: &[AccountKey],
    keys: &[(String, String)],
    timeout: Duration,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        for account in accounts {
            let (key, line) = match account {
                AccountKey::Namespaced(namespace, name) => {
                    let api: Api<KooDriveAccount> = Api::namespaced(client.clone(), namespace);
                    let status = api.get(name).await.ok().and_then(|a| a.status);
                    (
                        format!("KooDriveAccount {namespace}/{name}"),
                        account_line(status.as_ref()),
                    )
                }
                AccountKey::Cluster(name) => {
                    let api: Api<ClusterKooDriveAccount> = Api::all(client.clone());
                    let status = api.get(name).await.ok().and_then(|a| a.status);
                    (
                        format!("ClusterKooDriveAccount {name}"),
                        account_line(status.as_ref()),
                    )
                }
            };
            if let Some(line) = line
                && last.get(&key) != Some(&line)
            {
                println!("[{:>5.1}s] {key}: {line}", started.elapsed().as_secs_f64());
                last.insert(key, line);
            }
        }
        let mut pending = Vec::new();
        for (namespace, name) in keys {
            let api: Api<UserBatch> = Api::namespaced(client.clone(), namespace);
            let key = format!("{namespace}/{name}");
            let Ok(ub) = api.get(name).await else {
                pending.push(format!("{key} (not readable)"));
                continue;
            };
            let status = ub.status.unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            let line = format!(
                "phase={} Ready={} ({}) task={} code={}: {}",
                status
                    .phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "-".into()),
                ready.map(|c| c.status.as_str()).unwrap_or("Unknown"),
                ready.map(|c| c.reason.as_str()).unwrap_or("-"),
                status.task_id.as_deref().unwrap_or("-"),
                status.code.as_deref().unwrap_or("-"),
                ready
                    .map(|c| c.message.as_str())
                    .unwrap_or("waiting for the operator"),
            );
            if last.get(&key) != Some(&line) {
                println!("[{:>5.1}s] {key}: {line}", started.elapsed().as_secs_f64());
                last.insert(key.clone(), line.clone());
            }
            if ready.is_none_or(|c| c.status != "True") {
                pending.push(format!("{key}: {line}"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(DemoError::Timeout {
                timeout,
                pending: pending.join("; "),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the built-in examples are named in messages.
const BUILT_IN_LABEL: &str = "the built-in examples";

/// The repository's `examples/`, compiled in so that `demo` works from any directory and
/// from the release binary alone. A unit test keeps this list in step with the directory.
/// Includes each named file of the repository's `examples/`.
macro_rules! examples {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/", $name)))),*]
    };
}

const BUILT_IN_EXAMPLES: &[(&str, &str)] = examples![
    "all-hands-passwords.yaml",
    "credentials-secret.yaml",
    "koodriveaccount.yaml",
    "passwords-secret.yaml",
    "platform-account.yaml",
    "userbatch-1000.yaml",
    "userbatch-cluster-account.yaml",
    "userbatch-inline.yaml",
    "userbatch-namespaced-account.yaml",
    "userbatch.yaml",
];

fn built_in_documents() -> Result<Vec<serde_json::Value>, DemoError> {
    let mut documents = Vec::new();
    for (name, text) in BUILT_IN_EXAMPLES {
        let label = PathBuf::from(format!("built-in examples/{name}"));
        documents.extend(parse_documents(&label, text)?);
    }
    Ok(documents)
}

/// Every YAML document in a file, or in the `*.yaml`/`*.yml` files below a directory.
fn load_documents(path: &std::path::Path) -> Result<Vec<serde_json::Value>, DemoError> {
    let mut documents = Vec::new();
    for file in crate::manifests::expand(path) {
        let file = file.map_err(|(path, err)| DemoError::Read {
            path,
            message: err.to_string(),
        })?;
        let text = std::fs::read_to_string(&file).map_err(|err| DemoError::Read {
            path: file.clone(),
            message: err.to_string(),
        })?;
        documents.extend(parse_documents(&file, &text)?);
    }
    Ok(documents)
}

fn parse_documents(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<serde_json::Value>, DemoError> {
    // Only the location is reported: the offending line may hold a password.
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| DemoError::Yaml {
            path: path.to_path_buf(),
            location: crate::manifests::YamlProblem::of(&e).to_string(),
        })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn of_kind<T: serde::de::DeserializeOwned>(
    documents: &[serde_json::Value],
    kind: &str,
) -> Result<Vec<T>, DemoError> {
    documents
        .iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|d| {
            serde_json::from_value(d.clone()).map_err(|source| DemoError::Malformed {
                kind: kind.into(),
                name: d
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("?")
                    .into(),
                source,
            })
        })
        .collect()
}

/// The simulator account matching a credentials Secret, if it is one.
fn account_of(secret: &Secret) -> Option<Account> {
    let value = |key: &str| -> Option<String> {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key).cloned())
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
            })
    };
    Some(Account {
        access_key: value("accessKey")?,
        secret_key: koodrive_client::SecretKey::new(value("secretKey")?),
        user_id: value("userId")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_examples_are_exactly_the_examples_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let on_disk: Vec<String> = crate::manifests::expand(&dir)
            .into_iter()
            .map(|file| {
                let file = file.unwrap_or_else(|(path, err)| panic!("{}: {err}", path.display()));
                file.strip_prefix(&dir).unwrap().display().to_string()
            })
            .collect();
        let built_in: Vec<&str> = BUILT_IN_EXAMPLES.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            on_disk, built_in,
            "examples/ changed: update BUILT_IN_EXAMPLES in src/commands/demo.rs"
        );
    }

    #[test]
    fn built_in_examples_parse_into_credentials_and_userbatches() {
        let documents = built_in_documents().unwrap();
        let secrets: Vec<Secret> = of_kind(&documents, "Secret").unwrap();
        let batches: Vec<UserBatch> = of_kind(&documents, "UserBatch").unwrap();
        assert!(secrets.iter().any(|s| account_of(s).is_some()));
        // Every UserBatch of examples/ on disk is among the built-in ones.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let on_disk = load_documents(&dir).unwrap();
        let on_disk: Vec<UserBatch> = of_kind(&on_disk, "UserBatch").unwrap();
        assert!(!batches.is_empty());
        assert_eq!(batches.len(), on_disk.len());
    }
}
