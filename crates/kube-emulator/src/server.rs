//! The HTTP side of the emulator: routing of the Kubernetes REST paths, discovery documents,
//! and the verbs (get, list, watch, create, update, patch, delete) with API server semantics.

use super::discovery::{
    group_document, group_list, openapi_group_version, openapi_root, resource_list, served_resource,
};
use super::error::ApiError;
use super::resources::{self, CRD_PLURAL};
use super::table;
use super::verbs::{Ctx, ok_json, parse_body};
use super::{FaultKind, Shared, lock, rbac};
use super::{fields, protobuf};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// What the server claims to be in `/version`.
const EMULATED_MINOR: &str = "33";

pub fn router(shared: Arc<Shared>) -> Router {
    // Bodies are read with the API server's own limit (and its 413 Status), not axum's.
    Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Creates a built-in object at start-up, as a fresh cluster has it.
fn seed(shared: &Shared, plural: &str, object: serde_json::Value) -> Result<(), ApiError> {
    let def = resources::builtins()
        .into_iter()
        .find(|d| d.plural == plural)
        .ok_or_else(|| ApiError::for_code(500, format!("{plural} are not a built-in resource")))?;
    let ctx = Ctx {
        shared,
        version: def.versions.first().cloned().unwrap_or_default(),
        def,
        namespace: String::new(),
        metadata_only: false,
    };
    let mut store = lock(&shared.store);
    ctx.create_locked(&mut store, object, None, "emulator", false)
        .map(|_| ())
}

/// Creates a built-in object given at start-up (RBAC objects), found by its kind.
pub fn seed_object(shared: &Shared, object: serde_json::Value) -> Result<(), ApiError> {
    let kind = object
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let api_version = object
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let def = resources::builtins()
        .into_iter()
        .find(|d| d.kind == kind && d.versions.iter().any(|v| d.api_version(v) == api_version))
        .ok_or_else(|| {
            ApiError::bad_request(format!("{api_version} {kind} is not a built-in kind"))
        })?;
    let namespace = if def.namespaced {
        object
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    let ctx = Ctx {
        shared,
        version: def.versions.first().cloned().unwrap_or_default(),
        def,
        namespace,
        metadata_only: false,
    };
    let mut store = lock(&shared.store);
    ctx.create_locked(&mut store, object, None, "emulator", false)
        .map(|_| ())
}

/// The `default` namespace every cluster starts with.
pub fn seed_default_namespace(shared: &Shared) -> Result<(), ApiError> {
    seed(
        shared,
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    )
}

/// Stores a CRD, as `kubectl apply -f crds/` would have.
pub fn install_crd(shared: &Shared, crd: serde_json::Value) -> Result<(), ApiError> {
    seed(shared, CRD_PLURAL, crd)
}

/// Query parameters, last value wins.
pub(super) struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(super) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Route {
    Version,
    OpenApiRoot,
    OpenApiGroupVersion(String),
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
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", rest @ ..] => Route::OpenApiGroupVersion(rest.join("/")),
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
    extensions: axum::http::Extensions,
    body: axum::body::Body,
) -> Response {
    let path = uri.path().to_string();
    let query = Query::parse(uri.query());
    let route = parse_route(&path);
    let verb = verb_for(&method, &route, &query);
    let body = match axum::body::to_bytes(body, crate::limits::MAX_REQUEST_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let response = ApiError::body_too_large().into_response();
            shared.log_request(verb, &path, response.status().as_u16(), "");
            return response;
        }
    };
    let user = match authenticate(&shared, &headers) {
        Ok(user) => user,
        Err(err) => {
            let response = err.into_response();
            shared.log_request(verb, &path, response.status().as_u16(), "");
            return response;
        }
    };
    let user_name = user.as_ref().map_or("", |u| u.name.as_str());
    if let Some(axum::extract::ConnectInfo(connection)) =
        extensions.get::<axum::extract::ConnectInfo<crate::traffic::Connection>>()
    {
        connection.identify(&shared.traffic, user_name);
    }
    if let Some(user) = &user
        && let Err(err) = authorize(&shared, user, &route, verb, &path, &query)
    {
        let response = err.into_response();
        shared.log_request(verb, &path, response.status().as_u16(), user_name);
        return response;
    }
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
    let status = response.status().as_u16();
    tracing::debug!(verb, path = %path, status, "emulated API request");
    shared.log_request(verb, &path, status, user_name);
    response
}

/// RBAC mode: who sent the request (bearer token); `None` without RBAC.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Option<rbac::User>, ApiError> {
    let Some(config) = &shared.config.rbac else {
        return Ok(None);
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let admin = || rbac::User {
        name: "emulator-admin".into(),
        groups: vec![rbac::MASTERS_GROUP.into(), "system:authenticated".into()],
    };
    let user = match token {
        // Like the insecure port API servers had until 1.20: plain HTTP without credentials is
        // the administrator. kubectl never sends a token over plain HTTP, so this is what
        // keeps tests' own kubectl and clients working.
        None => admin(),
        Some(token) if token == shared.admin_token => admin(),
        Some(token) => match config.identities.iter().find(|i| i.token == token) {
            Some(identity) => rbac::User {
                name: identity.user.clone(),
                groups: identity.groups.clone(),
            },
            None => return Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
        },
    };
    Ok(Some(user))
}

/// RBAC mode: whether `user` may do what the request asks.
fn authorize(
    shared: &Shared,
    user: &rbac::User,
    route: &Route,
    verb: &str,
    path: &str,
    query: &Query,
) -> Result<(), ApiError> {
    let store = lock(&shared.store);
    let Route::Resource(rp) = route else {
        return rbac::authorize_path(&store, user, verb, path);
    };
    // A list or watch of one object (`metadata.name=` field selector) names it, as the API
    // server's request info does, so `resourceNames` rules apply.
    let selected = query.get("fieldSelector").and_then(|selector| {
        selector
            .split(',')
            .find_map(|term| term.trim().strip_prefix("metadata.name="))
    });
    let name = rp.name.as_deref().or(selected);
    let attributes = rbac::Attributes {
        verb,
        group: &rp.group,
        resource: &rp.plural,
        subresource: rp.subresource.as_deref(),
        // Creates are authorized before the object (and its name) is read.
        name: if verb == "create" { None } else { name },
        namespace: rp.namespace.as_deref().unwrap_or_default(),
    };
    rbac::authorize(&store, user, &attributes)
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
        Route::OpenApiRoot => Ok(ok_json(openapi_root(shared))),
        Route::OpenApiGroupVersion(gv) => openapi_group_version(shared, &gv)
            .map(ok_json)
            .ok_or_else(|| ApiError::no_route(path)),
        Route::Unknown => Err(ApiError::no_route(path)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
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
    let def = served_resource(shared, &rp.group, &rp.plural, &rp.version)
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
        metadata_only: table::wants_metadata(accept),
    };
    let manager = field_manager(query, headers);
    let scope = rp.namespace.as_deref();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parse_body = |body: &Bytes| -> Result<serde_json::Value, ApiError> {
        if !protobuf::is_protobuf(content_type) {
            return parse_body(body);
        }
        if ctx.def.custom {
            // The custom resource handler only has JSON and YAML serializers.
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
            ));
        }
        protobuf::decode(body)
    };
    let mode = fields::FieldValidation::from_query(query)?;
    let mut warnings = Vec::new();
    let version = rp.version.clone();
    let mut checked = |mut object: serde_json::Value, whole: bool| {
        match fields::check(&ctx.def, &mut object, mode, whole) {
            Ok(found) => warnings.extend(found),
            // As the API server's decoder words a refused object.
            Err(mut err) if whole => {
                let kind = &ctx.def.kind;
                err.message = format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: {}",
                    err.message
                );
                return Err(err);
            }
            Err(err) => return Err(err),
        }
        Ok::<_, ApiError>(object)
    };
    let result = match (method.clone(), rp.name.as_deref()) {
        (Method::GET, Some(name)) => ctx.get(name, as_table, query),
        (Method::GET, None) if query.flag("watch") => {
            ctx.watch(shared.clone(), scope, query, as_table)
        }
        (Method::GET, None) => ctx.list(scope, query, as_table),
        (Method::POST, None) => ctx.create(checked(parse_body(body)?, true)?, &manager, query),
        (Method::PUT, Some(name)) => ctx.update(
            name,
            status,
            checked(parse_body(body)?, true)?,
            &manager,
            query,
        ),
        (Method::PATCH, Some(name)) => {
            let media = content_type.split(';').next().unwrap_or_default().trim();
            // Patches shaped like the object (merge, apply) are pruned like one; JSON
            // patches (lists of operations) are not checked.
            let body = if media == "application/json-patch+json" {
                body.clone()
            } else {
                let parsed = match media {
                    "application/apply-patch+yaml" => parse_body(body)?,
                    _ => serde_json::from_slice(body).map_err(|e| {
                        ApiError::bad_request(format!("the merge patch is not valid JSON: {e}"))
                    })?,
                };
                Bytes::from(checked(parsed, false)?.to_string())
            };
            ctx.patch(name, status, content_type, &body, &manager, query)
        }
        (Method::DELETE, Some(name)) => ctx.delete(name, query, body),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
        )),
    };
    let mut response = result?;
    for warning in warnings {
        if let Ok(value) = header::HeaderValue::from_str(&fields::warning_header(&warning)) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    Ok(response)
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
