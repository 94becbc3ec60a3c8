//! Server-side apply, simplified: merge an applied configuration into the live object (lists
//! declared as list-maps in the schema merge item by item, other lists are atomic), and track
//! which field manager owns which leaf field so that an apply touching another manager's field
//! with a different value is a conflict unless forced.
//!
//! Ownership is kept per leaf path only (no managedFields in responses); that is enough for
//! the two things clients rely on: Lease-based leader election (apply conflicts) and an
//! applier removing fields it stopped applying.

use super::resources::ResourceDef;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Leaf field paths owned by each field manager of one object. A manager writing through the
/// `status` subresource is a separate entry, as in real `managedFields`.
///
/// Each manager's set is shared until it changes: a write copies the object's ownership,
/// and a 1000-user custom resource has thousands of owned paths that a status write leaves
/// alone.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    owners: BTreeMap<ManagerKey, Arc<BTreeSet<String>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManagerKey {
    pub manager: String,
    pub status: bool,
}

/// The fields an apply would take from other managers without `force`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.0.len() == 1 { "" } else { "s" };
        write!(f, "Apply failed with {} conflict{plural}:", self.0.len())?;
        for (manager, path) in &self.0 {
            write!(f, " conflict with \"{manager}\": .{path};")?;
        }
        Ok(())
    }
}

/// Leaf path → value for the fields of `object` that managers can own: everything but
/// `apiVersion`, `kind` and the server-maintained parts of `metadata`.
pub fn managed_leaves(object: &Value, def: &ResourceDef) -> BTreeMap<String, Value> {
    let mut view = object.clone();
    if let Some(map) = view.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
    }
    let mut out = BTreeMap::new();
    leaves(&view, "", "", def, &mut out);
    out
}

fn child_path(path: &str, key: &str) -> String {
    let key = if key.contains(['.', '[', ']']) {
        format!("[\"{key}\"]")
    } else {
        key.to_string()
    };
    if path.is_empty() {
        key
    } else if key.starts_with('[') {
        format!("{path}{key}")
    } else {
        format!("{path}.{key}")
    }
}

fn child_schema_path(schema_path: &str, key: &str) -> String {
    if schema_path.is_empty() {
        key.to_string()
    } else {
        format!("{schema_path}.{key}")
    }
}

fn item_path(path: &str, item: &Value, keys: &[String]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{k}={}", item.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    format!("{path}[{}]", parts.join(","))
}

fn same_keys(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter().all(|k| a.get(k) == b.get(k))
}

fn leaves(
    value: &Value,
    path: &str,
    schema_path: &str,
    def: &ResourceDef,
    out: &mut BTreeMap<String, Value>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(
                    v,
                    &child_path(path, k),
                    &child_schema_path(schema_path, k),
                    def,
                    out,
                );
            }
        }
        Value::Array(items) if def.list_keys(schema_path).is_some() => {
            let keys = def.list_keys(schema_path).unwrap_or_default();
            let item_schema = format!("{schema_path}[]");
            for item in items {
                leaves(item, &item_path(path, item, keys), &item_schema, def, out);
            }
        }
        other => {
            out.insert(path.to_string(), other.clone());
        }
    }
}

/// Merges `config` into `live` the way server-side apply does: maps recursively, list-maps
/// by key, everything else replaced. `null` in the configuration removes the field.
pub fn apply_merge(live: &mut Value, config: &Value, def: &ResourceDef) {
    merge_at(live, config, "", def);
}

