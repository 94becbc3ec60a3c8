//! The verbs on one resource (get, list, watch, create, update, patch, apply, delete) with the
//! API server's semantics: server-owned metadata, `generation`, the status subresource,
//! `resourceVersion` preconditions, finalizers and admission.

use super::error::{ApiError, Cause};
use super::merge::{self, ManagerKey, Ownership};
use super::resources::{CRD_GROUP, CRD_PLURAL, ResourceDef};
use super::selectors::Selector;
use super::server::Query;
use super::store::{EventType, ResourceKey, Store, Versioned};
use super::table;
use super::watch::{Backlog, WatchFilter, WatchStream, stream_response, watch_line};
use super::{Shared, event_conversion, event_validation, limits, lock};
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest `generateName` prefix kept: a generated name must still fit 63 characters.
const MAX_GENERATED_PREFIX_LEN: usize = 58;
/// How often a generated name is tried before giving up (`maxNameGenerationCreateAttempts`).
const GENERATE_NAME_ATTEMPTS: usize = 8;

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

pub(super) fn ok_json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

pub(super) fn with_status(code: StatusCode, value: Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// A response whose JSON body is already encoded (a stored object's shared encoding).
pub(super) fn json_bytes(code: StatusCode, body: Bytes) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(value) => value,
        Err(json_err) => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request(format!(
                    "request body is neither JSON nor UTF-8 YAML: {json_err}"
                ))
            })?;
            // The YAML parser's message quotes the offending lines, which may hold a
            // Secret's data: say where, never what.
            serde_saphyr::from_str::<Value>(text).map_err(|yaml_err| {
                let at = yaml_err
                    .location()
                    .map(|at| format!("line {}, column {}", at.line(), at.column()))
                    .unwrap_or_else(|| "an unknown position".into());
                ApiError::bad_request(format!(
                    "cannot decode request body as JSON ({json_err}) or YAML (invalid at {at})"
                ))
            })?
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

pub(super) fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

pub(super) fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// The object's `metadata` map, created if missing. Bodies are checked to be objects when
/// parsed, so replacing a non-object here only ever affects server-built values.
pub(super) fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(Map::new());
    }
    match object.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        // Just made sure it is an object.
        _ => unreachable!("metadata was set to an object above"),
    }
}

pub(super) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// Applies an RFC 6902 patch the way the API server does, including its one leniency:
/// `test` for `null` passes on a missing path (kube's finalizer helper relies on it).
fn apply_json_patch(doc: &mut Value, patch: &json_patch::Patch) -> Result<(), ApiError> {
    for (index, operation) in patch.0.iter().enumerate() {
        if let json_patch::PatchOperation::Test(test) = operation
            && test.value.is_null()
            && doc.pointer(test.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(doc, std::slice::from_ref(operation)).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the JSON patch cannot be applied: operation {index}: {e}"),
            )
        })?;
    }
    Ok(())
}

pub(super) fn finalizers_empty(object: &Value) -> bool {
    meta(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// Whether two objects agree on the part whose change bumps `metadata.generation`: all but
/// metadata and status (compared in place: copying a large spec twice per write to compare
/// it was a tenth of a status write's cost).
pub(super) fn same_generation_view(a: &Value, b: &Value) -> bool {
    let outside =
        |key: &String| !matches!(key.as_str(), "metadata" | "status" | "apiVersion" | "kind");
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            a.keys().filter(|k| outside(k)).count() == b.keys().filter(|k| outside(k)).count()
                && a.iter()
                    .filter(|(k, _)| outside(k))
                    .all(|(k, v)| b.get(k) == Some(v))
        }
        _ => a == b,
    }
}

/// `old` with the status of `written`, as a write to `/status` leaves it: everything but the
/// status as stored. Built from `written` where it already holds the stored values (clients
/// send back what they read), so a status write to a large object does not copy its spec;
/// the result equals `old` with `written`'s status either way.
fn with_status_of(old: &Value, written: Value) -> Value {
    let (Some(old_map), Value::Object(mut candidate)) = (old.as_object(), written) else {
        let mut candidate = old.clone();
        if let Some(map) = candidate.as_object_mut() {
            map.remove("status");
        }
        return candidate;
    };
    candidate.retain(|k, _| k == "status" || old_map.contains_key(k));
    for (key, value) in old_map {
        if key != "status" && candidate.get(key) != Some(value) {
            candidate.insert(key.clone(), value.clone());
        }
    }
    Value::Object(candidate)
}

