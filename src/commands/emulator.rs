//! `koodrive-operator emulator`: serve the in-process Kubernetes API emulator until killed,
//! and write a kubeconfig so the operator and `kubectl` can talk to it.

use crate::cli::CliError;
use kube_emulator::{Emulator, EmulatorConfig, Identity, Rbac};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to serve on; port 0 picks a free port (printed on start).
    #[arg(
        long,
        default_value = "127.0.0.1:6443",
        env = "KOODRIVE_EMULATOR_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Where to write a kubeconfig (context `emulator`) pointing at the emulator.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Start without the operator's CRDs, as a cluster where they were never installed.
    #[arg(long)]
    pub no_crd: bool,
    /// How many watch events are kept for resuming watches; older versions get 410 Gone.
    #[arg(long, default_value_t = EmulatorConfig::default().watch_history)]
    pub watch_history: usize,
    /// Enforce RBAC with the Roles, ClusterRoles and bindings in this manifest file (e.g.
    /// `helm template koodrive-operator charts/koodrive-operator -n koodrive-system`; other
    /// documents are skipped). Requests with a bearer token are authorized by them; requests
    /// without credentials (kubectl over plain HTTP) act as the administrator.
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    /// A bearer token and who it authenticates (repeatable):
    /// `TOKEN=system:serviceaccount:NAMESPACE:NAME` for a ServiceAccount, or
    /// `TOKEN=USER[,GROUP...]`. Only with --rbac.
    #[arg(long = "identity", value_name = "TOKEN=USER", requires = "rbac")]
    pub identities: Vec<String>,
    /// Write the kubeconfig with this token (one of the --identity tokens), so a kube-rs
    /// client such as `koodrive-operator run` acts as that identity.
    #[arg(long, value_name = "TOKEN", requires = "kubeconfig")]
    pub kubeconfig_token: Option<String>,
}

/// An `--identity` value: `TOKEN=system:serviceaccount:NS:NAME` or `TOKEN=USER[,GROUP...]`.
fn parse_identity(text: &str) -> Result<Identity, EmulatorCommandError> {
    let bad = || EmulatorCommandError::Identity {
        value: text.to_string(),
    };
    let (token, who) = text.split_once('=').ok_or_else(bad)?;
    if token.is_empty() || who.is_empty() {
        return Err(bad());
    }
    if let Some(rest) = who.strip_prefix("system:serviceaccount:") {
        let (namespace, name) = rest.split_once(':').ok_or_else(bad)?;
        return Ok(Identity::service_account(namespace, name, token));
    }
    let mut parts = who.split(',');
    let user = parts.next().unwrap_or_default().to_string();
    let mut groups: Vec<String> = parts.map(str::to_string).collect();
    groups.push("system:authenticated".into());
    Ok(Identity {
        token: token.to_string(),
        user,
        groups,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorCommandError {
    #[error("cannot serve the emulator on {listen}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the kubeconfig to {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for a termination signal")]
    Signal(#[source] std::io::Error),
    #[error("cannot read the RBAC manifests {path}")]
    ReadRbac {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the RBAC manifests {path}")]
    ParseRbac {
        path: PathBuf,
        #[source]
        source: kube_emulator::ManifestError,
    },
    #[error(
        "--identity {value:?} is not TOKEN=system:serviceaccount:NAMESPACE:NAME or TOKEN=USER[,GROUP...]"
    )]
    Identity { value: String },
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut config = EmulatorConfig {
        watch_history: args.watch_history,
        ..crate::devtools::emulator_config()
    };
    if args.no_crd {
        config.crds.clear();
    }
    if let Some(path) = &args.rbac {
        let text =
            std::fs::read_to_string(path).map_err(|source| EmulatorCommandError::ReadRbac {
                path: path.clone(),
                source,
            })?;
        let objects = Rbac::objects_from_manifests(&text).map_err(|source| {
            EmulatorCommandError::ParseRbac {
                path: path.clone(),
                source,
            }
        })?;
        let identities = args
            .identities
            .iter()
            .map(|i| parse_identity(i))
            .collect::<Result<Vec<_>, _>>()?;
        config.rbac = Some(Rbac {
            objects,
            identities,
        });
    }
    let emulator = Emulator::start(args.listen, config)
        .await
        .map_err(|source| EmulatorCommandError::Listen {
            listen: args.listen,
            source,
        })?;
    if let Some(path) = &args.kubeconfig {
        let written = match &args.kubeconfig_token {
            Some(token) => emulator.write_kubeconfig_as(path, token),
            None => emulator.write_kubeconfig(path),
        };
        written.map_err(|source| EmulatorCommandError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
    }
    // One line on stdout a script (or test) can read the URL from.
    let mut out = std::io::stdout().lock();
    let line = match &args.kubeconfig {
        Some(path) => format!(
            "emulator listening on {} (kubeconfig: {})",
            emulator.url(),
            path.display()
        ),
        None => format!("emulator listening on {}", emulator.url()),
    };
    // A closed stdout must not stop the server.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    drop(out);
    wait_for_termination().await?;
    tracing::info!("termination signal received, stopping the emulator");
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_termination() -> Result<(), EmulatorCommandError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(EmulatorCommandError::Signal)?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map_err(EmulatorCommandError::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(EmulatorCommandError::Signal)
    }
}
