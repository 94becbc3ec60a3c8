//! The Kubernetes API emulator, proven with a real kube client and the kube-runtime pieces the
//! operator uses (watcher, Controller, finalizer helper, event Recorder, Lease-based leader
//! election), and with `kubectl` against the standalone `emulator` subcommand.

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use koodrive_operator::crd::{CredentialsRef, User, UserBatch, UserBatchSpec};
use koodrive_operator::devtools::emulator_config;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use kube_emulator::{Admission, Violation};
use kube_emulator::{Emulator, EmulatorConfig, Fault, FaultKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Generous: these waits normally take milliseconds.
const DEADLINE: Duration = Duration::from_secs(60);

async fn start(config: EmulatorConfig) -> (Emulator, Client) {
    let emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let client = emulator.client().await.unwrap();
    (emulator, client)
}

/// The UserBatch CRD, with the list-map declarations the spec requires (whether or not the
/// generated CRD carries them yet) and known printer columns.
fn userbatch_crd() -> Value {
    let mut crd = serde_json::to_value(UserBatch::crd()).unwrap();
    for version in crd["spec"]["versions"].as_array_mut().unwrap() {
        let schema = &mut version["schema"]["openAPIV3Schema"]["properties"];
        let users = &mut schema["spec"]["properties"]["users"];
        users["x-kubernetes-list-type"] = json!("map");
        users["x-kubernetes-list-map-keys"] = json!(["phone"]);
        let conditions = &mut schema["status"]["properties"]["conditions"];
        conditions["x-kubernetes-list-type"] = json!("map");
        conditions["x-kubernetes-list-map-keys"] = json!(["type"]);
        // Fixed columns (not the generated ones), so the kubectl test knows what to expect,
        // including a filter expression.
        version["additionalPrinterColumns"] = json!([
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]);
    }
    crd
}

/// An emulator whose UserBatch CRD declares the list-maps, installed through the API.
async fn start_with_list_maps(config: EmulatorConfig) -> (Emulator, Client) {
    let (emulator, client) = start(EmulatorConfig {
        crds: Vec::new(),
        ..config
    })
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(userbatch_crd()).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    (emulator, client)
}

/// A valid phone number for a short test id, so fixtures pass the real admission checks.
fn phone(id: &str) -> String {
    format!("861380000{id:0>4}")
}

fn user(id: &str, firstname: &str) -> User {
    User {
        firstname: firstname.into(),
        surname: None,
        phone: phone(id),
        email: None,
        password: None,
        password_secret_ref: None,
    }
}

fn batch(name: &str, phones: &[&str]) -> UserBatch {
    UserBatch::new(
        name,
        UserBatchSpec {
            credentials_ref: Some(CredentialsRef {
                name: "creds".into(),
                access_key_key: None,
                secret_key_key: None,
                user_id_key: None,
            }),
            account_ref: None,
            endpoint: None,
            users: phones.iter().map(|p| user(p, "Ada")).collect(),
            in_doubt_policy: None,
            suspend: None,
            deletion_policy: None,
        },
    )
}

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(obj: &impl ResourceExt) -> u64 {
    obj.resource_version().unwrap().parse().unwrap()
}

/// The next item of `stream` satisfying `pred`, failing the test after [`DEADLINE`].
async fn next_matching<S, T, E>(stream: &mut S, mut pred: impl FnMut(&T) -> bool) -> T
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.next().await {
                Some(Ok(item)) if pred(&item) => return item,
                Some(_) => continue,
                None => panic!("stream ended before the expected item"),
            }
        }
    })
    .await
    .expect("expected item did not arrive before the deadline")
}