pub(super) fn storage_key(def: &ResourceDef) -> ResourceKey {
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

/// Whether clients of `def` at `version` see this stored object exactly as stored (no
/// conversion; apiVersion and kind already theirs), so its stored encoding can be served
/// as it is instead of presenting a copy and encoding that.
pub(super) fn presents_as_stored(def: &ResourceDef, version: &str, object: &Value) -> bool {
    let converted = def.stored_as.is_some() && def.group.is_empty() && def.plural == "events";
    !converted
        && object.get("kind").and_then(Value::as_str) == Some(def.kind.as_str())
        && object.get("apiVersion").and_then(Value::as_str)
            == Some(def.api_version(version).as_str())
}

/// The JSON of a stored object as clients of `def` at `version` see it: `present`
/// encoded, shared with every other reader when nothing needs presenting.
pub(super) fn presented_json(def: &ResourceDef, version: &str, object: &Versioned) -> Bytes {
    if presents_as_stored(def, version, &object.value) {
        return object.json().clone();
    }
    let presented = present(def, version, object.value.clone());
    Bytes::from(serde_json::to_vec(&presented).unwrap_or_default())
}

/// What a metadata-only client (`Accept: …;as=PartialObjectMetadata`) gets for an object,
/// as the API server answers it: `meta.k8s.io/v1` `PartialObjectMetadata`.
pub(super) fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

/// A stored object as clients of `def` at `version` see it.
pub(super) fn present(def: &ResourceDef, version: &str, object: Value) -> Value {
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
pub(super) struct Ctx<'a> {
    pub(super) shared: &'a Shared,
    pub(super) def: ResourceDef,
    pub(super) version: String,
    pub(super) namespace: String,
    /// The client asked for metadata only (`as=PartialObjectMetadata[List]`), as kube's
    /// `Api<PartialObjectMeta<K>>` and client-go's metadata informers do.
    pub(super) metadata_only: bool,
}

impl Ctx<'_> {
    /// Where this kind's objects are stored (another kind's storage for views).
    pub(super) fn key(&self) -> ResourceKey {
        storage_key(&self.def)
    }

    /// A stored object as clients of this kind and version see it.
    pub(super) fn present(&self, object: Value) -> Value {
        present(&self.def, &self.version, object)
    }

    /// The response to a read or write of one object: its presented JSON (the stored
    /// encoding where nothing needs presenting), or its metadata for a metadata-only client.
    pub(super) fn object_response(&self, code: StatusCode, object: &Versioned) -> Response {
        if self.metadata_only {
            let presented = self.present(object.value.clone());
            return with_status(code, partial_metadata(&presented));
        }
        json_bytes(code, presented_json(&self.def, &self.version, object))
    }

    /// Whether a stored object passes the selectors, as presented to this client (only
    /// copied and presented when presenting changes it).
    fn selected(&self, labels: &Selector, fields: &Selector, object: &Value) -> bool {
        if presents_as_stored(&self.def, &self.version, object) {
            return labels.matches(object) && fields.matches(object);
        }
        let presented = self.present(object.clone());
        labels.matches(&presented) && fields.matches(&presented)
    }

    /// A client's object in storage shape, stamped with the stored kind.
    pub(super) fn to_storage(&self, object: Value) -> Value {
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

    pub(super) fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(&self.def.group, &self.def.plural, name)
    }

    pub(super) fn get(
        &self,
        name: &str,
        as_table: bool,
        query: &Query,
    ) -> Result<Response, ApiError> {
        let store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?
            .object
            .clone();
        // Encoding happens after the lock is released, once per stored version.
        drop(store);
        if !as_table {
            return Ok(self.object_response(StatusCode::OK, &stored));
        }
        let object = self.present(stored.value.clone());
        let include = query.get("includeObject").unwrap_or("Metadata");
        let rv = meta_str(&object, "resourceVersion").map(str::to_string);
        Ok(ok_json(table::table(
            &self.def,
            &[object],
            include,
            rv,
            true,
        )))
    }

    pub(super) fn selectors(query: &Query) -> Result<(Selector, Selector), ApiError> {
        let labels = Selector::labels(query.get("labelSelector").unwrap_or_default())?;
        let fields = Selector::fields(query.get("fieldSelector").unwrap_or_default())?;
        Ok((labels, fields))
    }

    pub(super) fn list(
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
        let token = query
            .get("continue")
            .map(ContinueToken::decode)
            .transpose()?;
        let mut store = lock(&self.shared.store);
        // A continued list reads the first page's snapshot, as etcd reads one revision;
        // once that revision is compacted the API server answers 410 with a token that
        // continues from the latest state instead.
        let snapshot = match &token {
            Some(t) if t.rv >= 0 => match store.snapshot(&self.key(), t.rv as u64) {
                Some(snapshot) => Some(snapshot),
                None => return Err(expired_continue(&t.start)),
            },
            Some(_) => None,
            None if limit.is_some_and(|l| l > 0) => Some(store.take_snapshot(&self.key())),
            None => None,
        };
        let rv = match &snapshot {
            Some(snapshot) => snapshot.resource_version,
            None => store.resource_version(),
        };
        let start = token.as_ref().map(|t| t.start.clone());
        let objects: Vec<&Arc<Versioned>> = match &snapshot {
            Some(snapshot) => snapshot
                .objects
                .iter()
                .filter(|(ns, _, _)| scope.is_none_or(|want| want == ns))
                .map(|(_, _, v)| v)
                .collect(),
            None => store.list_versions(&self.key(), scope),
        };
        let position = |o: &Value| {
            format!(
                "{}/{}",
                meta_str(o, "namespace").unwrap_or_default(),
                meta_str(o, "name").unwrap_or_default()
            )
        };
        // Shared versions, not copies: each is presented and encoded after the lock is gone.
        let mut items: Vec<Arc<Versioned>> = objects
            .into_iter()
            .filter(|o| {
                start
                    .as_ref()
                    .is_none_or(|s| position(&o.value).as_str() > s.as_str())
            })
            .filter(|o| self.selected(&labels, &fields, &o.value))
            .cloned()
            .collect();
        let mut continue_token = None;
        if let Some(limit) = limit.filter(|l| *l > 0 && items.len() > *l) {
            items.truncate(limit);
            continue_token = items.last().map(|o| {
                ContinueToken {
                    rv: rv as i64,
                    start: position(&o.value),
                }
                .encode()
            });
        }
        if continue_token.is_none() && snapshot.is_some() {
            store.release_snapshot(&self.key(), rv);
        }
        drop(store);
        let rv = rv.to_string();
        if as_table {
            let include = query.get("includeObject").unwrap_or("Metadata");
            let presented: Vec<Value> = items
                .iter()
                .map(|o| self.present(o.value.clone()))
                .collect();
            let mut t = table::table(&self.def, &presented, include, Some(rv), true);
            if let Some(token) = continue_token {
                t["metadata"]["continue"] = Value::String(token);
            }
            return Ok(ok_json(t));
        }
        let mut metadata = json!({"resourceVersion": rv});
        if let Some(token) = continue_token {
            metadata["continue"] = Value::String(token);
        }
        if self.metadata_only {
            let items: Vec<Value> = items
                .iter()
                .map(|o| partial_metadata(&self.present(o.value.clone())))
                .collect();
            return Ok(ok_json(json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadataList",
                "metadata": metadata,
                "items": items,
            })));
        }
        // The list's JSON, keys in the order serde_json writes them, around the items'
        // shared encodings.
        let encoded: Vec<Bytes> = items
            .iter()
            .map(|o| presented_json(&self.def, &self.version, o))
            .collect();
        let api_version = Value::String(self.def.api_version(&self.version)).to_string();
        let kind = Value::String(format!("{}List", self.def.kind)).to_string();
        let metadata = metadata.to_string();
        let mut body = Vec::with_capacity(
            64 + api_version.len()
                + kind.len()
                + metadata.len()
                + encoded.iter().map(|e| e.len() + 1).sum::<usize>(),
        );
        body.extend_from_slice(b"{\"apiVersion\":");
        body.extend_from_slice(api_version.as_bytes());
        body.extend_from_slice(b",\"items\":[");
        for (index, item) in encoded.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"],\"kind\":");
        body.extend_from_slice(kind.as_bytes());
        body.extend_from_slice(b",\"metadata\":");
        body.extend_from_slice(metadata.as_bytes());
        body.push(b'}');
        Ok(json_bytes(StatusCode::OK, Bytes::from(body)))
    }

    /// Admission of a create (`old` is `None`) or an update of `old`.
    pub(super) fn validate(&self, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let Some(admission) = self
            .shared
            .config
            .admission
            .iter()
            .find(|a| a.group == self.def.group && a.kind == self.def.kind)
        else {
            return Ok(());
        };
        let violations = match (old, &admission.update_check) {
            (Some(old), Some(update_check)) => update_check(object, old),
            _ => (admission.check)(object),
        };
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
    pub(super) fn normalise(&self, object: &mut Value) -> Result<(), ApiError> {
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

    /// A free name for `generateName`: the prefix (cut to leave room for the suffix) and five
    /// random characters, retried on collision as API servers do since 1.31.
    fn generate_name(&self, store: &Store, prefix: &str) -> Result<String, ApiError> {
        let prefix: String = prefix.chars().take(MAX_GENERATED_PREFIX_LEN).collect();
        let mut candidate = String::new();
        for _ in 0..GENERATE_NAME_ATTEMPTS {
            let suffix = match &self.shared.config.name_suffixes {
                Some(next) => next(),
                None => (0..5)
                    .map(|_| {
                        let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
                        alphabet[rand::random_range(0..alphabet.len())] as char
                    })
                    .collect(),
            };
            candidate = format!("{prefix}{suffix}");
            if store
                .get(&self.key(), &self.namespace, &candidate)
                .is_none()
            {
                return Ok(candidate);
            }
        }
        let mut err = ApiError::new(
            409,
            "AlreadyExists",
            format!(
                "{} \"{candidate}\" already exists, the server was not able to generate a unique name for the object",
                qualified(&self.def.plural, &self.def.group)
            ),
        );
        err.details = Some(json!({
            "name": candidate, "group": self.def.group, "kind": self.def.plural,
            "retryAfterSeconds": 1,
        }));
        Err(err)
    }

    /// All annotations together must fit [`limits::MAX_ANNOTATIONS_BYTES`]; a Secret's data
    /// must fit [`limits::MAX_SECRET_BYTES`].
    fn check_annotations(&self, object: &Value) -> Result<(), ApiError> {
        if self.def.group.is_empty() && self.def.plural == "secrets" {
            let data: usize = object
                .get("data")
                .and_then(Value::as_object)
                .map(|data| {
                    data.values()
                        .filter_map(Value::as_str)
                        .map(|b64| {
                            base64::engine::general_purpose::STANDARD
                                .decode(b64)
                                .map_or(b64.len(), |bytes| bytes.len())
                        })
                        .sum()
                })
                .unwrap_or(0);
            if data > limits::MAX_SECRET_BYTES {
                return Err(ApiError::invalid_field(
                    &self.def.group,
                    &self.def.kind,
                    meta_str(object, "name").unwrap_or_default(),
                    "data",
                    &format!(
                        "Too long: must have at most {} bytes",
                        limits::MAX_SECRET_BYTES
                    ),
                ));
            }
        }
        if limits::annotations_size(object) > limits::MAX_ANNOTATIONS_BYTES {
            return Err(ApiError::invalid_field(
                &self.def.group,
                &self.def.kind,
                meta_str(object, "name").unwrap_or_default(),
                "metadata.annotations",
                &format!(
                    "Too long: must have at most {} bytes",
                    limits::MAX_ANNOTATIONS_BYTES
                ),
            ));
        }
        Ok(())
    }

    /// The API server's own validation of Events (stored in `events.k8s.io` shape).
    fn check_event(&self, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        if self.def.kind != "Event" || !matches!(self.def.group.as_str(), "" | "events.k8s.io") {
            return Ok(());
        }
        let core = self.def.group.is_empty();
        let causes = match old {
            None => event_validation::validate_create(object, core),
            Some(old) => event_validation::validate_update(object, old, core),
        };
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid(
            &self.def.group,
            &self.def.kind,
            meta_str(object, "name").unwrap_or_default(),
            &causes,
        ))
    }

    /// What etcd would refuse: an object over [`limits::MAX_OBJECT_BYTES`] as stored.
    fn check_stored_size(&self, object: &Value) -> Result<(), ApiError> {
        if limits::encoded_len(object) > limits::MAX_OBJECT_BYTES {
            return Err(ApiError::object_too_large());
        }
        Ok(())
    }

    pub(super) fn create(
        &self,
        body: Value,
        manager: &str,
        query: &Query,
    ) -> Result<Response, ApiError> {
        let mut store = lock(&self.shared.store);
        let created = self.create_locked(
            &mut store,
            body,
            None,
            manager,
            query.get("dryRun").is_some(),
        )?;
        drop(store);
        Ok(self.object_response(StatusCode::CREATED, &created))
    }

    pub(super) fn create_locked(
        &self,
        store: &mut Store,
        mut object: Value,
        ownership: Option<Ownership>,
        manager: &str,
        dry_run: bool,
    ) -> Result<Arc<Versioned>, ApiError> {
        let generate = meta_str(&object, "generateName")
            .filter(|_| meta_str(&object, "name").is_none_or(str::is_empty))
            .map(str::to_string);
        let name = match (
            meta_str(&object, "name").filter(|n| !n.is_empty()),
            &generate,
        ) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => self.generate_name(store, prefix)?,
            (None, None) => {
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
        self.check_annotations(&object)?;
        self.check_event(&object, None)?;
        self.validate(&object, None)?;
        if dry_run {
            return Ok(Versioned::new(object));
        }
        self.check_stored_size(&object)?;
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

    /// Commits `candidate` as the new state of `name` (whose stored version is `old`), keeping
    /// the server-owned metadata and skipping no-op writes (no new `resourceVersion`, no
    /// watch event).
    pub(super) fn commit_update(
        &self,
        store: &mut Store,
        name: &str,
        old: &Arc<Versioned>,
        mut candidate: Value,
        ownership: Ownership,
        dry_run: bool,
    ) -> Result<Arc<Versioned>, ApiError> {
        if let Some(body_name) = meta_str(&candidate, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old_meta = meta(&old.value).cloned().unwrap_or_default();
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
        if !same_generation_view(&candidate, &old.value) {
            let next = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut candidate).insert("generation".into(), json!(next));
        }
        self.check_annotations(&candidate)?;
        self.check_event(&candidate, Some(&old.value))?;
        self.validate(&candidate, Some(&old.value))?;
        if dry_run {
            return Ok(Versioned::new(candidate));
        }
        self.check_stored_size(&candidate)?;
        if candidate == old.value {
            store.set_ownership(&self.key(), &self.namespace, name, ownership);
            return Ok(old.clone());
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

    pub(super) fn check_precondition(
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
    pub(super) fn scoped_candidate(&self, old: &Value, written: Value, status: bool) -> Value {
        if status {
            return with_status_of(old, written);
        }
        if self.def.has_status {
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

    pub(super) fn update(
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
        // Custom resources only take conditional updates (the CRD strategy's
        // `AllowUnconditionalUpdate` is false); built-ins update the latest version.
        if self.def.custom && meta_str(&body, "resourceVersion").is_none_or(str::is_empty) {
            return Err(ApiError::invalid_field(
                &self.def.group,
                &self.def.kind,
                name,
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            ));
        }
        self.check_precondition(name, stored.value(), &body)?;
        let (old, ownership) = (stored.object.clone(), stored.ownership.clone());
        let dry_run = query.get("dryRun").is_some();
        self.write_over(
            &mut store, name, &old, ownership, body, status, manager, dry_run,
        )
    }

    pub(super) fn patch(
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
        if self.def.custom && media == "application/strategic-merge-patch+json" {
            // Strategic merge needs Go struct tags; custom resources have none.
            return Err(ApiError::unsupported_patch(&[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]));
        }
        let mut store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?;
        let old = stored.object.clone();
        let mut patched = self.present(old.value.clone());
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
                apply_json_patch(&mut patched, &patch)?;
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
        self.check_precondition(name, &old.value, &patched)?;
        let patched = self.to_storage(patched);
        let ownership = stored.ownership.clone();
        self.write_over(
            &mut store, name, &old, ownership, patched, status, manager, dry_run,
        )
    }

    /// The common end of PUT and PATCH: scope the write to the main resource or `/status`,
    /// record field ownership, then commit (admission, generation, resourceVersion, watch).
    #[allow(clippy::too_many_arguments)]
    fn write_over(
        &self,
        store: &mut Store,
        name: &str,
        old: &Arc<Versioned>,
        mut ownership: Ownership,
        written: Value,
        status: bool,
        manager: &str,
        dry_run: bool,
    ) -> Result<Response, ApiError> {
        let candidate = self.scoped_candidate(&old.value, written, status);
        ownership.record_update(
            ManagerKey {
                manager: manager.into(),
                status,
            },
            &old.value,
            &candidate,
            &self.def,
        );
        let updated = self.commit_update(store, name, old, candidate, ownership, dry_run)?;
        Ok(self.object_response(StatusCode::OK, &updated))
    }

    pub(super) fn apply(
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
            return Ok(self.object_response(StatusCode::CREATED, &created));
        };
        self.check_precondition(name, stored.value(), &config)?;
        let old_version = stored.object.clone();
        let old = old_version.value.clone();
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
        let mut candidate = old;
        ownership.apply(key, &mut candidate, &scoped, &self.def);
        let updated = self.commit_update(
            &mut store,
            name,
            &old_version,
            candidate,
            ownership,
            dry_run,
        )?;
        Ok(self.object_response(StatusCode::OK, &updated))
    }

    pub(super) fn delete(
        &self,
        name: &str,
        query: &Query,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        let options = DeleteOptions::parse(query, body)?;
        let mut store = lock(&self.shared.store);
        let stored = store
            .get(&self.key(), &self.namespace, name)
            .ok_or_else(|| self.not_found(name))?;
        let mut object = stored.value().clone();
        let ownership = stored.ownership.clone();
        self.check_delete_preconditions(name, &object, &options)?;
        if finalizers_empty(&object) {
            let details = self.deleted_status(name, &object);
            if !options.dry_run {
                store.remove(&self.key(), &self.namespace, name, object);
            }
            return Ok(ok_json(details));
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
        if options.dry_run {
            return Ok(ok_json(self.present(object)));
        }
        let marked = store.put(
            &self.key(),
            &self.namespace,
            name,
            object,
            ownership,
            EventType::Modified,
        );
        drop(store);
        Ok(self.object_response(StatusCode::OK, &marked))
    }

    /// `preconditions` of a DELETE: the API server's storage check, reported as a conflict.
    fn check_delete_preconditions(
        &self,
        name: &str,
        object: &Value,
        options: &DeleteOptions,
    ) -> Result<(), ApiError> {
        let failed = |what: &str, wanted: &str, actual: &str| {
            let key = if self.def.group.is_empty() || !self.def.custom {
                format!("/registry/{}/{}/{name}", self.def.plural, self.namespace)
            } else {
                format!(
                    "/registry/{}/{}/{}/{name}",
                    self.def.group, self.def.plural, self.namespace
                )
            };
            ApiError::conflict(
                &self.def.group,
                &self.def.plural,
                name,
                &format!(
                    "StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"
                ),
            )
        };
        if let Some(uid) = &options.uid {
            let actual = meta_str(object, "uid").unwrap_or_default();
            if uid != actual {
                return Err(failed("UID", uid, actual));
            }
        }
        if let Some(rv) = &options.resource_version {
            let actual = meta_str(object, "resourceVersion").unwrap_or_default();
            if rv != actual {
                return Err(failed("ResourceVersion", rv, actual));
            }
        }
        Ok(())
    }

    /// What a DELETE that removed the object answers: a success `Status` naming it.
    fn deleted_status(&self, name: &str, object: &Value) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": self.def.group,
                "kind": self.def.plural,
                "uid": meta_str(object, "uid").unwrap_or_default(),
            },
        })
    }

    pub(super) fn watch(
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
        let mut initial: Vec<Arc<Versioned>> = Vec::new();
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
                    .list_versions(&filter.key, scope)
                    .into_iter()
                    .filter(|o| self.selected(&filter.labels, &filter.fields, &o.value))
                    .cloned()
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
            metadata_only: self.metadata_only,
            include: query.get("includeObject").unwrap_or("Metadata").to_string(),
            bookmarks,
            columns_sent: false,
            last_rv,
        };
        let cancel = shared.watch_token();
        let backlog = Backlog {
            initial,
            send_initial,
            replay,
        };
        tokio::spawn(stream_ctx.run(tx, backlog, feed, timeout, cancel));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
        });
        Ok(stream_response(body))
    }
}

