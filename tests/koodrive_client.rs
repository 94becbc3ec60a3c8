//! The KooDrive client against the simulator over real HTTP on loopback: signing verified
//! by recomputation, error classification, retries, and at-most-once submission.

use koodrive_operator::koodrive::{
    self, Client, ClientConfig, Credentials, ErrorClass, Password, RegisterUser, SecretKey, signer,
};
use koodrive_operator::simulator::{Account, Call, Fault, FaultKind, Simulator, SimulatorConfig};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const AK: &str = "test-access-key";
const SK: &str = "test-secret-key-do-not-log";
const USER_ID: &str = "1505084218764547200";
const REGISTERED: &str = "8613800009998";
const FAILING: &str = "8613800009999";

async fn simulator(result_delay: Duration) -> Simulator {
    Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorConfig {
            accounts: vec![Account {
                access_key: AK.into(),
                secret_key: SecretKey::new(SK.into()),
                user_id: USER_ID.into(),
            }],
            result_delay,
            registered_phones: HashSet::from([REGISTERED.to_string()]),
            failing_phones: HashSet::from([FAILING.to_string()]),
            ..SimulatorConfig::default()
        },
    )
    .await
    .unwrap()
}

fn config() -> ClientConfig {
    ClientConfig {
        allow_insecure_endpoints: true,
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        max_attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ClientConfig::default()
    }
}

fn client_with(sim: &Simulator, access_key: &str, secret: &str) -> Client {
    Client::new(
        &sim.url(),
        Credentials {
            access_key: access_key.into(),
            secret_key: SecretKey::new(secret.into()),
            user_id: USER_ID.into(),
        },
        config(),
    )
    .unwrap()
}

fn client(sim: &Simulator) -> Client {
    client_with(sim, AK, SK)
}

fn users(phones: impl IntoIterator<Item = String>) -> Vec<RegisterUser> {
    phones
        .into_iter()
        .map(|phone| RegisterUser {
            firstname: "Ada".into(),
            surname: Some("Lovelace".into()),
            email: None,
            password: Some(Password::new("initial-Passw0rd".into())),
            phone,
        })
        .collect()
}

fn phones(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("86138{i:08}")).collect()
}

async fn wait_until_finished(client: &Client, task_id: &str) -> koodrive::TaskReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = client.get_task(task_id).await.unwrap();
        if report.is_finished() {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "task {task_id} never finished: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_each_sent_once(sim: &Simulator, expected: &[String]) {
    let submissions = sim.submissions();
    assert_eq!(submissions.len(), expected.len(), "{submissions:?}");
    for phone in expected {
        assert_eq!(submissions.get(phone), Some(&1), "phone {phone}");
    }
}

#[tokio::test]
async fn creates_a_task_and_reports_per_user_results_once_the_delay_has_passed() {
    let sim = simulator(Duration::from_millis(200)).await;
    let client = client(&sim);
    let mut batch = phones(0..3);
    batch.push(REGISTERED.into());
    batch.push(FAILING.into());
    let trace_id = koodrive::new_trace_id();
    let created = client
        .create_batch(&users(batch.clone()), &trace_id)
        .await
        .unwrap();
    assert_eq!(created.code, "0");
    assert_eq!(created.trace_id, trace_id);
    assert!(
        created.task_id.bytes().all(|b| b.is_ascii_digit()),
        "{created:?}"
    );

    let report = wait_until_finished(&client, &created.task_id).await;
    assert_eq!(report.total, 5);
    assert_eq!((report.succeeded, report.failed, report.skipped), (3, 1, 1));
    assert_eq!(report.users.len(), 5);
    let failing = report.users.iter().find(|u| u.phone == FAILING).unwrap();
    assert!(failing.code.is_some() && failing.user_id.is_none());
    let ok = report.users.iter().find(|u| u.phone == batch[0]).unwrap();
    assert!(ok.user_id.is_some() && ok.code.is_none());
    assert_each_sent_once(&sim, &batch);
}

#[tokio::test]
async fn results_are_withheld_until_the_delay_has_passed() {
    let sim = simulator(Duration::from_secs(3600)).await;
    let client = client(&sim);
    let created = client
        .create_batch(&users(phones(0..4)), &koodrive::new_trace_id())
        .await
        .unwrap();
    let report = client.get_task(&created.task_id).await.unwrap();
    assert_eq!(report.total, 4);
    assert_eq!((report.succeeded, report.failed, report.skipped), (0, 0, 0));
    assert!(report.users.is_empty());
    assert!(!report.is_finished());
}

