//! The UserBatch size budget, checked against a real cluster's limits (the values and their
//! measurement are the emulator's, `kube_emulator::limits`):
//! - the largest UserBatch the CRD accepts, with the largest status it allows (plus room for
//!   a per-user record, issue #12), managed fields and ordinary metadata, fits etcd's
//!   1.5 MiB, so no status write can ever fail for size;
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
                "submittedAt": TIMESTAMP,
                "usersDigest": "f".repeat(USER_DIGEST_HEX_LEN * phones.len()),
                "phones": phones,
                "result": {"total": max, "succeeded": max, "failed": max, "skipped": max, "finished": false},
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
        "stalledInputs": wide(MAX_ID_LEN),
    })
}

/// The per-user record issue #12 adds to status (phone, KooDrive user ID, state), at its
/// longest, for every spec user: not in the schema yet, so measured on its own.
fn per_user_records() -> Value {
    let records: Vec<Value> = (0..MAX_USERS)
        .map(|i| {
            json!({"phone": longest_phone(i), "userId": "9".repeat(MAX_USER_ID_LEN), "state": "s".repeat(MAX_USER_STATE_LEN)})
        })
        .collect();
    json!({ "users": records })
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
                    "f:endpoint": {}, "f:users": user_fields}}},
        {"apiVersion": "koodrive.io/v1alpha1", "fieldsType": "FieldsV1", "manager": "koodrive-operator",
         "operation": "Update", "subresource": "status", "time": TIMESTAMP, "fieldsV1": {"f:status": {
            ".": {}, "f:code": {}, "f:failures": {}, "f:message": {}, "f:observedGeneration": {}, "f:phase": {},
            "f:resubmittedInDoubt": {}, "f:stalledInputs": {}, "f:summary": {}, "f:taskId": {}, "f:tasks": {},
            "f:users": {}, "f:conditions": conditions}}},
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
    // `,"users":[…]` inside status.
    let records = encoded_len(&per_user_records()) - 2;
    let total = encoded_len(&object) + records + ETCD_OVERHEAD;
    println!(
        "spec {spec} B, status {status} B (+{records} B for per-user records), metadata {metadata} B: \
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
    let total = encoded_len(&stored) + encoded_len(&per_user_records()) + ETCD_OVERHEAD;
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