fn merge_at(live: &mut Value, config: &Value, schema_path: &str, def: &ResourceDef) {
    match (live, config) {
        (Value::Object(live_map), Value::Object(config_map)) => {
            for (k, v) in config_map {
                let sub = child_schema_path(schema_path, k);
                if v.is_null() {
                    live_map.remove(k);
                    continue;
                }
                match live_map.get_mut(k) {
                    Some(existing) => merge_at(existing, v, &sub, def),
                    None => {
                        live_map.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(live_items), Value::Array(config_items))
            if def.list_keys(schema_path).is_some() =>
        {
            let keys = def.list_keys(schema_path).unwrap_or_default();
            let item_schema = format!("{schema_path}[]");
            for item in config_items {
                match live_items.iter_mut().find(|l| same_keys(l, item, keys)) {
                    Some(existing) => merge_at(existing, item, &item_schema, def),
                    None => live_items.push(item.clone()),
                }
            }
        }
        (live, config) => *live = config.clone(),
    }
}

/// Removes the fields at the given leaf paths; list-map items losing their key and maps left
/// empty by the removal go too.
pub fn remove_leaves(live: &mut Value, paths: &BTreeSet<String>, def: &ResourceDef) {
    if !paths.is_empty() {
        remove_at(live, "", "", paths, def);
    }
}

fn remove_at(
    value: &mut Value,
    path: &str,
    schema_path: &str,
    paths: &BTreeSet<String>,
    def: &ResourceDef,
) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let p = child_path(path, &k);
                if paths.contains(&p) {
                    map.remove(&k);
                    continue;
                }
                if let Some(child) = map.get_mut(&k) {
                    let was_empty = is_empty_container(child);
                    remove_at(child, &p, &child_schema_path(schema_path, &k), paths, def);
                    if !was_empty && is_empty_container(child) && child.is_object() {
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(keys) = def.list_keys(schema_path).map(<[String]>::to_vec) {
                let item_schema = format!("{schema_path}[]");
                for item in items.iter_mut() {
                    let ip = item_path(path, item, &keys);
                    remove_at(item, &ip, &item_schema, paths, def);
                }
                items.retain(|item| keys.iter().all(|k| item.get(k).is_some()));
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl Ownership {
    /// Everything in `object` owned by `manager`, as after a create.
    pub fn owned_by(manager: ManagerKey, object: &Value, def: &ResourceDef) -> Ownership {
        let mut owners = BTreeMap::new();
        owners.insert(
            manager,
            Arc::new(managed_leaves(object, def).into_keys().collect()),
        );
        Ownership { owners }
    }

    /// Fields of `config` other managers own with a different live value.
    pub fn apply_conflicts(
        &self,
        manager: &ManagerKey,
        live: &Value,
        config: &Value,
        def: &ResourceDef,
    ) -> Conflicts {
        let live_leaves = managed_leaves(live, def);
        let mut conflicts = Vec::new();
        for (path, value) in managed_leaves(config, def) {
            if live_leaves.get(&path) == Some(&value) {
                continue;
            }
            for (other, fields) in &self.owners {
                if other.manager != manager.manager && fields.contains(&path) {
                    conflicts.push((other.manager.clone(), path.clone()));
                }
            }
        }
        Conflicts(conflicts)
    }

    /// Applies `config` for `manager` onto `live`: merge, drop fields the manager no longer
    /// applies (unless someone else owns them), and take ownership of every applied field.
    pub fn apply(
        &mut self,
        manager: ManagerKey,
        live: &mut Value,
        config: &Value,
        def: &ResourceDef,
    ) {
        let applied: BTreeSet<String> = managed_leaves(config, def).into_keys().collect();
        let previously = self.owners.remove(&manager).unwrap_or_default();
        for fields in self.owners.values_mut() {
            if fields.iter().any(|p| applied.contains(p)) {
                Arc::make_mut(fields).retain(|p| !applied.contains(p));
            }
        }
        let orphaned: BTreeSet<String> = previously
            .difference(&applied)
            .filter(|p| !self.owners.values().any(|f| f.contains(*p)))
            .cloned()
            .collect();
        remove_leaves(live, &orphaned, def);
        apply_merge(live, config, def);
        self.owners.insert(manager, Arc::new(applied));
        self.owners.retain(|_, f| !f.is_empty());
    }

    /// Records a non-apply write by `manager`: it owns what it changed, others lose it.
    pub fn record_update(
        &mut self,
        manager: ManagerKey,
        old: &Value,
        new: &Value,
        def: &ResourceDef,
    ) {
        let changed = changed_leaves(old, new, def);
        if changed.is_empty() {
            return;
        }
        for fields in self.owners.values_mut() {
            if changed.iter().any(|(p, _)| fields.contains(p)) {
                let fields = Arc::make_mut(fields);
                for (p, _) in &changed {
                    fields.remove(p);
                }
            }
        }
        let mine = Arc::make_mut(self.owners.entry(manager).or_default());
        for (p, present) in changed {
            if present {
                mine.insert(p);
            }
        }
        self.owners.retain(|_, f| !f.is_empty());
    }
}

/// The managed leaf paths whose values differ between `old` and `new`, each with whether it
/// is present in `new`: exactly the paths where [`managed_leaves`] of the two disagree.
///
/// Walks both objects together and skips every subtree that is equal in both, so a status
/// write to a custom resource with a thousand users compares the spec once instead of
/// listing its thousands of leaves twice. Where the two sides are not the same kind of
/// container, it lists the leaves of just that subtree and compares them.
pub fn changed_leaves(old: &Value, new: &Value, def: &ResourceDef) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    // `managed_leaves` works on a view without apiVersion and kind, whose metadata holds
    // only the owned keys; an empty view is itself one leaf, which the fallback handles.
    let view_keys = |object: &serde_json::Map<String, Value>| {
        object
            .keys()
            .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind"))
            .count()
    };
    match (old.as_object(), new.as_object()) {
        (Some(o), Some(n)) if view_keys(o) > 0 && view_keys(n) > 0 => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for key in keys {
                match key.as_str() {
                    "apiVersion" | "kind" => {}
                    "metadata" => {
                        let owned = |object: &serde_json::Map<String, Value>| {
                            object.get("metadata").map(owned_metadata)
                        };
                        diff_at(
                            owned(o).as_ref(),
                            owned(n).as_ref(),
                            &child_path("", key),
                            key,
                            def,
                            &mut out,
                        );
                    }
                    _ => diff_at(
                        o.get(key),
                        n.get(key),
                        &child_path("", key),
                        key,
                        def,
                        &mut out,
                    ),
                }
            }
        }
        _ => diff_leaf_maps(managed_leaves(old, def), managed_leaves(new, def), &mut out),
    }
    out
}

/// The part of `metadata` field managers own (what [`managed_leaves`] keeps of it).
fn owned_metadata(metadata: &Value) -> Value {
    match metadata.as_object() {
        Some(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    )
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => metadata.clone(),
    }
}

fn diff_leaf_maps(
    before: BTreeMap<String, Value>,
    mut after: BTreeMap<String, Value>,
    out: &mut Vec<(String, bool)>,
) {
    for (path, value) in before {
        match after.remove(&path) {
            Some(now) if now == value => {}
            Some(_) => out.push((path, true)),
            None => out.push((path, false)),
        }
    }
    out.extend(after.into_keys().map(|path| (path, true)));
}

/// The leaves of one subtree at `path`, as [`leaves`] lists them; none when absent.
fn subtree_leaves(
    value: Option<&Value>,
    path: &str,
    schema_path: &str,
    def: &ResourceDef,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(value) = value {
        leaves(value, path, schema_path, def, &mut out);
    }
    out
}

/// List-map items by their path (`users[phone="1"]`); `None` when two items share a key, so
/// that the caller falls back to listing leaves, which merges them as `leaves` does.
fn items_by_path<'a>(
    items: &'a [Value],
    path: &str,
    keys: &[String],
) -> Option<BTreeMap<String, &'a Value>> {
    let mut by_path = BTreeMap::new();
    for item in items {
        if by_path.insert(item_path(path, item, keys), item).is_some() {
            return None;
        }
    }
    Some(by_path)
}

fn diff_at(
    old: Option<&Value>,
    new: Option<&Value>,
    path: &str,
    schema_path: &str,
    def: &ResourceDef,
    out: &mut Vec<(String, bool)>,
) {
    if old == new {
        return;
    }
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) if !o.is_empty() && !n.is_empty() => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for key in keys {
                diff_at(
                    o.get(key),
                    n.get(key),
                    &child_path(path, key),
                    &child_schema_path(schema_path, key),
                    def,
                    out,
                );
            }
        }
        (Some(Value::Array(o)), Some(Value::Array(n))) if def.list_keys(schema_path).is_some() => {
            let keys = def.list_keys(schema_path).unwrap_or_default();
            let item_schema = format!("{schema_path}[]");
            match (items_by_path(o, path, keys), items_by_path(n, path, keys)) {
                (Some(o), Some(n)) => {
                    let paths: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
                    for item in paths {
                        diff_at(
                            o.get(item).copied(),
                            n.get(item).copied(),
                            item,
                            &item_schema,
                            def,
                            out,
                        );
                    }
                }
                _ => diff_leaf_maps(
                    subtree_leaves(old, path, schema_path, def),
                    subtree_leaves(new, path, schema_path, def),
                    out,
                ),
            }
        }
        _ => diff_leaf_maps(
            subtree_leaves(old, path, schema_path, def),
            subtree_leaves(new, path, schema_path, def),
            out,
        ),
    }
}