/// A list's continue token, in the API server's format: base64 of
/// `{"v":"meta.k8s.io/v1","rv":<revision>,"start":"<namespace>/<name>"}` (here `start` is the
/// last key returned). `rv: -1` continues from the latest state.
struct ContinueToken {
    rv: i64,
    start: String,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let json = json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": self.start});
        base64::engine::general_purpose::URL_SAFE.encode(json.to_string())
    }

    fn decode(text: &str) -> Result<ContinueToken, ApiError> {
        let invalid =
            |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(text)
            .map_err(|_| {
                invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
            })?;
        let json: Value =
            serde_json::from_slice(&bytes).map_err(|_| invalid("the token is not JSON"))?;
        if json.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
            return Err(invalid("server does not recognize this encoded key"));
        }
        let rv = json
            .get("rv")
            .and_then(Value::as_i64)
            .filter(|rv| *rv != 0)
            .ok_or_else(|| {
                invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
            })?;
        let start = json
            .get("start")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("encoded key is empty"))?;
        Ok(ContinueToken {
            rv,
            start: start.to_string(),
        })
    }
}

/// `410 Gone` for a continue token whose snapshot is gone, carrying a token that continues
/// from the latest state (the API server's `handleCompactedErrorForPaging`).
fn expired_continue(start: &str) -> ApiError {
    let mut err = ApiError::gone(
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
    );
    err.list_continue = Some(
        ContinueToken {
            rv: -1,
            start: start.to_string(),
        }
        .encode(),
    );
    err
}

