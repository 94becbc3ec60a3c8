//! The UserBatch size budget, checked against a real cluster's limits (the values and their
//! measurement are the emulator's, `kube_emulator::limits`):
//! - the largest UserBatch the CRD accepts, with the largest status it allows (including a
//!   per-user record with the longest KooDrive user ID for every user, issue #12), managed
//!   fields and ordinary metadata, fits etcd's 1.5 MiB, so no status write can ever fail for
//!   size;
//! - a full UserBatch of ordinary users fits client-side `kubectl apply`: its
//!   last-applied-configuration copy stays under the 256 KiB annotation limit.

use crate::support::ordinary_users;
use koodrive_operator::crd::*;
use koodrive_operator::validation::validate_userbatch;
use kube_emulator::limits::{
    MAX_ANNOTATIONS_BYTES, MAX_OBJECT_BYTES, MAX_REQUEST_BODY_BYTES, annotations_size, encoded_len,
    with_last_applied_configuration,
};
use serde_json::{Value, json};

/// The widest character JSON can hold for a free-text field: `<` is written as `\u003c`.
const WIDE: &str = "<";
/// The longest `date-time` the schema accepts in practice (nanoseconds and an offset).
const TIMESTAMP: &str = "2026-11-29T10:00:00.999999999+14:00";
/// etcd stores the key and a protobuf envelope next to the object; leave room for them.
const ETCD_OVERHEAD: usize = 4096;

fn wide(n: usize) -> String {
    WIDE.repeat(n)
}

/// A `+` and 20 digits: the longest phone the pattern allows, distinct per index.
fn longest_phone(i: usize) -> String {
    format!("+{:020}", 10_000_000_000_000_000_000u128 + i as u128)
}

/// 1000 users holding exactly the users' text budget in the widest characters, every
/// optional field present.
fn largest_users() -> Vec<Value> {
    // Each user spends 1 + 1 + 5 (a@b.c) + 1 + 1 characters at least; the rest goes to the
    // first name.
    let per_user = MAX_USER_TEXT_CHARS / MAX_USERS;
    (0..MAX_USERS)
        .map(|i| {
            json!({
                "firstname": wide(per_user - 8),
                "surname": wide(1),
                "phone": longest_phone(i),
                "email": format!("{WIDE}@{WIDE}.{WIDE}"),
                "passwordSecretRef": {"name": "a", "key": "b"},
            })
        })
        .collect()
}

fn largest_status() -> Value {
    let max = i64::MAX;
    let phones_per_task = MAX_TASK_PHONES / MAX_TASKS;
    let tasks: Vec<Value> = (0..MAX_TASKS)
        .map(|t| {
            let phones: Vec<String> = (0..phones_per_task)
                .map(|p| longest_phone(t * phones_per_task + p))
                .collect();
            json!({
                "taskId": wide(MAX_ID_LEN),
                "code": wide(MAX_ID_LEN),
                "message": wide(MAX_MESSAGE_LEN),
                "traceId": "a".repeat(MAX_ID_LEN),
                "resubmitOf": "a".repeat(MAX_ID_LEN),
                "submittedAt": TIMESTAMP,
                "usersDigest": "f".repeat(USER_DIGEST_HEX_LEN * phones.len()),
                "phones": phones,
                "result": {"total": max, "succeeded": max, "failed": max, "skipped": max, "finished": false},
                "usersRecorded": true,
            })
        })
        .collect();
    let conditions: Vec<Value> = (0..MAX_CONDITIONS)
        .map(|c| {
            json!({
                "type": format!("T{c}{}", "a".repeat(316 - 2 - c.to_string().len() + 1)),
                "status": "Unknown",
                "observedGeneration": max,
                "lastTransitionTime": TIMESTAMP,
                "reason": "A".repeat(1024),
                "message": wide(MAX_CONDITION_MESSAGE_LEN),
            })
        })
        .collect();
    let failures: Vec<Value> = (0..MAX_FAILURES)
        .map(|_| {
            json!({"phone": wide(MAX_FAILURE_PHONE_LEN), "code": wide(MAX_ID_LEN), "reason": wide(MAX_REASON_LEN)})
        })
        .collect();
    json!({
        "observedGeneration": max,
        "phase": "Submitting",
        "taskId": wide(MAX_ID_LEN),
        "code": wide(MAX_ID_LEN),
        "message": wide(MAX_MESSAGE_LEN),
        "tasks": tasks,
        "summary": {"requested": max, "submitted": max, "succeeded": max, "failed": max, "skipped": max},
        "failures": failures,
        "conditions": conditions,
        "resubmittedInDoubt": wide(MAX_ANNOTATION_VALUE_LEN),
        "stalledInputs": {"reason": wide(MAX_ID_LEN), "digest": wide(MAX_ID_LEN)},
        "users": per_user_records(),
        "retriedFailed": wide(MAX_ANNOTATION_VALUE_LEN),
        "deletionsToConfirm": max,
    })
}

