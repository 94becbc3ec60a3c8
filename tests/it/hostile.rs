//! Issue #9: the operator's two promises — nobody provisioned twice, no secret leaves —
//! under hostile gateways, tenants, clocks and CI logs. One test (or more) per numbered
//! point of the issue, each failing on the operator as it was before.

use crate::support::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use koodrive_operator::crd::{InDoubtPolicy, SecretKeyRef, UserBatch};
use koodrive_simulator::{Call, Fault, FaultKind, Quirks, SimulatorConfig};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn events_of(env: &Env, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

async fn create(env: &Env, ub: &UserBatch) {
    env.userbatches()
        .create(&PostParams::default(), ub)
        .await
        .unwrap();
}

fn submitted_once(env: &Env) {
    for (phone, count) in env.simulator.submissions() {
        assert!(count <= 1, "phone {phone} was submitted {count} times");
    }
}

// --- 1. Creates resent after an ambiguous answer -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_timeout_after_processing_is_in_doubt_and_never_resent() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // 504 APIG.0203 "Backend timeout": KooDrive created the task, the gateway gave up.
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::backend_timeout_after_processing(),
    });
    // And a 503 in KooDrive's own envelope, for the second UserBatch.
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::Status5xx(503),
    });
    env.create_batch("timeout", "creds", users("86200", 3, None))
        .await;
    let _operator = env.operator("op", &["--max-in-flight", "1"]);
    let ub = env
        .wait_for("timeout", "SubmissionInDoubt", |s| {
            ready_reason(s) == Some("SubmissionInDoubt")
        })
        .await;
    assert!(condition(ub.status.as_ref().unwrap(), "Stalled").is_some_and(|c| c.status == "True"));
    env.create_batch("unavailable", "creds", users("86201", 2, None))
        .await;
    env.wait_for("unavailable", "SubmissionInDoubt", |s| {
        ready_reason(s) == Some("SubmissionInDoubt")
    })
    .await;
    let requests = env.simulator.request_count();
    // Long enough for several backoff rounds (base 200 ms): none of them may resend.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.simulator.request_count(),
        requests,
        "an in-doubt create was resent"
    );
    let counts = env.simulator.submissions();
    assert_eq!(
        counts.len(),
        3,
        "only the first batch reached KooDrive: {counts:?}"
    );
    submitted_once(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmit_policy_resends_in_doubt_users_once_after_the_delay() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::backend_timeout_after_processing(),
    });
    let mut ub = userbatch("resubmit", "creds", users("86202", 2, None));
    ub.spec.in_doubt_policy = Some(InDoubtPolicy::Resubmit);
    create(&env, &ub).await;
    let _operator = env.operator("op", &["--resubmit-delay", "2s"]);
    let ub = env.wait_for("resubmit", "Ready", is_ready).await;
    let status = ub.status.unwrap();
    // KooDrive had created them: the resend finds them registered and skips them.
    let summary = status.summary.unwrap();
    assert_eq!((summary.succeeded, summary.skipped), (0, 2), "{summary:?}");
    assert_eq!(status.tasks.len(), 1);
    assert!(
        status.tasks[0].resubmit_of.is_some(),
        "the task names the request it resends"
    );
    assert!(env.simulator.submissions().values().all(|&n| n == 2));
    let reasons: Vec<String> = events_of(&env, "resubmit")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "ResubmittingInDoubt"),
        "{reasons:?}"
    );
}

