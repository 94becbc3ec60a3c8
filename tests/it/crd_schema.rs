//! The generated CRDs (UserBatch, KooDriveAccount, ClusterKooDriveAccount): the committed
//! copies match them, they are structural schemas with bounds everywhere (so CEL cost
//! estimates stay small), their CEL rules are cheap, and `kubernetes-validate` accepts them as
//! apiextensions.k8s.io/v1 objects.

use koodrive_operator::crd::{CrdKind, REGENERATE_CRD_COMMAND, all_crds_yaml, crd, crd_yaml};
use koodrive_operator::validation::{schema_of, userbatch_schema};
use kube::core::cel::{ScopeContext, analyze_rule, compile_schema};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

const COMMITTED_COPIES: [&str; 2] = [
    "crds/userbatch.yaml",
    "charts/koodrive-operator/files/crds/userbatch.yaml",
];

#[test]
fn committed_crds_match_the_generated_one() {
    let generated = crd_yaml();
    for copy in COMMITTED_COPIES {
        let committed = std::fs::read_to_string(repo_file(copy)).unwrap_or_default();
        assert!(
            committed == generated,
            "{copy} differs from `koodrive-operator crd`; regenerate it with:\n  {REGENERATE_CRD_COMMAND}"
        );
    }
}

#[test]
fn the_crd_command_prints_the_generated_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args(["crd", "--kind", "userbatch"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), crd_yaml());
}

#[test]
fn names_scope_subresources_and_printer_columns() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("userbatches.koodrive.io")
    );
    let spec = &crd.spec;
    assert_eq!(spec.group, "koodrive.io");
    assert_eq!(spec.scope, "Namespaced");
    assert_eq!(spec.names.kind, "UserBatch");
    assert_eq!(spec.names.plural, "userbatches");
    assert_eq!(
        spec.names.short_names.as_deref(),
        Some(&["ub".to_owned()][..])
    );
    assert_eq!(
        spec.names.categories.as_deref(),
        Some(&["koodrive".to_owned()][..])
    );
    assert_eq!(spec.versions.len(), 1);
    let version = &spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(version.subresources.as_ref().unwrap().status.is_some());

    let columns = version.additional_printer_columns.as_ref().unwrap();
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Phase",
            "Users",
            "Submitted",
            "Succeeded",
            "Failed",
            "Task",
            "Code",
            "Age",
            "Message"
        ]
    );
    let wide: Vec<&str> = columns
        .iter()
        .filter(|c| c.priority.unwrap_or(0) > 0)
        .map(|c| c.json_path.as_str())
        .collect();
    assert_eq!(wide, [r#".status.conditions[?(@.type=="Ready")].message"#]);
    // Every column must point at a field the schema declares, or it shows <none> forever.
    let schema = userbatch_schema();
    for column in columns {
        let path = column.json_path.split('[').next().unwrap();
        if path.starts_with(".metadata.") {
            continue;
        }
        let mut node = schema;
        for segment in path.trim_start_matches('.').split('.') {
            node = node
                .get("properties")
                .and_then(|p| p.get(segment))
                .or_else(|| node.get("items").and_then(|i| i["properties"].get(segment)))
                .unwrap_or_else(|| panic!("column {} points at an undeclared field", column.name));
        }
    }
}

/// Walks every schema node, calling `visit` with its path and the number of times a rule on
/// it can run per object (the product of the `maxItems` of the lists above it).
fn walk(node: &Value, path: &str, multiplicity: u64, visit: &mut dyn FnMut(&str, &Value, u64)) {
    visit(path, node, multiplicity);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), multiplicity, visit);
        }
    }
    if let Some(items) = node.get("items") {
        let max = node
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        walk(
            items,
            &format!("{path}[]"),
            multiplicity.saturating_mul(max),
            visit,
        );
    }
    if let Some(additional) = node.get("additionalProperties").filter(|a| a.is_object()) {
        walk(additional, &format!("{path}{{}}"), multiplicity, visit);
    }
}

