//! `koodrive-operator simulator`: a local KooDrive for experiments and the demo.

use crate::cli::CliError;
use crate::commands::shared::parse_duration;
use koodrive_client::SecretKey;
use koodrive_simulator::{Account, Simulator, SimulatorConfig};
use serde::Deserialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Accounts come from repeated `--access-key/--secret-key/--user-id` (matched by position)
/// and/or `--credentials-file`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Credentials file (YAML or JSON), one entry per account:
  - accessKey: AK1
    secretKey: SK1
    userId: \"1505084218764547200\"

Prefer the file to --secret-key: command lines are visible to other users of the machine.

Control endpoints (for tests and experiments):
  GET  /_sim/submissions   JSON object: phone -> times submitted in accepted create requests
  GET  /_sim/requests      JSON object: access key -> {requests, failedAuthentication, peakInFlight}
  POST /_sim/faults        queue faults, e.g. {\"call\":\"create\",\"times\":2,\"kind\":{\"status5xx\":503}}
                           kinds: {\"status5xx\":N}, {\"too_many_requests\":{\"retry_after_secs\":N}},
                           {\"latency\":MILLIS}, \"drop_connection\", \"drop_after_processing\",
                           {\"hang_after_processing\":MILLIS}, \"garbled_json\"")]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the URL is printed on stdout).
    #[arg(
        long,
        env = "KOODRIVE_SIMULATOR_LISTEN",
        default_value = "127.0.0.1:8088"
    )]
    pub listen: SocketAddr,
    /// Access key (AK) of an account; repeat for several accounts.
    #[arg(long = "access-key", value_name = "AK")]
    pub access_keys: Vec<String>,
    /// Secret key (SK) of the account given by the --access-key at the same position.
    #[arg(long = "secret-key", value_name = "SK", value_parser = parse_secret)]
    pub secret_keys: Vec<SecretKey>,
    /// KooDrive user ID of the account given by the --access-key at the same position.
    #[arg(long = "user-id", value_name = "ID")]
    pub user_ids: Vec<String>,
    /// YAML/JSON file listing accounts (see below).
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// How long after creation a task's per-user results appear.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub result_delay: Duration,
    /// A phone that already exists in KooDrive (reported as skipped); repeatable.
    #[arg(long = "registered-phone", value_name = "PHONE")]
    pub registered_phones: Vec<String>,
    /// A phone whose registration fails; repeatable.
    #[arg(long = "failing-phone", value_name = "PHONE")]
    pub failing_phones: Vec<String>,
    /// Oldest X-Date accepted (KooDrive: 15 minutes).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "KOODRIVE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn parse_secret(text: &str) -> Result<SecretKey, String> {
    if text.is_empty() {
        return Err("the secret key is empty".into());
    }
    Ok(SecretKey::new(text.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatorCommandError {
    #[error(
        "--access-key, --secret-key and --user-id must be given the same number of times (got {access_keys}, {secret_keys}, {user_ids})"
    )]
    UnmatchedAccountFlags {
        access_keys: usize,
        secret_keys: usize,
        user_ids: usize,
    },
    #[error("cannot read credentials file {path}")]
    ReadCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // The parser's message may quote file content, which could be a secret key: say where,
    // not what.
    #[error("credentials file {path} is not a list of {{accessKey, secretKey, userId}} entries")]
    ParseCredentials { path: PathBuf },
    #[error("no accounts: give --access-key/--secret-key/--user-id or --credentials-file")]
    NoAccounts,
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for Ctrl-C/SIGTERM")]
    Signal(#[source] std::io::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountEntry {
    access_key: String,
    secret_key: String,
    user_id: String,
}

fn accounts(args: &Args) -> Result<Vec<Account>, SimulatorCommandError> {
    let (a, s, u) = (
        args.access_keys.len(),
        args.secret_keys.len(),
        args.user_ids.len(),
    );
    if a != s || a != u {
        return Err(SimulatorCommandError::UnmatchedAccountFlags {
            access_keys: a,
            secret_keys: s,
            user_ids: u,
        });
    }
    let mut accounts: Vec<Account> = args
        .access_keys
        .iter()
        .zip(&args.secret_keys)
        .zip(&args.user_ids)
        .map(|((access_key, secret_key), user_id)| Account {
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
            user_id: user_id.clone(),
        })
        .collect();
    if let Some(path) = &args.credentials_file {
        let text = std::fs::read_to_string(path).map_err(|source| {
            SimulatorCommandError::ReadCredentials {
                path: path.clone(),
                source,
            }
        })?;
        let entries: Vec<AccountEntry> = serde_saphyr::from_str(&text)
            .map_err(|_| SimulatorCommandError::ParseCredentials { path: path.clone() })?;
        accounts.extend(entries.into_iter().map(|e| Account {
            access_key: e.access_key,
            secret_key: SecretKey::new(e.secret_key),
            user_id: e.user_id,
        }));
    }
    if accounts.is_empty() {
        return Err(SimulatorCommandError::NoAccounts);
    }
    Ok(accounts)
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    // Another subscriber may already be installed (in-process callers); keep theirs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let config = SimulatorConfig {
        accounts: accounts(&args)?,
        result_delay: args.result_delay,
        registered_phones: args.registered_phones.iter().cloned().collect(),
        failing_phones: args.failing_phones.iter().cloned().collect(),
        max_clock_skew: args.max_clock_skew,
        ..SimulatorConfig::default()
    };
    let simulator = Simulator::start(args.listen, config)
        .await
        .map_err(|source| SimulatorCommandError::Listen {
            addr: args.listen,
            source,
        })?;
    // Tests and scripts read the URL (and so the real port) from this first stdout line.
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "KooDrive simulator listening on {}",
        simulator.url()
    )?;
    stdout.flush()?;
    shutdown_signal()
        .await
        .map_err(SimulatorCommandError::Signal)?;
    simulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C, or SIGTERM (how containers and process supervisors stop a process).
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
