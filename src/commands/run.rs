//! `koodrive-operator run`: the controller.

use crate::cli::CliError;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Every flag has an environment fallback so the Helm chart can set it with `env:`.
#[derive(clap::Args, Debug, Clone)]
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
}

/// Parses durations such as `30s`, `5m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<jiff::SignedDuration>()
        .map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m"))
        .and_then(|d| {
            Duration::try_from(d).map_err(|_| "a duration cannot be negative".to_string())
        })
}

pub async fn run(_args: Args) -> Result<ExitCode, CliError> {
    Err("`run` is not implemented yet".into())
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