// --- 2. Backoff and Retry-After ignored on creates --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_a_floor_that_status_writes_do_not_cut_short() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1000,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 40,
        },
    });
    env.create_batch("throttled", "creds", users("86203", 2, None))
        .await;
    let started = Instant::now();
    let _operator = env.operator("op", &[]);
    env.wait_for("throttled", "KooDriveUnavailable", |s| {
        ready_reason(s) == Some("KooDriveUnavailable")
    })
    .await;
    // Counting is the point: 30 s under a 40 s Retry-After allows one create (two if the
    // operator started twice), whatever the backoff settings (base 200 ms here).
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(started.elapsed())).await;
    let creates = env.simulator.request_count();
    assert!(
        creates <= 2,
        "{creates} creates in 30 s under Retry-After: 40"
    );
    assert!(env.simulator.submissions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_status_writes_back_off() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.emulator.inject(kube_emulator::Fault {
        verb: Some("update".into()),
        path_contains: Some("/userbatches/contended/status".into()),
        times: 1_000_000,
        kind: kube_emulator::FaultKind::Status(409),
    });
    env.create_batch("contended", "creds", users("86204", 1, None))
        .await;
    let _operator = env.operator("op", &[]);
    let conflicts = || {
        env.emulator
            .request_log()
            .iter()
            .filter(|(verb, path, code)| {
                verb == "update" && path.ends_with("/contended/status") && *code == 409
            })
            .count()
    };
    eventually("a first conflict", || async {
        (conflicts() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Backoff from 200 ms doubling: a handful in 3 s; back to back it was hundreds.
    let seen = conflicts();
    assert!(seen <= 12, "{seen} conflicting writes in about 3 s");
    assert!(
        env.simulator.submissions().is_empty(),
        "nothing sent without an intent"
    );
}

// --- 3. AK/SK lockout risk -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_shared_by_three_userbatches_costs_at_most_two_failures() {
    let env = Env::start().await;
    env.create_credentials("shared", "WRONG-secret-key").await;
    for i in 0..3 {
        env.create_batch(
            &format!("shared-{i}"),
            "shared",
            users(&format!("8620{}", 5 + i), 2, None),
        )
        .await;
    }
    let _operator = env.operator("op", &[]);
    for i in 0..3 {
        env.wait_for(&format!("shared-{i}"), "CredentialsInvalid", |s| {
            ready_reason(s) == Some("CredentialsInvalid")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = env.simulator.request_count();
    assert!(
        failed <= 2,
        "{failed} failed-auth requests for one credential version"
    );
    assert!(env.simulator.submissions().is_empty());

    // Fixing the Secret is a new credential version: everything recovers.
    let fixed = credentials_secret("shared", SECRET_KEY);
    env.secrets()
        .patch("shared", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    for i in 0..3 {
        env.wait_for(&format!("shared-{i}"), "Ready", is_ready)
            .await;
    }
    submitted_once(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_on_polls_are_not_retried() {
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        SimulatorConfig {
            result_delay: Duration::from_secs(3600),
            ..SimulatorConfig::default()
        },
    )
    .await;
    env.create_credentials("creds", SECRET_KEY).await;
    // KooDrive's own "authentication failed" on HTTP 400, then a gateway 401, on reads.
    env.simulator.inject(Fault {
        call: Some(Call::Get),
        times: 1000,
        kind: FaultKind::authentication_failed_400(),
    });
    env.create_batch("polled", "creds", users("86208", 2, None))
        .await;
    let _operator = env.operator("op", &[]);
    let ub = env
        .wait_for("polled", "CredentialsInvalid", |s| {
            ready_reason(s) == Some("CredentialsInvalid")
        })
        .await;
    let message = &condition(ub.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(message.contains("13000001"), "{message}");
    let requests = env.simulator.request_count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One create (accepted) and at most two refused reads, however often it polls.
    assert!(
        env.simulator.request_count() <= 3 && env.simulator.request_count() == requests,
        "{} requests",
        env.simulator.request_count()
    );
}

// --- 4. False in-doubt stalls ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_intent_is_recorded_while_waiting_for_the_rate_limit() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    for i in 0..5 {
        env.create_batch(
            &format!("queued-{i}"),
            "creds",
            users(&format!("862{}", 10 + i), 1, None),
        )
        .await;
    }
    // One request every 20 s: most UserBatches wait for the limit when the kill comes.
    let mut operator = env.operator(
        "op",
        &["--requests-per-second", "0.05", "--max-in-flight", "1"],
    );
    let api = env.userbatches();
    eventually("one UserBatch to record its task", || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|ub| {
                    ub.status
                        .as_ref()
                        .is_some_and(|s| s.tasks.iter().any(|t| t.task_id.is_some()))
                })
                .then_some(())
        }
    })
    .await;
    operator.kill();
    let list = api.list(&ListParams::default()).await.unwrap();
    let intents: Vec<String> = list
        .items
        .iter()
        .filter(|ub| {
            ub.status
                .as_ref()
                .is_some_and(|s| s.tasks.iter().any(|t| t.task_id.is_none()))
        })
        .map(|ub| ub.name_any())
        .collect();
    assert!(
        intents.is_empty(),
        "intents of requests that never left: {intents:?}"
    );
    let _restarted = env.operator("op-2", &[]);
    for i in 0..5 {
        env.wait_for(&format!("queued-{i}"), "Ready", is_ready)
            .await;
    }
    submitted_once(&env);
}

// --- 5. Clock --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_ahead_of_koodrives_is_corrected_not_called_invalid_credentials() {
    for (offset, prefix) in [
        // 1.5 s behind us: refused as "later than the current time" without a margin.
        (jiff::SignedDuration::from_millis(-1500), "86216"),
        // 10 minutes behind us: the Date header tells, one refusal at most.
        (jiff::SignedDuration::from_mins(-10), "86217"),
        // 20 minutes ahead of us: "signature expired" names KooDrive's time.
        (jiff::SignedDuration::from_mins(20), "86218"),
    ] {
        let env = Env::start_with(
            koodrive_operator::devtools::emulator_config(),
            SimulatorConfig {
                clock_offset: offset,
                ..SimulatorConfig::default()
            },
        )
        .await;
        env.create_credentials("creds", SECRET_KEY).await;
        env.create_batch("clock", "creds", users(prefix, 2, None))
            .await;
        let _operator = env.operator("op", &[]);
        let ub = env.wait_for("clock", "Ready", is_ready).await;
        let tasks = ub.status.unwrap().tasks;
        assert_eq!(tasks.len(), 1, "offset {offset:?}");
        submitted_once(&env);
        // At most one refused request before the offset was known, plus the create and
        // the poll.
        assert!(
            env.simulator.request_count() <= 3,
            "offset {offset:?}: {} requests",
            env.simulator.request_count()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_clock_problem_is_clock_skew_with_the_offset() {
    // A KooDrive that accepts no signature older than zero seconds refuses every date.
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        SimulatorConfig {
            max_clock_skew: Duration::ZERO,
            clock_offset: jiff::SignedDuration::from_secs(30),
            ..SimulatorConfig::default()
        },
    )
    .await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("skewed", "creds", users("86219", 1, None))
        .await;
    let _operator = env.operator("op", &[]);
    let ub = env
        .wait_for("skewed", "ClockSkew", |s| {
            ready_reason(s) == Some("ClockSkew")
        })
        .await;
    let status = ub.status.unwrap();
    let message = &condition(&status, "Ready").unwrap().message;
    assert!(message.contains("clock"), "{message}");
    assert!(message.contains(" s"), "the measured offset: {message}");
    // Transient: the operator keeps reconciling by itself (not Stalled), and the AK/SK is
    // protected: at most two refused requests.
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "False"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.simulator.request_count() <= 2,
        "{}",
        env.simulator.request_count()
    );
}

// --- 6. Confused deputy ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_endpoint_receives_nothing_and_no_secret_is_read() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // An unrelated Secret the tenant points a "password" at.
    let unrelated = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("someone-elses".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(
            "token".to_string(),
            format!("{PASSWORD_PREFIX}unrelated"),
        )])),
        ..Default::default()
    };
    env.secrets()
        .create(&PostParams::default(), &unrelated)
        .await
        .unwrap();
    let capture = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let capture_url = format!("http://{}", capture.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while capture.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut people = users("86220", 1, None);
    people[0].password_secret_ref = Some(SecretKeyRef {
        name: "someone-elses".into(),
        key: "token".into(),
    });
    let mut ub = userbatch("deputy", "creds", people);
    ub.spec.endpoint = Some(capture_url.clone());
    create(&env, &ub).await;
    let operator = env.operator("op", &[]);
    let ub = env
        .wait_for("deputy", "EndpointNotAllowed", |s| {
            ready_reason(s) == Some("EndpointNotAllowed")
        })
        .await;
    assert!(condition(ub.status.as_ref().unwrap(), "Stalled").is_some_and(|c| c.status == "True"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(env.simulator.request_count(), 0);
    let secret_reads: Vec<_> = env
        .emulator
        .request_log()
        .into_iter()
        .filter(|(verb, path, _)| verb == "get" && path.contains("/secrets/"))
        .collect();
    assert!(secret_reads.is_empty(), "{secret_reads:?}");
    assert_no_secrets("the operator's logs", &operator.logs());
}

/// Need to know: the Secrets watch carries names and versions, never data. Unrelated
/// Secrets (here 1 MB of them, in the UserBatch's own namespace) cost the operator their
/// metadata only; the one referenced Secret is read on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_never_receives_the_data_of_secrets_it_does_not_use() {
    const UNRELATED: usize = 5;
    const BYTES: usize = 200 * 1000;
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    for i in 0..UNRELATED {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("helm-release-{i}")),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([("blob".to_string(), "x".repeat(BYTES))])),
            ..Default::default()
        };
        env.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    create(
        &env,
        &userbatch("need-to-know", "creds", users("86221", 2, None)),
    )
    .await;
    let _operator = env.operator("op", &[]);
    env.wait_for("need-to-know", "Ready", is_ready).await;
    let operator_user =
        kube_emulator::Identity::service_account(RELEASE_NAMESPACE, SERVICE_ACCOUNT, "").user;
    let received = env.emulator.bytes_sent_to(&operator_user);
    assert!(
        received > 0,
        "the operator's traffic was not attributed to it"
    );
    // Less than one unrelated Secret's data (base64 in JSON: a third more than its bytes).
    assert!(
        received < BYTES as u64,
        "the operator received {received} bytes; the unrelated Secrets hold {} bytes",
        UNRELATED * BYTES
    );
    let reads: Vec<_> = env
        .emulator
        .request_log()
        .into_iter()
        .filter(|(verb, path, _)| verb == "get" && path.contains("/secrets/"))
        .map(|(_, path, _)| path)
        .collect();
    assert!(
        reads.iter().all(|path| path.ends_with("/secrets/creds")),
        "{reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_is_never_sent_as_a_password() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // A copy of the SK elsewhere, and the credentials Secret's own key.
    let copy = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("copied".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("pw".to_string(), SECRET_KEY.to_string())])),
        ..Default::default()
    };
    env.secrets()
        .create(&PostParams::default(), &copy)
        .await
        .unwrap();
    for (name, secret, key) in [("own-key", "creds", "secretKey"), ("copy", "copied", "pw")] {
        let mut people = users(if name == "copy" { "86221" } else { "86222" }, 1, None);
        people[0].password_secret_ref = Some(SecretKeyRef {
            name: secret.into(),
            key: key.into(),
        });
        create(&env, &userbatch(name, "creds", people)).await;
    }
    let operator = env.operator("op", &[]);
    for name in ["own-key", "copy"] {
        let ub = env
            .wait_for(name, "InvalidSpec", |s| {
                ready_reason(s) == Some("InvalidSpec")
            })
            .await;
        let message = &condition(ub.status.as_ref().unwrap(), "Ready")
            .unwrap()
            .message;
        assert!(message.contains("never sent as a password"), "{message}");
    }
    assert_eq!(env.simulator.request_count(), 0);
    assert_no_secrets("the operator's logs", &operator.logs());
}

