//! Kubernetes Events about UserBatches and accounts (`events.k8s.io/v1`).
//!
//! Written here rather than with kube-runtime's `Recorder` for two reasons: the Recorder
//! folds Events with the same reason into one series, so a UserBatch's second task ID and
//! trace ID appeared in no Event; and it scans its whole cache on every publish, which
//! made it a tenth of the operator's CPU with thousands of UserBatches. Each Event here is
//! its own object; an Event identical to one published in the last minutes (same object,
//! reason and note — a repeated warning) is not published again, which also spares the API
//! server.

use super::plan::{PlannedEvent, Severity};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an identical Event is not repeated.
const REPEAT_AFTER: Duration = Duration::from_secs(10 * 60);
/// Most remembered Events; older ones are forgotten first.
const REMEMBERED: usize = 10_000;
/// The API server's limit on `note`.
const MAX_NOTE_BYTES: usize = 1024;

/// Publishes Events as one controller instance.
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<HashMap<u64, Instant>>,
}

impl Publisher {
    pub fn new(client: Client, controller: &str, instance: &str) -> Publisher {
        Publisher {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `event` about `regarding`. Best effort: a lost Event must not stop
    /// provisioning, so failures are logged, not returned.
    pub async fn publish(&self, regarding: &ObjectReference, event: &PlannedEvent) {
        if !self.first_in_a_while(regarding, event) {
            return;
        }
        // An Event about a cluster-scoped object (a ClusterKooDriveAccount) lives in
        // `default`, as the API server requires and `kubectl describe` looks for it.
        let namespace = regarding
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let object = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:016x}",
                    regarding.name.as_deref().unwrap_or("userbatch"),
                    rand::random::<u64>()
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            action: Some(event.action.to_string()),
            reason: Some(event.reason.to_string()),
            note: Some(super::plan::bounded(&event.note, MAX_NOTE_BYTES)),
            type_: Some(
                match event.severity {
                    Severity::Normal => "Normal",
                    Severity::Warning => "Warning",
                }
                .to_string(),
            ),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        if let Err(err) = api.create(&PostParams::default(), &object).await {
            tracing::warn!(
                error = %crate::report::chain(&err),
                reason = %event.reason,
                "cannot publish Event"
            );
            self.forget(regarding, event);
        }
    }

    fn key(regarding: &ObjectReference, event: &PlannedEvent) -> u64 {
        let mut hasher = DefaultHasher::new();
        regarding.uid.hash(&mut hasher);
        regarding.name.hash(&mut hasher);
        event.reason.as_str().hash(&mut hasher);
        event.note.hash(&mut hasher);
        hasher.finish()
    }

    /// Whether this Event was not published recently (and remembers that it is now).
    fn first_in_a_while(&self, regarding: &ObjectReference, event: &PlannedEvent) -> bool {
        let key = Self::key(regarding, event);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if recent
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REPEAT_AFTER)
        {
            return false;
        }
        if recent.len() >= REMEMBERED {
            recent.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        }
        recent.insert(key, now);
        true
    }

    fn forget(&self, regarding: &ObjectReference, event: &PlannedEvent) {
        let key = Self::key(regarding, event);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.remove(&key);
    }
}
