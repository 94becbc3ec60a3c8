//! UserBatch validation: malformed manifests are rejected with the API server's field paths,
//! well-formed ones (including every file in `examples/`) are accepted, and the `validate`
//! command reports `FILE: <path>: <problem>` with the right exit status.

use koodrive_operator::validation::{Document, Violation, validate_manifests, validate_userbatch};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn valid() -> Value {
    json!({
        "apiVersion": "koodrive.io/v1alpha1",
        "kind": "UserBatch",
        "metadata": {"name": "onboarding-2026-11", "namespace": "team-a"},
        "spec": {
            "credentialsRef": {"name": "koodrive-credentials"},
            "endpoint": "https://intl.myhuaweicloud-koodrive.com",
            "users": [
                {"firstname": "Ada", "surname": "Lovelace", "phone": "8613800000001",
                 "email": "ada@example.com",
                 "passwordSecretRef": {"name": "onboarding-passwords", "key": "ada"}},
                {"firstname": "Grace", "phone": "+8613800000002", "password": "s3cret-initial"},
                {"firstname": "Alan", "phone": "8613800000003"},
            ],
        },
    })
}

fn with_users(count: usize) -> Value {
    let mut object = valid();
    object["spec"]["users"] = (0..count)
        .map(|i| json!({"firstname": format!("User{i}"), "phone": format!("86138{i:08}")}))
        .collect();
    object
}

fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = object.pointer_mut(parent).unwrap();
    match parent {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer} has no parent container"),
    }
}

fn remove(object: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    object
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap();
}

fn status() -> Value {
    json!({
        "observedGeneration": 1,
        "phase": "Submitted",
        "taskId": "1893596414966089600",
        "code": "0",
        "message": "Success",
        "tasks": [{
            "taskId": "1893596414966089600", "code": "0", "message": "Success",
            "traceId": "4f1c0000000000000000000000000000000000000000000000000000ab",
            "submittedAt": "2026-11-29T10:00:00Z",
            "phones": ["8613800000001", "+8613800000002", "8613800000003"],
            "result": {"total": 3, "succeeded": 2, "failed": 1, "skipped": 0, "finished": true},
        }],
        "summary": {"requested": 3, "submitted": 3, "succeeded": 2, "failed": 1, "skipped": 0},
        "failures": [{"phone": "+8613800000002", "code": "13000102", "reason": "bad phone"}],
        "conditions": [{
            "type": "Ready", "status": "False", "reason": "UsersFailed",
            "message": "1 of 3 users failed", "observedGeneration": 1,
            "lastTransitionTime": "2026-11-29T10:01:00Z",
        }],
    })
}

struct Case {
    name: &'static str,
    object: Value,
    /// Every violation expected, as (path, a fragment of the problem).
    expected: Vec<(&'static str, &'static str)>,
}

fn case(
    name: &'static str,
    mutate: impl FnOnce(&mut Value),
    expected: &[(&'static str, &'static str)],
) -> Case {
    let mut object = valid();
    mutate(&mut object);
    Case {
        name,
        object,
        expected: expected.to_vec(),
    }
}