#[tokio::test]
async fn generation_follows_spec_and_status_writes_are_separate() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client.clone());
    let mut with_status = batch("b", &["1"]);
    with_status.status = Some(Default::default());
    with_status.status.as_mut().unwrap().message = Some("ignored on create".into());
    let created = api
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "create must drop status");
    assert!(created.uid().is_some() && created.metadata.creation_timestamp.is_some());

    let status_write = json!({"spec": {"endpoint": "https://ignored.koodrive.example.com"}, "status": {"phase": "Submitting"}});
    let after_status = api
        .patch_status("b", &PatchParams::default(), &Patch::Merge(&status_write))
        .await
        .unwrap();
    assert_eq!(after_status.metadata.generation, Some(1));
    assert!(
        after_status.spec.endpoint.is_none(),
        "status writes ignore spec"
    );
    assert!(rv(&after_status) > rv(&created));
    let read_back = api.get_status("b").await.unwrap();
    assert_eq!(read_back.status, after_status.status);

    let spec_write = json!({"spec": {"endpoint": "https://e.koodrive.example.com"}, "status": {"phase": "Failed"}});
    let after_spec = api
        .patch("b", &PatchParams::default(), &Patch::Merge(&spec_write))
        .await
        .unwrap();
    assert_eq!(after_spec.metadata.generation, Some(2));
    assert_eq!(
        after_spec.spec.endpoint.as_deref(),
        Some("https://e.koodrive.example.com")
    );
    let phase = after_spec.status.as_ref().and_then(|s| s.phase);
    assert_eq!(
        phase,
        Some(koodrive_operator::crd::Phase::Submitting),
        "spec writes ignore status"
    );

    let label_only = json!({"metadata": {"labels": {"team": "a"}}});
    let labelled = api
        .patch("b", &PatchParams::default(), &Patch::Merge(&label_only))
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "metadata changes keep the generation"
    );
    let again = api
        .patch("b", &PatchParams::default(), &Patch::Merge(&label_only))
        .await
        .unwrap();
    assert_eq!(
        rv(&again),
        rv(&labelled),
        "a no-op write must not bump resourceVersion"
    );

    let secrets: Api<Secret> = Api::default_namespaced(client);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"accessKey": "ak"}
    }))
    .unwrap();
    let secret = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(
        secret.data.as_ref().unwrap()["accessKey"].0,
        b"ak".to_vec(),
        "stringData folds into data"
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let changed = secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"accessKey": "new"}})),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
}