/// Drops strategic-merge-patch directives (`$patch`, `$setElementOrder/...`, `$retainKeys`):
/// strategic merge is served as a JSON merge patch.
pub fn strip_directives(patch: &mut Value) {
    match patch {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            for v in map.values_mut() {
                strip_directives(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def() -> ResourceDef {
        let mut def = super::super::resources::builtins().remove(0);
        def.list_map_keys = vec![("spec.users".into(), vec!["phone".into()])];
        def
    }

    #[test]
    fn apply_merges_list_maps_by_key_and_replaces_atomic_lists() {
        let def = def();
        let mut live =
            json!({"spec": {"users": [{"phone": "1", "firstname": "A"}], "tags": ["x"]}});
        let config = json!({"spec": {"users": [{"phone": "2", "firstname": "B"}, {"phone": "1", "surname": "L"}], "tags": ["y"]}});
        apply_merge(&mut live, &config, &def);
        assert_eq!(
            live,
            json!({"spec": {"users": [{"phone": "1", "firstname": "A", "surname": "L"}, {"phone": "2", "firstname": "B"}], "tags": ["y"]}})
        );
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_values_match() {
        let def = def();
        let a = ManagerKey {
            manager: "a".into(),
            status: false,
        };
        let b = ManagerKey {
            manager: "b".into(),
            status: false,
        };
        let mut live = json!({});
        let mut owners = Ownership::default();
        owners.apply(a, &mut live, &json!({"spec": {"holder": "a"}}), &def);
        let same = owners.apply_conflicts(&b, &live, &json!({"spec": {"holder": "a"}}), &def);
        assert!(same.0.is_empty());
        let different = owners.apply_conflicts(&b, &live, &json!({"spec": {"holder": "b"}}), &def);
        assert_eq!(
            different.0,
            vec![("a".to_string(), "spec.holder".to_string())]
        );
    }

    /// What `record_update` used to compute: every leaf of both sides, compared.
    fn brute_force_changes(old: &Value, new: &Value, def: &ResourceDef) -> Vec<(String, bool)> {
        let before = managed_leaves(old, def);
        let after = managed_leaves(new, def);
        let all: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        all.into_iter()
            .filter(|p| before.get(*p) != after.get(*p))
            .map(|p| (p.clone(), after.contains_key(p)))
            .collect()
    }

    #[test]
    fn changed_leaves_agree_with_comparing_every_leaf() {
        let def = def();
        let objects = [
            json!({}),
            json!({"apiVersion": "v1", "kind": "X"}),
            json!({"kind": "X", "metadata": {"name": "a", "labels": {"l": "1"}}}),
            json!({"kind": "X", "metadata": {"name": "b", "labels": {"l": "2"}, "resourceVersion": "9"}}),
            json!({"metadata": {"annotations": {}}, "spec": {}}),
            json!({"metadata": "odd", "spec": []}),
            json!({"spec": {"users": [{"phone": "1", "firstname": "A"}, {"phone": "2"}], "tags": ["x"]}}),
            json!({"spec": {"users": [{"phone": "2"}, {"phone": "1", "firstname": "B"}], "tags": ["x"]}}),
            json!({"spec": {"users": [{"phone": "1", "a": 1}, {"phone": "1", "b": 2}]}}),
            json!({"spec": {"users": [{"phone": "1", "a": 1}]}, "status": {"phase": "Ready"}}),
            json!({"spec": {"users": [{}], "a.b": {"c": 1}}, "status": {"phase": "Done", "n": [1]}}),
            json!({"spec": {"users": "none", "a.b": {"c": 2}}, "status": null}),
            json!({"spec": {"users": [], "e": {}}, "status": {"phase": {"x": 1}}}),
            json!([1, 2]),
            json!("text"),
        ];
        for old in &objects {
            for new in &objects {
                let mut fast = changed_leaves(old, new, &def);
                fast.sort();
                let mut slow = brute_force_changes(old, new, &def);
                slow.sort();
                assert_eq!(fast, slow, "{old} -> {new}");
            }
        }
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let def = def();
        let a = ManagerKey {
            manager: "a".into(),
            status: false,
        };
        let mut live = json!({});
        let mut owners = Ownership::default();
        let first = json!({"spec": {"users": [{"phone": "1", "firstname": "A"}, {"phone": "2", "firstname": "B"}]}});
        owners.apply(a.clone(), &mut live, &first, &def);
        owners.apply(
            a,
            &mut live,
            &json!({"spec": {"users": [{"phone": "2", "firstname": "B"}]}}),
            &def,
        );
        assert_eq!(
            live,
            json!({"spec": {"users": [{"phone": "2", "firstname": "B"}]}})
        );
    }
}
