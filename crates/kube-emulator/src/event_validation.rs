//! Event validation as kube-apiserver does it (`pkg/apis/core/validation/events.go`), for
//! both `events.k8s.io/v1` and core `v1` Events. Objects arrive in storage shape
//! (`events.k8s.io` field names); problems are reported with the internal (core) field
//! names the API server uses, whichever version was written (a too-long `note` is reported
//! as `message`).

use super::error::Cause;
use serde_json::Value;

const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

fn text<'a>(event: &'a Value, pointer: &str) -> &'a str {
    event.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn set(event: &Value, pointer: &str) -> bool {
    event.pointer(pointer).is_some_and(|v| !v.is_null())
}

fn required(field: &str) -> Cause {
    Cause {
        field: field.into(),
        message: "Required value".into(),
    }
}

fn invalid(field: &str, value: &str, detail: &str) -> Cause {
    Cause {
        field: field.into(),
        message: format!("Invalid value: {}: {detail}", Value::String(value.into())),
    }
}

fn too_long(field: &str, limit: usize) -> Cause {
    invalid(field, "", &format!("can have at most {limit} characters"))
}

static QUALIFIED_NAME: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
        .unwrap_or_else(|_| unreachable!("a constant pattern"))
});

/// `ValidateQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters.
fn qualified_name(value: &str, field: &str, out: &mut Vec<Cause>) {
    let name = value.rsplit_once('/').map_or(value, |(_, name)| name);
    if name.is_empty() {
        return;
    }
    if name.len() > 63 {
        out.push(invalid(
            field,
            value,
            "name part must be no more than 63 characters",
        ));
    }
    if !QUALIFIED_NAME.is_match(name) {
        out.push(invalid(
            field,
            value,
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        ));
    }
}

/// `legacyValidateEvent`: what every Event must satisfy, whatever version wrote it.
fn legacy(event: &Value, core_request: bool, out: &mut Vec<Cause>) {
    let namespace = text(event, "/metadata/namespace");
    let regarding_ns = text(event, "/regarding/namespace");
    let mismatch = || {
        invalid(
            "involvedObject.namespace",
            regarding_ns,
            "does not match event.namespace",
        )
    };
    if !set(event, "/eventTime") {
        if regarding_ns.is_empty() {
            if !namespace.is_empty() && namespace != "default" {
                out.push(mismatch());
            }
        } else if namespace != regarding_ns {
            out.push(mismatch());
        }
        return;
    }
    if regarding_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
        out.push(mismatch());
    }
    let controller_field = if core_request {
        "reportingComponent"
    } else {
        "reportingController"
    };
    let controller = text(event, "/reportingController");
    if controller.is_empty() {
        out.push(required(controller_field));
    }
    qualified_name(controller, controller_field, out);
    for (pointer, field, limit) in [
        (
            "/reportingInstance",
            "reportingInstance",
            REPORTING_INSTANCE_LIMIT,
        ),
        ("/action", "action", ACTION_LIMIT),
        ("/reason", "reason", REASON_LIMIT),
    ] {
        let value = text(event, pointer);
        if value.is_empty() {
            out.push(required(field));
        }
        if value.len() > limit {
            out.push(too_long(field, limit));
        }
    }
    if text(event, "/note").len() > NOTE_LIMIT {
        out.push(too_long("message", NOTE_LIMIT));
    }
}

fn series(event: &Value, out: &mut Vec<Cause>) {
    if !set(event, "/series") {
        return;
    }
    if event
        .pointer("/series/count")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        < 2
    {
        out.push(invalid("series.count", "", "should be at least 2"));
    }
    if !set(event, "/series/lastObservedTime") {
        out.push(required("series.lastObservedTime"));
    }
}

/// Problems with an Event being created; `core_request` when it came through core `v1`,
/// which is held to the legacy rules only.
pub fn validate_create(event: &Value, core_request: bool) -> Vec<Cause> {
    let mut out = Vec::new();
    legacy(event, core_request, &mut out);
    if core_request {
        return out;
    }
    series(event, &mut out);
    if !set(event, "/eventTime") {
        out.push(required("eventTime"));
    }
    let type_ = text(event, "/type");
    if type_ != "Normal" && type_ != "Warning" {
        out.push(invalid("type", "", &format!("has invalid value: {type_}")));
    }
    for (pointer, field) in [
        ("/deprecatedFirstTimestamp", "firstTimestamp"),
        ("/deprecatedLastTimestamp", "lastTimestamp"),
        ("/deprecatedSource", "source"),
    ] {
        let value = event.pointer(pointer);
        let empty = value.is_none_or(|v| {
            v.is_null()
                || v.as_object()
                    .is_some_and(|m| m.values().all(|x| x == "" || x.is_null()))
        });
        if !empty {
            out.push(invalid(field, "", "needs to be unset"));
        }
    }
    if event
        .pointer("/deprecatedCount")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        != 0
    {
        out.push(invalid("count", "", "needs to be unset"));
    }
    out
}

/// Problems with an update of `old` into `event`.
pub fn validate_update(event: &Value, old: &Value, core_request: bool) -> Vec<Cause> {
    let mut out = Vec::new();
    legacy(event, core_request, &mut out);
    if core_request {
        return out;
    }
    if event.get("series") != old.get("series") {
        series(event, &mut out);
    }
    for (field, name) in [
        ("regarding", "involvedObject"),
        ("reason", "reason"),
        ("note", "message"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("type", "type"),
    ] {
        if event.get(field) != old.get(field) {
            out.push(Cause {
                field: name.into(),
                message: "Invalid value: \"object\": field is immutable".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-01-01T00:00:00.000000Z",
               "reportingController": "koodrive-operator", "reportingInstance": "op-0", "action": "Submit",
               "reason": "Submitted", "type": "Normal", "note": "n",
               "regarding": {"kind": "UserBatch", "name": "b", "namespace": "default"}})
    }

    #[test]
    fn a_complete_event_is_valid_and_each_rule_names_its_field() {
        assert!(validate_create(&event(), false).is_empty());
        let mut bad = event();
        bad["note"] = json!("n".repeat(1025));
        bad["type"] = json!("Info");
        bad.as_object_mut().unwrap().remove("action");
        let fields: Vec<String> = validate_create(&bad, false)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["action", "message", "type"]);
    }
}
