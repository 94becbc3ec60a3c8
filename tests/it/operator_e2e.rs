//! End to end: the real `koodrive-operator run` binary, as a child process, against the
//! Kubernetes API emulator and the KooDrive simulator (both in this test process).

use crate::support::*;
use k8s_openapi::api::events::v1::Event;
use koodrive_simulator::{Call, Fault, FaultKind, SimulatorConfig};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use kube_emulator::{EmulatorConfig, Fault as ApiFault, FaultKind as ApiFaultKind};
use std::time::Duration;

fn all_counts_at_most_once(env: &Env) {
    for (phone, count) in env.simulator.submissions() {
        assert!(count <= 1, "phone {phone} was submitted {count} times");
    }
}

async fn all_events(env: &Env) -> String {
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let list = events.list(&ListParams::default()).await.unwrap();
    serde_json::to_string(&list.items).unwrap()
}

async fn event_reasons(env: &Env) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().filter_map(|e| e.reason).collect()
}

/// Leak check over everything the operator wrote: logs, Events and every status.
async fn assert_nothing_leaked(env: &Env, operator: &Operator) {
    assert_no_secrets("the operator's logs", &operator.logs());
    assert_no_secrets("Events", &all_events(env).await);
    let batches = env
        .userbatches()
        .list(&ListParams::default())
        .await
        .unwrap();
    let statuses: Vec<_> = batches.items.iter().map(|b| &b.status).collect();
    assert_no_secrets("status", &serde_json::to_string(&statuses).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_reaches_ready_with_task_in_status() {
    let env = Env::start().await;
    let people = users("86138", 3, Some("passwords"));
    env.create_credentials("koodrive-credentials", SECRET_KEY)
        .await;
    env.create_passwords("passwords", &people).await;
    env.create_batch("onboarding", "koodrive-credentials", people.clone())
        .await;
    let operator = env.operator("op", &[]);

    let ub = env.wait_for("onboarding", "Ready", is_ready).await;
    let status = ub.status.clone().unwrap();
    assert_eq!(status.code.as_deref(), Some("0"));
    let task_id = status.task_id.clone().expect("task id in status");
    assert_eq!(status.tasks.len(), 1);
    assert_eq!(status.tasks[0].task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(status.tasks[0].trace_id.len(), 58);
    assert_eq!(status.tasks[0].phones.len(), 3);
    assert_eq!(status.phase, Some(koodrive_operator::crd::Phase::Completed));
    let summary = status.summary.clone().unwrap();
    assert_eq!(
        (summary.requested, summary.submitted, summary.succeeded),
        (3, 3, 3)
    );
    assert_eq!(status.observed_generation, ub.metadata.generation);
    for c in &status.conditions {
        assert_eq!(c.observed_generation, ub.metadata.generation, "{c:?}");
    }
    for user in &people {
        assert_eq!(env.simulator.submissions().get(&user.phone), Some(&1));
    }
    // The Event announcing a created task (named TaskCreated: "Submitted" is a condition type
    // and a phase).
    assert!(event_reasons(&env).await.iter().any(|r| r == "TaskCreated"));

    // The printer columns, as kubectl shows them.
    let out = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            env.kubeconfig.to_str().unwrap(),
            "get",
            "ub",
            "onboarding",
            "-n",
            NAMESPACE,
        ])
        .output()
        .expect("kubectl is installed");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for column in [
        "PHASE",
        "USERS",
        "SUBMITTED",
        "SUCCEEDED",
        "FAILED",
        "TASK",
        "CODE",
        "AGE",
    ] {
        assert!(
            table.contains(column),
            "column {column} missing in:\n{table}"
        );
    }
    assert!(
        table.contains(&task_id) && table.contains("Completed"),
        "{table}"
    );

    // Quiet status: once Ready, nothing rewrites the object.
    let rv = ub.resource_version();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = env.userbatches().get("onboarding").await.unwrap();
    assert_eq!(
        again.resource_version(),
        rv,
        "status rewritten although nothing changed"
    );
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_reported_then_recovers_when_created() {
    let env = Env::start().await;
    env.create_batch("later", "not-yet", users("86139", 2, None))
        .await;
    let operator = env.operator("op", &[]);

    let ub = env
        .wait_for("later", "CredentialsNotFound", |s| {
            ready_reason(s) == Some("CredentialsNotFound")
        })
        .await;
    let ready = condition(ub.status.as_ref().unwrap(), "Ready").unwrap();
    assert!(
        ready.message.contains("not-yet"),
        "message names the Secret: {}",
        ready.message
    );
    assert!(env.simulator.submissions().is_empty());

    // Creating the Secret alone (the UserBatch is untouched) must lead to Ready.
    env.create_credentials("not-yet", SECRET_KEY).await;
    env.wait_for("later", "Ready", is_ready).await;
    all_counts_at_most_once(&env);
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_key_stalls_until_the_secret_is_fixed() {
    let env = Env::start().await;
    env.create_credentials("creds", "WRONG-secret-key").await;
    env.create_batch("badkey", "creds", users("86140", 2, None))
        .await;
    let operator = env.operator("op", &[]);

    let ub = env
        .wait_for("badkey", "CredentialsInvalid", |s| {
            ready_reason(s) == Some("CredentialsInvalid")
        })
        .await;
    let status = ub.status.unwrap();
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "True"));
    let message = &condition(&status, "Ready").unwrap().message;
    assert!(
        message.contains("APIG.0303") || message.to_lowercase().contains("signature"),
        "{message}"
    );
    assert!(env.simulator.submissions().is_empty());
    // A stalled batch is not retried in a loop (the gateway would lock the AK/SK).
    let requests = env.simulator.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.simulator.request_count() <= requests + 1,
        "authentication failures retried quickly"
    );

    let fixed = credentials_secret("creds", SECRET_KEY);
    env.secrets()
        .patch("creds", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    env.wait_for("badkey", "Ready", is_ready).await;
    all_counts_at_most_once(&env);
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_split_and_appended_users_go_in_one_new_task() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // 995 users sent 400 at a time (three requests), then 5 more to fill the UserBatch.
    let mut people = users("86141", 995, None);
    env.create_batch("big", "creds", people.clone()).await;
    let _operator = env.operator("op", &["--max-batch-size", "400"]);

    let ub = env.wait_for("big", "Ready", is_ready).await;
    let tasks = ub.status.unwrap().tasks;
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t.phones.len() <= 400));
    assert_eq!(tasks.iter().map(|t| t.phones.len()).sum::<usize>(), 995);

    let added = users("86142", 5, None);
    people.extend(added.clone());
    let patch = serde_json::json!({"spec": {"users": people}});
    env.userbatches()
        .patch("big", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let ub = env
        .wait_for("big", "Ready with 4 tasks", |s| {
            // The fourth record must carry its task ID: before that it is only the intent,
            // written while an older Ready=True may still stand.
            is_ready(s) && s.tasks.len() == 4 && s.tasks[3].task_id.is_some()
        })
        .await;
    let last = &ub.status.unwrap().tasks[3];
    let added_phones: Vec<String> = added.iter().map(|u| u.phone.clone()).collect();
    assert_eq!(
        last.phones, added_phones,
        "the new task holds only the new users"
    );
    let counts = env.simulator.submissions();
    assert_eq!(counts.len(), 1000);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_koodrive_failures_are_retried_until_ready() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // Throttled creates are provably not processed, so they are retried; reads are retried
    // whatever the failure. (A 5xx on a create is in doubt: see the in-doubt tests.)
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 4,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 0,
        },
    });
    env.simulator.inject(Fault {
        call: Some(Call::Get),
        times: 2,
        kind: FaultKind::Status5xx(503),
    });
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 1,
        },
    });
    // Reads that time out are safe to repeat.
    env.simulator.inject(Fault {
        call: Some(Call::Get),
        times: 1,
        kind: FaultKind::Latency(Duration::from_secs(3)),
    });
    env.create_batch("flaky", "creds", users("86143", 3, None))
        .await;
    let operator = env.operator("op", &["--request-timeout", "1s"]);

    env.wait_for("flaky", "Ready", is_ready).await;
    let counts = env.simulator.submissions();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 1));
    assert!(
        event_reasons(&env)
            .await
            .iter()
            .any(|r| r == "KooDriveUnavailable")
    );
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_stalls_with_code_and_message() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::Reject {
            code: 13000102,
            msg: "parameter validation failed".into(),
        },
    });
    env.create_batch("rejected", "creds", users("86144", 2, None))
        .await;
    let _operator = env.operator("op", &[]);

    let ub = env
        .wait_for("rejected", "KooDriveRejected", |s| {
            ready_reason(s) == Some("KooDriveRejected")
        })
        .await;
    let status = ub.status.unwrap();
    assert_eq!(status.code.as_deref(), Some("13000102"));
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("parameter validation failed")
    );
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "True"));
    assert_eq!(status.phase, Some(koodrive_operator::crd::Phase::Failed));
    // Not resent while nothing changed.
    let requests = env.simulator.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.simulator.request_count(), requests);

    // A spec change is a new input: the users are sent again (the fault is used up).
    let patch = serde_json::json!({"spec": {"users": users("86144", 2, None).into_iter().map(|mut u| { u.surname = Some("Fixed".into()); u }).collect::<Vec<_>>()}});
    env.userbatches()
        .patch("rejected", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_for("rejected", "Ready", is_ready).await;
    all_counts_at_most_once(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_write_after_submission_never_resends() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // Recording KooDrive's answer reads /status first: fail those reads for a while, as if
    // the API server were failing right after the request was sent. (500, not 503: the kube
    // client retries 503 by itself, which would hide the operator's own retry loop.)
    env.emulator.inject(ApiFault {
        verb: Some("get".into()),
        path_contains: Some("/userbatches/stubborn/status".into()),
        times: 6,
        kind: ApiFaultKind::Status(500),
    });
    env.create_batch("stubborn", "creds", users("86145", 3, None))
        .await;
    let operator = env.operator("op", &[]);

    let ub = env.wait_for("stubborn", "Ready", is_ready).await;
    let status = ub.status.unwrap();
    assert_eq!(status.tasks.len(), 1);
    assert!(status.tasks[0].task_id.is_some());
    let counts = env.simulator.submissions();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert!(operator.logs().contains("retrying the status write"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_is_in_doubt_until_a_human_resubmits() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1,
        kind: FaultKind::DropAfterProcessing,
    });
    env.create_batch("doubt", "creds", users("86146", 2, None))
        .await;
    let _operator = env.operator("op", &[]);

    let ub = env
        .wait_for("doubt", "SubmissionInDoubt", |s| {
            ready_reason(s) == Some("SubmissionInDoubt")
        })
        .await;
    let status = ub.status.unwrap();
    let message = &condition(&status, "Ready").unwrap().message;
    assert!(
        message.contains("koodrive.io/resubmit-in-doubt"),
        "{message}"
    );
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "True"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.simulator.submissions().values().all(|&c| c == 1),
        "resent without a human"
    );

    let patch = serde_json::json!({"metadata": {"annotations": {"koodrive.io/resubmit-in-doubt": "checked-1"}}});
    env.userbatches()
        .patch("doubt", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let ub = env.wait_for("doubt", "Ready", is_ready).await;
    assert_eq!(
        ub.status.unwrap().resubmitted_in_doubt.as_deref(),
        Some("checked-1")
    );
    // The human asked for it: exactly one more submission each.
    assert!(env.simulator.submissions().values().all(|&c| c == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_fails_fast_without_the_crd() {
    let env = Env::start_with(
        EmulatorConfig {
            crds: Vec::new(),
            ..koodrive_operator::devtools::emulator_config()
        },
        SimulatorConfig::default(),
    )
    .await;
    let mut operator = env.operator("op", &[]);
    let status = operator.wait_exit();
    assert!(!status.success());
    let logs = operator.logs();
    assert!(
        logs.contains("CRD") && logs.contains("kubectl apply"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let env = Env::start().await;
    let mut operator = env.operator("op", &["--log-format", "json"]);
    let addr = json_metrics_addr(&operator).await;
    eventually("readiness", || {
        let url = format!("http://{addr}/readyz");
        async move { http_get(&url).await.filter(|(code, _)| *code == 200) }
    })
    .await;
    let status = operator.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    // Structured logs: every line is one JSON object.
    for line in operator.logs().lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            parsed.get("level").is_some() && parsed.get("timestamp").is_some(),
            "{line}"
        );
    }
}

/// The metrics address from the JSON log line announcing it.
async fn json_metrics_addr(operator: &Operator) -> String {
    eventually("the operator to log its metrics address", || {
        let logs = operator.logs();
        async move {
            logs.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| {
                    v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("serving /metrics"))
                })
                .and_then(|v| v["address"].as_str().map(str::to_string))
        }
    })
    .await
}

/// SIGKILL the operator at random moments across 50 UserBatches; restart it each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_never_submit_anyone_twice() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // A little latency widens the window between intent and answer, where a kill hurts most.
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 1000,
        kind: FaultKind::Latency(Duration::from_millis(30)),
    });
    for i in 0..50 {
        env.create_batch(
            &format!("chaos-{i:02}"),
            "creds",
            users(&format!("861{i:02}"), 20, None),
        )
        .await;
    }
    let mut kills = 0;
    while kills < 20 {
        let mut operator = env.operator(&format!("op-{kills}"), &["--max-batch-size", "7"]);
        let alive_for = Duration::from_millis(rand::random_range(50..400));
        tokio::time::sleep(alive_for).await;
        operator.kill();
        kills += 1;
    }
    let last = env.operator("op-final", &["--max-batch-size", "7"]);
    let api = env.userbatches();
    for i in 0..50 {
        let name = format!("chaos-{i:02}");
        wait_for_batch(&api, &name, "Ready or SubmissionInDoubt", |s| {
            is_ready(s) || ready_reason(s) == Some("SubmissionInDoubt")
        })
        .await;
    }
    all_counts_at_most_once(&env);
    let batches = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(batches.items.len(), 50, "no UserBatch lost");
    let counts = env.simulator.submissions();
    for ub in batches
        .items
        .iter()
        .filter(|b| b.status.as_ref().is_some_and(is_ready))
    {
        for user in &ub.spec.users {
            assert_eq!(
                counts.get(&user.phone),
                Some(&1),
                "{} of {}",
                user.phone,
                ub.name_any()
            );
        }
    }
    assert_nothing_leaked(&env, &last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_watched_per_namespace_reference() {
    // A Secret change re-triggers only the UserBatches that reference it.
    let env = Env::start().await;
    env.create_batch("a", "creds-a", users("86147", 1, None))
        .await;
    env.create_batch("b", "creds-b", users("86148", 1, None))
        .await;
    let _operator = env.operator("op", &[]);
    env.wait_for("a", "CredentialsNotFound", |s| {
        ready_reason(s) == Some("CredentialsNotFound")
    })
    .await;
    env.wait_for("b", "CredentialsNotFound", |s| {
        ready_reason(s) == Some("CredentialsNotFound")
    })
    .await;
    env.create_credentials("creds-a", SECRET_KEY).await;
    env.wait_for("a", "Ready", is_ready).await;
    let b = env.userbatches().get("b").await.unwrap();
    assert_eq!(
        ready_reason(b.status.as_ref().unwrap()),
        Some("CredentialsNotFound")
    );
    assert_eq!(env.simulator.submissions().len(), 1);
}

#[test]
fn demo_applies_the_examples_and_reaches_ready() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args([
            "demo",
            "--examples",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
            "--timeout",
            "60s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied UserBatch default/onboarding-2026-11"),
        "{stdout}"
    );
    assert!(
        stdout.contains("AwaitingResults") || stdout.contains("Submitting"),
        "transitions shown:\n{stdout}"
    );
    assert!(stdout.contains("Ready=True"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("all UserBatches Ready"),
        "{stdout}"
    );
    assert_no_secrets("demo output", &stdout);
}

#[test]
fn demo_times_out_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
apiVersion: v1
kind: Secret
metadata: {name: koodrive-credentials, namespace: default}
stringData: {accessKey: ak, secretKey: sk, userId: "1"}
---
apiVersion: koodrive.io/v1alpha1
kind: UserBatch
metadata: {name: orphan, namespace: default}
spec:
  credentialsRef: {name: missing-secret}
  users: [{firstname: Ada, phone: "8613800000001"}]
"#;
    std::fs::write(dir.path().join("batch.yaml"), manifest).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args([
            "demo",
            "--examples",
            dir.path().to_str().unwrap(),
            "--timeout",
            "3s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timed out") && stderr.contains("CredentialsNotFound"),
        "{stderr}"
    );
    assert!(stderr.contains("missing-secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_password_secret_is_named_then_recovers_and_inline_passwords_warn() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let people = users("86153", 2, Some("later-passwords"));
    env.create_batch("pw", "creds", people.clone()).await;
    let mut inline = users("86154", 1, None);
    inline[0].password = Some(password_for(&inline[0].phone));
    env.create_batch("inline", "creds", inline).await;
    let operator = env.operator("op", &[]);

    let ub = env
        .wait_for("pw", "PasswordNotFound", |s| {
            ready_reason(s) == Some("PasswordNotFound")
        })
        .await;
    let message = &condition(ub.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("later-passwords"),
        "names the Secret: {message}"
    );
    assert!(
        env.simulator
            .submissions()
            .keys()
            .all(|p| !p.starts_with("86153"))
    );

    env.create_passwords("later-passwords", &people).await;
    env.wait_for("pw", "Ready", is_ready).await;
    env.wait_for("inline", "Ready", is_ready).await;
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("InlinePassword")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("inline")),
        "inline passwords raise a Warning Event"
    );
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("PasswordNotFound"))
    );
    all_counts_at_most_once(&env);
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_and_edited_users_are_reported_never_resent() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let mut people = users("86155", 3, None);
    env.create_batch("edits", "creds", people.clone()).await;
    let _operator = env.operator("op", &[]);
    env.wait_for("edits", "Ready", is_ready).await;

    people.remove(0);
    people[0].email = Some("changed@example.com".into());
    let patch = serde_json::json!({"spec": {"users": people}});
    env.userbatches()
        .patch("edits", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let ub = env
        .wait_for("edits", "Ready at generation 2", |s| {
            is_ready(s) && s.observed_generation == Some(2)
        })
        .await;
    assert_eq!(ub.status.unwrap().tasks.len(), 1, "no new task");

    let reasons = eventually("both Events", || {
        let env = &env;
        async move {
            let reasons = event_reasons(env).await;
            (reasons.iter().any(|r| r == "UsersRemoved")
                && reasons.iter().any(|r| r == "UsersChangedAfterSubmission"))
            .then_some(reasons)
        }
    })
    .await;
    assert!(reasons.iter().any(|r| r == "Ready"));
    let counts = env.simulator.submissions();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_limits_what_the_operator_touches() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("elsewhere", "creds", users("86156", 1, None))
        .await;
    let operator = env.operator("op", &["--watch-namespace", "team-a"]);
    let addr = operator.metrics_addr().await;
    eventually("readiness", || {
        let url = format!("http://{addr}/readyz");
        async move { http_get(&url).await.filter(|(code, _)| *code == 200) }
    })
    .await;
    // Synced and idle: a UserBatch outside the watched namespace is never reconciled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ub = env.userbatches().get("elsewhere").await.unwrap();
    assert!(ub.status.is_none(), "{:?}", ub.status);
    assert!(env.simulator.submissions().is_empty());
    assert!(
        env.emulator
            .request_log()
            .iter()
            .filter(|(verb, _, _)| verb == "list" || verb == "watch")
            .all(|(_, path, _)| path.contains("/namespaces/team-a/")),
        "only namespaced lists and watches"
    );
}
