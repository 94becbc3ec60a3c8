//! The emulator's storage: every object of every kind in one map, one global
//! `resourceVersion` counter bumped on every write, and a bounded history of watch events so
//! watches can resume from a `resourceVersion` until it is compacted away (then `410 Gone`).

use super::merge::Ownership;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many events a slow watcher may fall behind before its stream is closed (it resumes
/// from its last `resourceVersion`, as after any dropped watch).
const WATCH_FANOUT_CAPACITY: usize = 4096;

/// Identifies a resource type in storage. Objects are stored once per group and plural,
/// whatever version they are read through.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub group: String,
    pub plural: String,
}

/// An object and who owns its fields.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub value: Value,
    pub ownership: Ownership,
}

/// What a watch event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed write, as replayed to watchers.
#[derive(Debug, Clone)]
pub struct WatchRecord {
    pub resource_version: u64,
    pub resource: ResourceKey,
    pub namespace: String,
    pub event: EventType,
    pub object: Value,
}

/// Why a watch could not start where the client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub requested: u64,
    pub oldest_available: u64,
}

/// Where a resumed watch starts: the retained events it missed, then the live feed.
pub struct WatchStart {
    pub replay: Vec<Arc<WatchRecord>>,
    pub feed: broadcast::Receiver<Arc<WatchRecord>>,
}

/// Every object of one kind at one `resourceVersion`, kept for the later pages of a list.
#[derive(Debug, Clone)]
pub struct ListSnapshot {
    pub resource_version: u64,
    /// (namespace, name, object), in key order.
    pub objects: Arc<Vec<(String, String, Value)>>,
}

/// Paginated lists in progress; the oldest snapshot goes first beyond this.
const MAX_LIST_SNAPSHOTS: usize = 32;

pub struct Store {
    objects: BTreeMap<ResourceKey, BTreeMap<(String, String), StoredObject>>,
    snapshots: VecDeque<(ResourceKey, ListSnapshot)>,
    resource_version: u64,
    history: VecDeque<Arc<WatchRecord>>,
    history_limit: usize,
    /// Events at or below this version were dropped from the history.
    compacted_through: u64,
    fanout: broadcast::Sender<Arc<WatchRecord>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        let (fanout, _) = broadcast::channel(WATCH_FANOUT_CAPACITY);
        Store {
            objects: BTreeMap::new(),
            snapshots: VecDeque::new(),
            resource_version: 0,
            history: VecDeque::new(),
            history_limit,
            compacted_through: 0,
            fanout,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(
        &self,
        resource: &ResourceKey,
        namespace: &str,
        name: &str,
    ) -> Option<&StoredObject> {
        self.objects
            .get(resource)
            .and_then(|objects| objects.get(&(namespace.to_string(), name.to_string())))
    }

    /// Objects of one kind, ordered by namespace then name; all namespaces when `None`.
    pub fn list(&self, resource: &ResourceKey, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(resource)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .map(|(_, stored)| &stored.value)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keeps the current objects of a kind for the later pages of a list.
    pub fn take_snapshot(&mut self, resource: &ResourceKey) -> ListSnapshot {
        let rv = self.resource_version;
        if let Some((_, existing)) = self
            .snapshots
            .iter()
            .find(|(key, s)| key == resource && s.resource_version == rv)
        {
            return existing.clone();
        }
        let objects = self
            .objects
            .get(resource)
            .map(|objects| {
                objects
                    .iter()
                    .map(|((ns, name), stored)| (ns.clone(), name.clone(), stored.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let snapshot = ListSnapshot {
            resource_version: rv,
            objects: Arc::new(objects),
        };
        if self.snapshots.len() == MAX_LIST_SNAPSHOTS {
            self.snapshots.pop_front();
        }
        self.snapshots
            .push_back((resource.clone(), snapshot.clone()));
        snapshot
    }

    /// The snapshot a continue token refers to, unless its revision was compacted away
    /// (the same window watches resume within) or it was evicted.
    pub fn snapshot(&self, resource: &ResourceKey, rv: u64) -> Option<ListSnapshot> {
        if rv < self.compacted_through {
            return None;
        }
        self.snapshots
            .iter()
            .find(|(key, s)| key == resource && s.resource_version == rv)
            .map(|(_, s)| s.clone())
    }

    /// Forgets a snapshot once its last page was served.
    pub fn release_snapshot(&mut self, resource: &ResourceKey, rv: u64) {
        self.snapshots
            .retain(|(key, s)| !(key == resource && s.resource_version == rv));
    }

    /// Stores `value` under a fresh `resourceVersion` and tells watchers. Returns the stored
    /// object.
    pub fn put(
        &mut self,
        resource: &ResourceKey,
        namespace: &str,
        name: &str,
        mut value: Value,
        ownership: Ownership,
        event: EventType,
    ) -> Value {
        let rv = self.next_resource_version(&mut value);
        self.objects.entry(resource.clone()).or_default().insert(
            (namespace.to_string(), name.to_string()),
            StoredObject {
                value: value.clone(),
                ownership,
            },
        );
        self.record(rv, resource, namespace, event, value.clone());
        value
    }

    /// Records new field ownership for an unchanged object: ownership is not part of what
    /// clients read, so it neither bumps `resourceVersion` nor wakes watchers.
    pub fn set_ownership(
        &mut self,
        resource: &ResourceKey,
        namespace: &str,
        name: &str,
        ownership: Ownership,
    ) {
        if let Some(stored) = self
            .objects
            .get_mut(resource)
            .and_then(|objects| objects.get_mut(&(namespace.to_string(), name.to_string())))
        {
            stored.ownership = ownership;
        }
    }

    /// Removes the object; watchers see `final_state` under a fresh `resourceVersion`.
    pub fn remove(
        &mut self,
        resource: &ResourceKey,
        namespace: &str,
        name: &str,
        mut final_state: Value,
    ) -> Value {
        if let Some(objects) = self.objects.get_mut(resource) {
            objects.remove(&(namespace.to_string(), name.to_string()));
        }
        let rv = self.next_resource_version(&mut final_state);
        self.record(
            rv,
            resource,
            namespace,
            EventType::Deleted,
            final_state.clone(),
        );
        final_state
    }

    fn next_resource_version(&mut self, value: &mut Value) -> u64 {
        self.resource_version += 1;
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::String(self.resource_version.to_string()),
            );
        }
        self.resource_version
    }

    fn record(
        &mut self,
        rv: u64,
        resource: &ResourceKey,
        namespace: &str,
        event: EventType,
        object: Value,
    ) {
        let record = Arc::new(WatchRecord {
            resource_version: rv,
            resource: resource.clone(),
            namespace: namespace.to_string(),
            event,
            object,
        });
        self.history.push_back(record.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.resource_version;
            }
        }
        // No receivers is normal (nobody watching); nothing to do then.
        let _ = self.fanout.send(record);
    }

    /// Events after `since` still in the history, plus a live feed of later ones. Taken under
    /// the same lock as writes, so nothing falls between the replay and the feed.
    pub fn watch_from(&self, since: u64) -> Result<WatchStart, Expired> {
        if since < self.compacted_through {
            return Err(Expired {
                requested: since,
                oldest_available: self.compacted_through,
            });
        }
        let replay = self
            .history
            .iter()
            .filter(|r| r.resource_version > since)
            .cloned()
            .collect();
        Ok(WatchStart {
            replay,
            feed: self.fanout.subscribe(),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchRecord>> {
        self.fanout.subscribe()
    }
}
