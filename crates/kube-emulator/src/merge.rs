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

/// Leaf field paths owned by each field manager of one object. A manager writing through the
/// `status` subresource is a separate entry, as in real `managedFields`.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    owners: BTreeMap<ManagerKey, BTreeSet<String>>,
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
        owners.insert(manager, managed_leaves(object, def).into_keys().collect());
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
            fields.retain(|p| !applied.contains(p));
        }
        let orphaned: BTreeSet<String> = previously
            .difference(&applied)
            .filter(|p| !self.owners.values().any(|f| f.contains(*p)))
            .cloned()
            .collect();
        remove_leaves(live, &orphaned, def);
        apply_merge(live, config, def);
        self.owners.insert(manager, applied);
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
        let before = managed_leaves(old, def);
        let after = managed_leaves(new, def);
        let all: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let changed: Vec<String> = all
            .into_iter()
            .filter(|p| before.get(*p) != after.get(*p))
            .cloned()
            .collect();
        for fields in self.owners.values_mut() {
            for p in &changed {
                fields.remove(p);
            }
        }
        let mine = self.owners.entry(manager).or_default();
        for p in changed {
            if after.contains_key(&p) {
                mine.insert(p);
            }
        }
        self.owners.retain(|_, f| !f.is_empty());
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
