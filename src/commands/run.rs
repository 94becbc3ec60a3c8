//! `koodrive-operator run`: the controller.

use crate::cli::CliError;
use crate::commands::shared::{cancel_on_signal, parse_duration};
use crate::controller::{self, Settings};
use crate::health::{self, Readiness};
use crate::leader::{self, Leadership, LeaseSettings};
use crate::metrics::Metrics;
use koodrive_client::ExtraRoots;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every flag has an environment fallback so the Helm chart can set it with `env:`. A flag
/// given twice takes its last value (so `extraArgs` can override what the chart sets).
#[derive(clap::Args, Debug, Clone)]
#[command(
    args_override_self = true,
    after_help = "\
The Kubernetes connection comes from the pod's service account in a cluster, otherwise from \
KUBECONFIG or ~/.kube/config. KooDrive credentials come from the Secret each UserBatch names \
in spec.credentialsRef, or from the account it names in spec.accountRef (a KooDriveAccount in \
its namespace, or a ClusterKooDriveAccount); the operator never logs them.

Exit status: 0 after SIGTERM/SIGINT once in-flight reconciles finish; non-zero when the CRD \
is not installed, the cluster is unreachable at start-up, or leadership is lost."
)]
pub struct Args {
    /// Only watch UserBatches (and Secrets, KooDriveAccounts) in this namespace, with
    /// namespaced permissions only: ClusterKooDriveAccounts are then not used. Empty: all
    /// namespaces.
    #[arg(long, env = "KOODRIVE_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// KooDrive endpoint for UserBatches that don't set `spec.endpoint`.
    #[arg(
        long,
        env = "KOODRIVE_DEFAULT_ENDPOINT",
        default_value = "https://intl.myhuaweicloud-koodrive.com"
    )]
    pub default_endpoint: String,
    /// Other KooDrive endpoints a UserBatch may name in `spec.endpoint` (comma-separated).
    /// Requests go only to these and the default: a UserBatch naming any other endpoint is
    /// Stalled with reason EndpointNotAllowed, and none of its Secrets is read.
    #[arg(
        long,
        env = "KOODRIVE_ALLOWED_ENDPOINTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_endpoints: Vec<String>,
    /// Most users sent in one KooDrive request (KooDrive's own limit is 1000).
    #[arg(long, env = "KOODRIVE_MAX_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_batch_size: u16,
    /// Most KooDrive requests in flight at once, across all UserBatches that name their own
    /// credentials Secret; also each account's default (`spec.limits.maxInFlight`).
    #[arg(long, env = "KOODRIVE_MAX_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Most KooDrive requests started per second, across all UserBatches that name their own
    /// credentials Secret (0: unlimited); also each account's default
    /// (`spec.limits.requestsPerSecond`).
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
    /// With `spec.inDoubtPolicy: Resubmit`: how long after an ambiguous create its users are
    /// sent once more (long enough for the first request to have finished in KooDrive).
    #[arg(long, env = "KOODRIVE_RESUBMIT_DELAY", default_value = "10m", value_parser = parse_duration)]
    pub resubmit_delay: Duration,
    /// How long a task may take to report every user's result; after that the UserBatch is
    /// Stalled with reason ResultsOverdue and the task is polled only every 30 minutes.
    #[arg(long, env = "KOODRIVE_RESULTS_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub results_timeout: Duration,
    /// How long credentials KooDrive refused are left alone before one new attempt, unless
    /// their Secret changes first (at least 5m: Huawei locks an AK/SK for 5 minutes after
    /// repeated failures).
    #[arg(long, env = "KOODRIVE_AUTH_RETRY_INTERVAL", default_value = "15m", value_parser = parse_auth_retry)]
    pub auth_retry_interval: Duration,
    /// Most users one change to a UserBatch may delete in KooDrive (`deletionPolicy: Delete`:
    /// users removed from its spec, or all of them when it is deleted) without confirmation.
    /// A change deleting more deletes nothing and is Stalled with reason DeletionGuard until
    /// the annotation `koodrive.io/confirm-deletions` is set to its exact count. 0: every
    /// deletion needs confirmation.
    #[arg(long, env = "KOODRIVE_MAX_DELETIONS", default_value_t = 10)]
    pub max_deletions: u32,
    /// Namespace of the credentials Secrets of ClusterKooDriveAccounts that name none (their
    /// `spec.credentialsRef.namespace`): the operator's own. Empty: the pod's namespace
    /// (POD_NAMESPACE).
    #[arg(
        long,
        env = "KOODRIVE_CLUSTER_ACCOUNT_SECRET_NAMESPACE",
        default_value = ""
    )]
    pub cluster_account_secret_namespace: String,
    /// How often the credentials of an account KooDrive accepted are checked again. A change
    /// to the account or its Secret checks them at once, and so does a UserBatch that sees
    /// them refused.
    #[arg(long, env = "KOODRIVE_ACCOUNT_CHECK_INTERVAL", default_value = "6h", value_parser = parse_duration)]
    pub account_check_interval: Duration,
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
    /// `RUST_LOG`, when set, takes precedence (the kube-rs convention).
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
          value_parser = crate::commands::shared::parse_optional_path)]
    pub ca_bundle: Option<PathBuf>,
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
        settings.allowed_endpoints = self
            .allowed_endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        settings.resubmit_delay = self.resubmit_delay;
        settings.results_timeout = self.results_timeout;
        settings.auth_retry_interval = self.auth_retry_interval;
        settings.max_deletions = usize::try_from(self.max_deletions).unwrap_or(usize::MAX);
        settings.cluster_account_secret_namespace =
            Some(self.cluster_account_secret_namespace.trim().to_string())
                .filter(|ns| !ns.is_empty())
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .filter(|ns| !ns.is_empty());
        settings.account_check_interval = self.account_check_interval;
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
        metrics.set_leader(true);
        controller::run(client, settings, metrics, shutdown, on_synced).await?;
        return Ok(ExitCode::SUCCESS);
    }

    let lease = LeaseSettings {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: leader::identity(),
        duration: args.lease_duration,
    };
    let started: Arc<std::sync::Mutex<Option<Result<(), controller::StartError>>>> = Arc::default();
    let result = started.clone();
    let leading_metrics = metrics.clone();
    let leadership = leader::run_while_leading(
        client.clone(),
        &lease,
        &shutdown,
        || readiness.set_standby(true),
        || {
            readiness.set_standby(false);
            leading_metrics.set_leader(true);
        },
        move |stop| async move {
            let outcome = controller::run(client, settings, metrics, stop, on_synced).await;
            if let Ok(mut slot) = result.lock() {
                *slot = Some(outcome);
            }
        },
    )
    .await?;
    if let Some(Err(err)) = started.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(err.into());
    }
    match leadership {
        Leadership::Stopped => Ok(ExitCode::SUCCESS),
        // Exiting lets the Deployment restart this replica as a clean standby.
        Leadership::Lost => Err("lost the leader Lease; stopped reconciling and exiting".into()),
    }
}

/// `--auth-retry-interval`: a duration of at least 5 minutes.
fn parse_auth_retry(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < controller::guard::MIN_BLOCK {
        return Err("must be at least 5m: Huawei locks an AK/SK for 5 minutes after repeated authentication failures".into());
    }
    Ok(duration)
}