// --- 8. Poll answers that never finish -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_poll_answers_still_finish() {
    for (i, quirks) in [
        Quirks {
            numeric_status: true,
            numeric_reason: true,
            ..Quirks::default()
        },
        Quirks {
            null_register_list: true,
            end_cursor: Some("0".into()),
            ..Quirks::default()
        },
        Quirks {
            end_cursor: Some("-1".into()),
            ..Quirks::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let env = Env::start_with(
            koodrive_operator::devtools::emulator_config(),
            SimulatorConfig {
                quirks,
                failing_phones: [format!("8622{i}000001")].into(),
                ..SimulatorConfig::default()
            },
        )
        .await;
        env.simulator.set_page_limit(Some(1));
        env.create_credentials("creds", SECRET_KEY).await;
        env.create_batch("loose", "creds", users(&format!("8622{i}"), 3, None))
            .await;
        let _operator = env.operator("op", &[]);
        let ub = env
            .wait_for("loose", "UsersFailed", |s| {
                ready_reason(s) == Some("UsersFailed")
            })
            .await;
        let status = ub.status.unwrap();
        assert!(status.tasks[0].result.as_ref().unwrap().finished);
        assert_eq!(status.failures.len(), 1, "case {i}: {:?}", status.failures);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_never_finishes_becomes_overdue() {
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        SimulatorConfig {
            quirks: Quirks {
                never_finish: true,
                ..Quirks::default()
            },
            ..SimulatorConfig::default()
        },
    )
    .await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("stuck", "creds", users("86225", 2, None))
        .await;
    let _operator = env.operator("op", &["--results-timeout", "2s"]);
    let ub = env
        .wait_for("stuck", "ResultsOverdue", |s| {
            ready_reason(s) == Some("ResultsOverdue")
        })
        .await;
    assert!(condition(ub.status.as_ref().unwrap(), "Stalled").is_some_and(|c| c.status == "True"));
    // Now polled only every 30 minutes.
    let requests = env.simulator.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.simulator.request_count(), requests);
}

