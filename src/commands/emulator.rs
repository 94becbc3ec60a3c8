//! `koodrive-operator emulator`: serve the in-process Kubernetes API emulator until killed,
//! and write a kubeconfig so the operator and `kubectl` can talk to it.

use crate::cli::CliError;
use kube_emulator::{Emulator, EmulatorConfig};
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
    /// Start without the UserBatch CRD, as a cluster where it was never installed.
    #[arg(long)]
    pub no_crd: bool,
    /// How many watch events are kept for resuming watches; older versions get 410 Gone.
    #[arg(long, default_value_t = EmulatorConfig::default().watch_history)]
    pub watch_history: usize,
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
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut config = EmulatorConfig {
        watch_history: args.watch_history,
        ..crate::devtools::emulator_config()
    };
    if args.no_crd {
        config.crds.clear();
    }
    let emulator = Emulator::start(args.listen, config)
        .await
        .map_err(|source| EmulatorCommandError::Listen {
            listen: args.listen,
            source,
        })?;
    if let Some(path) = &args.kubeconfig {
        emulator
            .write_kubeconfig(path)
            .map_err(|source| EmulatorCommandError::Kubeconfig {
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
