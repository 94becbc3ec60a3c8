//! The at-most-once protocol, call by call (in the style of controller-rs's
//! `ApiServerVerifier`): one reconcile runs against a mock API server that answers each
//! request in turn and fails the test on any other order, next to a real KooDrive
//! simulator whose counters show when the create left. The order that must hold:
//! intent written → KooDrive POST → answer recorded on a fresh read.

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use koodrive_client::SecretKey;
use koodrive_operator::controller::{self, Context, Meta, Settings};
use koodrive_operator::crd::{UserBatch, UserBatchStatus};
use koodrive_operator::metrics::Metrics;
use koodrive_simulator::{Account, Simulator, SimulatorConfig};
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_test::mock::{Handle, SendResponse};

use crate::support::{ACCESS_KEY, NAMESPACE, SECRET_KEY, USER_ID, credentials_secret, users};

const BASE: &str = "/apis/koodrive.io/v1alpha1/namespaces/default/userbatches/verified";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

async fn simulator() -> Simulator {
    Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorConfig {
            accounts: vec![Account {
                access_key: ACCESS_KEY.into(),
                secret_key: SecretKey::new(SECRET_KEY.into()),
                user_id: USER_ID.into(),
            }],
            ..SimulatorConfig::default()
        },
    )
    .await
    .unwrap()
}

fn context(client: kube::Client, sim: &Simulator) -> Arc<Context> {
    let mut settings = Settings::new(sim.url());
    settings.koodrive.allow_insecure_endpoints = true;
    settings.requests_per_second = 0.0;
    let (secrets, _writer) = reflector::store::<PartialObjectMeta<Secret>>();
    Arc::new(
        Context::new(
            client,
            settings,
            Arc::new(Metrics::new()),
            secrets,
            CancellationToken::new(),
        )
        .unwrap(),
    )
}

fn userbatch(status: Option<UserBatchStatus>) -> UserBatch {
    let mut ub = crate::support::userbatch("verified", "creds", users("86170", 2, None));
    ub.metadata.uid = Some("uid-1".into());
    ub.metadata.generation = Some(1);
    ub.metadata.resource_version = Some("10".into());
    ub.status = status;
    ub
}

fn meta(ub: &UserBatch) -> Arc<Meta> {
    Arc::new(PartialObjectMeta {
        types: None,
        metadata: ub.metadata.clone(),
        _phantom: Default::default(),
    })
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// The next request, which must be `method` on a path ending in `path`.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(30), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path}"))
        .expect("the client hung up");
    let (parts, body) = request.into_parts();
    assert_eq!(
        (&parts.method, parts.uri.path()),
        (&method, path),
        "expected {method} {path}, got {} {}",
        parts.method,
        parts.uri
    );
    let bytes = body.collect_bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (value, send)
}

/// Answers a status write by echoing it with a new resourceVersion, as the server would.
fn accept_write(mut body: Value, send: SendResponse<Response<Body>>, rv: u64) -> Value {
    body["metadata"]["resourceVersion"] = json!(rv.to_string());
    respond(send, 200, &body);
    body
}

