//! `meta.k8s.io/v1` `Table` rendering (`Accept: ...;as=Table`), which `kubectl get` asks for
//! to print a resource's columns (a CRD's `additionalPrinterColumns`).

use super::resources::{PrinterColumn, ResourceDef};
use jsonpath_rust::JsonPath;
use serde_json::{Value, json};

/// Whether the client asked for a Table rendering.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.split(';').any(|p| p.trim() == "as=Table"))
}

/// Whether the client asked for metadata only: `as=PartialObjectMetadata` (or its `List`
/// form), which kube's `Api<PartialObjectMeta<K>>` and client-go's metadata informers send
/// so that the API server leaves out specs, statuses and Secret data.
pub fn wants_metadata(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first.split(';').any(|p| {
            matches!(
                p.trim(),
                "as=PartialObjectMetadata" | "as=PartialObjectMetadataList"
            )
        })
    })
}

fn columns(def: &ResourceDef) -> Vec<PrinterColumn> {
    let column = |name: &str, type_: &str, path: &str| PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        json_path: path.into(),
        priority: 0,
        description: String::new(),
    };
    let mut cols = vec![column("Name", "string", ".metadata.name")];
    if !def.printer_columns.is_empty() {
        cols.extend(def.printer_columns.iter().cloned());
        return cols;
    }
    if def.group.is_empty() && def.plural == "secrets" {
        cols.push(column("Type", "string", ".type"));
    }
    cols.push(column("Age", "date", ".metadata.creationTimestamp"));
    cols
}

pub fn column_definitions(def: &ResourceDef) -> Value {
    let cols: Vec<Value> = columns(def)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.type_,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    Value::Array(cols)
}

/// Evaluates a kubectl-style JSONPath (`.status.phase`, `{.a.b}`, filters) against `object`.
fn evaluate(object: &Value, path: &str) -> Option<Value> {
    let trimmed = path.trim().trim_start_matches('{').trim_end_matches('}');
    let expr = if trimmed.starts_with('$') {
        trimmed.to_string()
    } else {
        format!("${trimmed}")
    };
    let found = object.query(&expr).ok()?;
    found.first().map(|v| (*v).clone())
}

fn human_age(timestamp: &str) -> Option<String> {
    let then: jiff::Timestamp = timestamp.parse().ok()?;
    let secs = jiff::Timestamp::now().as_second() - then.as_second();
    let secs = secs.max(0);
    Some(match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    })
}

fn cell(object: &Value, column: &PrinterColumn) -> Value {
    let Some(value) = evaluate(object, &column.json_path) else {
        return Value::Null;
    };
    match (column.type_.as_str(), &value) {
        ("date", Value::String(s)) => human_age(s).map(Value::String).unwrap_or(value),
        (_, Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null) => value,
        (_, other) => Value::String(other.to_string()),
    }
}

/// One row; `include` is the `includeObject` parameter (`None`, `Object`, default `Metadata`).
pub fn row(def: &ResourceDef, object: &Value, include: &str) -> Value {
    let cells: Vec<Value> = columns(def).iter().map(|c| cell(object, c)).collect();
    let embedded = match include {
        "None" => Value::Null,
        "Object" => object.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.get("metadata").cloned().unwrap_or(Value::Null),
        }),
    };
    json!({"cells": cells, "object": embedded})
}

/// A Table of `objects`; column definitions are left out when `with_columns` is false, as the
/// API server does after the first event of a watch.
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    include: &str,
    resource_version: Option<String>,
    with_columns: bool,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(def, o, include)).collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = Value::String(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": if with_columns { column_definitions(def) } else { Value::Array(vec![]) },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_in_printer_column_paths_pick_the_matching_condition() {
        let object = json!({"status": {"conditions": [
            {"type": "Reconciling", "message": "busy"},
            {"type": "Ready", "message": "all done"}
        ]}});
        let found = evaluate(&object, ".status.conditions[?(@.type==\"Ready\")].message");
        assert_eq!(found, Some(json!("all done")));
        assert_eq!(evaluate(&object, ".status.phase"), None);
    }

    #[test]
    fn table_is_recognised_only_when_preferred() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
