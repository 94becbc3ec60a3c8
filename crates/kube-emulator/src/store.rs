//! The emulator's storage: every object of every kind in one map, one global
//! `resourceVersion` counter bumped on every write, and a bounded history of watch events so
//! watches can resume from a `resourceVersion` until it is compacted away (then `410 Gone`).

use super::merge::Ownership;
use axum::body::Bytes;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
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

/// One committed version of an object, and its JSON encoding once someone read it.
///
/// Shared, never copied, by the store, the watch history, list snapshots and every watcher:
/// a write of a 100 KB custom resource is encoded at most once, however many GETs, lists
/// and watches serve it (the encoding used to be redone per reader, after a deep clone).
#[derive(Debug)]
pub struct Versioned {
    pub value: Value,
    json: OnceLock<Bytes>,
}

impl Versioned {
    pub fn new(value: Value) -> Arc<Versioned> {
        Arc::new(Versioned {
            value,
            json: OnceLock::new(),
        })
    }

    /// `serde_json::to_vec(&self.value)`, computed on first use.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            // Encoding a `Value` only fails for non-string map keys, which it cannot hold.
            Bytes::from(serde_json::to_vec(&self.value).unwrap_or_default())
        })
    }
}

/// An object and who owns its fields.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub object: Arc<Versioned>,
    pub ownership: Ownership,
}

impl StoredObject {
    pub fn value(&self) -> &Value {
        &self.object.value
    }
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
    pub object: Arc<Versioned>,
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
    pub objects: Arc<Vec<(String, String, Arc<Versioned>)>>,
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
    /// The `resourceVersion` of each kind's latest write (for caches derived from a kind).
    kind_revisions: HashMap<ResourceKey, u64>,
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
            kind_revisions: HashMap::new(),
        }
    }

    /// The `resourceVersion` of the latest write to a kind (0: never written).
    pub fn kind_revision(&self, resource: &ResourceKey) -> u64 {
        self.kind_revisions.get(resource).copied().unwrap_or(0)
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
        self.list_versions(resource, namespace)
            .into_iter()
            .map(|object| &object.value)
            .collect()
    }

    /// [`Store::list`], as the shared versions (to serve their cached encodings).
    pub fn list_versions(
        &self,
        resource: &ResourceKey,
        namespace: Option<&str>,
    ) -> Vec<&Arc<Versioned>> {
        let Some(objects) = self.objects.get(resource) else {
            return Vec::new();
        };
        match namespace {
            // Keys are ordered by namespace first: one range, not a scan of every namespace.
            Some(namespace) => objects
                .range((namespace.to_string(), String::new())..)
                .take_while(|((ns, _), _)| ns == namespace)
                .map(|(_, stored)| &stored.object)
                .collect(),
            None => objects.values().map(|stored| &stored.object).collect(),
        }
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
                    .map(|((ns, name), stored)| (ns.clone(), name.clone(), stored.object.clone()))
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
    ) -> Arc<Versioned> {
        let rv = self.next_resource_version(&mut value);
        let object = Versioned::new(value);
        self.objects.entry(resource.clone()).or_default().insert(
            (namespace.to_string(), name.to_string()),
            StoredObject {
                object: object.clone(),
                ownership,
            },
        );
        self.record(rv, resource, namespace, event, object.clone());
        object
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
    ) -> Arc<Versioned> {
        if let Some(objects) = self.objects.get_mut(resource) {
            objects.remove(&(namespace.to_string(), name.to_string()));
        }
        let rv = self.next_resource_version(&mut final_state);
        let object = Versioned::new(final_state);
        self.record(rv, resource, namespace, EventType::Deleted, object.clone());
        object
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
        object: Arc<Versioned>,
    ) {
        self.kind_revisions.insert(resource.clone(), rv);
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
