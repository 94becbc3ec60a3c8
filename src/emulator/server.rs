//! The HTTP side of the emulator: routing of the Kubernetes REST paths, discovery documents,
//! and the verbs (get, list, watch, create, update, patch, delete) with API server semantics.

use super::error::{ApiError, Cause};
use super::merge::{self, ManagerKey, Ownership};
use super::resources::{self, CRD_GROUP, CRD_PLURAL, ResourceDef};
use super::selectors::Selector;
use super::store::{EventType, ResourceKey, Store, WatchRecord};
use super::table;
use super::{FaultKind, Shared, event_conversion, lock};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use kube::CustomResourceExt;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How often an idle watch that asked for bookmarks receives one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);
/// What the server claims to be in `/version`.
const EMULATED_MINOR: &str = "33";

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// Stores the UserBatch CRD, as `kubectl apply -f crds/` would have.
pub fn install_userbatch_crd(shared: &Shared) -> Result<(), ApiError> {
    let crd = serde_json::to_value(crate::crd::UserBatch::crd())
        .map_err(|e| ApiError::for_code(500, format!("cannot serialise the UserBatch CRD: {e}")))?;
    let def = resources::builtins()
        .into_iter()
        .find(|d| d.plural == CRD_PLURAL)
        .ok_or_else(|| ApiError::for_code(500, "the CRD resource is not registered"))?;
    let ctx = Ctx {
        shared,
        def,
        version: "v1".into(),
        namespace: String::new(),
    };
    let mut store = lock(&shared.store);
    ctx.create_locked(&mut store, crd, None, "emulator", false)
        .map(|_| ())
}

/// Query parameters, last value wins.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    GroupVersion { group: String, version: String },
    Resource(ResourcePath),
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_route(path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["api", version] => Route::GroupVersion {
            group: String::new(),
            version: version.to_string(),
        },
        ["api", version, rest @ ..] => resource_route("", version, rest),
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["apis", group, version] => Route::GroupVersion {
            group: group.to_string(),
            version: version.to_string(),
        },
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => Route::Unknown,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        other => (None, other),
    };
    match rest {
        [plural, tail @ ..] if tail.len() <= 2 => Route::Resource(ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            namespace,
            plural: plural.to_string(),
            name: tail.first().map(|s| s.to_string()),
            subresource: tail.get(1).map(|s| s.to_string()),
        }),
        _ => Route::Unknown,
    }
}

fn verb_for(method: &Method, route: &Route, query: &Query) -> &'static str {
    let named = matches!(route, Route::Resource(rp) if rp.name.is_some());
    match *method {
        Method::GET if !matches!(route, Route::Resource(_)) || named => "get",
        Method::GET if query.flag("watch") => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = Query::parse(uri.query());
    let route = parse_route(&path);
    let verb = verb_for(&method, &route, &query);
    let response = match shared.take_fault(verb, &path) {
        Some(FaultKind::Status(code)) => {
            ApiError::for_code(code, format!("fault injected for {verb} {path}")).into_response()
        }
        Some(FaultKind::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            serve(&shared, &method, route, &path, &query, &headers, &body)
        }
        None => serve(&shared, &method, route, &path, &query, &headers, &body),
    };
    shared.log_request(verb, &path, response.status().as_u16());
    response
}

fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    route: Route,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let result = match route {
        Route::Version => Ok(ok_json(json!({
            "major": "1",
            "minor": EMULATED_MINOR,
            "gitVersion": format!("v1.{EMULATED_MINOR}.0-koodrive-emulator"),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "n/a",
            "compiler": "n/a",
            "platform": "linux/amd64",
        }))),
        Route::CoreVersions => Ok(ok_json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.base_url.trim_start_matches("http://")}],
        }))),
        Route::Groups => Ok(ok_json(group_list(shared))),
        Route::Group(group) => group_document(shared, &group)
            .map(ok_json)
            .ok_or_else(|| ApiError::no_route(path)),
        Route::GroupVersion { group, version } => resource_list(shared, &group, &version)
            .map(ok_json)
            .ok_or_else(|| ApiError::no_route(path)),
        Route::Resource(rp) => resource_request(shared, method, rp, path, query, headers, body),
        Route::Unknown => Err(ApiError::no_route(path)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn ok_json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

fn with_status(code: StatusCode, value: Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// Every resource type currently served: the built-ins and one per stored CRD.
fn served_resources(shared: &Shared) -> Vec<ResourceDef> {
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

fn group_list(shared: &Shared) -> Value {
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

fn group_document(shared: &Shared, group: &str) -> Option<Value> {
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

fn resource_list(shared: &Shared, group: &str, version: &str) -> Option<Value> {
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

fn resource_request(
    shared: &Arc<Shared>,
    method: &Method,
    rp: ResourcePath,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let def = served_resources(shared)
        .into_iter()
        .find(|d| d.group == rp.group && d.plural == rp.plural && d.versions.contains(&rp.version))
        .ok_or_else(|| ApiError::no_route(path))?;
    if !def.namespaced && rp.namespace.is_some() {
        return Err(ApiError::no_route(path));
    }
    let status = match rp.subresource.as_deref() {
        None => false,
        Some("status") if def.has_status => true,
        Some(_) => return Err(ApiError::no_route(path)),
    };
    // A named namespaced object needs its namespace in the path; only collections span all.
    if def.namespaced && rp.namespace.is_none() && (rp.name.is_some() || *method != Method::GET) {
        return Err(ApiError::no_route(path));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let as_table = table::wants_table(accept);
    let ctx = Ctx {
        shared,
        def,
        version: rp.version.clone(),
        namespace: rp.namespace.clone().unwrap_or_default(),
    };
    let manager = field_manager(query, headers);
    let scope = rp.namespace.as_deref();
    match (method.clone(), rp.name.as_deref()) {
        (Method::GET, Some(name)) => ctx.get(name, as_table, query),
        (Method::GET, None) if query.flag("watch") => {
            ctx.watch(shared.clone(), scope, query, as_table)
        }
        (Method::GET, None) => ctx.list(scope, query, as_table),
        (Method::POST, None) => ctx.create(parse_body(body)?, &manager, query),
        (Method::PUT, Some(name)) => ctx.update(name, status, parse_body(body)?, &manager, query),
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            ctx.patch(name, status, content_type, body, &manager, query)
        }
        (Method::DELETE, Some(name)) => ctx.delete(name, query),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
        )),
    }
}

/// The field manager of a write: `fieldManager=` or, like the real server, the client's
/// user agent up to the first `/`.
fn field_manager(query: &Query, headers: &HeaderMap) -> String {
    if let Some(manager) = query.get("fieldManager") {
        return manager.to_string();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|ua| !ua.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(value) => value,
        Err(json_err) => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request(format!(
                    "request body is neither JSON nor UTF-8 YAML: {json_err}"
                ))
            })?;
            serde_saphyr::from_str::<Value>(text).map_err(|yaml_err| {
                ApiError::bad_request(format!(
                    "cannot decode request body as JSON ({json_err}) or YAML ({yaml_err})"
                ))
            })?
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(Map::new());
    }
    match object.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        // Just made sure it is an object.
        _ => unreachable!("metadata was set to an object above"),
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

fn finalizers_empty(object: &Value) -> bool {
    meta(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// The part of an object whose change bumps `metadata.generation`: all but metadata and status.
fn generation_view(object: &Value) -> Value {
    let mut view = object.clone();
    if let Some(map) = view.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    view
}

fn storage_key(def: &ResourceDef) -> ResourceKey {
    match &def.stored_as {
        Some(stored) => ResourceKey {
            group: stored.group.clone(),
            plural: stored.plural.clone(),
        },
        None => ResourceKey {
            group: def.group.clone(),
            plural: def.plural.clone(),
        },
    }
}

/// A stored object as clients of `def` at `version` see it.
fn present(def: &ResourceDef, version: &str, object: Value) -> Value {
    let mut object = match &def.stored_as {
        Some(_) if def.group.is_empty() && def.plural == "events" => {
            event_conversion::to_core(&object)
        }
        _ => object,
    };
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(def.api_version(version)));
        map.insert("kind".into(), Value::String(def.kind.clone()));
    }
    object
}

/// Everything a request handler needs to know about the resource it serves.
struct Ctx<'a> {
    shared: &'a Shared,
    def: ResourceDef,
    version: String,
    namespace: String,
}

impl Ctx<'_> {
    /// Where this kind's objects are stored (another kind's storage for views).
    fn key(&self) -> ResourceKey {
        storage_key(&self.def)
    }

    /// A stored object as clients of this kind and version see it.
    fn present(&self, object: Value) -> Value {
        present(&self.def, &self.version, object)
    }

    /// A client's object in storage shape, stamped with the stored kind.
    fn to_storage(&self, object: Value) -> Value {
        let mut object = match &self.def.stored_as {
            Some(_) if self.def.group.is_empty() && self.def.plural == "events" => {
                event_conversion::from_core(&object)
            }
            _ => object,
        };
        let (api_version, kind) = match &self.def.stored_as {
            Some(stored) => (stored.api_version.clone(), stored.kind.clone()),
            None => (self.def.api_version(&self.version), self.def.kind.clone()),
        };
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(api_version));
            map.insert("kind".into(), Value::String(kind));
        }
        object
    }

    fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(&self.def.group, &self.def.plural, name)
    }

    fn get(&self, name: &str, as_table: bool, query: &Query) -> Result<Response, ApiError> {
        let store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?;
        let object = self.present(stored.value.clone());
        if as_table {
            let include = query.get("includeObject").unwrap_or("Metadata");
            let rv = meta_str(&object, "resourceVersion").map(str::to_string);
            return Ok(ok_json(table::table(
                &self.def,
                &[object],
                include,
                rv,
                true,
            )));
        }
        Ok(ok_json(object))
    }

    fn selectors(query: &Query) -> Result<(Selector, Selector), ApiError> {
        let labels = Selector::labels(query.get("labelSelector").unwrap_or_default())?;
        let fields = Selector::fields(query.get("fieldSelector").unwrap_or_default())?;
        Ok((labels, fields))
    }

    fn list(
        &self,
        scope: Option<&str>,
        query: &Query,
        as_table: bool,
    ) -> Result<Response, ApiError> {
        let (labels, fields) = Self::selectors(query)?;
        let limit: Option<usize> = match query.get("limit") {
            Some(text) => Some(text.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "limit must be a non-negative integer, got {text:?}"
                ))
            })?),
            None => None,
        };
        // The continue token is the namespace/name of the last item returned, so a page
        // resumes after it even if objects were added or removed meanwhile.
        let after = query.get("continue").map(str::to_string);
        let store = lock(&self.shared.store);
        let rv = store.resource_version().to_string();
        let mut items: Vec<Value> = store
            .list(&self.key(), scope)
            .into_iter()
            .map(|o| self.present(o.clone()))
            .filter(|o| labels.matches(o) && fields.matches(o))
            .filter(|o| {
                after.as_ref().is_none_or(|token| {
                    let position = format!(
                        "{}/{}",
                        meta_str(o, "namespace").unwrap_or_default(),
                        meta_str(o, "name").unwrap_or_default()
                    );
                    position.as_str() > token.as_str()
                })
            })
            .collect();
        drop(store);
        let mut continue_token = None;
        if let Some(limit) = limit.filter(|l| *l > 0 && items.len() > *l) {
            items.truncate(limit);
            continue_token = items.last().map(|o| {
                format!(
                    "{}/{}",
                    meta_str(o, "namespace").unwrap_or_default(),
                    meta_str(o, "name").unwrap_or_default()
                )
            });
        }
        if as_table {
            let include = query.get("includeObject").unwrap_or("Metadata");
            let mut t = table::table(&self.def, &items, include, Some(rv), true);
            if let Some(token) = continue_token {
                t["metadata"]["continue"] = Value::String(token);
            }
            return Ok(ok_json(t));
        }
        let mut metadata = json!({"resourceVersion": rv});
        if let Some(token) = continue_token {
            metadata["continue"] = Value::String(token);
        }
        Ok(ok_json(json!({
            "apiVersion": self.def.api_version(&self.version),
            "kind": format!("{}List", self.def.kind),
            "metadata": metadata,
            "items": items,
        })))
    }

    fn validate(&self, object: &Value) -> Result<(), ApiError> {
        if self.def.group != crate::crd::GROUP || self.def.kind != "UserBatch" {
            return Ok(());
        }
        let violations = (self.shared.config.validator)(object);
        if violations.is_empty() {
            return Ok(());
        }
        let causes: Vec<Cause> = violations
            .into_iter()
            .map(|v| Cause {
                field: v.path,
                message: v.problem,
            })
            .collect();
        Err(ApiError::invalid(
            &self.def.group,
            &self.def.kind,
            meta_str(object, "name").unwrap_or_default(),
            &causes,
        ))
    }

    /// Server-side rewrites every stored object of some kinds gets.
    fn normalise(&self, object: &mut Value) -> Result<(), ApiError> {
        if self.def.group.is_empty() && self.def.plural == "secrets" {
            if object.get("type").is_none_or(Value::is_null) {
                object["type"] = Value::String("Opaque".into());
            }
            // `stringData` is write-only: the API server folds it into base64 `data`.
            if let Some(Value::Object(plain)) =
                object.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                let mut data = object
                    .get("data")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (k, v) in plain {
                    let text = v.as_str().ok_or_else(|| {
                        ApiError::bad_request(format!("stringData.{k} must be a string"))
                    })?;
                    data.insert(
                        k,
                        Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                    );
                }
                object["data"] = Value::Object(data);
            }
        }
        Ok(())
    }

    fn create(&self, body: Value, manager: &str, query: &Query) -> Result<Response, ApiError> {
        let mut store = lock(&self.shared.store);
        let created = self.create_locked(
            &mut store,
            body,
            None,
            manager,
            query.get("dryRun").is_some(),
        )?;
        Ok(with_status(StatusCode::CREATED, self.present(created)))
    }

    fn create_locked(
        &self,
        store: &mut Store,
        mut object: Value,
        ownership: Option<Ownership>,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let name = match meta_str(&object, "name") {
            Some(name) => name.to_string(),
            None => match meta_str(&object, "generateName") {
                Some(prefix) => {
                    let suffix: String = (0..5)
                        .map(|_| {
                            let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
                            alphabet[rand::random_range(0..alphabet.len())] as char
                        })
                        .collect();
                    format!("{prefix}{suffix}")
                }
                None => {
                    return Err(ApiError::invalid(
                        &self.def.group,
                        &self.def.kind,
                        "",
                        &[Cause {
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            },
        };
        if let Some(ns) = meta_str(&object, "namespace")
            && self.def.namespaced
            && ns != self.namespace
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({})",
                self.namespace
            )));
        }
        if store.get(&self.key(), &self.namespace, &name).is_some() {
            return Err(ApiError::already_exists(
                &self.def.group,
                &self.def.plural,
                &name,
            ));
        }
        if self.def.has_status
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        let metadata = meta_mut(&mut object);
        for system in [
            "resourceVersion",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "uid",
            "selfLink",
        ] {
            metadata.remove(system);
        }
        metadata.insert("name".into(), Value::String(name.clone()));
        if self.def.namespaced {
            metadata.insert("namespace".into(), Value::String(self.namespace.clone()));
        } else {
            metadata.remove("namespace");
        }
        let uid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        metadata.insert("uid".into(), Value::String(uid.to_string()));
        metadata.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        metadata.insert("generation".into(), json!(1));
        let mut object = self.to_storage(object);
        self.normalise(&mut object)?;
        if self.def.group == CRD_GROUP && self.def.plural == CRD_PLURAL {
            establish_crd(&mut object);
        }
        self.validate(&object)?;
        if dry_run {
            return Ok(object);
        }
        let ownership = ownership.unwrap_or_else(|| {
            Ownership::owned_by(
                ManagerKey {
                    manager: manager.to_string(),
                    status: false,
                },
                &object,
                &self.def,
            )
        });
        Ok(store.put(
            &self.key(),
            &self.namespace,
            &name,
            object,
            ownership,
            EventType::Added,
        ))
    }

    /// Commits `candidate` as the new state of `name`, keeping the server-owned metadata and
    /// skipping no-op writes (no new `resourceVersion`, no watch event).
    fn commit_update(
        &self,
        store: &mut Store,
        name: &str,
        mut candidate: Value,
        ownership: Ownership,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?
            .value
            .clone();
        if let Some(body_name) = meta_str(&candidate, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old_meta = meta(&old).cloned().unwrap_or_default();
        let metadata = meta_mut(&mut candidate);
        metadata.remove("managedFields");
        for system in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
            "resourceVersion",
        ] {
            match old_meta.get(system) {
                Some(value) => metadata.insert(system.to_string(), value.clone()),
                None => metadata.remove(system),
            };
        }
        let mut candidate = self.to_storage(candidate);
        self.normalise(&mut candidate)?;
        if generation_view(&candidate) != generation_view(&old) {
            let next = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut candidate).insert("generation".into(), json!(next));
        }
        self.validate(&candidate)?;
        if candidate == old || dry_run {
            return Ok(candidate);
        }
        if old_meta.contains_key("deletionTimestamp") && finalizers_empty(&candidate) {
            return Ok(store.remove(&self.key(), &self.namespace, name, candidate));
        }
        Ok(store.put(
            &self.key(),
            &self.namespace,
            name,
            candidate,
            ownership,
            EventType::Modified,
        ))
    }

    fn check_precondition(
        &self,
        name: &str,
        current: &Value,
        proposed: &Value,
    ) -> Result<(), ApiError> {
        match meta_str(proposed, "resourceVersion") {
            Some(rv) if !rv.is_empty() && Some(rv) != meta_str(current, "resourceVersion") => {
                Err(ApiError::conflict(
                    &self.def.group,
                    &self.def.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The object a write to the main resource or to `/status` produces: each ignores the
    /// other's part, as the API server does for kinds with a status subresource.
    fn scoped_candidate(&self, old: &Value, written: Value, status: bool) -> Value {
        if status {
            let mut candidate = old.clone();
            match written.get("status") {
                Some(s) => candidate["status"] = s.clone(),
                None => {
                    if let Some(map) = candidate.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            candidate
        } else if self.def.has_status {
            let mut candidate = written;
            if let Some(map) = candidate.as_object_mut() {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            candidate
        } else {
            written
        }
    }

    fn update(
        &self,
        name: &str,
        status: bool,
        body: Value,
        manager: &str,
        query: &Query,
    ) -> Result<Response, ApiError> {
        let mut store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?;
        let body = self.to_storage(body);
        self.check_precondition(name, &stored.value, &body)?;
        let old = stored.value.clone();
        let mut ownership = stored.ownership.clone();
        let candidate = self.scoped_candidate(&old, body, status);
        ownership.record_update(
            ManagerKey {
                manager: manager.into(),
                status,
            },
            &old,
            &candidate,
            &self.def,
        );
        let updated = self.commit_update(
            &mut store,
            name,
            candidate,
            ownership,
            query.get("dryRun").is_some(),
        )?;
        Ok(ok_json(self.present(updated)))
    }

    fn patch(
        &self,
        name: &str,
        status: bool,
        content_type: &str,
        body: &Bytes,
        manager: &str,
        query: &Query,
    ) -> Result<Response, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let dry_run = query.get("dryRun").is_some();
        if media == "application/apply-patch+yaml" {
            return self.apply(name, status, body, manager, query);
        }
        let mut store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?;
        let old = stored.value.clone();
        let mut patched = self.present(old.clone());
        match media {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let mut patch: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("the merge patch is not valid JSON: {e}"))
                })?;
                merge::strip_directives(&mut patch);
                json_patch::merge(&mut patched, &patch);
            }
            "application/json-patch+json" => {
                let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!(
                        "the JSON patch is not a valid list of operations: {e}"
                    ))
                })?;
                json_patch::patch(&mut patched, &patch).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("the JSON patch cannot be applied: {e}"),
                    )
                })?;
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format ({other}); accepted: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                    ),
                ));
            }
        }
        self.check_precondition(name, &old, &patched)?;
        let patched = self.to_storage(patched);
        let mut ownership = stored.ownership.clone();
        let candidate = self.scoped_candidate(&old, patched, status);
        ownership.record_update(
            ManagerKey {
                manager: manager.into(),
                status,
            },
            &old,
            &candidate,
            &self.def,
        );
        let updated = self.commit_update(&mut store, name, candidate, ownership, dry_run)?;
        Ok(ok_json(self.present(updated)))
    }

    fn apply(
        &self,
        name: &str,
        status: bool,
        body: &Bytes,
        _manager: &str,
        query: &Query,
    ) -> Result<Response, ApiError> {
        let Some(manager) = query.get("fieldManager") else {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                &[Cause {
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            ));
        };
        let force = query.flag("force");
        let dry_run = query.get("dryRun").is_some();
        let config = self.to_storage(parse_body(body)?);
        if let Some(config_name) = meta_str(&config, "name")
            && config_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the applied object ({config_name}) does not match the name on the URL ({name})"
            )));
        }
        // Only the part the endpoint writes is applied (and owned).
        let mut scoped = config.clone();
        if let Some(map) = scoped.as_object_mut() {
            if status {
                map.retain(|k, _| k == "status");
            } else if self.def.has_status {
                map.remove("status");
            }
        }
        let key = ManagerKey {
            manager: manager.to_string(),
            status,
        };
        let mut store = lock(&self.shared.store);
        let Some(stored) = store.get(&self.key(), &self.namespace, name) else {
            if status {
                return Err(self.not_found(name));
            }
            let mut object = config;
            meta_mut(&mut object).insert("name".into(), Value::String(name.to_string()));
            let ownership = Ownership::owned_by(key, &scoped, &self.def);
            let created =
                self.create_locked(&mut store, object, Some(ownership), manager, dry_run)?;
            return Ok(with_status(StatusCode::CREATED, self.present(created)));
        };
        self.check_precondition(name, &stored.value, &config)?;
        let old = stored.value.clone();
        let mut ownership = stored.ownership.clone();
        if !force {
            let conflicts = ownership.apply_conflicts(&key, &old, &scoped, &self.def);
            if !conflicts.0.is_empty() {
                return Err(ApiError::conflict(
                    &self.def.group,
                    &self.def.plural,
                    name,
                    &conflicts.to_string(),
                ));
            }
        }
        let mut candidate = old.clone();
        ownership.apply(key, &mut candidate, &scoped, &self.def);
        let updated = self.commit_update(&mut store, name, candidate, ownership, dry_run)?;
        Ok(ok_json(self.present(updated)))
    }

    fn delete(&self, name: &str, query: &Query) -> Result<Response, ApiError> {
        let mut store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?;
        let mut object = stored.value.clone();
        let ownership = stored.ownership.clone();
        if query.get("dryRun").is_some() {
            return Ok(ok_json(self.present(object)));
        }
        if finalizers_empty(&object) {
            let removed = store.remove(&self.key(), &self.namespace, name, object);
            return Ok(ok_json(self.present(removed)));
        }
        if meta(&object).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return Ok(ok_json(self.present(object)));
        }
        // Finalizers hold the object: mark it, and let their owners remove them.
        let generation = meta(&object)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let metadata = meta_mut(&mut object);
        metadata.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
        metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
        metadata.insert("generation".into(), json!(generation + 1));
        let marked = store.put(
            &self.key(),
            &self.namespace,
            name,
            object,
            ownership,
            EventType::Modified,
        );
        Ok(ok_json(self.present(marked)))
    }

    fn watch(
        &self,
        shared: Arc<Shared>,
        scope: Option<&str>,
        query: &Query,
        as_table: bool,
    ) -> Result<Response, ApiError> {
        let (labels, fields) = Self::selectors(query)?;
        let bookmarks = query.flag("allowWatchBookmarks");
        let send_initial = query.flag("sendInitialEvents");
        let timeout = match query.get("timeoutSeconds") {
            Some(text) => Some(Duration::from_secs(text.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "timeoutSeconds must be a non-negative integer, got {text:?}"
                ))
            })?)),
            None => None,
        };
        let since = match query.get("resourceVersion") {
            None | Some("0") => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("resourceVersion must be an integer, got {text:?}"))
            })?),
        };
        let filter = WatchFilter {
            key: self.key(),
            namespace: scope.map(str::to_string),
            labels,
            fields,
        };
        let mut initial: Vec<Value> = Vec::new();
        let store = lock(&shared.store);
        let mut last_rv = store.resource_version();
        let (replay, feed) = match since {
            Some(rv) if !send_initial => match store.watch_from(rv) {
                Ok(start) => (start.replay, start.feed),
                Err(expired) => {
                    // As the real server's watch cache does: a 200 stream carrying one ERROR.
                    let gone = ApiError::gone(format!(
                        "too old resource version: {} ({})",
                        expired.requested, expired.oldest_available
                    ));
                    let line = watch_line("ERROR", gone.status_body());
                    return Ok(stream_response(futures::stream::iter([Ok::<
                        _,
                        std::convert::Infallible,
                    >(
                        line
                    )])));
                }
            },
            _ => {
                initial = store
                    .list(&filter.key, scope)
                    .into_iter()
                    .map(|o| self.present(o.clone()))
                    .filter(|o| filter.labels.matches(o) && filter.fields.matches(o))
                    .collect();
                (Vec::new(), store.subscribe())
            }
        };
        drop(store);
        if let Some(rv) = since.filter(|_| !send_initial) {
            last_rv = rv;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let stream_ctx = WatchStream {
            def: self.def.clone(),
            version: self.version.clone(),
            filter,
            as_table,
            include: query.get("includeObject").unwrap_or("Metadata").to_string(),
            bookmarks,
            columns_sent: false,
            last_rv,
        };
        let cancel = shared.watch_token();
        tokio::spawn(stream_ctx.run(tx, initial, send_initial, replay, feed, timeout, cancel));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
        });
        Ok(stream_response(body))
    }
}

