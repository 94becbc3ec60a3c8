//! Unknown fields, as a real API server treats them for each `fieldValidation` value:
//! `Ignore` drops them silently, `Warn` (the default) drops them with one `Warning` header
//! each (`299 - "unknown field \"spec.foo\""`, which kubectl prints), and `Strict` refuses
//! the request with `400 BadRequest`, `strict decoding error: unknown field "spec.foo", …`.
//!
//! What is known: for a custom resource, its CRD's structural schema (pruning follows
//! `properties`, `additionalProperties`, `items` and `x-kubernetes-preserve-unknown-fields`)
//! and `ObjectMeta`; for a built-in kind, the fields of its Kubernetes type (the object is
//! decoded into the `k8s-openapi` type and compared with what survives).

use super::error::ApiError;
use super::resources::ResourceDef;
use super::server::Query;
use k8s_openapi::api::{coordination, core, events, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn from_query(query: &Query) -> Result<FieldValidation, ApiError> {
        match query.get("fieldValidation") {
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Drops the fields of a client's object that its kind does not know and answers what the
/// `fieldValidation` mode says: the `Warning` texts to send, or the `Strict` refusal.
/// `whole` is false for patch bodies, which are checked only where a schema describes them.
pub fn check(
    def: &ResourceDef,
    object: &mut Value,
    mode: FieldValidation,
    whole: bool,
) -> Result<Vec<String>, ApiError> {
    let unknown = prune(def, object, whole);
    if unknown.is_empty() || mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|path| format!("unknown field \"{path}\""))
        .collect();
    if mode == FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            listed.join(", ")
        )));
    }
    Ok(listed)
}