fn tasks(body: &Value) -> Vec<Value> {
    body["status"]["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn intent_is_written_before_the_post_and_the_answer_after_it() {
    let sim = simulator().await;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NAMESPACE);
    let ctx = context(client, &sim);
    let ub = userbatch(None);
    let reconcile = tokio::spawn(controller::reconcile::reconcile(meta(&ub), ctx));

    // Observe: a fresh read of the object, then its credentials.
    let (_, send) = expect(&mut handle, Method::GET, BASE).await;
    respond(send, 200, &serde_json::to_value(&ub).unwrap());
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        "/api/v1/namespaces/default/secrets/creds",
    )
    .await;
    let mut secret: Secret = credentials_secret("creds", SECRET_KEY);
    secret.metadata.namespace = Some(NAMESPACE.into());
    secret.metadata.resource_version = Some("5".into());
    respond(send, 200, &serde_json::to_value(&secret).unwrap());

    // 1. The intent, conditional on the version just read, before anything is sent.
    let (intent, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(
        intent["metadata"]["resourceVersion"], "10",
        "a conditional write"
    );
    let recorded = tasks(&intent);
    assert_eq!(recorded.len(), 1);
    assert!(
        recorded[0].get("taskId").is_none(),
        "an intent has no task yet"
    );
    assert_eq!(recorded[0]["phones"].as_array().unwrap().len(), 2);
    assert_eq!(
        sim.request_count(),
        0,
        "nothing sent before the intent is on record"
    );
    let after_intent = accept_write(intent, send, 11);

    // 2. The POST happens now; 3. its answer is recorded on a fresh read.
    let (_, send) = expect(&mut handle, Method::GET, &format!("{BASE}/status")).await;
    assert_eq!(
        sim.request_count(),
        1,
        "exactly one create, before the record"
    );
    assert!(sim.submissions().values().all(|&n| n == 1));
    respond(send, 200, &after_intent);
    let (record, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(record["metadata"]["resourceVersion"], "11");
    let task_id = tasks(&record)[0]["taskId"].as_str().unwrap().to_string();
    let after_record = accept_write(record, send, 12);
    let (event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    assert_eq!(event["reason"], "TaskCreated");
    assert!(event["note"].as_str().unwrap().contains(&task_id));
    respond(send, 201, &event);

    // The results are polled (KooDrive), then one status write says what happened.
    let (done, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(done["metadata"]["resourceVersion"], "12");
    let ready = done["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "{ready}");
    accept_write(done, send, 13);
    let (event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    assert_eq!(event["reason"], "Ready");
    respond(send, 201, &event);

    let action = reconcile.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(sim.request_count(), 2, "one create and one poll");
    drop(after_record);
}

#[tokio::test]
async fn an_in_doubt_record_sends_nothing_and_reads_no_secret() {
    let sim = simulator().await;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NAMESPACE);
    let ctx = context(client, &sim);
    let doubtful: UserBatchStatus = serde_json::from_value(json!({
        "tasks": [{"traceId": "t-in-doubt", "submittedAt": "2026-11-30T10:00:00Z",
                   "phones": ["86170000000", "86170000001"]}]
    }))
    .unwrap();
    let ub = userbatch(Some(doubtful));
    let reconcile = tokio::spawn(controller::reconcile::reconcile(meta(&ub), ctx));

    let (_, send) = expect(&mut handle, Method::GET, BASE).await;
    respond(send, 200, &serde_json::to_value(&ub).unwrap());
    // Straight to the status: no Secret read, no KooDrive call.
    let (status, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    let ready = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["reason"], "SubmissionInDoubt", "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("t-in-doubt"));
    accept_write(status, send, 11);

    let action = reconcile.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(sim.request_count(), 0, "an in-doubt record sends nothing");
}

#[tokio::test]
async fn a_delete_is_approved_and_its_intent_written_before_the_delete_is_sent() {
    let sim = simulator().await;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NAMESPACE);
    let ctx = context(client, &sim);
    // Two users were created; the second has just been removed from the spec.
    let phones = ["86170000000", "86170000001"];
    let status: UserBatchStatus = serde_json::from_value(json!({
        "observedGeneration": 1,
        "tasks": [{"traceId": "t1", "taskId": "42", "code": "0", "submittedAt": "2026-11-30T10:00:00Z",
                   "phones": phones, "usersRecorded": true,
                   "result": {"total": 2, "succeeded": 2, "failed": 0, "skipped": 0, "finished": true}}],
        "users": [{"phone": phones[0], "userId": "u0", "state": "Created"},
                  {"phone": phones[1], "userId": "u1", "state": "Created"}]
    }))
    .unwrap();
    let mut ub = userbatch(Some(status));
    ub.spec.users.truncate(1);
    ub.spec.deletion_policy = Some(koodrive_operator::crd::DeletionPolicy::Delete);
    ub.metadata.finalizers = Some(vec![koodrive_operator::crd::FINALIZER.into()]);
    let reconcile = tokio::spawn(controller::reconcile::reconcile(meta(&ub), ctx));

    let (_, send) = expect(&mut handle, Method::GET, BASE).await;
    respond(send, 200, &serde_json::to_value(&ub).unwrap());

    // The guard lets one deletion through: the approval is on record first.
    let (approved, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(approved["metadata"]["resourceVersion"], "10");
    assert_eq!(approved["status"]["users"][1]["state"], "DeletePending");
    let _ = accept_write(approved, send, 11);
    let (event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    assert_eq!(event["reason"], "UsersRemoved");
    assert!(event["note"].as_str().unwrap().contains("86170000001 (u1)"));
    respond(send, 201, &event);
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        "/api/v1/namespaces/default/secrets/creds",
    )
    .await;
    let mut secret: Secret = credentials_secret("creds", SECRET_KEY);
    secret.metadata.namespace = Some(NAMESPACE.into());
    secret.metadata.resource_version = Some("5".into());
    respond(send, 200, &serde_json::to_value(&secret).unwrap());

    // 1. The intent to delete, conditional on the version just written, before the DELETE.
    let (intent, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(
        intent["metadata"]["resourceVersion"], "11",
        "a conditional write"
    );
    assert_eq!(intent["status"]["users"][1]["state"], "Deleting");
    assert_eq!(sim.request_count(), 0, "nothing sent before the intent");
    let after_intent = accept_write(intent, send, 12);

    // 2. The DELETE happens now; 3. its answer is recorded on a fresh read.
    let (_, send) = expect(&mut handle, Method::GET, &format!("{BASE}/status")).await;
    assert_eq!(sim.deletions().get("u1"), Some(&1), "exactly one DELETE");
    assert_eq!(sim.request_count(), 1);
    respond(send, 200, &after_intent);
    let (record, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(record["metadata"]["resourceVersion"], "12");
    let users = record["status"]["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 1, "the deleted user's record goes: {users:?}");
    assert_eq!(
        record["status"]["tasks"][0]["phones"],
        json!([phones[0]]),
        "and no task claims it any more"
    );
    let _ = accept_write(record, send, 13);
    let (event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    assert_eq!(event["reason"], "UsersDeleted");
    assert!(event["note"].as_str().unwrap().contains("86170000001 (u1"));
    respond(send, 201, &event);

    // One status write says what happened.
    let (done, send) = expect(&mut handle, Method::PUT, &format!("{BASE}/status")).await;
    assert_eq!(done["metadata"]["resourceVersion"], "13");
    let ready = done["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "{ready}");
    accept_write(done, send, 14);
    let (event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    assert_eq!(event["reason"], "Ready");
    respond(send, 201, &event);

    let action = reconcile.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(sim.request_count(), 1, "one DELETE, nothing else");
}
