//! Discovery documents (`/api`, `/apis`, `/apis/<group>/<version>`): what kubectl reads to
//! map kinds and short names (`ub`) to REST paths.

use super::resources::{self, CRD_GROUP, CRD_PLURAL, ResourceDef};
use super::store::ResourceKey;
use super::{Shared, lock};
use serde_json::{Value, json};

/// Every resource type currently served: the built-ins and one per stored CRD.
pub(super) fn served_resources(shared: &Shared) -> Vec<ResourceDef> {
    let mut defs = resources::builtins();
    let crds = ResourceKey {
        group: CRD_GROUP.into(),
        plural: CRD_PLURAL.into(),
    };
    let store = lock(&shared.store);
    defs.extend(
        store
            .list(&crds, None)
            .into_iter()
            .filter_map(ResourceDef::from_crd),
    );
    defs
}

pub(super) fn group_list(shared: &Shared) -> Value {
    let mut groups: Vec<String> = Vec::new();
    for def in served_resources(shared) {
        if !def.group.is_empty() && !groups.contains(&def.group) {
            groups.push(def.group.clone());
        }
    }
    let docs: Vec<Value> = groups
        .iter()
        .filter_map(|g| group_document(shared, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": docs})
}

pub(super) fn group_document(shared: &Shared, group: &str) -> Option<Value> {
    let mut versions: Vec<String> = Vec::new();
    for def in served_resources(shared)
        .into_iter()
        .filter(|d| d.group == group)
    {
        for v in def.versions {
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
    }
    let first = versions.first()?.clone();
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": {"groupVersion": format!("{group}/{first}"), "version": first},
    }))
}

pub(super) fn resource_list(shared: &Shared, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<ResourceDef> = served_resources(shared)
        .into_iter()
        .filter(|d| d.group == group && d.versions.iter().any(|v| v == version))
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut entries = Vec::new();
    for def in &defs {
        let mut entry = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        });
        if !def.short_names.is_empty() {
            entry["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            entry["categories"] = json!(def.categories);
        }
        entries.push(entry);
        if def.has_status {
            entries.push(json!({
                "name": format!("{}/status", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}),
    )
}