/// The longest state word a per-user record can hold.
const LONGEST_STATE: &str = "DeletePending";

/// `status.users` at its longest: a record for every user (the schema's bound), each with
/// the longest phone, the longest KooDrive user ID and the longest state.
fn per_user_records() -> Vec<Value> {
    assert!(LONGEST_STATE.len() <= MAX_USER_STATE_LEN);
    (0..MAX_USERS)
        .map(|i| {
            json!({"phone": longest_phone(i), "userId": "9".repeat(MAX_USER_ID_LEN), "state": LONGEST_STATE})
        })
        .collect()
}

/// managedFields as the API server records them: the spec's writer owns every user (a
/// list-map, keyed by phone), the operator owns status.
fn managed_fields(users: &[Value]) -> Value {
    let mut user_fields = serde_json::Map::new();
    for user in users {
        let key = format!("k:{{\"phone\":\"{}\"}}", user["phone"].as_str().unwrap());
        user_fields.insert(
            key,
            json!({".": {}, "f:email": {}, "f:firstname": {}, "f:phone": {}, "f:surname": {},
                   "f:passwordSecretRef": {".": {}, "f:key": {}, "f:name": {}}}),
        );
    }
    let mut conditions = serde_json::Map::new();
    for c in 0..MAX_CONDITIONS {
        conditions.insert(
            format!("k:{{\"type\":\"T{c}\"}}"),
            json!({".": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:observedGeneration": {},
                   "f:reason": {}, "f:status": {}, "f:type": {}}),
        );
    }
    json!([
        {"apiVersion": "koodrive.io/v1alpha1", "fieldsType": "FieldsV1", "manager": "kubectl-client-side-apply",
         "operation": "Update", "time": TIMESTAMP, "fieldsV1": {"f:metadata": {"f:annotations": {".": {}}},
         "f:spec": {".": {}, "f:credentialsRef": {".": {}, "f:name": {}, "f:accessKeyKey": {}, "f:secretKeyKey": {}, "f:userIdKey": {}},
                    "f:endpoint": {}, "f:inDoubtPolicy": {}, "f:suspend": {}, "f:deletionPolicy": {}, "f:users": user_fields}}},
        {"apiVersion": "koodrive.io/v1alpha1", "fieldsType": "FieldsV1", "manager": "koodrive-operator",
         "operation": "Update", "subresource": "status", "time": TIMESTAMP, "fieldsV1": {"f:status": {
            ".": {}, "f:code": {}, "f:failures": {}, "f:message": {}, "f:observedGeneration": {}, "f:phase": {},
            "f:resubmittedInDoubt": {}, "f:stalledInputs": {".": {}, "f:digest": {}, "f:reason": {}}, "f:summary": {}, "f:taskId": {}, "f:tasks": {},
            "f:users": {}, "f:retriedFailed": {}, "f:deletionsToConfirm": {}, "f:conditions": conditions}}},
        {"apiVersion": "koodrive.io/v1alpha1", "fieldsType": "FieldsV1", "manager": "koodrive-operator",
         "operation": "Update", "time": TIMESTAMP, "fieldsV1": {"f:metadata": {"f:finalizers": {".": {}, "v:\"koodrive.io/delete-users\"": {}}}}},
    ])
}

