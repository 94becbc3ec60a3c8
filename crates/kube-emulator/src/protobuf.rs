//! Protobuf request bodies. kubectl (client-go 1.32/1.33) sends typed built-in objects as
//! `application/vnd.kubernetes.protobuf` without asking the server first, and does not fall
//! back to JSON on `415` (client-go's fallback covers CBOR only), so `kubectl create secret
//! generic` needs the server to read protobuf. The emulator decodes the kinds kubectl's
//! `create` subcommands write among those it serves (Secret, Namespace and the RBAC kinds)
//! into the same JSON a JSON client would have sent; it always answers in JSON, which
//! kubectl accepts (`Accept: application/vnd.kubernetes.protobuf,application/json`).
//!
//! Custom resources have no protobuf form: the API server answers `415`, as here.

use super::error::ApiError;
use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;
use serde_json::{Map, Value, json};

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// Every protobuf-encoded Kubernetes object starts with these four bytes.
const MAGIC: &[u8] = b"k8s\0";

/// Whether a `Content-Type` names protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().map(str::trim) == Some(MEDIA_TYPE)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Decodes a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the protobuf body does not start with the Kubernetes magic number"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(envelope)
        .map_err(|e| bad(format!("cannot decode the protobuf envelope: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let failed = |e: prost::DecodeError| bad(format!("cannot decode {api_version} {kind}: {e}"));
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => secret(core::Secret::decode(raw.as_slice()).map_err(failed)?),
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(raw.as_slice()).map_err(failed)?;
            let mut out = with_meta(ns.metadata);
            if let Some(spec) = ns.spec.filter(|s| !s.finalizers.is_empty()) {
                out["spec"] = json!({"finalizers": spec.finalizers});
            }
            out
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let role = rbac::Role::decode(raw.as_slice()).map_err(failed)?;
            let mut out = with_meta(role.metadata);
            out["rules"] = rules(role.rules);
            out
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let role = rbac::ClusterRole::decode(raw.as_slice()).map_err(failed)?;
            let mut out = with_meta(role.metadata);
            out["rules"] = rules(role.rules);
            out
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let b = rbac::RoleBinding::decode(raw.as_slice()).map_err(failed)?;
            binding(b.metadata, b.subjects, b.role_ref)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let b = rbac::ClusterRoleBinding::decode(raw.as_slice()).map_err(failed)?;
            binding(b.metadata, b.subjects, b.role_ref)
        }
        _ => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the emulator reads protobuf only for Secrets, Namespaces and RBAC objects, not {api_version} {kind}: send it as application/json"
                ),
            ));
        }
    };
    object["apiVersion"] = Value::String(api_version);
    object["kind"] = Value::String(kind);
    Ok(object)
}

fn secret(secret: core::Secret) -> Value {
    let mut out = with_meta(secret.metadata);
    if !secret.data.is_empty() {
        let data: Map<String, Value> = secret
            .data
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        out["data"] = Value::Object(data);
    }
    if !secret.string_data.is_empty() {
        out["stringData"] = json!(secret.string_data);
    }
    if let Some(type_) = secret.r#type.filter(|t| !t.is_empty()) {
        out["type"] = Value::String(type_);
    }
    if let Some(immutable) = secret.immutable {
        out["immutable"] = Value::Bool(immutable);
    }
    out
}

fn rules(rules: Vec<rbac::PolicyRule>) -> Value {
    Value::Array(
        rules
            .into_iter()
            .map(|r| {
                let mut rule = Map::new();
                for (field, values) in [
                    ("verbs", r.verbs),
                    ("apiGroups", r.api_groups),
                    ("resources", r.resources),
                    ("resourceNames", r.resource_names),
                    ("nonResourceURLs", r.non_resource_ur_ls),
                ] {
                    if !values.is_empty() || field == "verbs" {
                        rule.insert(field.into(), json!(values));
                    }
                }
                Value::Object(rule)
            })
            .collect(),
    )
}

fn binding(
    metadata: Option<meta::ObjectMeta>,
    subjects: Vec<rbac::Subject>,
    role_ref: Option<rbac::RoleRef>,
) -> Value {
    let mut out = with_meta(metadata);
    let subjects: Vec<Value> = subjects
        .into_iter()
        .map(|s| {
            let mut subject = Map::new();
            for (field, value) in [
                ("kind", s.kind),
                ("apiGroup", s.api_group),
                ("name", s.name),
                ("namespace", s.namespace),
            ] {
                if let Some(value) = value.filter(|v| !v.is_empty()) {
                    subject.insert(field.into(), Value::String(value));
                }
            }
            Value::Object(subject)
        })
        .collect();
    if !subjects.is_empty() {
        out["subjects"] = Value::Array(subjects);
    }
    let role_ref = role_ref.unwrap_or_default();
    out["roleRef"] = json!({
        "apiGroup": role_ref.api_group.unwrap_or_default(),
        "kind": role_ref.kind.unwrap_or_default(),
        "name": role_ref.name.unwrap_or_default(),
    });
    out
}

/// An object holding only `metadata`, from protobuf `ObjectMeta` (the fields a client sets).
fn with_meta(metadata: Option<meta::ObjectMeta>) -> Value {
    let m = metadata.unwrap_or_default();
    let mut out = Map::new();
    for (field, value) in [
        ("name", m.name),
        ("generateName", m.generate_name),
        ("namespace", m.namespace),
        ("uid", m.uid),
        ("resourceVersion", m.resource_version),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(field.into(), Value::String(value));
        }
    }
    if !m.labels.is_empty() {
        out.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        out.insert("annotations".into(), json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(m.finalizers));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .into_iter()
            .map(|r| {
                json!({
                    "apiVersion": r.api_version.unwrap_or_default(),
                    "kind": r.kind.unwrap_or_default(),
                    "name": r.name.unwrap_or_default(),
                    "uid": r.uid.unwrap_or_default(),
                    "controller": r.controller,
                    "blockOwnerDeletion": r.block_owner_deletion,
                })
            })
            .collect();
        out.insert("ownerReferences".into(), Value::Array(refs));
    }
    json!({ "metadata": out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_from_protobuf_to_json() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("creds".into()),
                ..Default::default()
            }),
            data: [("a".to_string(), b"b".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let envelope = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
            }),
            raw: Some(secret.encode_to_vec()),
            ..Default::default()
        };
        let mut body = MAGIC.to_vec();
        body.extend(envelope.encode_to_vec());
        let json = decode(&body).unwrap();
        assert_eq!(
            json,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "data": {"a": "Yg=="}, "type": "Opaque"})
        );
    }
}