// --- 9. The smaller ones ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_secret_is_reported_as_permission_denied() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.emulator.inject(kube_emulator::Fault {
        verb: Some("get".into()),
        path_contains: Some("/secrets/creds".into()),
        times: 1_000_000,
        kind: kube_emulator::FaultKind::Status(403),
    });
    env.create_batch("forbidden", "creds", users("86226", 1, None))
        .await;
    let _operator = env.operator("op", &[]);
    let ub = env
        .wait_for("forbidden", "PermissionDenied", |s| {
            ready_reason(s) == Some("PermissionDenied")
        })
        .await;
    let message = &condition(ub.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(message.contains("creds"), "{message}");
    eventually("a PermissionDenied Event", || {
        let env = &env;
        async move {
            events_of(env, "forbidden")
                .await
                .iter()
                .any(|e| e.reason.as_deref() == Some("PermissionDenied"))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmit_value_longer_than_the_status_bound_still_works() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::DropAfterProcessing,
    });
    env.create_batch("long-value", "creds", users("86227", 1, None))
        .await;
    let _operator = env.operator("op", &[]);
    env.wait_for("long-value", "SubmissionInDoubt", |s| {
        ready_reason(s) == Some("SubmissionInDoubt")
    })
    .await;
    let value = "checked-".repeat(300);
    let patch =
        serde_json::json!({"metadata": {"annotations": {"koodrive.io/resubmit-in-doubt": value}}});
    env.userbatches()
        .patch("long-value", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let ub = env.wait_for("long-value", "Ready", is_ready).await;
    let remembered = ub.status.unwrap().resubmitted_in_doubt.unwrap();
    assert!(remembered.starts_with("sha256:"), "{remembered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_hostile_koodrive_messages_are_bounded_and_printable() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let refusal = |megabytes: usize| FaultKind::Respond {
        status: 400,
        body: serde_json::json!({"code": 13000102,
            "msg": format!("bad\u{0}request\u{1b}[31m {}", "x".repeat(megabytes << 20))}),
        process: false,
    };
    // 1 MiB: read, and cut to size before it reaches status, Events or logs.
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: refusal(1),
    });
    env.create_batch("long", "creds", users("86228", 1, None))
        .await;
    let operator = env.operator("op", &["--max-in-flight", "1"]);
    let ub = env
        .wait_for("long", "KooDriveRejected", |s| {
            ready_reason(s) == Some("KooDriveRejected")
        })
        .await;
    let message = ub.status.unwrap().message.unwrap();
    assert!(message.len() < 4096, "{} bytes in status", message.len());
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(message.contains("bad request"), "{message}");
    // 10 MiB: not read whole at all. For a create that leaves its outcome unknown.
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: refusal(10),
    });
    env.create_batch("huge", "creds", users("86232", 1, None))
        .await;
    env.wait_for("huge", "SubmissionInDoubt", |s| {
        ready_reason(s) == Some("SubmissionInDoubt")
    })
    .await;
    let longest = operator.logs().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 64 * 1024, "a {longest}-byte log line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_record_retry_against_a_vanished_api_server() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // Recording KooDrive's answer reads the status first: make that fail for good.
    env.emulator.inject(kube_emulator::Fault {
        verb: Some("get".into()),
        path_contains: Some("/userbatches/vanished/status".into()),
        times: 1_000_000,
        kind: kube_emulator::FaultKind::Status(500),
    });
    env.create_batch("vanished", "creds", users("86229", 1, None))
        .await;
    let mut operator = env.operator("op", &[]);
    eventually("the operator to retry the record", || {
        let logs = operator.logs();
        async move { logs.contains("retrying the status write").then_some(()) }
    })
    .await;
    let status = operator.terminate();
    assert!(status.success(), "{status:?}");
    assert!(operator.logs().contains("will show as in doubt"));
    // Never resent: the intent is on record.
    env.emulator.clear_faults();
    let _restarted = env.operator("op-2", &[]);
    env.wait_for("vanished", "SubmissionInDoubt", |s| {
        ready_reason(s) == Some("SubmissionInDoubt")
    })
    .await;
    submitted_once(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_is_honoured() {
    let env = Env::start().await;
    let log = env.dir.path().join("rust-log.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--allow-insecure-endpoints",
            "--default-endpoint",
            &env.simulator.url(),
            "--log-level",
            "error",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    eventually("an info line", || {
        let text = read_to_string(&log);
        async move { text.contains("serving /metrics").then_some(()) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_userbatches_leave_the_gauges() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("gauged", "creds", users("86230", 1, None))
        .await;
    let operator = env.operator("op", &[]);
    env.wait_for("gauged", "Ready", is_ready).await;
    let url = format!("http://{}/metrics", operator.metrics_addr().await);
    let counted = |text: &str| {
        text.contains("koodrive_operator_userbatches{phase=\"Completed\"} 1")
            && text.contains("name=\"gauged\"")
    };
    eventually("the gauges to count it", || {
        let url = url.clone();
        async move { http_get(&url).await.filter(|(_, t)| counted(t)) }
    })
    .await;
    env.userbatches()
        .delete("gauged", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the gauges to forget it", || {
        let url = url.clone();
        async move {
            http_get(&url).await.filter(|(_, t)| {
                t.contains("koodrive_operator_userbatches{phase=\"Completed\"} 0")
                    && !t.contains("name=\"gauged\"")
            })
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_has_its_own_event() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("two-tasks", "creds", users("86231", 4, None))
        .await;
    let _operator = env.operator("op", &["--max-batch-size", "2"]);
    let ub = env.wait_for("two-tasks", "Ready", is_ready).await;
    let tasks = ub.status.unwrap().tasks;
    assert_eq!(tasks.len(), 2);
    let notes: Vec<String> = events_of(&env, "two-tasks")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("TaskCreated"))
        .filter_map(|e| e.note)
        .collect();
    for task in &tasks {
        let id = task.task_id.as_deref().unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.contains(id) && n.contains(&task.trace_id)),
            "task {id} has no Event of its own: {notes:?}"
        );
    }
}

// --- 7. YAML errors echo secrets -------------------------------------------------------

#[test]
fn broken_yaml_is_located_never_echoed() {
    const PASSWORD: &str = "Pw-never-leak-yaml-4242";
    const SK: &str = "SK-never-leak-yaml-4242";
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // An unterminated quote on the password's own line.
        (
            "password.yaml",
            format!(
                "apiVersion: koodrive.io/v1alpha1\nkind: UserBatch\nmetadata: {{name: b, namespace: default}}\nspec:\n  credentialsRef: {{name: c}}\n  users:\n    - firstname: Ada\n      phone: \"8613800000001\"\n      password: \"{PASSWORD}\n"
            ),
        ),
        // A value of the wrong type, which serde would quote.
        (
            "secret.yaml",
            format!(
                "apiVersion: koodrive.io/v1alpha1\nkind: UserBatch\nmetadata: {{name: b, namespace: default}}\nspec:\n  credentialsRef: {{name: c}}\n  users:\n    - firstname: Ada\n      phone: \"8613800000001\"\n      password: [\"{SK}\"]\n"
            ),
        ),
    ];
    for (file, text) in &cases {
        let case_dir = dir.path().join(file.trim_end_matches(".yaml"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let path = case_dir.join(file);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        for args in [
            vec!["validate", "-f", path],
            vec![
                "submit",
                "-f",
                path,
                "--endpoint",
                "http://127.0.0.1:9",
                "--allow-insecure-endpoints",
            ],
            vec![
                "demo",
                "--examples",
                case_dir.to_str().unwrap(),
                "--timeout",
                "5s",
            ],
        ] {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
                .args(&args)
                .env("KOODRIVE_ACCESS_KEY", "ak")
                .env("KOODRIVE_SECRET_KEY", "sk")
                .env("KOODRIVE_USER_ID", "1")
                .output()
                .unwrap();
            let shown = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!output.status.success(), "{args:?}: {shown}");
            assert!(
                !shown.contains(PASSWORD) && !shown.contains(SK),
                "{args:?} echoed the manifest: {shown}"
            );
            // Where: a line and column, or (for a well-formed document of the wrong
            // shape, which `validate` checks against the schema) the field's path.
            if args[0] != "demo" || *file == "password.yaml" {
                assert!(
                    shown.contains("line ") || shown.contains("spec.users[0].password"),
                    "{args:?} gives no location: {shown}"
                );
            }
        }
    }
}