/// What the API server adds to metadata, and ordinary labels and annotations (a GitOps
/// tool's tracking labels and a few annotations: 4 KiB).
fn server_metadata(object: &mut Value) {
    let users = object["spec"]["users"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let metadata = &mut object["metadata"];
    metadata["uid"] = json!("6f3d1b9e-2a54-4c1e-9f7b-0d8c5e4a3b21");
    metadata["resourceVersion"] = json!("18446744073709551615");
    metadata["generation"] = json!(i64::MAX);
    metadata["creationTimestamp"] = json!(TIMESTAMP);
    metadata["labels"] = json!({
        "app.kubernetes.io/instance": "a".repeat(63), "app.kubernetes.io/part-of": "a".repeat(63),
        "argocd.argoproj.io/instance": "a".repeat(63), "kustomize.toolkit.fluxcd.io/name": "a".repeat(63),
    });
    let annotations = metadata["annotations"].as_object_mut().map(std::mem::take);
    let mut annotations = annotations.unwrap_or_default();
    annotations.insert("example.com/ordinary".into(), json!("a".repeat(4096)));
    metadata["annotations"] = Value::Object(annotations);
    // deletionPolicy: Delete's finalizer, next to another controller's.
    metadata["finalizers"] = json!([FINALIZER, format!("example.com/{}", "a".repeat(200))]);
    metadata["managedFields"] = managed_fields(&users);
}

fn userbatch(users: Vec<Value>) -> Value {
    json!({
        "apiVersion": "koodrive.io/v1alpha1",
        "kind": "UserBatch",
        "metadata": {"name": "a".repeat(253), "namespace": "a".repeat(63), "annotations": {}},
        "spec": {
            "credentialsRef": {"name": "a".repeat(253), "accessKeyKey": "a".repeat(253),
                               "secretKeyKey": "a".repeat(253), "userIdKey": "a".repeat(253)},
            "endpoint": format!("https://{}", wide(2048 - 8)),
            "inDoubtPolicy": "Resubmit",
            "suspend": false,
            "deletionPolicy": "Orphan",
            "users": users,
        },
    })
}

#[test]
fn the_largest_userbatch_with_the_largest_status_fits_etcd() {
    let mut object = userbatch(largest_users());
    object["status"] = largest_status();
    let violations = validate_userbatch(&object);
    assert!(
        violations.is_empty(),
        "the maximal object must be one the API server accepts: {violations:?}"
    );
    let spec = encoded_len(&object["spec"]);
    let status = encoded_len(&object["status"]);
    server_metadata(&mut object);
    let metadata = encoded_len(&object["metadata"]);
    let records = encoded_len(&object["status"]["users"]);
    let total = encoded_len(&object) + ETCD_OVERHEAD;
    println!(
        "spec {spec} B, status {status} B (of which {records} B per-user records), metadata {metadata} B: \
         {total} B of {MAX_OBJECT_BYTES} B"
    );
    assert!(
        total <= MAX_OBJECT_BYTES,
        "the largest UserBatch would be {total} bytes, over etcd's {MAX_OBJECT_BYTES}"
    );

    // One character more than the users' text budget is refused, naming the limit.
    let mut over = userbatch(largest_users());
    over["spec"]["users"][0]["surname"] = json!(wide(2));
    let violations = validate_userbatch(&over);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].path, "spec.users");
    assert!(
        violations[0].problem.contains("at most 100000 characters"),
        "{}",
        violations[0].problem
    );
}

#[test]
fn a_full_userbatch_of_ordinary_users_fits_client_side_apply() {
    let users = ordinary_users("86138", MAX_USERS, "onboarding-passwords");
    let manifest = json!({
        "apiVersion": "koodrive.io/v1alpha1",
        "kind": "UserBatch",
        "metadata": {"name": "onboarding-2026-11", "namespace": "team-a"},
        "spec": {"credentialsRef": {"name": "koodrive-credentials"}, "users": users},
    });
    assert_eq!(validate_userbatch(&manifest), vec![]);
    let applied = with_last_applied_configuration(&manifest);
    let annotations = annotations_size(&applied);
    println!(
        "{MAX_USERS} ordinary users: annotations {annotations} B of {MAX_ANNOTATIONS_BYTES} B"
    );
    assert!(annotations <= MAX_ANNOTATIONS_BYTES, "{annotations} bytes");
    assert!(encoded_len(&applied) <= MAX_REQUEST_BODY_BYTES);

    // Stored with the copy and the largest status, it still fits etcd.
    let mut stored = applied;
    stored["status"] = largest_status();
    server_metadata(&mut stored);
    let total = encoded_len(&stored) + ETCD_OVERHEAD;
    assert!(total <= MAX_OBJECT_BYTES, "{total} bytes");

    // One user more is over the schema's bound.
    let mut over = manifest.clone();
    let extra = ordinary_users("86139", 1, "onboarding-passwords");
    over["spec"]["users"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(&extra[0]).unwrap());
    let violations = validate_userbatch(&over);
    assert!(
        violations
            .iter()
            .any(|v| v.path == "spec.users" && v.problem.contains("must have at most 1000 items")),
        "{violations:?}"
    );
}