#[tokio::test]
async fn get_task_merges_every_page() {
    let sim = simulator(Duration::ZERO).await;
    sim.set_page_limit(Some(7));
    let client = client(&sim);
    let batch = phones(0..20);
    let created = client
        .create_batch(&users(batch.clone()), &koodrive::new_trace_id())
        .await
        .unwrap();
    let before = sim.request_count();
    let report = client.get_task(&created.task_id).await.unwrap();
    assert_eq!(sim.request_count() - before, 3, "20 users in pages of 7");
    let reported: Vec<_> = report.users.iter().map(|u| u.phone.clone()).collect();
    assert_eq!(reported, batch);
    assert!(report.is_finished());
}

#[tokio::test]
async fn wrong_secret_key_is_an_authentication_error_with_both_canonical_requests() {
    let sim = simulator(Duration::ZERO).await;
    let client = client_with(&sim, AK, "not-the-right-secret");
    let err = client
        .create_batch(&users(phones(0..2)), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert_eq!(err.code(), Some("APIG.0303"));
    assert!(err.request_id().is_some());
    let (server, ours) = err.canonical_requests().expect("echoed canonical request");
    assert_eq!(server, ours, "same canonical request: only the key differs");
    assert!(err.to_string().contains("verify signature fail"), "{err}");
    assert!(!err.to_string().contains("not-the-right-secret"));
    assert!(!format!("{err:?}").contains("not-the-right-secret"));
    assert_eq!(
        sim.request_count(),
        1,
        "authentication failures are never retried"
    );
    assert!(sim.submissions().is_empty());
}

#[tokio::test]
async fn unknown_access_key_is_reported_as_app_not_found() {
    let sim = simulator(Duration::ZERO).await;
    let client = client_with(&sim, "no-such-ak", SK);
    let err = client.get_task("1").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert!(
        err.to_string().contains("app not found, appkey no-such-ak"),
        "{err}"
    );
    assert_eq!(sim.request_count(), 1);
}

/// Sends a create request signed at `signed_at` over `signed_body`, carrying `sent_body`.
async fn raw_create(
    sim: &Simulator,
    signed_at: jiff::Timestamp,
    signed_body: &[u8],
    sent_body: &[u8],
    skip_header: Option<&str>,
) -> (u16, serde_json::Value) {
    let host = sim.local_addr().to_string();
    let signature = signer::sign(
        &signer::SigningInput {
            method: "POST",
            path: koodrive::CREATE_PATH,
            query: &[],
            host: &host,
            user_id: USER_ID,
            body: signed_body,
        },
        AK,
        &SecretKey::new(SK.into()),
        signed_at,
    );
    let headers = [
        ("X-Date", signature.x_date.as_str()),
        ("X-User-Id", USER_ID),
        ("Authorization", signature.authorization.as_str()),
        ("Content-Type", "application/json"),
    ];
    let mut request =
        reqwest::Client::new().post(format!("{}{}", sim.url(), koodrive::CREATE_PATH));
    for (name, value) in headers {
        if Some(name) != skip_header {
            request = request.header(name, value);
        }
    }
    let response = request.body(sent_body.to_vec()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const BODY: &[u8] = br#"{"userList":[{"firstname":"Ada","phone":"8613800000001"}]}"#;

#[tokio::test]
async fn stale_and_future_dates_are_rejected_as_expired() {
    let sim = simulator(Duration::ZERO).await;
    let now = jiff::Timestamp::now();
    for signed_at in [
        now - jiff::SignedDuration::from_mins(16),
        now + jiff::SignedDuration::from_mins(2),
    ] {
        let (status, body) = raw_create(&sim, signed_at, BODY, BODY, None).await;
        assert_eq!(status, 401);
        assert_eq!(body["error_code"], "APIG.0303");
        let msg = body["error_msg"].as_str().unwrap();
        assert!(msg.contains("signature expired, signature time:"), "{msg}");
        assert!(msg.contains(",server time:"), "{msg}");
    }
    // Fourteen minutes old is still inside the window.
    let (status, _) = raw_create(
        &sim,
        now - jiff::SignedDuration::from_mins(14),
        BODY,
        BODY,
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_tampered_body_fails_verification_with_the_servers_canonical_request() {
    let sim = simulator(Duration::ZERO).await;
    let tampered = br#"{"userList":[{"firstname":"Eve","phone":"8613800000001"}]}"#;
    let (status, body) = raw_create(&sim, jiff::Timestamp::now(), BODY, tampered, None).await;
    assert_eq!(status, 401);
    let msg = body["error_msg"].as_str().unwrap();
    let expected_hash = signer::sha256_hex(tampered);
    assert!(
        msg.contains("verify signature fail, canonicalRequest:POST|/koodrive/ose/v1/user/batchRegister/create/||host:"),
        "{msg}"
    );
    assert!(
        msg.ends_with(&format!("|host;x-date;x-user-id|{expected_hash}")),
        "{msg}"
    );
    assert!(body["request_id"].is_string());
    assert!(sim.submissions().is_empty());
}

#[tokio::test]
async fn missing_headers_are_rejected() {
    let sim = simulator(Duration::ZERO).await;
    for (header, expected) in [
        ("Authorization", "authorization header not found"),
        ("X-Date", "x-date header not found"),
        ("X-User-Id", "x-user-id header not found"),
    ] {
        let (status, body) =
            raw_create(&sim, jiff::Timestamp::now(), BODY, BODY, Some(header)).await;
        assert_eq!(status, 401, "without {header}");
        assert!(
            body["error_msg"].as_str().unwrap().contains(expected),
            "{body}"
        );
    }
}

#[tokio::test]
async fn invalid_bodies_are_rejected_with_parameter_validation_failed() {
    let sim = simulator(Duration::ZERO).await;
    let nameless = br#"{"userList":[{"phone":"8613800000001"}]}"#;
    let (status, body) = raw_create(&sim, jiff::Timestamp::now(), nameless, nameless, None).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 13000102);
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .contains("userList[0].firstname"),
        "{body}"
    );

    // Through the client: a duplicate phone passes local checks but KooDrive refuses it.
    let client = client(&sim);
    let err = client
        .create_batch(
            &users(vec!["1".into(), "1".into()]),
            &koodrive::new_trace_id(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Rejected);
    assert_eq!(err.code(), Some("13000102"));
    assert!(err.message().contains("appears twice"), "{}", err.message());
    assert!(sim.submissions().is_empty());
}

#[tokio::test]
async fn more_than_1000_users_are_refused_without_sending() {
    let sim = simulator(Duration::ZERO).await;
    let err = client(&sim)
        .create_batch(&users(phones(0..1001)), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid);
    assert_eq!(sim.request_count(), 0);
}

#[tokio::test]
async fn provably_unprocessed_failures_are_retried_and_the_batch_is_sent_once() {
    let sim = simulator(Duration::ZERO).await;
    sim.inject(Fault {
        call: Some(Call::Create),
        times: 2,
        kind: FaultKind::Status5xx(503),
    });
    sim.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 1,
        },
    });
    let batch = phones(0..10);
    let started = Instant::now();
    let created = client(&sim)
        .create_batch(&users(batch.clone()), &koodrive::new_trace_id())
        .await
        .unwrap();
    assert!(!created.task_id.is_empty());
    assert_eq!(sim.request_count(), 4, "two 503s, one 429, then success");
    // The client honoured Retry-After (1 s) although its own backoff is ≤ 50 ms.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_each_sent_once(&sim, &batch);
}

#[tokio::test]
async fn a_persistent_fault_ends_as_transient_after_max_attempts() {
    let sim = simulator(Duration::ZERO).await;
    sim.inject(Fault {
        call: None,
        times: 100,
        kind: FaultKind::Status5xx(500),
    });
    let err = client(&sim)
        .create_batch(&users(phones(0..3)), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Transient { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), Some("13000201"));
    assert_eq!(sim.request_count(), 4, "max_attempts");
    assert!(sim.submissions().is_empty());
}

#[tokio::test]
async fn an_unanswered_create_is_in_doubt_and_never_resent() {
    for kind in [
        FaultKind::DropAfterProcessing,
        FaultKind::DropConnection,
        FaultKind::GarbledJson,
    ] {
        let sim = simulator(Duration::ZERO).await;
        sim.inject(Fault {
            call: Some(Call::Create),
            times: 1,
            kind: kind.clone(),
        });
        let batch = phones(0..5);
        let err = client(&sim)
            .create_batch(&users(batch.clone()), &koodrive::new_trace_id())
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::InDoubt, "{kind:?}: {err}");
        assert!(
            err.to_string().contains("may have created the task"),
            "{err}"
        );
        assert_eq!(sim.request_count(), 1, "{kind:?} must not be retried");
        match kind {
            // The simulator created the task: the client was right not to resend.
            FaultKind::DropAfterProcessing | FaultKind::GarbledJson => {
                assert_each_sent_once(&sim, &batch)
            }
            _ => assert!(sim.submissions().is_empty()),
        }
    }
}

