//! Offline validation of the operator's objects (UserBatch, KooDriveAccount,
//! ClusterKooDriveAccount) against their CRD's OpenAPI schema and CEL rules, shared by
//! `koodrive-operator validate` and the API emulator's admission.
//!
//! The schema is not restated here: [`validate_object`] walks the `openAPIV3Schema` of the
//! CRD generated from [`crate::crd`] (so this check and the API server can never disagree about
//! what is allowed) and evaluates its `x-kubernetes-validations` with kube's local CEL engine.
//! The walker covers the structural-schema subset the CRD uses: `type`, `nullable`,
//! `properties`/`required`, `additionalProperties`, `items`, string length, `pattern`, `enum`,
//! `format: date-time`, item and property counts, numeric bounds, and `x-kubernetes-list-type` map/set
//! uniqueness. Messages follow the API server's wording (`Required value`, `Too long: …`,
//! `Duplicate value: …`) so they read the same offline and at `kubectl apply`.

use crate::crd::CrdKind;
use kube::core::cel::{CompiledSchema, ErrorKind as CelErrorKind, Validator, compile_schema};
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

/// One problem found in a manifest, located by its field path (e.g. `spec.users[3].phone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// Path reported for a problem with the object as a whole.
pub const ROOT_PATH: &str = "<root>";

impl Violation {
    fn new(path: impl Into<String>, kind: Kind, detail: impl AsRef<str>) -> Self {
        let detail = detail.as_ref();
        let problem = if detail.is_empty() {
            kind.label().to_owned()
        } else {
            format!("{}: {detail}", kind.label())
        };
        Violation {
            path: path.into(),
            problem,
        }
    }

    /// The API server's `StatusCause.reason` for this violation (`FieldValueRequired`,
    /// `FieldValueInvalid`, …), for an emulator answering `422 Invalid`.
    pub fn reason(&self) -> &'static str {
        Kind::ALL
            .iter()
            .find(|kind| self.problem.starts_with(kind.label()))
            .map_or("FieldValueInvalid", |kind| kind.reason())
    }
}

/// The API server's field error types (`k8s.io/apimachinery/pkg/util/validation/field`), plus
/// unknown fields, which strict field validation rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Required,
    Forbidden,
    Invalid,
    Unsupported,
    Duplicate,
    TooLong,
    TooMany,
    Unknown,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Required,
        Kind::Forbidden,
        Kind::Invalid,
        Kind::Unsupported,
        Kind::Duplicate,
        Kind::TooLong,
        Kind::TooMany,
        Kind::Unknown,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Required => "Required value",
            Kind::Forbidden => "Forbidden",
            Kind::Invalid => "Invalid value",
            Kind::Unsupported => "Unsupported value",
            Kind::Duplicate => "Duplicate value",
            Kind::TooLong => "Too long",
            Kind::TooMany => "Too many",
            Kind::Unknown => "Unknown field",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Kind::Required => "FieldValueRequired",
            Kind::Forbidden => "FieldValueForbidden",
            Kind::Invalid => "FieldValueInvalid",
            Kind::Unsupported => "FieldValueNotSupported",
            Kind::Duplicate => "FieldValueDuplicate",
            Kind::TooLong => "FieldValueTooLong",
            Kind::TooMany => "FieldValueTooMany",
            // The API server has no cause type of its own for this (strict decoding reports it
            // as a 400 with the message only); "invalid" is what clients expect to handle.
            Kind::Unknown => "FieldValueInvalid",
        }
    }
}

/// One CRD's `openAPIV3Schema` as JSON, and its CEL rules compiled.
struct KindSchema {
    schema: Value,
    rules: CompiledSchema,
    /// Whether the schema declares any `default`: kube-cel applies defaults before
    /// evaluating, from the node it is given downwards, so rules may only be evaluated
    /// subtree by subtree (see [`rule_sites`]) when no default above a rule could add the
    /// value it checks.
    has_defaults: bool,
}

impl KindSchema {
    fn of(kind: CrdKind) -> KindSchema {
        let crd = kind.crd();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|version| version.schema.as_ref())
            .and_then(|schema| schema.open_api_v3_schema.as_ref());
        // The CRD comes from our own derive, which always emits a schema; an empty one would
        // make every field unknown, which the tests would notice at once.
        let schema = schema
            .and_then(|schema| serde_json::to_value(schema).ok())
            .unwrap_or(Value::Null);
        let rules = compile_schema(&schema);
        let has_defaults = contains_key(&schema, "default");
        KindSchema {
            schema,
            rules,
            has_defaults,
        }
    }
}