/// The parts of `DeleteOptions` (body or query) the emulator honours.
struct DeleteOptions {
    dry_run: bool,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    fn parse(query: &Query, body: &Bytes) -> Result<DeleteOptions, ApiError> {
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
            })?
        };
        let mut dry_run: Vec<String> = body
            .get("dryRun")
            .and_then(Value::as_array)
            .map(|values| {
                values
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(value) = query.get("dryRun") {
            dry_run.push(value.to_string());
        }
        let mut causes = Vec::new();
        if dry_run.iter().any(|v| v != "All") {
            causes.push(Cause {
                field: "dryRun".into(),
                message: format!("Unsupported value: {dry_run:?}: supported values: \"All\""),
            });
        }
        let policy = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or(query.get("propagationPolicy"));
        if let Some(policy) = policy
            && !matches!(policy, "Orphan" | "Background" | "Foreground")
        {
            causes.push(Cause {
                field: "propagationPolicy".into(),
                message: format!(
                    "Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            });
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                &causes,
            ));
        }
        let precondition = |field: &str| {
            body.pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(DeleteOptions {
            dry_run: !dry_run.is_empty(),
            uid: precondition("uid"),
            resource_version: precondition("resourceVersion"),
        })
    }
}

/// What the API server fills into a new CRD's status: names accepted, Established.
pub(super) fn establish_crd(crd: &mut Value) {
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