/// A `Warning` header value (RFC 7234 `warn-code warn-agent "text"`), as the API server
/// writes it.
pub fn warning_header(text: &str) -> String {
    format!(
        "299 - \"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

fn prune(def: &ResourceDef, object: &mut Value, whole: bool) -> Vec<String> {
    let mut unknown = Vec::new();
    if def.custom {
        if let Some(metadata) = object.get_mut("metadata") {
            typed_unknown::<ObjectMeta>(metadata, "metadata", &mut unknown);
        }
        if let (Some(schema), Some(map)) = (&def.schema, object.as_object_mut()) {
            for (key, value) in map.iter_mut() {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(child) = schema.get("properties").and_then(|p| p.get(key)) {
                    prune_schema(child, value, &mut key.clone(), &mut unknown);
                }
            }
            let known = schema.get("properties").and_then(Value::as_object);
            map.retain(|key, _| {
                let keep = matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                    || known.is_some_and(|k| k.contains_key(key));
                if !keep {
                    unknown.push(key.clone());
                }
                keep
            });
        }
    } else if whole {
        builtin_unknown(def, object, &mut unknown);
    }
    for path in &unknown {
        remove_path(object, path);
    }
    unknown.sort();
    unknown.dedup();
    unknown
}

/// Drops what `schema` does not declare from `value`, recording each dropped field's path.
/// `path` is where `value` is (`spec.users[3]`); it is extended in place for the children
/// and restored, rather than formatted anew for each of the thousands of fields of a large
/// custom resource, which is checked on every write.
fn prune_schema(schema: &Value, value: &mut Value, path: &mut String, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let mut drop = Vec::new();
            for (key, child) in map.iter_mut() {
                // A patch's `null` removes a field; there is nothing to prune.
                if child.is_null() {
                    continue;
                }
                let sub = match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => sub,
                    (None, Some(sub)) if sub.is_object() => sub,
                    (None, Some(Value::Bool(true))) => continue,
                    (None, _) if preserve => continue,
                    (None, _) => {
                        drop.push(key.clone());
                        continue;
                    }
                };
                // Scalars have nothing to prune below them.
                if matches!(child, Value::Object(_) | Value::Array(_)) {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    prune_schema(sub, child, path, unknown);
                    path.truncate(len);
                }
            }
            for key in drop {
                map.remove(&key);
                unknown.push(format!("{path}.{key}"));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    if !matches!(item, Value::Object(_) | Value::Array(_)) {
                        continue;
                    }
                    let len = path.len();
                    use std::fmt::Write;
                    // Writing to a String cannot fail.
                    let _ = write!(path, "[{i}]");
                    prune_schema(item_schema, item, path, unknown);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

fn builtin_unknown(def: &ResourceDef, object: &mut Value, unknown: &mut Vec<String>) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    // The typed decode insists on the kind's own apiVersion and kind.
    map.insert(
        "apiVersion".into(),
        Value::String(def.api_version(def.versions.first().map_or("v1", String::as_str))),
    );
    map.insert("kind".into(), Value::String(def.kind.clone()));
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Secret") => typed_unknown::<core::v1::Secret>(object, "", unknown),
        ("", "Namespace") => typed_unknown::<core::v1::Namespace>(object, "", unknown),
        ("", "Event") => typed_unknown::<core::v1::Event>(object, "", unknown),
        ("events.k8s.io", "Event") => typed_unknown::<events::v1::Event>(object, "", unknown),
        ("coordination.k8s.io", "Lease") => {
            typed_unknown::<coordination::v1::Lease>(object, "", unknown)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            typed_unknown::<CustomResourceDefinition>(object, "", unknown)
        }
        ("rbac.authorization.k8s.io", "Role") => {
            typed_unknown::<rbac::v1::Role>(object, "", unknown)
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            typed_unknown::<rbac::v1::ClusterRole>(object, "", unknown)
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            typed_unknown::<rbac::v1::RoleBinding>(object, "", unknown)
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            typed_unknown::<rbac::v1::ClusterRoleBinding>(object, "", unknown)
        }
        _ => {}
    }
}

/// The fields of `value` its Kubernetes type `T` drops. A value `T` cannot decode (a
/// missing required field, a wrong type) is left to admission, which words the problem.
fn typed_unknown<T: DeserializeOwned + Serialize>(
    value: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) {
    let Ok(typed) = serde_json::from_value::<T>(value.clone()) else {
        return;
    };
    let Ok(known) = serde_json::to_value(&typed) else {
        return;
    };
    diff(value, &known, path, unknown);
}

fn diff(original: &Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (original, known) {
        (Value::Object(orig), Value::Object(kept)) => {
            for (key, value) in orig {
                if value.is_null() {
                    continue;
                }
                match kept.get(key) {
                    Some(child) => diff(value, child, &join(key), unknown),
                    None => unknown.push(join(key)),
                }
            }
        }
        (Value::Array(orig), Value::Array(kept)) => {
            for (i, (a, b)) in orig.iter().zip(kept).enumerate() {
                diff(a, b, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Removes the field at a path in the notation above (`spec.users[3].lastname`).
fn remove_path(object: &mut Value, path: &str) {
    let mut segments: Vec<(String, Vec<usize>)> = Vec::new();
    for part in path.split('.') {
        let (name, indices) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        let indices = indices
            .split(['[', ']'])
            .filter_map(|i| i.parse().ok())
            .collect();
        segments.push((name.to_string(), indices));
    }
    let Some((last, _)) = segments.pop() else {
        return;
    };
    let mut current = object;
    for (name, indices) in segments {
        let Some(next) = current.get_mut(&name) else {
            return;
        };
        current = next;
        for index in indices {
            let Some(next) = current.get_mut(index) else {
                return;
            };
            current = next;
        }
    }
    if let Some(map) = current.as_object_mut() {
        map.remove(&last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_pruning_drops_undeclared_fields_and_keeps_preserved_ones() {
        let schema = json!({"type": "object", "properties": {
            "users": {"type": "array", "items": {"type": "object", "properties": {"phone": {"type": "string"}}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }});
        let mut spec =
            json!({"users": [{"phone": "1", "lastname": "x"}], "free": {"any": 1}, "bogus": true});
        let mut unknown = Vec::new();
        prune_schema(&schema, &mut spec, &mut "spec".to_string(), &mut unknown);
        assert_eq!(unknown, ["spec.users[0].lastname", "spec.bogus"]);
        assert_eq!(spec, json!({"users": [{"phone": "1"}], "free": {"any": 1}}));
    }

    #[test]
    fn typed_kinds_report_fields_their_type_lacks() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "colour": "red"},
                            "data": {"a": "Yg=="}, "extra": 1});
        let mut unknown = Vec::new();
        typed_unknown::<core::v1::Secret>(&secret, "", &mut unknown);
        assert_eq!(unknown, ["extra", "metadata.colour"]);
        assert_eq!(
            warning_header("unknown field \"x\""),
            r#"299 - "unknown field \"x\"""#
        );
    }
}