fn manifest_yaml(users: &[koodrive_operator::crd::User]) -> String {
    let manifest = json!({
        "apiVersion": "koodrive.io/v1alpha1",
        "kind": "UserBatch",
        "metadata": {"name": "full", "namespace": crate::support::NAMESPACE},
        "spec": {"credentialsRef": {"name": "creds"}, "users": users},
    });
    serde_saphyr::to_string(&manifest).unwrap()
}

/// The largest valid UserBatch goes through plain `kubectl apply` (client-side, the
/// default, as Argo CD syncs) and the operator brings it to Ready; one user more is refused
/// at apply time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_userbatch_applies_with_kubectl_and_becomes_ready() {
    use crate::support::*;
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let people = ordinary_users("86170", MAX_USERS, "passwords");
    env.create_passwords("passwords", &people).await;
    let file = env.dir.path().join("full.yaml");
    std::fs::write(&file, manifest_yaml(&people)).unwrap();
    let kubectl = |file: &std::path::Path| {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .arg("--cache-dir")
            .arg(env.dir.path().join("kubectl-cache"))
            .arg("apply")
            .arg("-f")
            .arg(file)
            .output()
            .expect("kubectl is installed")
    };
    let out = kubectl(&file);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = env.userbatches().get("full").await.unwrap();
    let copy = applied
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(kube_emulator::limits::LAST_APPLIED_ANNOTATION))
        .expect("client-side apply keeps its copy of the manifest");
    assert!(copy.len() < MAX_ANNOTATIONS_BYTES);

    let _operator = env.operator("op", &[]);
    let ub = env.wait_for("full", "Ready", is_ready).await;
    assert_eq!(
        ub.status.unwrap().summary.unwrap().submitted,
        MAX_USERS as i64
    );

    let mut more = people.clone();
    more.extend(ordinary_users("86171", 1, "passwords"));
    std::fs::write(&file, manifest_yaml(&more)).unwrap();
    let out = kubectl(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.users: Too many: 1001: must have at most 1000 items"),
        "{stderr}"
    );
}

#[test]
fn the_validate_commands_size_checks_agree_with_the_emulators() {
    use koodrive_operator::validation::size;
    assert_eq!(size::MAX_ANNOTATIONS_BYTES, MAX_ANNOTATIONS_BYTES);
    assert_eq!(size::MAX_REQUEST_BODY_BYTES, MAX_REQUEST_BODY_BYTES);
    assert_eq!(size::MAX_OBJECT_BYTES, MAX_OBJECT_BYTES);
    let mut sample = userbatch(largest_users());
    sample["metadata"]["annotations"] = json!({"a": "x<y>&\"\\\n\u{2028}é"});
    assert_eq!(
        size::after_client_side_apply(&sample),
        with_last_applied_configuration(&sample)
    );
    assert_eq!(size::encoded_len(&sample), encoded_len(&sample));
}

fn validate_file(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn validate_refuses_what_client_side_apply_could_not_store() {
    let ordinary = ordinary_users("86138", MAX_USERS, "passwords");
    let (code, stdout) = validate_file(&manifest_yaml(&ordinary));
    assert_eq!(code, Some(0), "{stdout}");

    // Schema-valid (the text budget counts characters), but `<` takes six bytes in the
    // JSON copy kubectl keeps in the annotation.
    let mut wide_users = ordinary;
    for user in &mut wide_users {
        user.firstname = wide(60);
    }
    let (code, stdout) = validate_file(&manifest_yaml(&wide_users));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("metadata.annotations: Too long: must have at most 262144 bytes")
            && stdout.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{stdout}"
    );

    // Labels are not bounded by the annotation limit, but by the body and etcd's limits.
    let mut labelled: Value = serde_saphyr::from_str(&manifest_yaml(&wide_users[..1])).unwrap();
    labelled["metadata"]["labels"] = (0..20_000)
        .map(|i| (format!("example.com/label-{i:05}"), json!("v".repeat(63))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let violations = koodrive_operator::validation::size_violations(&labelled);
    let problems: Vec<&str> = violations.iter().map(|v| v.problem.as_str()).collect();
    assert_eq!(violations.len(), 3, "{problems:?}");
    assert!(problems[1].contains("over the API server's limit of 3145728 bytes (3 MiB)"));
    assert!(problems[2].contains("over etcd's limit of 1572864 bytes (1.5 MiB) per object"));
}