#[tokio::test]
async fn reads_are_retried_through_every_transient_failure() {
    let sim = simulator(Duration::ZERO).await;
    let client = client(&sim);
    let created = client
        .create_batch(&users(phones(0..2)), &koodrive::new_trace_id())
        .await
        .unwrap();
    sim.inject(Fault {
        call: Some(Call::Get),
        times: 1,
        kind: FaultKind::DropConnection,
    });
    sim.inject(Fault {
        call: Some(Call::Get),
        times: 1,
        kind: FaultKind::GarbledJson,
    });
    sim.inject(Fault {
        call: Some(Call::Get),
        times: 1,
        kind: FaultKind::Latency(Duration::from_millis(50)),
    });
    let before = sim.request_count();
    let report = client.get_task(&created.task_id).await.unwrap();
    assert_eq!(report.total, 2);
    assert_eq!(
        sim.request_count() - before,
        3,
        "drop, garbled, then slow success"
    );
}

#[tokio::test]
async fn connection_refused_is_transient_and_retried() {
    let sim = simulator(Duration::ZERO).await;
    let url = sim.url();
    sim.shutdown().await;
    let client = Client::new(
        &url,
        Credentials {
            access_key: AK.into(),
            secret_key: SecretKey::new(SK.into()),
            user_id: USER_ID.into(),
        },
        config(),
    )
    .unwrap();
    let err = client
        .create_batch(&users(phones(0..1)), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Transient { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing was sent"), "{err}");
}

#[tokio::test]
async fn faults_and_submissions_are_reachable_over_http() {
    let sim = simulator(Duration::ZERO).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/_sim/faults", sim.url()))
        .json(
            &serde_json::json!([{"call": "create", "times": 1, "kind": {"status5xx": 502}},
                                   {"kind": {"latency": 10}}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let batch = phones(0..2);
    client(&sim)
        .create_batch(&users(batch.clone()), &koodrive::new_trace_id())
        .await
        .unwrap();
    assert_eq!(sim.request_count(), 2, "a 502, then a delayed success");
    let counts: std::collections::HashMap<String, u32> = http
        .get(format!("{}/_sim/submissions", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts, sim.submissions());
    assert_each_sent_once(&sim, &batch);
}

#[tokio::test]
async fn a_create_that_times_out_is_in_doubt_because_koodrive_may_still_process_it() {
    let sim = simulator(Duration::ZERO).await;
    sim.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::Latency(Duration::from_millis(1500)),
    });
    let client = Client::new(
        &sim.url(),
        Credentials {
            access_key: AK.into(),
            secret_key: SecretKey::new(SK.into()),
            user_id: USER_ID.into(),
        },
        ClientConfig {
            request_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .unwrap();
    let batch = phones(0..3);
    let err = client
        .create_batch(&users(batch.clone()), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::InDoubt, "{err}");
    assert_eq!(sim.request_count(), 1);
    // The server finishes the request after the client gave up: exactly why it must not
    // be resent automatically.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.submissions().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the delayed request was never processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_each_sent_once(&sim, &batch);
}

#[tokio::test]
async fn a_user_id_that_is_not_the_apps_is_an_authentication_error() {
    let sim = simulator(Duration::ZERO).await;
    let client = Client::new(
        &sim.url(),
        Credentials {
            access_key: AK.into(),
            secret_key: SecretKey::new(SK.into()),
            user_id: "999".into(),
        },
        config(),
    )
    .unwrap();
    let err = client.get_task("1").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication, "{err}");
    assert!(err.to_string().contains("X-User-Id 999"), "{err}");
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn a_long_retry_after_is_handed_back_to_the_caller() {
    let sim = simulator(Duration::ZERO).await;
    sim.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 120,
        },
    });
    let err = client(&sim)
        .create_batch(&users(phones(0..1)), &koodrive::new_trace_id())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Transient {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(err.code(), Some("APIG.0308"));
    assert_eq!(sim.request_count(), 1);
}