#[test]
fn the_schema_is_structural_and_bounded_everywhere() {
    let problems = structural_problems(userbatch_schema());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What keeps a schema from being structural and bounded everywhere.
fn structural_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(schema, "", 1, &mut |path, node, _| {
        let Some(ty) = node.get("type").and_then(Value::as_str) else {
            problems.push(format!("{path}: no type"));
            return;
        };
        for forbidden in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "definitions",
            "$defs",
        ] {
            if node.get(forbidden).is_some() {
                problems.push(format!(
                    "{path}: uses {forbidden}, which is not structural here"
                ));
            }
        }
        if node.get("x-kubernetes-preserve-unknown-fields").is_some() {
            problems.push(format!("{path}: preserves unknown fields"));
        }
        match ty {
            "string" => {
                if node.get("maxLength").is_none() && node.get("enum").is_none() {
                    problems.push(format!("{path}: string without maxLength"));
                }
            }
            "array" => {
                if node.get("maxItems").is_none() {
                    problems.push(format!("{path}: list without maxItems"));
                }
                if node.get("items").is_none() {
                    problems.push(format!("{path}: list without items"));
                }
                if let Some(keys) = node
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                {
                    let required = node["items"]["required"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for key in keys {
                        if !required.contains(key) {
                            problems.push(format!("{path}: map key {key} is not required"));
                        }
                    }
                }
            }
            "object" => {
                if node.get("properties").is_none() && node.get("additionalProperties").is_none() {
                    problems.push(format!("{path}: object without properties"));
                }
            }
            "integer" | "number" | "boolean" => {}
            other => problems.push(format!("{path}: unknown type {other}")),
        }
    });
    problems
}