/// Every CRD's schema, in [`CrdKind::ALL`] order, built once.
static SCHEMAS: LazyLock<Vec<KindSchema>> =
    LazyLock::new(|| CrdKind::ALL.into_iter().map(KindSchema::of).collect());

fn kind_schema(kind: CrdKind) -> &'static KindSchema {
    let index = CrdKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default();
    &SCHEMAS[index]
}

/// The CEL environment with Kubernetes' extension functions, built once.
static CEL: LazyLock<Validator> = LazyLock::new(Validator::new);

/// Every `pattern` in the schema, compiled once. A pattern that does not compile maps to
/// `None` and is reported as a violation rather than silently passing.
static PATTERNS: LazyLock<BTreeMap<String, Option<Regex>>> = LazyLock::new(|| {
    let mut patterns = BTreeMap::new();
    for schema in SCHEMAS.iter() {
        collect_patterns(&schema.schema, &mut patterns);
    }
    patterns
});

fn collect_patterns(schema: &Value, out: &mut BTreeMap<String, Option<Regex>>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(pattern)) = map.get("pattern") {
                out.entry(pattern.clone())
                    .or_insert_with(|| Regex::new(pattern).ok());
            }
            map.values().for_each(|child| collect_patterns(child, out));
        }
        Value::Array(items) => items.iter().for_each(|child| collect_patterns(child, out)),
        _ => {}
    }
}

/// The UserBatch CRD's `openAPIV3Schema` as JSON: the document [`validate_userbatch`] walks.
pub fn userbatch_schema() -> &'static Value {
    schema_of(CrdKind::Userbatch)
}

/// A CRD's `openAPIV3Schema` as JSON: the document [`validate_object`] walks for that kind.
pub fn schema_of(kind: CrdKind) -> &'static Value {
    &kind_schema(kind).schema
}

/// Validates one UserBatch object (as JSON) the way the API server would at admission.
/// Returns every violation found; empty means valid.
///
/// The object is a whole resource: `apiVersion` and `kind` must name `koodrive.io/v1alpha1`
/// `UserBatch`, `metadata.name` (or `generateName`) must be a DNS subdomain, `spec` must
/// satisfy the schema and its CEL rules, and `status`, if present, must too.
pub fn validate_userbatch(object: &Value) -> Vec<Violation> {
    validate_object(CrdKind::Userbatch, object)
}

/// Validates one object of `kind` (as JSON) the way the API server would at admission: as
/// [`validate_userbatch`] does for UserBatches.
pub fn validate_object(kind: CrdKind, object: &Value) -> Vec<Violation> {
    validate_changed(kind, object, None)
}

/// Validates an update of the stored object `old` to `object` the way the API server does
/// since validation ratcheting (Kubernetes 1.30): a top-level field (`spec`, `status`) that
/// the update leaves unchanged passed when it was stored and is not checked again, schema
/// nor CEL. A status write to a 1000-user UserBatch thus checks the status only; the spec's
/// CEL rules were most of the cost of every such write.
pub fn validate_update(kind: CrdKind, object: &Value, old: &Value) -> Vec<Violation> {
    validate_changed(kind, object, Some(old))
}

/// [`validate_update`] for UserBatches.
pub fn validate_userbatch_update(object: &Value, old: &Value) -> Vec<Violation> {
    validate_update(CrdKind::Userbatch, object, old)
}

/// The top-level fields the schemas describe, and that ratcheting may leave unchecked.
const RATCHETED_FIELDS: [&str; 2] = ["spec", "status"];

fn validate_changed(kind: CrdKind, object: &Value, old: Option<&Value>) -> Vec<Violation> {
    let compiled = kind_schema(kind);
    let mut out = Vec::new();
    let Some(fields) = object.as_object() else {
        out.push(Violation::new(
            ROOT_PATH,
            Kind::Invalid,
            format!("{}: must be of type object", quoted_type(object)),
        ));
        return out;
    };

    check_constant(
        fields.get("apiVersion"),
        "apiVersion",
        &format!("{}/v1alpha1", crate::crd::GROUP),
        &mut out,
    );
    check_constant(fields.get("kind"), "kind", kind.kind(), &mut out);
    match fields.get("metadata") {
        None | Some(Value::Null) => out.push(Violation::new("metadata", Kind::Required, "")),
        Some(metadata) => check_metadata(metadata, &mut out),
    }

    // Top-level fields an update leaves as stored (never on a create).
    let unchanged: Vec<&str> = RATCHETED_FIELDS
        .into_iter()
        .filter(|field| {
            old.and_then(|old| old.get(*field))
                .is_some_and(|before| fields.get(*field) == Some(before))
        })
        .collect();
    // The CRD's root schema describes spec and status; the API server owns the other three.
    let mut skipped = vec!["apiVersion", "kind", "metadata"];
    skipped.extend(&unchanged);
    check_object_fields(&compiled.schema, fields, "", &skipped, &mut out);

    let schema_clean = out.is_empty();
    check_cel(compiled, object, &unchanged, schema_clean, &mut out);
    out
}

