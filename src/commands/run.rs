//! `koodrive-operator run`: the controller.

use crate::cli::CliError;
use crate::controller::{self, Settings};
use crate::health::{self, Readiness};
use crate::koodrive::ExtraRoots;
use crate::leader::{self, Election};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every flag has an environment fallback so the Helm chart can set it with `env:`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
The Kubernetes connection comes from the pod's service account in a cluster, otherwise from \
KUBECONFIG or ~/.kube/config. KooDrive credentials come from the Secret each UserBatch names \
in spec.credentialsRef; the operator never logs them.

Exit status: 0 after SIGTERM/SIGINT once in-flight reconciles finish; non-zero when the CRD \
is not installed, the cluster is unreachable at start-up, or leadership is lost.")]
pub struct Args {
    /// Only watch UserBatches (and Secrets) in this namespace. Empty: all namespaces.
    #[arg(long, env = "KOODRIVE_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// KooDrive endpoint for UserBatches that don't set `spec.endpoint`.
    #[arg(
        long,
        env = "KOODRIVE_DEFAULT_ENDPOINT",
        default_value = "https://intl.myhuaweicloud-koodrive.com"
    )]
    pub default_endpoint: String,
    /// Most users sent in one KooDrive request (KooDrive's own limit is 1000).
    #[arg(long, env = "KOODRIVE_MAX_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_batch_size: u16,
    /// Most KooDrive requests in flight at once, across all UserBatches.
    #[arg(long, env = "KOODRIVE_MAX_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Most KooDrive requests started per second, across all UserBatches (0: unlimited).
    #[arg(long, env = "KOODRIVE_REQUESTS_PER_SECOND", default_value_t = 5.0)]
    pub requests_per_second: f64,
    /// How often to poll KooDrive for the results of unfinished tasks.
    #[arg(long, env = "KOODRIVE_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Timeout of one KooDrive HTTP request (connection included).
    #[arg(long, env = "KOODRIVE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// First delay before retrying a UserBatch after a failure; doubles per failure.
    #[arg(long, env = "KOODRIVE_RETRY_BASE_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub retry_base_delay: Duration,
    /// Longest delay between retries of one UserBatch.
    #[arg(long, env = "KOODRIVE_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "KOODRIVE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Reconcile only while holding a coordination.k8s.io/v1 Lease (run several replicas safely).
    #[arg(long, env = "KOODRIVE_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "KOODRIVE_LEASE_NAME", default_value = "koodrive-operator")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease (defaults to the pod's namespace, then `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long a Lease stays valid without renewal; a standby takes over after it expires.
    #[arg(long, env = "KOODRIVE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Log format.
    #[arg(long, env = "KOODRIVE_LOG_FORMAT", default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `koodrive_operator=debug`).
    #[arg(long, env = "KOODRIVE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Accept `http://` KooDrive endpoints (simulator, tests). Never in production.
    #[arg(
        long,
        env = "KOODRIVE_ALLOW_INSECURE_ENDPOINTS",
        default_value_t = false
    )]
    pub allow_insecure_endpoints: bool,
    /// PEM file of CA certificates trusted for KooDrive in addition to the built-in roots
    /// (a private gateway or TLS-inspecting proxy); empty: none. SSL_CERT_FILE and
    /// SSL_CERT_DIR add theirs the same way.
    #[arg(long, env = "KOODRIVE_CA_BUNDLE", value_name = "FILE",
          value_parser = crate::commands::submit::parse_optional_path)]
    pub ca_bundle: Option<PathBuf>,
}

/// Parses durations such as `30s`, `5m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<jiff::SignedDuration>()
        .map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m"))
        .and_then(|d| {
            Duration::try_from(d).map_err(|_| "a duration cannot be negative".to_string())
        })
}

impl Args {
    /// The controller settings these flags describe.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::new(self.default_endpoint.clone());
        settings.watch_namespace = Some(self.watch_namespace.clone()).filter(|ns| !ns.is_empty());
        settings.max_batch_size = usize::from(self.max_batch_size);
        settings.max_in_flight = self.max_in_flight as usize;
        settings.requests_per_second = self.requests_per_second;
        settings.poll_interval = self.poll_interval;
        settings.koodrive.allow_insecure_endpoints = self.allow_insecure_endpoints;
        settings.koodrive.request_timeout = self.request_timeout;
        settings.retry_base_delay = self.retry_base_delay;
        settings.retry_max_delay = self.retry_max_delay;
        settings.instance = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty());
        settings
    }
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    crate::telemetry::init(args.log_format, &args.log_level)?;
    // Before contacting the cluster: a bad bundle is a configuration error to fix first.
    let extra_roots = ExtraRoots::from_environment(args.ca_bundle.as_deref())?;
    if !extra_roots.is_empty() {
        tracing::info!(
            certificates = extra_roots.len(),
            files = extra_roots.sources().len(),
            "trusting extra CA certificates for KooDrive besides the built-in roots"
        );
    }
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("cannot configure the Kubernetes client (in-cluster or KUBECONFIG): {e}")
    })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let bound = health::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone().cancelled_owned(),
    )
    .await
    .map_err(|e| {
        format!(
            "cannot listen on {} for metrics and health: {e}",
            args.metrics_addr
        )
    })?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");

    let mut settings = args.settings();
    settings.koodrive.extra_roots = extra_roots;
    let synced = readiness.clone();
    let on_synced = move || {
        synced.set_synced(true);
        tracing::info!("watches synced; ready");
    };

    if !args.leader_elect {
        controller::run(
            client,
            settings,
            metrics,
            shutdown.cancelled_owned(),
            on_synced,
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    }

    let identity = leader::identity();
    let mut election = Election::start(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        args.lease_duration,
    )
    .await?;
    readiness.set_standby(true);
    tracing::info!(identity = %identity, lease = %args.lease_name, "waiting to become leader");
    tokio::select! {
        _ = shutdown.cancelled() => {
            election.release().await;
            return Ok(ExitCode::SUCCESS);
        }
        acquired = election.acquired() => if !acquired {
            return Err("leader election stopped before this process became leader".into());
        }
    }
    readiness.set_standby(false);
    tracing::info!(identity = %identity, "became leader; starting the controller");

    // Stop reconciling the moment leadership is lost: another replica may already act.
    let lost = CancellationToken::new();
    let stop = shutdown.clone();
    let lost_flag = lost.clone();
    let leader_rx = election.is_leader.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = Election::lost(leader_rx) => lost_flag.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    let either = {
        let (a, b) = (shutdown.clone(), lost.clone());
        async move {
            tokio::select! {
                _ = a.cancelled() => {}
                _ = b.cancelled() => {}
            }
        }
    };
    controller::run(client, settings, metrics, either, on_synced).await?;
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        // Exiting lets the Deployment restart this replica as a clean standby.
        return Err("lost the leader Lease; stopped reconciling and exiting".into());
    }
    election.release().await;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on SIGTERM (Kubernetes' stop signal) or SIGINT (Ctrl-C).
pub async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight reconciles");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn parses_friendly_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
