//! Core `v1` Events as a view of `events.k8s.io/v1` Events: one storage, two shapes, as on a
//! real API server. This is what lets `kubectl describe` (which reads core Events) show the
//! Events the operator records through `events.k8s.io`.

use serde_json::{Map, Value};

/// Field renames between the two shapes: (`events.k8s.io/v1`, core `v1`).
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(object: &Value, from_new: bool) -> Value {
    let Some(map) = object.as_object() else {
        return object.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMES
            .iter()
            .find_map(|(new, core)| match from_new {
                true if key == new => Some(*core),
                false if key == core => Some(*new),
                _ => None,
            })
            .unwrap_or(key.as_str());
        out.insert(renamed.to_string(), value.clone());
    }
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in core `v1` shape.
pub fn to_core(event: &Value) -> Value {
    let mut core = rename(event, true);
    core["apiVersion"] = Value::String("v1".into());
    core
}

/// A core `v1` Event in `events.k8s.io/v1` shape.
pub fn from_core(event: &Value) -> Value {
    let mut new = rename(event, false);
    new["apiVersion"] = Value::String("events.k8s.io/v1".into());
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversion_round_trips_and_renames_the_fields_kubectl_describe_reads() {
        let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "UserBatch", "name": "b"}, "note": "sent", "reason": "Submitted",
            "reportingController": "koodrive-operator", "type": "Normal"});
        let core = to_core(&event);
        assert_eq!(core["involvedObject"]["name"], "b");
        assert_eq!(core["message"], "sent");
        assert_eq!(core["reportingComponent"], "koodrive-operator");
        assert_eq!(from_core(&core), event);
    }
}
