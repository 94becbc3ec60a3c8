//! Prometheus metrics, rendered in the OpenMetrics text format on `/metrics`.
//!
//! They answer an operator's questions: which UserBatch is stuck and why
//! (`userbatch_condition`, like cert-manager's `certmanager_certificate_ready_status`), is
//! KooDrive answering (`koodrive_http_requests_total` counts every HTTP request, retries
//! included), are credentials being refused (`authentication_failures_total`,
//! `credentials_blocked`), is this replica the leader, which build is running. The names
//! are the contract the chart's alerts and dashboard are written against.

use crate::controller::Key;
use crate::controller::guard::Verdict as AuthVerdict;
use crate::crd::UserBatchStatus;
use koodrive_client::{Call, HttpObserver, HttpOutcome};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success`, `error`, `stalled` or `in_doubt`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `create`, `get`, `delete_user`, `get_user`.
    pub call: String,
    /// Calls: `success`, `transient`, `authentication`, `clock_skew`, `rejected`, `invalid`,
    /// `in_doubt`. HTTP requests: `success`, `rejected`, `authentication`, `throttled`,
    /// `server_error`, `connect_error`, `no_answer`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallOnly {
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserOutcome {
    /// `submitted`, `succeeded`, `failed`, `skipped`, `deleted`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// The AK: not secret (it travels in every request's `Authorization` header).
    pub access_key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub namespace: String,
    pub name: String,
    pub condition: String,
    pub status: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub git_commit: String,
}

/// What the gauges last said about one UserBatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectState {
    pub phase: Option<String>,
    /// (type, status, reason) of each condition.
    pub conditions: Vec<(String, String, String)>,
}

impl ObjectState {
    pub fn of(status: &UserBatchStatus) -> ObjectState {
        ObjectState {
            phase: status.phase.map(|p| format!("{p:?}")),
            conditions: status
                .conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub koodrive_requests: Family<CallLabels, Counter>,
    pub koodrive_http_requests: Family<CallLabels, Counter>,
    pub koodrive_request_duration: Family<CallOnly, Histogram>,
    pub authentication_failures: Family<CredentialLabels, Counter>,
    pub credentials_blocked: Family<CredentialLabels, Gauge>,
    pub users: Family<UserOutcome, Counter>,
    pub userbatches_by_phase: Family<PhaseLabels, Gauge>,
    pub userbatch_condition: Family<ConditionLabels, Gauge>,
    pub leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("koodrive_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "UserBatch reconciles by result: success, error, stalled (waiting for a human), in_doubt",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, by reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one UserBatch reconcile",
            reconcile_duration.clone(),
        );
        let koodrive_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "koodrive_requests",
            "KooDrive API calls by call and outcome (one per call, retries inside it included)",
            koodrive_requests.clone(),
        );
        let koodrive_http_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "koodrive_http_requests",
            "HTTP requests to KooDrive by call and outcome, every retry counted",
            koodrive_http_requests.clone(),
        );
        let koodrive_request_duration = Family::<CallOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "koodrive_request_duration_seconds",
            "Duration of KooDrive API calls, retries included",
            koodrive_request_duration.clone(),
        );
        let authentication_failures = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "authentication_failures",
            "KooDrive calls refused for their credentials or date, per access key",
            authentication_failures.clone(),
        );
        let credentials_blocked = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "credentials_blocked",
            "1 while requests with an access key are held back after an authentication failure",
            credentials_blocked.clone(),
        );
        let users = Family::<UserOutcome, Counter>::default();
        registry.register(
            "users",
            "Users by outcome (submitted, succeeded, failed, skipped, deleted)",
            users.clone(),
        );
        let userbatches_by_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "userbatches",
            "UserBatches by phase, as last reconciled by this process",
            userbatches_by_phase.clone(),
        );
        let userbatch_condition = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "userbatch_condition",
            "1 for each UserBatch's current condition (type, status, reason)",
            userbatch_condition.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process reconciles (it holds the Lease, or leader election is off)",
            leader.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                git_commit: option_env!("KOODRIVE_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .to_string(),
            })
            .set(1);
        registry.register("build_info", "The running build (always 1)", build_info);
        Self {
            registry: root,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            koodrive_requests,
            koodrive_http_requests,
            koodrive_request_duration,
            authentication_failures,
            credentials_blocked,
            users,
            userbatches_by_phase,
            userbatch_condition,
            leader,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn koodrive_call(&self, call: &str, outcome: &str, seconds: f64) {
        self.koodrive_requests
            .get_or_create(&CallLabels {
                call: call.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.koodrive_request_duration
            .get_or_create(&CallOnly {
                call: call.to_string(),
            })
            .observe(seconds);
    }

    /// One reconcile ended: `success`, `error`, `stalled` or `in_doubt`.
    pub fn reconciled(&self, result: &str, seconds: f64) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.reconcile_duration.observe(seconds);
    }

    pub fn reconcile_error(&self, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn users(&self, outcome: &str, n: u64) {
        self.users
            .get_or_create(&UserOutcome {
                outcome: outcome.to_string(),
            })
            .inc_by(n);
    }

    /// What a KooDrive answer said about a credential.
    pub fn credential_verdict(&self, access_key: &str, verdict: AuthVerdict) {
        let labels = CredentialLabels {
            access_key: access_key.to_string(),
        };
        match verdict {
            AuthVerdict::Refused | AuthVerdict::ClockRefused => {
                self.authentication_failures.get_or_create(&labels).inc();
                self.credentials_blocked.get_or_create(&labels).set(1);
            }
            AuthVerdict::Passed => {
                self.credentials_blocked.get_or_create(&labels).set(0);
            }
            AuthVerdict::Unknown => {}
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Moves a UserBatch's gauges from `previous` to `next` (`None`: it is gone).
    pub fn object_state(
        &self,
        key: &Key,
        previous: Option<&ObjectState>,
        next: Option<&ObjectState>,
    ) {
        if previous == next {
            return;
        }
        let condition = |(type_, status, reason): &(String, String, String)| ConditionLabels {
            namespace: key.0.clone(),
            name: key.1.clone(),
            condition: type_.clone(),
            status: status.clone(),
            reason: reason.clone(),
        };
        if let Some(previous) = previous {
            if let Some(phase) = &previous.phase {
                self.userbatches_by_phase
                    .get_or_create(&PhaseLabels {
                        phase: phase.clone(),
                    })
                    .dec();
            }
            for c in &previous.conditions {
                self.userbatch_condition.remove(&condition(c));
            }
        }
        if let Some(next) = next {
            if let Some(phase) = &next.phase {
                self.userbatches_by_phase
                    .get_or_create(&PhaseLabels {
                        phase: phase.clone(),
                    })
                    .inc();
            }
            for c in &next.conditions {
                self.userbatch_condition.get_or_create(&condition(c)).set(1);
            }
        }
    }
}

impl HttpObserver for Metrics {
    fn http_request(&self, call: Call, outcome: HttpOutcome, _elapsed: Duration) {
        self.koodrive_http_requests
            .get_or_create(&CallLabels {
                call: call.label().to_string(),
                outcome: outcome.label().to_string(),
            })
            .inc();
    }
}

/// The standard `process_*` metrics, read from `/proc` on every scrape (Linux; elsewhere
/// they are simply absent).
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    fn stat() -> Option<(f64, f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = 100.0; // USER_HZ, 100 on every Linux the operator targets.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let start_ticks: f64 = fields.get(19)?.parse().ok()?;
        let vsize: f64 = fields.get(20)?.parse().ok()?;
        let rss_pages: f64 = fields.get(21)?.parse().ok()?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        Some((
            (utime + stime) / ticks,
            rss_pages * 4096.0,
            vsize,
            boot + start_ticks / ticks,
        ))
    }

    fn fds() -> Option<(f64, f64)> {
        let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let max = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()?;
        Some((open, max))
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, rss, vsize, start)) = Self::stat() {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
            for (name, help, value) in [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    rss,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    vsize,
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    start,
                ),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some((open, max)) = Self::fds() {
            for (name, help, value) in [
                ("process_open_fds", "Number of open file descriptors", open),
                (
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    max,
                ),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_families_and_process_metrics() {
        let metrics = Metrics::new();
        metrics.reconciled("stalled", 0.1);
        metrics.http_request(Call::Create, HttpOutcome::Throttled, Duration::ZERO);
        metrics.credential_verdict("AK1", AuthVerdict::Refused);
        let key = ("ns".to_string(), "ub".to_string());
        let state = ObjectState {
            phase: Some("Failed".into()),
            conditions: vec![("Ready".into(), "False".into(), "SubmissionInDoubt".into())],
        };
        metrics.object_state(&key, None, Some(&state));
        let text = metrics.render();
        for expected in [
            "koodrive_operator_reconciles_total{result=\"stalled\"} 1",
            "koodrive_operator_koodrive_http_requests_total{call=\"create\",outcome=\"throttled\"} 1",
            "koodrive_operator_authentication_failures_total{access_key=\"AK1\"} 1",
            "koodrive_operator_credentials_blocked{access_key=\"AK1\"} 1",
            "koodrive_operator_userbatch_condition{namespace=\"ns\",name=\"ub\",condition=\"Ready\",status=\"False\",reason=\"SubmissionInDoubt\"} 1",
            "koodrive_operator_build_info{",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(expected), "{expected} missing in:\n{text}");
        }
        // A deleted UserBatch leaves no series behind.
        metrics.object_state(&key, Some(&state), None);
        let text = metrics.render();
        assert!(!text.contains("name=\"ub\""), "{text}");
        assert!(text.contains("koodrive_operator_userbatches{phase=\"Failed\"} 0"));
    }
}
