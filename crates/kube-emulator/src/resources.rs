//! What the emulator knows about each resource type: the built-in kinds it serves and the
//! custom resources derived from stored CustomResourceDefinitions.
//!
//! Everything the request handlers need to treat a kind correctly (scope, status subresource,
//! list-map keys for server-side apply, printer columns, admission) lives here, so adding a
//! kind is one more [`ResourceDef`].

use serde_json::Value;

/// The group and plural of the CRD kind; stored CRDs are themselves objects of this resource.
pub const CRD_GROUP: &str = "apiextensions.k8s.io";
pub const CRD_PLURAL: &str = "customresourcedefinitions";

/// One printer column of a custom resource (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

/// How the emulator serves one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    pub group: String,
    /// Every version served; objects are stored once per (group, plural), as a real server
    /// stores one copy per resource and converts on the way out.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub has_status: bool,
    /// Dotted paths of lists merged by key on server-side apply (`spec.users` → `["phone"]`).
    /// Items inside lists are written as `[]`, e.g. `spec.users[].tags`.
    pub list_map_keys: Vec<(String, Vec<String>)>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Set when this kind is a view of another kind's storage (core Events of
    /// `events.k8s.io` Events): objects are converted on the way in and out.
    pub stored_as: Option<StoredAs>,
    /// A custom resource (served from a CRD): JSON only, no strategic merge patch, no
    /// unconditional updates, unknown fields pruned by its structural schema.
    pub custom: bool,
    /// The CRD's `openAPIV3Schema` for this kind's storage version.
    /// Shared: every request's copy of its type would otherwise copy the whole schema.
    pub schema: Option<std::sync::Arc<Value>>,
}

/// The storage a view kind reads and writes, and how stored objects are stamped.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAs {
    pub group: String,
    pub plural: String,
    pub api_version: String,
    pub kind: String,
}

impl ResourceDef {
    pub(crate) fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) -> Self {
        ResourceDef {
            group: group.to_string(),
            versions: vec![version.to_string()],
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            has_status: false,
            list_map_keys: Vec::new(),
            printer_columns: Vec::new(),
            stored_as: None,
            custom: false,
            schema: None,
        }
    }

    /// `apiVersion` as written in objects of this kind, for the given served version.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The keys of the list at `path`, when it is a list-map.
    pub fn list_keys(&self, path: &str) -> Option<&[String]> {
        self.list_map_keys
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, keys)| keys.as_slice())
    }

    /// Derives the served custom resource from a stored CRD object; `None` if it is malformed.
    pub fn from_crd(crd: &Value) -> Option<ResourceDef> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let group = spec.get("group")?.as_str()?.to_string();
        let plural = names.get("plural")?.as_str()?.to_string();
        let kind = names.get("kind")?.as_str()?.to_string();
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
        let served: Vec<&Value> = spec
            .get("versions")?
            .as_array()?
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
            .collect();
        let versions: Vec<String> = served
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        if versions.is_empty() {
            return None;
        }
        // Behaviour (status, schema, columns) comes from the storage version, else the first.
        let main = served
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .or(served.first())?;
        let has_status = main.pointer("/subresources/status").is_some();
        let mut list_map_keys = Vec::new();
        if let Some(schema) = main.pointer("/schema/openAPIV3Schema") {
            collect_list_map_keys(schema, "", &mut list_map_keys);
        }
        let printer_columns = main
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some(PrinterColumn {
                            name: c.get("name")?.as_str()?.to_string(),
                            type_: c
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("string")
                                .to_string(),
                            json_path: c.get("jsonPath")?.as_str()?.to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            description: c
                                .get("description")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ResourceDef {
            group,
            versions,
            plural,
            singular,
            kind,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            namespaced,
            has_status,
            list_map_keys,
            printer_columns,
            stored_as: None,
            custom: true,
            schema: main
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .map(std::sync::Arc::new),
        })
    }
}

fn collect_list_map_keys(schema: &Value, path: &str, out: &mut Vec<(String, Vec<String>)>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let sub_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            collect_list_map_keys(sub, &sub_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let keys: Vec<String> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !keys.is_empty() {
                out.push((path.to_string(), keys));
            }
        }
        collect_list_map_keys(items, &format!("{path}[]"), out);
    }
}

/// What `kubectl get events` shows; the two Event shapes differ only in field names.
fn event_columns(regarding: &str, note: &str) -> Vec<PrinterColumn> {
    let column = |name: &str, type_: &str, json_path: String| PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        json_path,
        priority: 0,
        description: String::new(),
    };
    vec![
        column("Type", "string", ".type".into()),
        column("Reason", "string", ".reason".into()),
        column("Object", "string", format!("{regarding}.name")),
        column("Message", "string", note.into()),
        column("Age", "date", ".metadata.creationTimestamp".into()),
    ]
}

/// The built-in kinds served regardless of CRDs.
pub fn builtins() -> Vec<ResourceDef> {
    let mut crd = ResourceDef::builtin(
        CRD_GROUP,
        "v1",
        CRD_PLURAL,
        "CustomResourceDefinition",
        false,
    );
    crd.short_names = vec!["crd".into(), "crds".into()];
    crd.has_status = true;
    let mut namespaces = ResourceDef::builtin("", "v1", "namespaces", "Namespace", false);
    namespaces.short_names = vec!["ns".into()];
    namespaces.has_status = true;
    let mut core_events = ResourceDef::builtin("", "v1", "events", "Event", true);
    core_events.short_names = vec!["ev".into()];
    core_events.printer_columns = event_columns(".involvedObject", ".message");
    core_events.stored_as = Some(StoredAs {
        group: "events.k8s.io".into(),
        plural: "events".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
    });
    let mut events = ResourceDef::builtin("events.k8s.io", "v1", "events", "Event", true);
    events.short_names = vec!["ev".into()];
    events.printer_columns = event_columns(".regarding", ".note");
    let mut defs = vec![
        ResourceDef::builtin("", "v1", "secrets", "Secret", true),
        core_events,
        namespaces,
        events,
        ResourceDef::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        crd,
    ];
    defs.extend(super::rbac::resource_defs());
    defs
}
