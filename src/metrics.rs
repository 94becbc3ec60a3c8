//! Prometheus metrics (SPEC §8), rendered in the OpenMetrics text format on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `create` or `get`.
    pub call: String,
    /// `success`, `transient`, `authentication`, `rejected`, `invalid`, `in_doubt`.
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
    /// `submitted`, `succeeded`, `failed`, `skipped`.
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub koodrive_requests: Family<CallLabels, Counter>,
    pub koodrive_request_duration: Family<CallOnly, Histogram>,
    pub users: Family<UserOutcome, Counter>,
    pub userbatches_by_phase: Family<PhaseLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("koodrive_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "UserBatch reconciles by result",
            reconciles.clone(),
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
            "KooDrive API calls by call and outcome",
            koodrive_requests.clone(),
        );
        let koodrive_request_duration = Family::<CallOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "koodrive_request_duration_seconds",
            "Duration of KooDrive API calls, retries included",
            koodrive_request_duration.clone(),
        );
        let users = Family::<UserOutcome, Counter>::default();
        registry.register(
            "users",
            "Users by outcome (submitted, succeeded, failed, skipped)",
            users.clone(),
        );
        let userbatches_by_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "userbatches",
            "UserBatches by phase, as last reconciled by this process",
            userbatches_by_phase.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            koodrive_requests,
            koodrive_request_duration,
            users,
            userbatches_by_phase,
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

    pub fn reconciled(&self, success: bool, seconds: f64) {
        let result = if success { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.reconcile_duration.observe(seconds);
    }

    pub fn users(&self, outcome: &str, n: u64) {
        self.users
            .get_or_create(&UserOutcome {
                outcome: outcome.to_string(),
            })
            .inc_by(n);
    }
}