/// One document of a manifest file, and what validation made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// A UserBatch (by `apiVersion` group or `kind`), checked; empty `violations` means valid.
    UserBatch {
        /// `namespace/name`, or just the name, or `<unnamed>`.
        name: String,
        violations: Vec<Violation>,
    },
    /// A KooDriveAccount or ClusterKooDriveAccount, checked; empty `violations` means valid.
    Account {
        /// `KooDriveAccount` or `ClusterKooDriveAccount`.
        kind: &'static str,
        /// `namespace/name`, or just the name, or `<unnamed>`.
        name: String,
        violations: Vec<Violation>,
    },
    /// Another kind of object, or something that is not an object at all: not checked.
    Skipped { what: String },
}

/// Why a manifest could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Yaml(crate::manifests::YamlProblem),
}

/// Parses a (multi-document) YAML manifest and validates every UserBatch in it; other
/// documents are reported as skipped, empty documents are left out.
pub fn validate_manifests(yaml: &str) -> Result<Vec<Document>, ManifestError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .map_err(|err| ManifestError::Yaml(crate::manifests::YamlProblem::of(&err)))?;
    Ok(documents
        .iter()
        .filter(|document| !document.is_null())
        .map(classify_and_validate)
        .collect())
}

/// A real cluster's size limits, as `validate` checks a manifest against them. The same
/// numbers and measurement as the API emulator's `kube_emulator::limits` (a test keeps them
/// equal); repeated here because production builds carry no emulator.
pub mod size {
    use serde_json::Value;

    /// All annotations of one object together (apimachinery's `TotalAnnotationSizeLimitB`).
    pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
    /// One request body (the API server's `MaxRequestBodyBytes`).
    pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;
    /// One stored object (etcd's default `--max-request-bytes`).
    pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024 / 2;
    /// Where client-side `kubectl apply` keeps its copy of the manifest.
    pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

    /// Bytes of `value` as Go's `encoding/json` (the API server, kubectl) writes it: `<`,
    /// `>`, `&`, U+2028, U+2029 and control characters take six bytes.
    pub fn encoded_len(value: &Value) -> usize {
        match value {
            Value::Null | Value::Bool(true) => 4,
            Value::Bool(false) => 5,
            Value::Number(n) => n.to_string().len(),
            Value::String(s) => string_len(s),
            Value::Array(items) => {
                2 + items.iter().map(encoded_len).sum::<usize>() + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                2 + map
                    .iter()
                    .map(|(k, v)| string_len(k) + 1 + encoded_len(v))
                    .sum::<usize>()
                    + map.len().saturating_sub(1)
            }
        }
    }