#[test]
fn the_schema_carries_the_api_contract() {
    let schema = userbatch_schema();
    let spec = &schema["properties"]["spec"];
    // credentialsRef or accountRef: exactly one, by a CEL rule (issue #13).
    assert_eq!(spec["required"], serde_json::json!(["users"]));
    let users = &spec["properties"]["users"];
    assert_eq!(users["minItems"], 1);
    assert_eq!(users["maxItems"], 1000);
    assert_eq!(users["x-kubernetes-list-type"], "map");
    assert_eq!(
        users["x-kubernetes-list-map-keys"],
        serde_json::json!(["phone"])
    );
    assert_eq!(
        users["items"]["properties"]["phone"]["pattern"],
        r"^\+?[0-9]{5,20}$"
    );
    assert!(
        users["items"]["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("passwordSecretRef")
    );
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(status["failures"]["maxItems"], 100);
    assert_eq!(status["conditions"]["maxItems"], 10);
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    assert_eq!(
        status["tasks"]["items"]["properties"]["phones"]["maxItems"],
        1000
    );
    assert_eq!(status["tasks"]["maxItems"], 64);
}

/// The API server refuses a CRD whose rules' estimated cost exceeds its budget (per rule 1M
/// units, times the number of times the rule can run). Every rule must compile, be free of
/// kube-cel's cost/bounds warnings, and sit on bounded lists.
#[test]
fn every_cel_rule_compiles_and_is_cheap() {
    let (rules, problems) = cel_rules(userbatch_schema());
    assert_eq!(
        rules, 8,
        "expected the endpoint, password, users' text, task phones and digest rules, and the \
         credentials-required, credentials-exclusive and endpoint-with-account rules"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Counts a schema's CEL rules and says which do not compile, warn, or can run too often.
fn cel_rules(schema: &Value) -> (usize, Vec<String>) {
    let mut rules = 0;
    let mut problems = Vec::new();
    walk(schema, "", 1, &mut |path, node, multiplicity| {
        let Some(validations) = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        else {
            return;
        };
        let compiled = compile_schema(node);
        if compiled.has_errors() {
            problems.push(format!("{path}: {:?}", compiled.compilation_errors()));
        }
        for validation in validations {
            rules += 1;
            let rule = validation["rule"].as_str().unwrap();
            assert!(
                validation["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{path}: {rule} has no message"
            );
            let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| !is_macro_variable_warning(rule, &w.message))
                .collect();
            if !warnings.is_empty() {
                problems.push(format!("{path}: {rule}: {warnings:?}"));
            }
            // Each of our rules is a handful of operations over one bounded string; the
            // multiplicity keeps the whole CRD far below the API server's total budget.
            if multiplicity > 10_000 {
                problems.push(format!(
                    "{path}: rule can run {multiplicity} times per object"
                ));
            }
        }
    });
    (rules, problems)
}

/// kube-cel's scope analysis does not know the variables that CEL's comprehension macros
/// (`map`, `all`, `exists`, `filter`) bind, and flags them; the API server accepts them.
fn is_macro_variable_warning(rule: &str, message: &str) -> bool {
    let Some(variable) = message
        .strip_prefix("variable '")
        .and_then(|rest| rest.split('\'').next())
    else {
        return false;
    };
    ["map", "all", "exists", "exists_one", "filter"]
        .iter()
        .any(|m| rule.contains(&format!(".{m}({variable},")))
}

#[test]
fn kubernetes_validate_accepts_the_crd_strictly() {
    kubernetes_validate_accepts("crds/userbatch.yaml");
}

fn kubernetes_validate_accepts(relative: &str) {
    let file = repo_file(relative);
    // PATH first, then the project-local install of scripts/install-test-tools.sh.
    let local = repo_file(".tools/bin/kubernetes-validate");
    let program = if local.exists() && which_on_path("kubernetes-validate").is_none() {
        local
    } else {
        std::path::PathBuf::from("kubernetes-validate")
    };
    let output = match Command::new(&program)
        .args(["--strict", "--kubernetes-version", "1.33"])
        .arg(&file)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "`kubernetes-validate` is neither on PATH nor in .tools/bin; run scripts/install-test-tools.sh to install it"
        ),
        Err(error) => panic!("could not run kubernetes-validate: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubernetes-validate rejected {}:\n{stdout}{stderr}",
        file.display()
    );
    assert!(stdout.contains("passed"), "{stdout}{stderr}");
}

fn which_on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

// --- The account CRDs (issue #13) -------------------------------------------------------

const ACCOUNT_KINDS: [CrdKind; 2] = [CrdKind::Koodriveaccount, CrdKind::Clusterkoodriveaccount];

#[test]
fn committed_account_crds_match_the_generated_ones() {
    for kind in ACCOUNT_KINDS {
        let generated = kind.yaml();
        for copy in [
            format!("crds/{}.yaml", kind.file_stem()),
            format!(
                "charts/koodrive-operator/files/crds/{}.yaml",
                kind.file_stem()
            ),
        ] {
            let committed = std::fs::read_to_string(repo_file(&copy)).unwrap_or_default();
            assert!(
                committed == generated,
                "{copy} differs from `koodrive-operator crd --kind {}`; regenerate it with:\n  {REGENERATE_CRD_COMMAND}",
                kind.file_stem()
            );
        }
    }
    // Exactly the operator's CRDs are committed, in both places.
    for dir in ["crds", "charts/koodrive-operator/files/crds"] {
        let mut files: Vec<String> = std::fs::read_dir(repo_file(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "clusterkoodriveaccount.yaml",
                "koodriveaccount.yaml",
                "userbatch.yaml"
            ],
            "{dir}"
        );
    }
}

#[test]
fn the_crd_command_prints_every_crd_by_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text, all_crds_yaml());
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let names: Vec<&str> = documents
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "userbatches.koodrive.io",
            "koodriveaccounts.koodrive.io",
            "clusterkoodriveaccounts.koodrive.io"
        ]
    );
    let refused = Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args(["crd", "--kind", "secret"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn account_crds_have_names_scopes_short_names_and_columns() {
    for (kind, scope, plural, short) in [
        (
            CrdKind::Koodriveaccount,
            "Namespaced",
            "koodriveaccounts",
            "kda",
        ),
        (
            CrdKind::Clusterkoodriveaccount,
            "Cluster",
            "clusterkoodriveaccounts",
            "ckda",
        ),
    ] {
        let crd = kind.crd();
        let spec = &crd.spec;
        assert_eq!(spec.group, "koodrive.io");
        assert_eq!(spec.scope, scope);
        assert_eq!(spec.names.kind, kind.kind());
        assert_eq!(spec.names.plural, plural);
        assert_eq!(
            spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            spec.names.categories.as_deref(),
            Some(&["koodrive".to_owned()][..])
        );
        let version = &spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns = version.additional_printer_columns.as_ref().unwrap();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Endpoint", "Ready", "Reason", "Age", "Message"]);
        let schema = schema_of(kind);
        for column in columns {
            let path = column.json_path.split('[').next().unwrap();
            if path.starts_with(".metadata.") {
                continue;
            }
            let mut node = schema;
            for segment in path.trim_start_matches('.').split('.') {
                node = node
                    .get("properties")
                    .and_then(|p| p.get(segment))
                    .unwrap_or_else(|| {
                        panic!("column {} points at an undeclared field", column.name)
                    });
            }
        }
        // No account holds a secret: only the Secret's name and key names.
        let spec_schema = schema["properties"]["spec"].to_string();
        assert!(!spec_schema.contains("\"secretKey\":"), "{spec_schema}");
    }
}

#[test]
fn account_schemas_are_structural_bounded_and_their_rules_cheap() {
    for (kind, expected_rules) in [
        (CrdKind::Koodriveaccount, 1),
        (CrdKind::Clusterkoodriveaccount, 3),
    ] {
        let problems = structural_problems(schema_of(kind));
        assert!(problems.is_empty(), "{kind:?}: {}", problems.join("\n"));
        let (rules, problems) = cel_rules(schema_of(kind));
        assert_eq!(
            rules, expected_rules,
            "{kind:?}: the endpoint rule, and for cluster accounts the allowed-namespaces and selector-values rules"
        );
        assert!(problems.is_empty(), "{kind:?}: {}", problems.join("\n"));
    }
}

#[test]
fn kubernetes_validate_accepts_the_account_crds_strictly() {
    for kind in ACCOUNT_KINDS {
        kubernetes_validate_accepts(&format!("crds/{}.yaml", kind.file_stem()));
    }
}