fn malformed_cases() -> Vec<Case> {
    let long = |n: usize| Value::String("x".repeat(n));
    vec![
        case(
            "missing firstname",
            |o| remove(o, "/spec/users/1/firstname"),
            &[("spec.users[1].firstname", "Required value")],
        ),
        case(
            "missing phone",
            |o| remove(o, "/spec/users/0/phone"),
            &[("spec.users[0].phone", "Required value")],
        ),
        case(
            "empty firstname",
            |o| set(o, "/spec/users/0/firstname", json!("")),
            &[("spec.users[0].firstname", "at least 1 character")],
        ),
        case(
            "firstname too long",
            |o| set(o, "/spec/users/2/firstname", long(129)),
            &[(
                "spec.users[2].firstname",
                "Too long: may not be longer than 128",
            )],
        ),
        case(
            "surname too long",
            |o| set(o, "/spec/users/0/surname", long(129)),
            &[("spec.users[0].surname", "Too long")],
        ),
        case(
            "email too long",
            |o| {
                set(
                    o,
                    "/spec/users/0/email",
                    json!(format!("{}@example.com", "a".repeat(250))),
                )
            },
            &[("spec.users[0].email", "Too long")],
        ),
        case(
            "password too long",
            |o| set(o, "/spec/users/1/password", long(129)),
            &[("spec.users[1].password", "Too long")],
        ),
        case(
            "duplicate phones",
            |o| set(o, "/spec/users/2/phone", json!("8613800000001")),
            &[(
                "spec.users[2]",
                r#"Duplicate value: {"phone":"8613800000001"}"#,
            )],
        ),
        case(
            "phone with letters",
            |o| set(o, "/spec/users/0/phone", json!("86138abc0001")),
            &[("spec.users[0].phone", r"should match '^\+?[0-9]{5,20}$'")],
        ),
        case(
            "phone too short",
            |o| set(o, "/spec/users/0/phone", json!("1234")),
            &[
                ("spec.users[0].phone", "at least 5 character"),
                ("spec.users[0].phone", "should match"),
            ],
        ),
        case(
            "phone with 21 digits",
            |o| set(o, "/spec/users/0/phone", json!("123456789012345678901")),
            &[("spec.users[0].phone", "should match")],
        ),
        case(
            "phone with inner plus",
            |o| set(o, "/spec/users/0/phone", json!("86+13800000001")),
            &[("spec.users[0].phone", "should match")],
        ),
        case(
            "phone with spaces",
            |o| set(o, "/spec/users/0/phone", json!("+86 138 0000 0001")),
            &[("spec.users[0].phone", "should match")],
        ),
        case(
            "phone as a number",
            |o| set(o, "/spec/users/0/phone", json!(8613800000001_u64)),
            &[(
                "spec.users[0].phone",
                r#"Invalid value: "integer": must be of type string"#,
            )],
        ),
        case(
            "email without @",
            |o| set(o, "/spec/users/0/email", json!("ada.example.com")),
            &[("spec.users[0].email", "should match")],
        ),
        case(
            "email without domain dot",
            |o| set(o, "/spec/users/0/email", json!("ada@localhost")),
            &[("spec.users[0].email", "should match")],
        ),
        case(
            "email with spaces",
            |o| set(o, "/spec/users/0/email", json!("ada lovelace@example.com")),
            &[("spec.users[0].email", "should match")],
        ),
        case(
            "both password forms",
            |o| set(o, "/spec/users/0/password", json!("inline")),
            &[(
                "spec.users[0]",
                "password and passwordSecretRef are mutually exclusive",
            )],
        ),
        case(
            "http endpoint",
            |o| {
                set(
                    o,
                    "/spec/endpoint",
                    json!("http://intl.myhuaweicloud-koodrive.com"),
                )
            },
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "http endpoint posing as loopback",
            |o| set(o, "/spec/endpoint", json!("http://localhost.evil.example")),
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "endpoint without scheme",
            |o| {
                set(
                    o,
                    "/spec/endpoint",
                    json!("intl.myhuaweicloud-koodrive.com"),
                )
            },
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "endpoint without host",
            |o| set(o, "/spec/endpoint", json!("https://")),
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "endpoint with an empty host and a port",
            |o| set(o, "/spec/endpoint", json!("https://:443")),
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "endpoint with an empty host and a path",
            |o| set(o, "/spec/endpoint", json!("https:///koodrive")),
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "endpoint with a space",
            |o| {
                set(
                    o,
                    "/spec/endpoint",
                    json!("https://intl.myhuaweicloud-koodrive.com /x"),
                )
            },
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "http endpoint on a loopback-looking port",
            |o| set(o, "/spec/endpoint", json!("http://127.0.0.1.example:80")),
            &[("spec.endpoint", "endpoint must be an https:// URL")],
        ),
        case(
            "endpoint too long",
            |o| {
                set(
                    o,
                    "/spec/endpoint",
                    json!(format!("https://example.com/{}", "p".repeat(2048))),
                )
            },
            &[("spec.endpoint", "Too long")],
        ),
        case(
            "empty users",
            |o| set(o, "/spec/users", json!([])),
            &[("spec.users", "must have at least 1 item")],
        ),
        case(
            "missing users",
            |o| remove(o, "/spec/users"),
            &[("spec.users", "Required value")],
        ),
        case(
            "users is a map",
            |o| set(o, "/spec/users", json!({"ada": {"phone": "8613800000001"}})),
            &[("spec.users", "must be of type array")],
        ),
        case(
            "user is a string",
            |o| set(o, "/spec/users/1", json!("Grace Hopper")),
            &[("spec.users[1]", "must be of type object")],
        ),
        case(
            "missing credentialsRef",
            |o| remove(o, "/spec/credentialsRef"),
            &[("spec.credentialsRef", "Required value")],
        ),
        case(
            "credentialsRef without name",
            |o| remove(o, "/spec/credentialsRef/name"),
            &[("spec.credentialsRef.name", "Required value")],
        ),
        case(
            "credentialsRef name not a DNS name",
            |o| set(o, "/spec/credentialsRef/name", json!("KooDrive_Creds")),
            &[("spec.credentialsRef.name", "should match")],
        ),
        case(
            "credentials key name with a slash",
            |o| set(o, "/spec/credentialsRef/secretKeyKey", json!("a/b")),
            &[("spec.credentialsRef.secretKeyKey", "should match")],
        ),
        case(
            "passwordSecretRef without key",
            |o| remove(o, "/spec/users/0/passwordSecretRef/key"),
            &[("spec.users[0].passwordSecretRef.key", "Required value")],
        ),
        case(
            "unknown spec field",
            |o| set(o, "/spec/dryRun", json!(true)),
            &[("spec.dryRun", "Unknown field")],
        ),
        case(
            "unknown user field (typo)",
            |o| set(o, "/spec/users/0/lastname", json!("Lovelace")),
            &[("spec.users[0].lastname", "Unknown field")],
        ),
        case(
            "unknown top-level field",
            |o| set(o, "/specs", json!({})),
            &[("specs", "Unknown field")],
        ),
        case(
            "missing spec",
            |o| remove(o, "/spec"),
            &[("spec", "Required value")],
        ),
        case(
            "spec is a list",
            |o| set(o, "/spec", json!([])),
            &[("spec", "must be of type object")],
        ),
        case(
            "firstname is a number",
            |o| set(o, "/spec/users/0/firstname", json!(42)),
            &[("spec.users[0].firstname", "must be of type string")],
        ),
        case(
            "wrong apiVersion",
            |o| set(o, "/apiVersion", json!("koodrive.io/v1")),
            &[("apiVersion", r#"Unsupported value: "koodrive.io/v1""#)],
        ),
        case(
            "wrong kind",
            |o| set(o, "/kind", json!("UserBatches")),
            &[("kind", "Unsupported value")],
        ),
        case(
            "missing metadata",
            |o| remove(o, "/metadata"),
            &[("metadata", "Required value")],
        ),
        case(
            "missing name",
            |o| remove(o, "/metadata/name"),
            &[("metadata.name", "Required value")],
        ),
        case(
            "uppercase name",
            |o| set(o, "/metadata/name", json!("Onboarding")),
            &[("metadata.name", "RFC 1123 subdomain")],
        ),
        case(
            "name too long",
            |o| set(o, "/metadata/name", long(254)),
            &[("metadata.name", "Too long")],
        ),
        case(
            "namespace with a dot",
            |o| set(o, "/metadata/namespace", json!("team.a")),
            &[("metadata.namespace", "RFC 1123 label")],
        ),
        case(
            "label value not a string",
            |o| set(o, "/metadata/labels", json!({"team": 7})),
            &[("metadata.labels.team", "must be of type string")],
        ),
        case(
            "unknown metadata field",
            |o| set(o, "/metadata/nmae", json!("x")),
            &[("metadata.nmae", "Unknown field")],
        ),
        case(
            "status with unknown phase",
            |o| {
                set(o, "/status", status());
                set(o, "/status/phase", json!("Done"));
            },
            &[("status.phase", "Unsupported value: \"Done\"")],
        ),
        case(
            "status with a negative count",
            |o| {
                set(o, "/status", status());
                set(o, "/status/summary/failed", json!(-1));
            },
            &[("status.summary.failed", "greater than or equal to 0")],
        ),
        case(
            "status with a bad timestamp",
            |o| {
                set(o, "/status", status());
                set(o, "/status/tasks/0/submittedAt", json!("yesterday"));
            },
            &[("status.tasks[0].submittedAt", "RFC 3339")],
        ),
        case(
            "status with too many failures",
            |o| {
                set(o, "/status", status());
                let failures: Vec<Value> = (0..101)
                    .map(|i| json!({"phone": format!("86138{i:08}")}))
                    .collect();
                set(o, "/status/failures", Value::Array(failures));
            },
            &[(
                "status.failures",
                "Too many: 101: must have at most 100 items",
            )],
        ),
        case(
            "status with duplicate condition types",
            |o| {
                set(o, "/status", status());
                let condition = o["status"]["conditions"][0].clone();
                o["status"]["conditions"]
                    .as_array_mut()
                    .unwrap()
                    .push(condition);
            },
            &[(
                "status.conditions[1]",
                r#"Duplicate value: {"type":"Ready"}"#,
            )],
        ),
        case(
            "condition without reason",
            |o| {
                set(o, "/status", status());
                remove(o, "/status/conditions/0/reason");
            },
            &[("status.conditions[0].reason", "Required value")],
        ),
        Case {
            name: "1001 users",
            object: with_users(1001),
            expected: vec![("spec.users", "Too many: 1001: must have at most 1000 items")],
        },
    ]
}

fn paths(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.path.as_str()).collect()
}

#[test]
fn every_malformed_manifest_is_rejected_with_its_field_path() {
    let cases = malformed_cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        let violations = validate_userbatch(&case.object);
        let mut unmatched: Vec<&Violation> = violations.iter().collect();
        for (path, fragment) in &case.expected {
            match unmatched
                .iter()
                .position(|v| v.path == *path && v.problem.contains(fragment))
            {
                Some(at) => {
                    unmatched.remove(at);
                }
                None => failures.push(format!(
                    "{}: expected `{path}: …{fragment}…`, got {:?}",
                    case.name,
                    violations
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                )),
            }
        }
        if !unmatched.is_empty() {
            failures.push(format!(
                "{}: unexpected {:?}",
                case.name,
                paths(&violations)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn well_formed_objects_are_accepted() {
    let mut accepted = vec![("base", valid()), ("1000 users", with_users(1000))];
    for endpoint in [
        "https://cn.myhuaweicloud-koodrive.com",
        "https://koodrive.example.com:8443/prefix",
        "http://localhost",
        "http://localhost:18080",
        "http://127.0.0.1:34567/",
        "http://[::1]:8080",
    ] {
        let mut object = valid();
        object["spec"]["endpoint"] = json!(endpoint);
        accepted.push((endpoint, object));
    }
    let mut without_endpoint = valid();
    remove(&mut without_endpoint, "/spec/endpoint");
    accepted.push(("no endpoint", without_endpoint));
    let mut with_status = valid();
    with_status["status"] = status();
    accepted.push(("full status", with_status));
    let mut generated_name = valid();
    remove(&mut generated_name, "/metadata/name");
    generated_name["metadata"]["generateName"] = json!("onboarding-");
    accepted.push(("generateName", generated_name));
    let mut nulls = valid();
    // Nulls for optional fields are pruned by the API server, not rejected.
    nulls["spec"]["endpoint"] = Value::Null;
    nulls["spec"]["users"][2]["email"] = Value::Null;
    accepted.push(("explicit nulls", nulls));

    for (name, object) in accepted {
        assert_eq!(validate_userbatch(&object), vec![], "{name}");
    }
}

#[test]
fn a_password_is_never_echoed_in_a_violation() {
    let mut object = valid();
    let password = "x".repeat(129) + "-very-secret";
    object["spec"]["users"][1]["password"] = json!(password);
    let violations = validate_userbatch(&object);
    assert_eq!(paths(&violations), ["spec.users[1].password"]);
    assert!(!violations[0].problem.contains("very-secret"));
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn every_example_is_valid_and_they_reference_each_other() {
    let mut userbatches = Vec::new();
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in validate_manifests(&text).unwrap() {
            match document {
                Document::UserBatch { name, violations } => {
                    assert_eq!(violations, vec![], "{}: {name}", path.display());
                    userbatches.push(serde_saphyr::from_str::<Value>(&text).unwrap());
                }
                Document::Account {
                    kind,
                    name,
                    violations,
                } => assert_eq!(violations, vec![], "{}: {kind} {name}", path.display()),
                Document::Skipped { what } => secrets.push(what),
            }
        }
    }
    assert!(!userbatches.is_empty());
    let batch = userbatches
        .iter()
        .find(|b| b["metadata"]["name"] == "onboarding-2026-11")
        .expect("examples/userbatch.yaml");
    assert_eq!(batch["metadata"]["namespace"], "default");
    assert!(
        batch["spec"].get("endpoint").is_none(),
        "the demo supplies the endpoint"
    );
    let users = batch["spec"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 3);
    assert!(users.iter().all(|u| u.get("passwordSecretRef").is_some()));
    assert!(
        secrets
            .iter()
            .any(|s| s.contains("Secret koodrive-credentials"))
    );
    assert!(
        secrets
            .iter()
            .any(|s| s.contains("Secret onboarding-passwords"))
    );
}

#[test]
fn multi_document_manifests_are_split_and_others_skipped() {
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
---
---
apiVersion: koodrive.io/v1alpha1
kind: UserBatch
metadata: {name: a}
spec:
  credentialsRef: {name: creds}
  users: [{firstname: A, phone: "8613800000001"}]
---
apiVersion: koodrive.io/v1alpha1
kind: UserBatch
metadata: {name: b, namespace: team-b}
spec:
  credentialsRef: {name: creds}
  users: [{firstname: B, phone: 8613800000001}]
"#;
    let documents = validate_manifests(yaml).unwrap();
    assert_eq!(documents.len(), 3, "{documents:?}");
    assert!(
        matches!(&documents[0], Document::Skipped { what } if what.contains("ConfigMap settings"))
    );
    assert!(
        matches!(&documents[1], Document::UserBatch { name, violations } if name == "a" && violations.is_empty())
    );
    match &documents[2] {
        Document::UserBatch { name, violations } => {
            assert_eq!(name, "team-b/b");
            assert_eq!(paths(violations), ["spec.users[0].phone"]);
        }
        other => panic!("expected a UserBatch, got {other:?}"),
    }
}

#[test]
fn broken_yaml_is_an_error_not_a_pass() {
    assert!(validate_manifests("spec: [unclosed").is_err());
}

// ---- through the binary ----

fn validate_cmd(args: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_koodrive-operator"));
    command.arg("validate");
    for arg in args {
        command.arg("-f").arg(arg);
    }
    command.output().unwrap()
}

fn to_yaml(object: &Value) -> String {
    serde_saphyr::to_string(object).unwrap()
}

#[test]
fn the_binary_accepts_the_examples_directory() {
    let output = validate_cmd(&[&examples_dir()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(output.stdout.is_empty());
    assert!(
        stderr.contains("skipped v1 Secret koodrive-credentials (not a UserBatch)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("UserBatch default/onboarding-2026-11 is valid"),
        "{stderr}"
    );
}

#[test]
fn the_binary_prints_file_path_and_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("team-a").join("batches");
    std::fs::create_dir_all(&nested).unwrap();

    let mut bad = valid();
    bad["spec"]["users"][2]["phone"] = json!("8613800000001");
    bad["spec"]["users"][0]["email"] = json!("nope");
    let bad_file = nested.join("bad.yml");
    std::fs::write(&bad_file, to_yaml(&bad)).unwrap();
    let good_file = dir.path().join("good.yaml");
    std::fs::write(
        &good_file,
        format!(
            "{}---\n{}",
            to_yaml(&valid()),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n"
        ),
    )
    .unwrap();
    // Not YAML by extension: a directory walk must ignore it.
    std::fs::write(dir.path().join("notes.txt"), "kind: UserBatch\n").unwrap();

    let output = validate_cmd(&[dir.path()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let shown = bad_file.display().to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{shown}: spec.users[0].email: Invalid value: \"nope\": should match '^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$'"
            ),
            format!("{shown}: spec.users[2]: Duplicate value: {{\"phone\":\"8613800000001\"}}"),
        ]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("checked 2 UserBatch(es) in 2 file(s): 1 invalid"),
        "{stderr}"
    );

    // The valid file alone passes.
    let output = validate_cmd(&[&good_file]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_binary_fails_on_unreadable_and_unparsable_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "spec: [unclosed\n").unwrap();

    let output = validate_cmd(&[&missing, &broken]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: cannot read file:", missing.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: not valid YAML:", broken.display())),
        "{stdout}"
    );
}

#[test]
fn the_binary_handles_a_1001_user_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    std::fs::write(&file, to_yaml(&with_users(1001))).unwrap();
    let output = validate_cmd(&[&file]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: spec.users: Too many: 1001: must have at most 1000 items",
            file.display()
        )
    );
}

#[test]
fn the_binary_reads_standard_input_for_dash() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bad = valid();
    bad["spec"]["users"][0]["firstname"] = json!("");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(to_yaml(&bad).as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "-: spec.users[0].firstname: Invalid value: \"\": must be at least 1 character(s) long"
    );
}