    fn string_len(s: &str) -> usize {
        2 + s
            .chars()
            .map(|c| match c {
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => 6,
                '"' | '\\' | '\n' | '\r' | '\t' => 2,
                c if (c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            })
            .sum::<usize>()
    }

    /// `value` as Go's `encoding/json` writes it: keys sorted, HTML characters escaped.
    pub fn encode(value: &Value) -> String {
        let mut out = String::with_capacity(encoded_len(value));
        write(value, &mut out);
        out
    }

    fn write(value: &Value, out: &mut String) {
        match value {
            Value::String(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                            out.push_str(&format!("\\u{:04x}", c as u32))
                        }
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(&Value::String(key.clone()), out);
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    /// The object as client-side `kubectl apply` sends and stores it: with a copy of the
    /// manifest (annotations emptied of an older copy, plus a newline) in
    /// [`LAST_APPLIED_ANNOTATION`], as kubectl's `GetModifiedConfiguration` builds it.
    pub fn after_client_side_apply(object: &Value) -> Value {
        let mut object = object.clone();
        let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return object;
        };
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !annotations.is_object() {
            return object;
        }
        if let Some(map) = annotations.as_object_mut() {
            map.remove(LAST_APPLIED_ANNOTATION);
        }
        let mut copy = encode(&object);
        copy.push('\n');
        object["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = Value::String(copy);
        object
    }

    /// Bytes the annotations of `object` count against [`MAX_ANNOTATIONS_BYTES`].
    pub fn annotations_size(object: &Value) -> usize {
        object
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .map(|a| {
                a.iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// What a manifest would hit on a real cluster when applied with plain `kubectl apply`:
/// the annotation limit (its own copy in the last-applied annotation), the request body
/// limit and etcd's object limit. Each violation names the limit.
pub fn size_violations(object: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let applied = size::after_client_side_apply(object);
    let annotations = size::annotations_size(&applied);
    if annotations > size::MAX_ANNOTATIONS_BYTES {
        out.push(Violation::new(
            "metadata.annotations",
            Kind::TooLong,
            format!(
                "must have at most {} bytes: the annotations would hold {annotations} bytes once \
                 client-side `kubectl apply` copies the manifest into {}; split the users over \
                 several UserBatches (or apply with --server-side)",
                size::MAX_ANNOTATIONS_BYTES,
                size::LAST_APPLIED_ANNOTATION
            ),
        ));
    }
    // What client-side apply sends, and etcd stores: the object with its copy.
    let sent = size::encoded_len(&applied);
    if sent > size::MAX_REQUEST_BODY_BYTES {
        out.push(Violation::new(
            ROOT_PATH,
            Kind::TooLong,
            format!(
                "the request body would be {sent} bytes, over the API server's limit of {} bytes (3 MiB)",
                size::MAX_REQUEST_BODY_BYTES
            ),
        ));
    }
    if sent > size::MAX_OBJECT_BYTES {
        out.push(Violation::new(
            ROOT_PATH,
            Kind::TooLong,
            format!(
                "the stored object would be {sent} bytes, over etcd's limit of {} bytes (1.5 MiB) per object",
                size::MAX_OBJECT_BYTES
            ),
        ));
    }
    out
}

fn classify_and_validate(document: &Value) -> Document {
    let text = |field: &str| document.get(field).and_then(Value::as_str);
    let kind = text("kind");
    let api_version = text("apiVersion");
    let group = api_version
        .and_then(|v| v.split_once('/'))
        .map(|(group, _)| group);
    let metadata = document.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let shown_name = || match (namespace, name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "<unnamed>".to_owned(),
    };
    let account = [CrdKind::Koodriveaccount, CrdKind::Clusterkoodriveaccount]
        .into_iter()
        .find(|account| kind == Some(account.kind()));
    if let Some(account) = account {
        return Document::Account {
            kind: account.kind(),
            name: shown_name(),
            violations: validate_object(account, document),
        };
    }
    if kind == Some("UserBatch") || group == Some(crate::crd::GROUP) {
        let name = shown_name();
        let mut violations = validate_userbatch(document);
        violations.extend(size_violations(document));
        return Document::UserBatch { name, violations };
    }
    let what = match (api_version, kind) {
        (_, Some(kind)) => {
            let name = document
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("<unnamed>");
            format!("{} {kind} {name}", api_version.unwrap_or("<no apiVersion>"))
        }
        (Some(api_version), None) => format!("{api_version} object without a kind"),
        (None, None) => format!(
            "a document that is not a Kubernetes object ({})",
            quoted_type(document)
        ),
    };
    Document::Skipped { what }
}

fn check_constant(value: Option<&Value>, path: &str, expected: &str, out: &mut Vec<Violation>) {
    match value {
        None | Some(Value::Null) => out.push(Violation::new(path, Kind::Required, "")),
        Some(Value::String(actual)) if actual == expected => {}
        Some(other) => out.push(Violation::new(
            path,
            Kind::Unsupported,
            format!(
                "{}: supported values: \"{expected}\"",
                display_value(path, other)
            ),
        )),
    }
}

/// ObjectMeta's fields: anything else in `metadata` is unknown to the API server.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

static DNS_SUBDOMAIN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(crate::crd::OBJECT_NAME_PATTERN).ok());
static DNS_LABEL: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").ok());

fn check_metadata(metadata: &Value, out: &mut Vec<Violation>) {
    let Some(fields) = metadata.as_object() else {
        out.push(type_violation("metadata", metadata, "object"));
        return;
    };
    for key in fields.keys() {
        if !OBJECT_META_FIELDS.contains(&key.as_str()) {
            out.push(unknown_field(&join("metadata", key)));
        }
    }
    match (fields.get("name"), fields.get("generateName")) {
        (Some(Value::String(name)), _) => check_name(
            "metadata.name",
            name,
            253,
            &DNS_SUBDOMAIN,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
            out,
        ),
        (Some(other), _) if !other.is_null() => {
            out.push(type_violation("metadata.name", other, "string"))
        }
        (_, Some(Value::String(_))) => {}
        _ => out.push(Violation::new(
            "metadata.name",
            Kind::Required,
            "name or generateName is required",
        )),
    }
    match fields.get("namespace") {
        None | Some(Value::Null) => {}
        Some(Value::String(namespace)) => check_name(
            "metadata.namespace",
            namespace,
            63,
            &DNS_LABEL,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character",
            out,
        ),
        Some(other) => out.push(type_violation("metadata.namespace", other, "string")),
    }
    for map in ["labels", "annotations"] {
        let path = join("metadata", map);
        match fields.get(map) {
            None | Some(Value::Null) => {}
            Some(Value::Object(entries)) => {
                for (key, value) in entries {
                    if !value.is_string() {
                        out.push(type_violation(&join(&path, key), value, "string"));
                    }
                }
            }
            Some(other) => out.push(type_violation(&path, other, "object")),
        }
    }
}

fn check_name(
    path: &str,
    name: &str,
    max: usize,
    pattern: &Option<Regex>,
    rule: &str,
    out: &mut Vec<Violation>,
) {
    if name.len() > max {
        out.push(Violation::new(
            path,
            Kind::TooLong,
            format!("may not be longer than {max} characters"),
        ));
    }
    if !pattern.as_ref().is_some_and(|re| re.is_match(name)) {
        out.push(Violation::new(
            path,
            Kind::Invalid,
            format!("{}: {rule}", json_quote(name)),
        ));
    }
}

/// Checks `value` against one schema node and, recursively, its children.
fn check_node(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if value.is_null() {
        if !is_nullable(schema) {
            out.push(type_violation(path, value, schema_type(schema)));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || is_integer(value)) {
            out.push(type_violation(path, value, "integer or string"));
        }
        return;
    }
    match schema_type(schema) {
        "object" => match value.as_object() {
            Some(fields) => check_object_fields(schema, fields, path, &[], out),
            None => out.push(type_violation(path, value, "object")),
        },
        "array" => match value.as_array() {
            Some(items) => check_array(schema, items, path, out),
            None => out.push(type_violation(path, value, "array")),
        },
        "string" => match value.as_str() {
            Some(text) => check_string(schema, text, path, out),
            None => out.push(type_violation(path, value, "string")),
        },
        "integer" if is_integer(value) => check_number(schema, value, path, out),
        "number" if value.is_number() => check_number(schema, value, path, out),
        "boolean" if value.is_boolean() => {}
        // An untyped node is only legal where unknown fields are preserved: anything goes.
        "" => {}
        expected => out.push(type_violation(path, value, expected)),
    }
    check_enum(schema, value, path, out);
}

/// Checks an object's fields; `checked_elsewhere` names fields that are neither walked nor
/// reported as unknown (the root's `apiVersion`/`kind`/`metadata`).
fn check_object_fields(
    schema: &Value,
    fields: &serde_json::Map<String, Value>,
    path: &str,
    checked_elsewhere: &[&str],
    out: &mut Vec<Violation>,
) {
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && fields.len() as u64 > max
    {
        out.push(Violation::new(
            path,
            Kind::TooMany,
            format!("{}: must have at most {max} items", fields.len()),
        ));
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    // A `null` for a field that is not nullable is pruned by the API server, i.e. absent.
    let present = |name: &str| match (fields.get(name), properties.and_then(|p| p.get(name))) {
        (None, _) => false,
        (Some(Value::Null), Some(child)) => is_nullable(child),
        (Some(Value::Null), None) => false,
        (Some(_), _) => true,
    };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !present(name) {
                out.push(Violation::new(join(path, name), Kind::Required, ""));
            }
        }
    }
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve_unknown = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    for (name, value) in fields {
        if checked_elsewhere.contains(&name.as_str()) {
            continue;
        }
        let child_path = join(path, name);
        match properties.and_then(|p| p.get(name)) {
            Some(child) => {
                if !value.is_null() || is_nullable(child) {
                    check_node(child, value, &child_path, out);
                }
            }
            None => match additional {
                Some(child) => check_node(child, value, &child_path, out),
                None if preserve_unknown => {}
                None => out.push(unknown_field(&child_path)),
            },
        }
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Violation>) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        out.push(Violation::new(
            path,
            Kind::TooMany,
            format!("{}: must have at most {max} items", items.len()),
        ));
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        out.push(Violation::new(
            path,
            Kind::Invalid,
            format!("{}: must have at least {min} item(s)", items.len()),
        ));
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            check_node(item_schema, item, &format!("{path}[{index}]"), out);
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => check_map_keys(schema, items, path, out),
        Some("set") => {
            let mut seen = HashSet::new();
            for (index, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    out.push(Violation::new(
                        format!("{path}[{index}]"),
                        Kind::Duplicate,
                        item.to_string(),
                    ));
                }
            }
        }
        _ => {}
    }
}

/// A list-map's items must be unique by their key fields, like the API server enforces.
fn check_map_keys(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Violation>) {
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut seen = HashSet::new();
    for (index, item) in items.iter().enumerate() {
        let Some(fields) = item.as_object() else {
            continue;
        };
        let key: serde_json::Map<String, Value> = keys
            .iter()
            .filter_map(|k| fields.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        // An item missing a key field is already reported as `Required value`.
        if key.len() != keys.len() {
            continue;
        }
        let key = Value::Object(key).to_string();
        if !seen.insert(key.clone()) {
            out.push(Violation::new(
                format!("{path}[{index}]"),
                Kind::Duplicate,
                key,
            ));
        }
    }
}

fn check_string(schema: &Value, text: &str, path: &str, out: &mut Vec<Violation>) {
    // OpenAPI lengths count characters, as the API server does, not bytes.
    let length = text.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && length > max
    {
        out.push(Violation::new(
            path,
            Kind::TooLong,
            format!("may not be longer than {max} characters"),
        ));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && length < min
    {
        out.push(Violation::new(
            path,
            Kind::Invalid,
            format!(
                "{}: must be at least {min} character(s) long",
                display_str(path, text)
            ),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match PATTERNS.get(pattern) {
            Some(Some(re)) if re.is_match(text) => {}
            Some(Some(_)) => out.push(Violation::new(
                path,
                Kind::Invalid,
                format!("{}: should match '{pattern}'", display_str(path, text)),
            )),
            _ => out.push(Violation::new(
                path,
                Kind::Invalid,
                format!("the schema's pattern '{pattern}' is not a valid regular expression"),
            )),
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time")
        && text.parse::<jiff::Timestamp>().is_err()
    {
        out.push(Violation::new(
            path,
            Kind::Invalid,
            format!(
                "{}: must be an RFC 3339 date-time, e.g. \"2026-11-29T10:00:00Z\"",
                display_str(path, text)
            ),
        ));
    }
}

fn check_number(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some(number) = value.as_f64() else {
        return;
    };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && number < min
    {
        out.push(Violation::new(
            path,
            Kind::Invalid,
            format!("{value}: must be greater than or equal to {min}"),
        ));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && number > max
    {
        out.push(Violation::new(
            path,
            Kind::Invalid,
            format!("{value}: must be less than or equal to {max}"),
        ));
    }
}

fn check_enum(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
        return;
    };
    if !allowed.contains(value) {
        let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
        out.push(Violation::new(
            path,
            Kind::Unsupported,
            format!(
                "{}: supported values: {}",
                display_value(path, value),
                supported.join(", ")
            ),
        ));
    }
}

fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| contains_key(v, key)),
        Value::Array(items) => items.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Where CEL has work to do: the highest nodes, below the root, that carry rules or whose
/// children kube-cel cannot reach through plain properties (list items, maps, `allOf`…),
/// with the object path that leads to them. Nodes above them only hold properties.
///
/// kube-cel's walk turns the value at every node it visits into a CEL value, the root
/// included: validating from the root converted a 1000-user object (and copied it for
/// defaults) once per level on the way down to the rules. Starting at these nodes, each
/// value is converted where rules need it.
fn rule_sites<'a>(
    node: &'a CompiledSchema,
    value: &'a Value,
    path: String,
    out: &mut Vec<(&'a CompiledSchema, &'a Value, String)>,
) {
    let leaf_walk = node.validations.is_empty()
        && node.items.is_none()
        && node.additional_properties.is_none()
        && node.all_of.is_empty()
        && node.one_of.is_empty()
        && node.any_of.is_empty();
    match value.as_object() {
        Some(fields) if leaf_walk => {
            for (name, child) in &node.properties {
                if let Some(child_value) = fields.get(name) {
                    rule_sites(child, child_value, join(&path, name), out);
                }
            }
        }
        // Without rules or children there is nothing to evaluate below a non-object.
        _ if leaf_walk && node.properties.is_empty() => {}
        _ => out.push((node, value, path)),
    }
}

/// A kube-cel field path, relative to the node it was validated from, made absolute.
fn absolute_path(prefix: &str, relative: &str) -> String {
    if prefix.is_empty() {
        relative.trim_start_matches('.').to_owned()
    } else if relative.is_empty() {
        prefix.to_owned()
    } else if relative.starts_with('.') || relative.starts_with('[') {
        format!("{prefix}{relative}")
    } else {
        format!("{prefix}.{relative}")
    }
}

/// Evaluates the schema's `x-kubernetes-validations`, except on the top-level fields in
/// `unchanged` (validation ratcheting, see [`validate_update`]). When the object already
/// broke the schema, rules may fail to evaluate on ill-typed data; only genuine rule
/// failures are kept then, so the user sees the cause rather than its echo.
fn check_cel(
    kind_schema: &KindSchema,
    object: &Value,
    unchanged: &[&str],
    schema_clean: bool,
    out: &mut Vec<Violation>,
) {
    let compiled = &kind_schema.rules;
    // The API server runs no rule on a null value (and prunes nulls of non-nullable fields),
    // so neither does this; kube-cel would otherwise fail the rule on the null.
    let pruned;
    let object = if contains_null(object) {
        pruned = without_nulls(object);
        &pruned
    } else {
        object
    };
    let mut errors = Vec::new();
    let root_has_rules = !compiled.validations.is_empty();
    if kind_schema.has_defaults || (root_has_rules && unchanged.is_empty()) {
        // The whole object from the root, as the API server evaluates it.
        if let Err(found) = CEL.validate_compiled(compiled, object, None) {
            errors.extend(found);
        }
    } else {
        let mut sites = Vec::new();
        if root_has_rules {
            // Rules on the root see every field; nothing can be left out then.
            sites.push((compiled, object, String::new()));
        } else if let Some(fields) = object.as_object() {
            for (name, child) in &compiled.properties {
                if unchanged.contains(&name.as_str()) {
                    continue;
                }
                if let Some(value) = fields.get(name) {
                    rule_sites(child, value, name.clone(), &mut sites);
                }
            }
        }
        for (node, value, prefix) in sites {
            if let Err(found) = CEL.validate_compiled(node, value, None) {
                errors.extend(found.into_iter().map(|mut error| {
                    error.field_path = absolute_path(&prefix, &error.field_path);
                    error
                }));
            }
        }
    }
    if errors.is_empty() {
        return;
    }
    let type_violated: Vec<String> = out
        .iter()
        .filter(|v| v.problem.contains("must be of type"))
        .map(|v| v.path.clone())
        .collect();
    for error in errors {
        let failed_rule = error.kind == CelErrorKind::ValidationFailure;
        if !schema_clean && !failed_rule {
            continue;
        }
        let path = if error.field_path.is_empty() {
            ROOT_PATH.to_owned()
        } else {
            error.field_path.clone()
        };
        // The API server reports no rule on a value that already has the wrong type.
        if !schema_clean && type_violated.iter().any(|at| covers(at, &path)) {
            continue;
        }
        // A rule with a `reason` is reported as the API server reports that field error:
        // `Required value: <message>`, `Forbidden: <message>`, no value quoted.
        let kind = match error.reason.as_deref() {
            Some("FieldValueRequired") if failed_rule => Some(Kind::Required),
            Some("FieldValueForbidden") if failed_rule => Some(Kind::Forbidden),
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(Violation::new(path, kind, &error.message));
            continue;
        }
        let detail = if failed_rule {
            format!(
                "{}: {}",
                quoted_type(value_at(object, &path)),
                error.message
            )
        } else {
            format!(
                "{}: rule `{}` could not be evaluated: {}",
                quoted_type(value_at(object, &path)),
                error.rule,
                error.message
            )
        };
        out.push(Violation::new(path, Kind::Invalid, detail));
    }
}

/// Whether `path` is `at` or lies below it (`spec` covers `spec.users[0]`).
fn covers(at: &str, path: &str) -> bool {
    path == at
        || path
            .strip_prefix(at)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(fields) => fields.values().any(contains_null),
        Value::Array(items) => items.iter().any(contains_null),
        _ => false,
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Resolves an API-server style path (`spec.users[3].phone`) in `object`.
fn value_at<'a>(object: &'a Value, path: &str) -> &'a Value {
    let mut current = object;
    for segment in path.split('.') {
        let (name, indices) = match segment.find('[') {
            Some(at) => segment.split_at(at),
            None => (segment, ""),
        };
        if !name.is_empty() {
            current = current.get(name).unwrap_or(&Value::Null);
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            current = index
                .parse::<usize>()
                .ok()
                .and_then(|i| current.get(i))
                .unwrap_or(&Value::Null);
        }
    }
    current
}

fn schema_type(schema: &Value) -> &str {
    schema.get("type").and_then(Value::as_str).unwrap_or("")
}

fn is_nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64()
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn unknown_field(path: &str) -> Violation {
    Violation::new(path, Kind::Unknown, "field not declared in the schema")
}

fn type_violation(path: &str, value: &Value, expected: &str) -> Violation {
    Violation::new(
        path,
        Kind::Invalid,
        format!("{}: must be of type {expected}", quoted_type(value)),
    )
}

/// The JSON type name, quoted, as the API server shows it in type errors.
fn quoted_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "\"null\"",
        Value::Bool(_) => "\"boolean\"",
        Value::Number(n) if n.is_f64() => "\"number\"",
        Value::Number(_) => "\"integer\"",
        Value::String(_) => "\"string\"",
        Value::Array(_) => "\"array\"",
        Value::Object(_) => "\"object\"",
    }
}

/// Passwords are never echoed back, not even in an error about their length or shape.
fn is_secret_path(path: &str) -> bool {
    path == "password" || path.ends_with(".password")
}

fn display_str(path: &str, text: &str) -> String {
    if is_secret_path(path) {
        "<redacted>".to_owned()
    } else {
        json_quote(text)
    }
}

fn display_value(path: &str, value: &Value) -> String {
    if is_secret_path(path) {
        "<redacted>".to_owned()
    } else {
        value.to_string()
    }
}

fn json_quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "apiVersion": "koodrive.io/v1alpha1",
            "kind": "UserBatch",
            "metadata": {"name": "onboarding", "namespace": "default"},
            "spec": {
                "credentialsRef": {"name": "koodrive-credentials"},
                "users": [
                    {"firstname": "Ada", "phone": "8613800000001",
                     "passwordSecretRef": {"name": "pw", "key": "ada"}},
                ],
            },
        })
    }