fn stream_response<S>(body: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| {
            ApiError::for_code(500, format!("cannot build the watch response: {e}")).into_response()
        })
}

fn watch_line(event: &str, object: Value) -> Bytes {
    let mut line = json!({"type": event, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Which writes a watch reports.
struct WatchFilter {
    key: ResourceKey,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl WatchFilter {
    /// Whether a write concerns this watch; selectors apply to the object as presented.
    fn matches(&self, record: &WatchRecord, presented: &Value) -> bool {
        record.resource == self.key
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == record.namespace)
            && self.labels.matches(presented)
            && self.fields.matches(presented)
    }
}

/// One open watch: turns store events into newline-delimited JSON on the response body.
struct WatchStream {
    def: ResourceDef,
    version: String,
    filter: WatchFilter,
    as_table: bool,
    include: String,
    bookmarks: bool,
    columns_sent: bool,
    /// The newest `resourceVersion` this stream has seen from the store, reported in
    /// bookmarks: every event up to it was either sent or filtered out.
    last_rv: u64,
}

impl WatchStream {
    /// The event object for an already presented object: itself, or a one-row Table.
    fn render(&mut self, object: Value) -> Value {
        if self.as_table {
            let with_columns = !self.columns_sent;
            self.columns_sent = true;
            let rv = meta_str(&object, "resourceVersion").map(str::to_string);
            return table::table(&self.def, &[object], &self.include, rv, with_columns);
        }
        object
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.last_rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        watch_line(
            "BOOKMARK",
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(&self.version), "metadata": metadata}),
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        tx: mpsc::Sender<Bytes>,
        initial: Vec<Value>,
        send_initial: bool,
        replay: Vec<Arc<WatchRecord>>,
        mut feed: broadcast::Receiver<Arc<WatchRecord>>,
        timeout: Option<Duration>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        for object in initial {
            let rendered = self.render(object);
            if tx.send(watch_line("ADDED", rendered)).await.is_err() {
                return;
            }
        }
        if send_initial && self.bookmarks && tx.send(self.bookmark(true)).await.is_err() {
            return;
        }
        for record in replay {
            if !self.forward(&tx, &record, &cancel).await {
                return;
            }
        }
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if self.bookmarks => {
                    if tx.send(self.bookmark(false)).await.is_err() {
                        return;
                    }
                }
                received = feed.recv() => match received {
                    Ok(record) => {
                        if !self.forward(&tx, &record, &cancel).await {
                            return;
                        }
                    }
                    // Fell too far behind: close, the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Sends one record if it matches; false once the client is gone or the watch was
    /// dropped. Checking the token here (not only in `select!`) guarantees that nothing
    /// written after [`super::Emulator::drop_watches`] returns reaches a dropped watch.
    async fn forward(
        &mut self,
        tx: &mpsc::Sender<Bytes>,
        record: &WatchRecord,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> bool {
        if cancel.is_cancelled() {
            return false;
        }
        if record.resource_version <= self.last_rv {
            return true;
        }
        self.last_rv = record.resource_version;
        let presented = present(&self.def, &self.version, record.object.clone());
        if !self.filter.matches(record, &presented) {
            return true;
        }
        let rendered = self.render(presented);
        tx.send(watch_line(record.event.as_str(), rendered))
            .await
            .is_ok()
    }
}

/// What the API server fills into a new CRD's status: names accepted, Established.
fn establish_crd(crd: &mut Value) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let now = now_rfc3339();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_namespaced_cluster_and_subresource_paths() {
        assert_eq!(
            parse_route("/apis/koodrive.io/v1alpha1/namespaces/team-a/userbatches/b1/status"),
            Route::Resource(ResourcePath {
                group: "koodrive.io".into(),
                version: "v1alpha1".into(),
                namespace: Some("team-a".into()),
                plural: "userbatches".into(),
                name: Some("b1".into()),
                subresource: Some("status".into()),
            })
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/default"),
            Route::Resource(ResourcePath {
                group: String::new(),
                version: "v1".into(),
                namespace: None,
                plural: "namespaces".into(),
                name: Some("default".into()),
                subresource: None,
            })
        );
        assert_eq!(parse_route("/apis"), Route::Groups);
        assert_eq!(parse_route("/healthz"), Route::Unknown);
    }
}
