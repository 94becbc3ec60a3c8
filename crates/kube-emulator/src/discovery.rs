//! Discovery documents (`/api`, `/apis`, `/apis/<group>/<version>`): what kubectl reads to
//! map kinds and short names (`ub`) to REST paths; and a minimal OpenAPI v3 so that
//! `kubectl apply` works without `--validate=false`.

use super::resources::{self, CRD_GROUP, CRD_PLURAL, ResourceDef};
use super::store::ResourceKey;
use super::{Shared, lock};
use serde_json::{Value, json};
use std::sync::Arc;

/// Every resource type currently served: the built-ins and one per stored CRD.
pub(super) fn served_resources(shared: &Shared) -> Vec<ResourceDef> {
    served(shared).to_vec()
}

/// The resource type a request names, if served.
pub(super) fn served_resource(
    shared: &Shared,
    group: &str,
    plural: &str,
    version: &str,
) -> Option<ResourceDef> {
    served(shared)
        .iter()
        .find(|d| d.group == group && d.plural == plural && d.versions.iter().any(|v| v == version))
        .cloned()
}

/// The served types, rebuilt only when a CRD was written: every request looks its type up,
/// and reading the CRDs (their schemas included) per request was measurable.
fn served(shared: &Shared) -> Arc<Vec<ResourceDef>> {
    let crds = ResourceKey {
        group: CRD_GROUP.into(),
        plural: CRD_PLURAL.into(),
    };
    let store = lock(&shared.store);
    let revision = store.kind_revision(&crds);
    let mut cache = lock(&shared.served);
    if let Some((cached_revision, defs)) = cache.as_ref()
        && *cached_revision == revision
    {
        return defs.clone();
    }
    let mut defs = resources::builtins();
    defs.extend(
        store
            .list(&crds, None)
            .into_iter()
            .filter_map(ResourceDef::from_crd),
    );
    let defs = Arc::new(defs);
    *cache = Some((revision, defs.clone()));
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

/// The OpenAPI path of a group version: `api/v1`, `apis/<group>/<version>`.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group version.
pub(super) fn openapi_root(shared: &Shared) -> Value {
    let mut paths = serde_json::Map::new();
    for def in served_resources(shared) {
        for version in &def.versions {
            let path = openapi_path(&def.group, version);
            let url = format!("/openapi/v3/{path}");
            paths.insert(path, json!({"serverRelativeURL": url}));
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<group version path>`: a schema per kind. Admission is the emulator's job
/// (and the validator's), so the schemas accept any object and kubectl's client-side
/// validation only checks that the kind exists.
pub(super) fn openapi_group_version(shared: &Shared, path: &str) -> Option<Value> {
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for def in served_resources(shared) {
        for version in &def.versions {
            if openapi_path(&def.group, version) != path {
                continue;
            }
            // kubectl looks for `fieldValidation` on an operation of the kind to decide that
            // the server validates fields itself (then it needs no schema of its own).
            let gvk = json!({"group": def.group, "version": version, "kind": def.kind});
            let operation = json!({
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            });
            let namespace = if def.namespaced {
                "/namespaces/{namespace}"
            } else {
                ""
            };
            let collection = format!("/{path}{namespace}/{}", def.plural);
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({"patch": operation.clone(), "put": operation.clone()}),
            );
            paths.insert(collection, json!({"post": operation}));
            let group_prefix = if def.group.is_empty() {
                "core"
            } else {
                def.group.as_str()
            };
            schemas.insert(
                format!("{group_prefix}.{version}.{}", def.kind),
                json!({
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "x-kubernetes-group-version-kind": [
                        {"group": def.group, "version": version, "kind": def.kind}
                    ],
                }),
            );
        }
    }
    if schemas.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "koodrive-operator API emulator", "version": "v1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