    #[test]
    fn the_schema_is_the_generated_crds() {
        assert_eq!(schema_type(userbatch_schema()), "object");
        assert!(userbatch_schema()["properties"]["spec"].is_object());
    }

    #[test]
    fn every_cel_rule_compiles() {
        fn walk(node: &CompiledSchema, path: &str) {
            assert!(
                !node.has_errors(),
                "{path}: {:?}",
                node.compilation_errors()
            );
            for (name, child) in &node.properties {
                walk(child, &format!("{path}.{name}"));
            }
            if let Some(items) = &node.items {
                walk(items, &format!("{path}[]"));
            }
        }
        for schema in SCHEMAS.iter() {
            walk(&schema.rules, "");
        }
    }

    #[test]
    fn every_schema_pattern_compiles() {
        assert!(PATTERNS.len() >= 4);
        for (pattern, compiled) in PATTERNS.iter() {
            assert!(compiled.is_some(), "{pattern}");
        }
    }

    #[test]
    fn a_valid_object_has_no_violations() {
        assert_eq!(validate_userbatch(&valid()), vec![]);
    }

    #[test]
    fn reasons_follow_the_problem_kind() {
        let mut object = valid();
        object["spec"]["users"][0]
            .as_object_mut()
            .unwrap()
            .remove("phone");
        let violations = validate_userbatch(&object);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].path, "spec.users[0].phone");
        assert_eq!(violations[0].reason(), "FieldValueRequired");
    }

    #[test]
    fn updates_check_what_they_change_as_ratcheting_does() {
        let stored = valid();
        // Both password sources: a CEL rule on each user, evaluated below `spec.users`.
        let mut broken_spec = valid();
        broken_spec["spec"]["users"][0]["password"] = json!("Secret-1");
        let cel = validate_userbatch(&broken_spec);
        assert_eq!(cel.len(), 1, "{cel:?}");
        assert_eq!(cel[0].path, "spec.users[0]");
        assert_eq!(validate_userbatch_update(&broken_spec, &stored), cel);

        // A status write leaves the spec alone: it is not checked again, not even a spec a
        // newer rule would refuse, while the status itself is checked.
        let mut status_write = broken_spec.clone();
        status_write["status"] = json!({"phase": "Completed"});
        assert_eq!(
            validate_userbatch_update(&status_write, &broken_spec),
            vec![]
        );
        status_write["status"]["phase"] = json!("Done");
        let found = validate_userbatch_update(&status_write, &broken_spec);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "status.phase");
        assert!(!validate_userbatch(&status_write).is_empty());
    }

    #[test]
    fn value_at_follows_fields_and_indices() {
        let object = valid();
        assert_eq!(
            value_at(&object, "spec.users[0].phone"),
            &json!("8613800000001")
        );
        assert_eq!(value_at(&object, "spec.users[7]"), &Value::Null);
    }

    #[test]
    fn a_too_long_password_is_not_echoed() {
        let mut object = valid();
        let user = object["spec"]["users"][0].as_object_mut().unwrap();
        user.remove("passwordSecretRef");
        user.insert("password".into(), json!(""));
        let violations = validate_userbatch(&object);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].problem.contains("<redacted>"));
    }
}