#[tokio::test]
async fn stale_writes_conflict_and_missing_objects_are_not_found() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let first = api
        .create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    let mut second = first.clone();
    second.spec.users.push(user("2", "Bo"));
    api.replace("b", &PostParams::default(), &second)
        .await
        .unwrap();

    let mut stale = first.clone();
    stale.spec.users.push(user("3", "Cy"));
    let err = api_error(
        api.replace("b", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let err = api_error(
        api.replace_status("b", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    let stale_patch = json!({"metadata": {"resourceVersion": first.resource_version()}, "status": {"phase": "Failed"}});
    let err = api_error(
        api.patch_status("b", &PatchParams::default(), &Patch::Merge(&stale_patch))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    let err = api_error(
        api.create(&PostParams::default(), &batch("b", &["1"]))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let err = api_error(api.get("missing").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    let err = api_error(
        api.delete("missing", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_sends_bookmarks() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let a = api
        .create(&PostParams::default(), &batch("a", &["1"]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"endpoint": "https://x.koodrive.example.com"}})),
    )
    .await
    .unwrap();

    // Bookmarks are on by default in kube.
    let params = WatchParams::default();
    let mut events = api
        .watch(&params, &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let added = next_matching(&mut events, |_| true).await;
    assert!(
        matches!(&added, WatchEvent::Added(o) if o.name_any() == "b"),
        "got {added:?}"
    );
    let modified = next_matching(&mut events, |_| true).await;
    assert!(
        matches!(&modified, WatchEvent::Modified(o) if o.name_any() == "a" && o.metadata.generation == Some(2)),
        "got {modified:?}"
    );
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let deleted = next_matching(&mut events, |e| !matches!(e, WatchEvent::Bookmark(_))).await;
    assert!(
        matches!(&deleted, WatchEvent::Deleted(o) if o.name_any() == "b"),
        "got {deleted:?}"
    );
    let bookmark = next_matching(&mut events, |e| matches!(e, WatchEvent::Bookmark(_))).await;
    let WatchEvent::Bookmark(bookmark) = bookmark else {
        unreachable!()
    };
    assert!(bookmark.metadata.resource_version.parse::<u64>().unwrap() >= rv(&a));
}

#[tokio::test]
async fn expired_resource_version_gets_410_and_kube_watcher_relists() {
    let (emulator, client) = start(EmulatorConfig {
        watch_history: 1,
        ..emulator_config()
    })
    .await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let a = api
        .create(&PostParams::default(), &batch("a", &["1"]))
        .await
        .unwrap();
    for name in ["b", "c"] {
        api.create(&PostParams::default(), &batch(name, &["1"]))
            .await
            .unwrap();
    }
    let mut raw = api
        .watch(&WatchParams::default(), &a.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let gone = next_matching(&mut raw, |_| true).await;
    assert!(
        matches!(&gone, WatchEvent::Error(e) if e.code == 410),
        "got {gone:?}"
    );

    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    next_matching(&mut stream, |e| matches!(e, watcher::Event::InitDone)).await;
    // Nothing written after the drop reaches the dropped stream, so the watcher must resume
    // from a version the (one-event) history no longer holds.
    emulator.drop_watches();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"endpoint": "https://x.koodrive.example.com"}})),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &batch("d", &["1"]))
        .await
        .unwrap();
    let relisted = next_matching(
        &mut stream,
        |e| matches!(e, watcher::Event::InitApply(o) if o.name_any() == "d"),
    )
    .await;
    assert!(matches!(relisted, watcher::Event::InitApply(_)));
    let lists = emulator
        .request_log()
        .iter()
        .filter(|(verb, _, _)| verb == "list")
        .count();
    assert!(lists >= 2, "the watcher must have relisted after 410");
}

#[tokio::test]
async fn apply_merges_list_maps_where_merge_patch_replaces() {
    let (_emulator, client) = start_with_list_maps(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let alice = json!({
        "apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch", "metadata": {"name": "b"},
        "spec": {"credentialsRef": {"name": "creds"}, "users": [{"phone": phone("1"), "firstname": "Ada"}]}
    });
    let created = api
        .patch("b", &PatchParams::apply("alice"), &Patch::Apply(&alice))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let bob = json!({
        "apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch", "metadata": {"name": "b"},
        "spec": {"users": [{"phone": phone("2"), "firstname": "Bo"}]}
    });
    let merged = api
        .patch("b", &PatchParams::apply("bob"), &Patch::Apply(&bob))
        .await
        .unwrap();
    let phones: Vec<&str> = merged.spec.users.iter().map(|u| u.phone.as_str()).collect();
    assert_eq!(phones, [phone("1"), phone("2")]);
    assert_eq!(merged.spec.credentials_ref.as_ref().unwrap().name, "creds");

    let takeover = json!({
        "apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch", "metadata": {"name": "b"},
        "spec": {"credentialsRef": {"name": "creds"}, "users": [{"phone": phone("1"), "firstname": "Ada"}, {"phone": phone("2"), "firstname": "Zed"}]}
    });
    let err = api_error(
        api.patch("b", &PatchParams::apply("alice"), &Patch::Apply(&takeover))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("bob"), "{}", err.message);
    let forced = api
        .patch(
            "b",
            &PatchParams::apply("alice").force(),
            &Patch::Apply(&takeover),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.users[1].firstname, "Zed");

    for (manager, condition) in [("operator", "Ready"), ("other", "Stalled")] {
        let status = json!({
            "apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch", "metadata": {"name": "b"},
            "status": {"conditions": [{"type": condition, "status": "True", "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        });
        api.patch_status("b", &PatchParams::apply(manager), &Patch::Apply(&status))
            .await
            .unwrap();
    }
    let with_conditions = api.get("b").await.unwrap();
    let types: Vec<String> = with_conditions
        .status
        .unwrap()
        .conditions
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert_eq!(types, ["Ready", "Stalled"]);

    let replaced = api
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"users": [{"phone": phone("3"), "firstname": "Cy"}]}})),
        )
        .await
        .unwrap();
    let phones: Vec<&str> = replaced
        .spec
        .users
        .iter()
        .map(|u| u.phone.as_str())
        .collect();
    assert_eq!(phones, [phone("3")], "a merge patch replaces lists");
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let mut held = batch("b", &["1"]);
    held.metadata.finalizers = Some(vec!["koodrive.io/cleanup".into()]);
    let created = api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let marked = api.get("b").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());

    let mut events = api
        .watch(
            &WatchParams::default(),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    next_matching(
        &mut events,
        |e| matches!(e, WatchEvent::Deleted(o) if o.name_any() == "b"),
    )
    .await;
    assert_eq!(api_error(api.get("b").await.unwrap_err()).code, 404);
}

fn reject_bad_phones(object: &Value) -> Vec<Violation> {
    let users = object
        .pointer("/spec/users")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    users
        .iter()
        .enumerate()
        .filter(|(_, u)| {
            !u["phone"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .map(|(i, _)| Violation {
            path: format!("spec.users[{i}].phone"),
            problem: "should match '^\\+?[0-9]{5,20}$'".into(),
        })
        .collect()
}

#[tokio::test]
async fn invalid_userbatches_are_rejected_with_422_naming_the_field() {
    let (_emulator, client) = start(EmulatorConfig {
        admission: vec![Admission::new(
            "koodrive.io",
            "UserBatch",
            reject_bad_phones,
        )],
        ..emulator_config()
    })
    .await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let err = api_error(
        api.create(&PostParams::default(), &batch("b", &["12345", "bad"]))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let causes = err.details.unwrap().causes;
    assert_eq!(causes[0].field, "spec.users[1].phone");

    api.create(&PostParams::default(), &batch("b", &["12345"]))
        .await
        .unwrap();
    let err = api_error(
        api.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"users": [{"phone": "bad", "firstname": "X"}]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(
        api.get("b").await.unwrap().spec.users[0].phone,
        phone("12345"),
        "a rejected write changes nothing"
    );
}

/// With the default validator (the CRD's own schema and CEL rules), the emulator rejects
/// what a real API server would, naming the field.
#[tokio::test]
async fn the_real_schema_and_cel_rules_reject_invalid_userbatches() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let cases = [
        (
            json!([{"firstname": "Ada", "phone": "12"}]),
            "spec.users[0].phone",
        ),
        (
            json!([{"phone": "8613800000001"}]),
            "spec.users[0].firstname",
        ),
        (
            json!([{"firstname": "Ada", "phone": "8613800000001", "password": "x",
                    "passwordSecretRef": {"name": "p", "key": "k"}}]),
            "spec.users[0]",
        ),
        (
            json!([{"firstname": "A", "phone": "8613800000001"}, {"firstname": "B", "phone": "8613800000001"}]),
            "spec.users[1]",
        ),
    ];
    for (i, (users, field)) in cases.into_iter().enumerate() {
        let object = json!({
            "apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch",
            "metadata": {"name": format!("bad-{i}")},
            "spec": {"credentialsRef": {"name": "c"}, "users": users}
        });
        let request =
            http::Request::post("/apis/koodrive.io/v1alpha1/namespaces/default/userbatches")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&object).unwrap())
                .unwrap();
        let err = api_error(client_request(&api, request).await);
        assert_eq!(
            (err.code, err.reason.as_str()),
            (422, "Invalid"),
            "case {i}"
        );
        let causes = err.details.unwrap().causes;
        assert!(
            causes.iter().any(|c| c.field == field),
            "case {i}: {causes:?}"
        );
    }
    let err = api_error(
        api.create(&PostParams::default(), &{
            let mut b = batch("insecure", &["1"]);
            b.spec.endpoint = Some("http://koodrive.example.com".into());
            b
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.details
            .unwrap()
            .causes
            .iter()
            .any(|c| c.field == "spec.endpoint")
    );
    api.create(&PostParams::default(), &batch("fine", &["1", "2"]))
        .await
        .unwrap();
}

async fn client_request(api: &Api<UserBatch>, request: http::Request<Vec<u8>>) -> kube::Error {
    let client: Client = api.clone().into_client();
    client
        .request::<UserBatch>(request)
        .await
        .expect_err("the emulator should refuse this UserBatch")
}

#[tokio::test]
async fn faults_fail_or_delay_matching_requests_then_stop() {
    let (emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    emulator.inject(Fault {
        verb: Some("patch".into()),
        path_contains: Some("/status".into()),
        times: 1,
        // Not 503: kube's client retries 429/503/504 by itself.
        kind: FaultKind::Status(500),
    });
    emulator.inject(Fault {
        verb: Some("get".into()),
        path_contains: None,
        times: 1,
        kind: FaultKind::Delay(Duration::from_millis(50)),
    });
    let status = json!({"status": {"phase": "Submitting"}});
    let err = api_error(
        api.patch_status("b", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    // The spec path does not match "/status": unaffected.
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    api.patch_status("b", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert!(
        api.get("b").await.unwrap().status.is_some(),
        "a delayed request is still served"
    );

    let log = emulator.request_log();
    let status_patches: Vec<u16> = log
        .iter()
        .filter(|(verb, path, _)| verb == "patch" && path.ends_with("/status"))
        .map(|(_, _, code)| *code)
        .collect();
    assert_eq!(status_patches, [500, 200]);
}

#[tokio::test]
async fn crd_absence_is_a_404_until_the_crd_is_created() {
    let (_emulator, client) = start(EmulatorConfig {
        crds: Vec::new(),
        ..emulator_config()
    })
    .await;
    let api: Api<UserBatch> = Api::default_namespaced(client.clone());
    assert_eq!(
        api_error(api.list(&ListParams::default()).await.unwrap_err()).code,
        404
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    assert_eq!(
        api_error(crds.get("userbatches.koodrive.io").await.unwrap_err()).code,
        404
    );
    crds.create(&PostParams::default(), &UserBatch::crd())
        .await
        .unwrap();
    let installed = crds.get("userbatches.koodrive.io").await.unwrap();
    let established = installed.status.unwrap().conditions.unwrap();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn lists_page_filter_by_label_and_span_namespaces() {
    let (_emulator, client) = start(emulator_config()).await;
    for (ns, name, team) in [("a", "one", "x"), ("a", "two", "y"), ("b", "three", "x")] {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.labels = Some(BTreeMap::from([("team".to_string(), team.to_string())]));
        api.create(&PostParams::default(), &secret).await.unwrap();
    }
    let all: Api<Secret> = Api::all(client.clone());
    let team_x = all
        .list(&ListParams::default().labels("team=x"))
        .await
        .unwrap();
    let names: Vec<String> = team_x.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["one", "three"]);

    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first
        .metadata
        .continue_
        .clone()
        .expect("a continue token for the next page");
    let rest = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<String> = rest.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["three"]);
    assert!(rest.metadata.continue_.is_none());
}

#[tokio::test]
async fn lease_apply_conflicts_protect_the_holder() {
    let (_emulator, client) = start(emulator_config()).await;
    let leases: Api<Lease> = Api::default_namespaced(client);
    let claim = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    };
    leases
        .patch(
            "leader",
            &PatchParams::apply("replica-a"),
            &Patch::Apply(claim("a")),
        )
        .await
        .unwrap();
    let err = api_error(
        leases
            .patch(
                "leader",
                &PatchParams::apply("replica-b"),
                &Patch::Apply(claim("b")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let release = json!({"spec": {"holderIdentity": null, "leaseDurationSeconds": null}});
    leases
        .patch(
            "leader",
            &PatchParams {
                field_manager: Some("replica-a".into()),
                ..Default::default()
            },
            &Patch::Strategic(release),
        )
        .await
        .unwrap();
    let taken = leases
        .patch(
            "leader",
            &PatchParams::apply("replica-b"),
            &Patch::Apply(claim("b")),
        )
        .await
        .unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test]
async fn the_event_recorder_creates_then_updates_events() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client.clone());
    let created = api
        .create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    let reporter = Reporter {
        controller: "koodrive-operator".into(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = Event {
        type_: EventType::Normal,
        reason: "Submitted".into(),
        note: Some("sent 1 user".into()),
        action: "Submit".into(),
        secondary: None,
    };
    let reference = created.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(client.clone());
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        listed.items.len(),
        1,
        "a repeated event is patched, not duplicated"
    );
    assert_eq!(listed.items[0].series.as_ref().map(|s| s.count), Some(2));

    // The same Event through core v1, found the way `kubectl describe` looks it up.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(client);
    let selector = format!(
        "involvedObject.name=b,involvedObject.kind=UserBatch,involvedObject.uid={}",
        created.uid().unwrap()
    );
    let found = core
        .list(&ListParams::default().fields(&selector))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].message.as_deref(), Some("sent 1 user"));
    assert_eq!(found.items[0].reason.as_deref(), Some("Submitted"));
    let other = core
        .list(&ListParams::default().fields("involvedObject.name=other"))
        .await
        .unwrap();
    assert!(other.items.is_empty());
}

/// The standalone `emulator` subcommand, stopped (SIGKILL) if a test fails before it ends it.
struct StandaloneEmulator {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl StandaloneEmulator {
    fn start(extra: &[&str]) -> StandaloneEmulator {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
            .args(["emulator", "--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The first stdout line is printed once the kubeconfig is written and the port bound.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("listening on http://127.0.0.1:"),
            "unexpected first line: {line:?}"
        );
        StandaloneEmulator { child, dir }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .output()
            .expect("kubectl must be on PATH");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.success(), text(out.stdout), text(out.stderr))
    }

    /// Runs kubectl and returns its stdout, failing the test with stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.kubectl(args);
        assert!(success, "kubectl {args:?} failed: {stderr}{stdout}");
        stdout
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for StandaloneEmulator {
    fn drop(&mut self) {
        // Already exited when a test stopped it on purpose; nothing else to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const EXAMPLE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {accessKey: ak, secretKey: sk, userId: u1}
---
apiVersion: koodrive.io/v1alpha1
kind: UserBatch
metadata: {name: b1}
spec:
  credentialsRef: {name: creds}
  users:
    - {firstname: Ada, phone: "8613800000001"}
"#;

#[test]
fn kubectl_drives_userbatches_and_secrets_on_the_standalone_emulator() {
    let emulator = StandaloneEmulator::start(&["--no-crd"]);
    let crd = emulator.file("crd.json", &userbatch_crd().to_string());
    emulator.ok(&["apply", "-f", &crd]);
    let example = emulator.file("example.yaml", EXAMPLE);
    emulator.ok(&["apply", "-f", &example]);

    let watch_out = emulator.dir.path().join("watch.txt");
    let mut watch = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(emulator.dir.path().join("kubeconfig"))
        .arg("--cache-dir")
        .arg(emulator.dir.path().join("cache-watch"))
        .args(["get", "ub", "-w"])
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .spawn()
        .unwrap();

    let table = emulator.ok(&["get", "ub"]);
    assert!(
        table.contains("PHASE") && table.contains("READY") && table.contains("b1"),
        "{table}"
    );
    let yaml = emulator.ok(&["get", "ub", "b1", "-o", "yaml"]);
    assert!(
        yaml.contains("phone: \"8613800000001\"") && yaml.contains("generation: 1"),
        "{yaml}"
    );

    let status = r#"{"status":{"phase":"Completed","conditions":[{"type":"Ready","status":"True","reason":"Done","message":"all users provisioned","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    emulator.ok(&[
        "patch",
        "ub",
        "b1",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    let table = emulator.ok(&["get", "ub"]);
    assert!(
        table.contains("Completed") && table.contains("all users provisioned"),
        "{table}"
    );
    wait_until(
        || {
            std::fs::read_to_string(&watch_out)
                .unwrap_or_default()
                .contains("Completed")
        },
        "`kubectl get -w` to show the status change",
    );

    let uid = emulator.ok(&["get", "ub", "b1", "-o", "jsonpath={.metadata.uid}"]);
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "b1.submitted"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "koodrive-operator",
        "reportingInstance": "koodrive-operator-0", "action": "Submit", "type": "Normal",
        "reason": "Submitted", "note": "sent 1 user to KooDrive",
        "regarding": {"apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch", "name": "b1", "namespace": "default", "uid": uid}
    });
    let event = emulator.file("event.json", &event.to_string());
    emulator.ok(&["create", "-f", &event]);
    let described = emulator.ok(&["describe", "ub", "b1"]);
    assert!(
        described.contains("b1") && described.contains("8613800000001"),
        "{described}"
    );
    assert!(
        described.contains("sent 1 user to KooDrive"),
        "describe must show the Event: {described}"
    );

    let current = emulator.ok(&["get", "ub", "b1", "-o", "yaml"]);
    let edited = current.replace("firstname: Ada", "firstname: Augusta");
    let edited = emulator.file("edited.yaml", &edited);
    emulator.ok(&["replace", "-f", &edited]);
    let yaml = emulator.ok(&["get", "ub", "b1", "-o", "yaml"]);
    assert!(
        yaml.contains("Augusta") && yaml.contains("generation: 2"),
        "{yaml}"
    );
    // The same manifest again carries a stale resourceVersion now.
    let (success, _, stderr) = emulator.kubectl(&["replace", "-f", &edited]);
    assert!(!success && stderr.contains("Conflict"), "{stderr}");

    let secret = emulator.ok(&["get", "secret", "creds", "-o", "yaml"]);
    assert!(secret.contains("accessKey: YWs="), "{secret}");
    emulator.ok(&["describe", "secret", "creds"]);
    emulator.ok(&["delete", "ub", "b1"]);
    emulator.ok(&["delete", "secret", "creds"]);
    let (_, stdout, stderr) = emulator.kubectl(&["get", "ub"]);
    assert!(
        stderr.contains("No resources found") && stdout.is_empty(),
        "{stdout}{stderr}"
    );

    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn the_standalone_emulator_stops_cleanly_on_sigterm() {
    let mut emulator = StandaloneEmulator::start(&[]);
    emulator.ok(&["get", "ub"]);
    let pid = emulator.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut exit = None;
    wait_until(
        || {
            exit = emulator.child.try_wait().unwrap();
            exit.is_some()
        },
        "the emulator to exit after SIGTERM",
    );
    assert!(exit.unwrap().success(), "exit status {exit:?}");
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
async fn eventually(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lease_based_leader_election_elects_one_replica_and_hands_over() {
    use kube_lease_manager::LeaseManagerBuilder;
    let (_emulator, client) = start(emulator_config()).await;
    let replica = |identity: &str| {
        LeaseManagerBuilder::new(client.clone(), "koodrive-operator")
            .with_namespace("default")
            .with_identity(identity)
            .with_duration(5)
            .with_grace(2)
            .build()
    };
    let (a_rx, _a_task) = replica("a").await.unwrap().watch().await;
    let (b_rx, _b_task) = replica("b").await.unwrap().watch().await;
    eventually(|| *a_rx.borrow() || *b_rx.borrow(), "a leader").await;
    assert!(!(*a_rx.borrow() && *b_rx.borrow()), "two leaders at once");

    // Dropping its receiver makes the leader release the Lease; the other takes over.
    let follower = if *a_rx.borrow() {
        drop(a_rx);
        b_rx
    } else {
        drop(b_rx);
        a_rx
    };
    eventually(|| *follower.borrow(), "the follower to take over").await;
}

#[tokio::test]
async fn streaming_list_watches_send_initial_events_then_a_marking_bookmark() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &batch("a", &["1"]))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let first = next_matching(&mut stream, |e| !matches!(e, watcher::Event::Init)).await;
    assert!(
        matches!(&first, watcher::Event::InitApply(o) if o.name_any() == "a"),
        "got {first:?}"
    );
    next_matching(&mut stream, |e| matches!(e, watcher::Event::InitDone)).await;
    api.create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    next_matching(
        &mut stream,
        |e| matches!(e, watcher::Event::Apply(o) if o.name_any() == "b"),
    )
    .await;
}

#[tokio::test]
async fn the_written_kubeconfig_works_and_shutdown_ends_open_watches() {
    let (emulator, _) = start(emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    emulator.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let api: Api<UserBatch> = Api::default_namespaced(Client::try_from(config).unwrap());
    api.create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    let mut events = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    next_matching(&mut events, |e| matches!(e, WatchEvent::Added(_))).await;

    tokio::time::timeout(DEADLINE, emulator.shutdown())
        .await
        .expect("shutdown must not wait for open watches");
    tokio::time::timeout(DEADLINE, async { while events.next().await.is_some() {} })
        .await
        .expect("the open watch must end when the emulator stops");
    assert!(api.get("b").await.is_err(), "nothing serves after shutdown");
}

#[tokio::test]
async fn json_patches_apply_with_test_preconditions_and_watches_honour_timeouts() {
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    // The shape kube's finalizer helper sends.
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["koodrive.io/cleanup"]}
    ]))
    .unwrap();
    let patched = api
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Json::<()>(add.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.finalizers,
        Some(vec!["koodrive.io/cleanup".to_string()])
    );
    let err = api_error(
        api.patch("b", &PatchParams::default(), &Patch::Json::<()>(add))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code, 422,
        "a failed test operation rejects the whole patch"
    );

    let mut events = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    tokio::time::timeout(DEADLINE, async { while events.next().await.is_some() {} })
        .await
        .expect("a watch with timeoutSeconds must end by itself");
}

#[tokio::test]
async fn kube_finalizer_helper_adds_and_removes_its_finalizer() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    use std::sync::Arc;
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    let created = api
        .create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();
    let name = "koodrive.io/cleanup";
    let step = |obj: UserBatch| {
        let api = api.clone();
        async move {
            finalizer(&api, name, Arc::new(obj), |event| async move {
                Ok::<_, std::convert::Infallible>(match event {
                    Finalizer::Apply(_) | Finalizer::Cleanup(_) => Action::await_change(),
                })
            })
            .await
            .unwrap()
        }
    };
    step(created).await;
    let held = api.get("b").await.unwrap();
    assert_eq!(held.finalizers(), [name.to_string()]);
    step(held).await;
    api.delete("b", &DeleteParams::default()).await.unwrap();
    step(api.get("b").await.unwrap()).await;
    assert_eq!(api_error(api.get("b").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn a_kube_controller_reconciles_objects_and_their_status_changes() {
    use kube::runtime::controller::{Action, Controller};
    use std::sync::Arc;
    let (_emulator, client) = start(emulator_config()).await;
    let api: Api<UserBatch> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &batch("b", &["1"]))
        .await
        .unwrap();

    async fn reconcile(
        obj: Arc<UserBatch>,
        api: Arc<Api<UserBatch>>,
    ) -> Result<Action, kube::Error> {
        let status = json!({"status": {"phase": "Submitted", "observedGeneration": obj.metadata.generation}});
        api.patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<UserBatch>, _: &kube::Error, _: Arc<Api<UserBatch>>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(api.clone()))
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    next_matching(&mut events, |e| {
        matches!(e, watcher::Event::Apply(o) | watcher::Event::InitApply(o)
            if o.status.as_ref().and_then(|s| s.observed_generation) == Some(1))
    })
    .await;
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"endpoint": "https://e.koodrive.example.com"}})),
    )
    .await
    .unwrap();
    next_matching(&mut events, |e| {
        matches!(e, watcher::Event::Apply(o) if o.status.as_ref().and_then(|s| s.observed_generation) == Some(2))
    })
    .await;
    handle.abort();
}

#[tokio::test]
async fn a_crashed_leaders_lease_expires_and_another_replica_takes_over() {
    use kube_lease_manager::LeaseManagerBuilder;
    let (_emulator, client) = start(emulator_config()).await;
    let replica = |identity: &str| {
        LeaseManagerBuilder::new(client.clone(), "koodrive-operator")
            .with_namespace("default")
            .with_identity(identity)
            .with_duration(2)
            .with_grace(1)
            .build()
    };
    let (a_rx, a_task) = replica("a").await.unwrap().watch().await;
    eventually(|| *a_rx.borrow(), "replica a to lead").await;
    let (b_rx, _b_task) = replica("b").await.unwrap().watch().await;
    // A crash: no release, the Lease just stops being renewed.
    a_task.abort();
    eventually(
        || *b_rx.borrow(),
        "replica b to take over the expired lease",
    )
    .await;
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease = leases.get("koodrive-operator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("b"));
}
