//! The size limits of a real cluster, and how their sizes are measured.
//!
//! Three limits bound what a cluster can hold, and an operator's objects have to fit all of
//! them (values from kube-apiserver and etcd defaults):
//! - all annotations of an object together: [`MAX_ANNOTATIONS_BYTES`] (keys plus values,
//!   `TotalAnnotationSizeLimitB` in apimachinery's `objectmeta.go`), checked at admission:
//!   `422 Invalid`, `metadata.annotations: Too long: must have at most 262144 bytes`;
//! - a request body: [`MAX_REQUEST_BODY_BYTES`] (the apiserver's `MaxRequestBodyBytes`):
//!   `413 RequestEntityTooLarge`, `Request entity too large: limit is 3145728`;
//! - a stored object: [`MAX_OBJECT_BYTES`] (etcd's default `--max-request-bytes`): the
//!   apiserver passes etcd's refusal through as `500` with the message
//!   `etcdserver: request is too large` and no reason.
//!
//! Custom resources are stored as JSON written by Go's `encoding/json`, which escapes `<`,
//! `>` and `&` (and U+2028, U+2029) as six-byte `\u` sequences; [`encoded_len`] measures an
//! object that way, so a check here agrees with the one etcd makes.

use serde_json::Value;

/// Most bytes all annotations of one object may hold together (keys and values).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Most bytes of one request body.
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Most bytes etcd accepts in one write, which bounds a stored object.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024 / 2;
/// Most bytes of a Secret's data (`MaxSecretSize`): `422`, `data: Too long: …`.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// Where client-side `kubectl apply` keeps a copy of the applied manifest.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Bytes of `value` as Go's `encoding/json` writes it (no trailing newline).
pub fn encoded_len(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(true) => 4,
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

fn char_len(c: char) -> usize {
    match c {
        '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => 6,
        '"' | '\\' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn string_len(s: &str) -> usize {
    2 + s.chars().map(char_len).sum::<usize>()
}

/// `value` as Go's `encoding/json` writes it: keys sorted, HTML characters escaped.
pub fn encode(value: &Value) -> String {
    let mut out = String::with_capacity(encoded_len(value));
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
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
                write_string(key, out);
                out.push(':');
                write_value(&map[key], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Bytes the annotations of `object` count against [`MAX_ANNOTATIONS_BYTES`].
pub fn annotations_size(object: &Value) -> usize {
    object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|annotations| {
            annotations
                .iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0)
}

/// The manifest as client-side `kubectl apply` would store it: a copy of itself (without
/// an older copy) in the last-applied annotation, as kubectl's `GetModifiedConfiguration`
/// builds it.
pub fn with_last_applied_configuration(manifest: &Value) -> Value {
    let mut object = manifest.clone();
    if !object.is_object() {
        return object;
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(serde_json::Map::new());
    }
    let metadata = &mut object["metadata"];
    if !metadata.get("annotations").is_some_and(Value::is_object) {
        metadata["annotations"] = Value::Object(serde_json::Map::new());
    }
    if let Some(annotations) = metadata["annotations"].as_object_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    let mut copy = encode(&object);
    copy.push('\n');
    object["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = Value::String(copy);
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lengths_match_gos_encoding() {
        let value = json!({"b": "a<b", "a": [1, true, null, "é\n"]});
        assert_eq!(
            encode(&value),
            r#"{"a":[1,true,null,"é\n"],"b":"a\u003cb"}"#
        );
        assert_eq!(encoded_len(&value), encode(&value).len());
    }

    #[test]
    fn the_last_applied_copy_is_the_manifest_with_empty_annotations() {
        let manifest = json!({"kind": "X", "metadata": {"name": "n"}});
        let applied = with_last_applied_configuration(&manifest);
        assert_eq!(
            applied["metadata"]["annotations"][LAST_APPLIED_ANNOTATION],
            "{\"kind\":\"X\",\"metadata\":{\"annotations\":{},\"name\":\"n\"}}\n"
        );
    }
}
