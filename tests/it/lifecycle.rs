//! Issue #12: the whole user lifecycle, declaratively, end to end (the real operator binary
//! under the chart's RBAC, the API emulator, the KooDrive simulator): failed users retried
//! by annotation, removed users forgotten or — with `deletionPolicy: Delete` — deleted in
//! KooDrive exactly once (also across a SIGKILL mid-deletion, and when the UserBatch itself
//! is deleted), skipped users never deleted, the deletion guard, ambiguous DELETEs checked
//! before anything is resent, and `suspend`.

use crate::support::*;
use k8s_openapi::api::events::v1::Event;
use koodrive_operator::crd::{
    CONFIRM_DELETIONS_ANNOTATION, DeletionPolicy, FINALIZER, ORPHAN_ON_DELETE_ANNOTATION,
    RESUBMIT_IN_DOUBT_ANNOTATION, User, UserBatch, UserBatchStatus, UserState,
};
use koodrive_simulator::{Call, Fault, FaultKind, SimulatorConfig};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// How long "nothing happens" is watched for: several of the operator's poll intervals
/// (300 ms in these tests) and backoff rounds. Only ever used to show that something does
/// *not* happen; everything that should happen is waited for.
const QUIET: Duration = Duration::from_millis(1500);

async fn patch(env: &Env, name: &str, body: serde_json::Value) {
    env.userbatches()
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap();
}

async fn annotate(env: &Env, name: &str, key: &str, value: &str) {
    patch(
        env,
        name,
        json!({"metadata": {"annotations": {key: value}}}),
    )
    .await;
}

async fn set_users(env: &Env, name: &str, users: &[User]) {
    patch(env, name, json!({"spec": {"users": users}})).await;
}

async fn create(env: &Env, ub: &UserBatch) {
    env.userbatches()
        .create(&PostParams::default(), ub)
        .await
        .unwrap();
}

fn with_policy(name: &str, people: Vec<User>, policy: DeletionPolicy) -> UserBatch {
    let mut ub = userbatch(name, "creds", people);
    ub.spec.deletion_policy = Some(policy);
    ub
}

/// Phone → KooDrive user ID, as the status records them.
fn user_ids(status: &UserBatchStatus) -> BTreeMap<String, String> {
    status
        .users
        .iter()
        .filter_map(|r| Some((r.phone.clone(), r.user_id.clone()?)))
        .collect()
}

fn state_of(status: &UserBatchStatus, phone: &str) -> Option<UserState> {
    status
        .users
        .iter()
        .find(|r| r.phone == phone)
        .map(|r| r.state)
}

fn reconciling_reason(status: &UserBatchStatus) -> Option<&str> {
    condition(status, "Reconciling").map(|c| c.reason.as_str())
}

fn ready_at(generation: i64) -> impl Fn(&UserBatchStatus) -> bool {
    move |s| is_ready(s) && s.observed_generation == Some(generation)
}

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

/// Waits for an Event with `reason` about `name`, and returns its note.
async fn event_note(env: &Env, name: &str, reason: &str) -> String {
    eventually(&format!("a {reason} Event about {name}"), || async move {
        events_of(env, name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .and_then(|e| e.note)
    })
    .await
}

async fn wait_gone(env: &Env, name: &str) {
    eventually(&format!("UserBatch {name} to be gone"), || async move {
        env.userbatches()
            .get_opt(name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

/// The DELETEs KooDrive received, as user ID → count.
fn deletions(env: &Env) -> BTreeMap<String, u32> {
    env.simulator.deletions().into_iter().collect()
}

fn once_each(ids: &[&String]) -> BTreeMap<String, u32> {
    ids.iter().map(|id| (id.to_string(), 1)).collect()
}

fn failing(phones: &[&User]) -> SimulatorConfig {
    SimulatorConfig {
        failing_phones: phones.iter().map(|u| u.phone.clone()).collect(),
        ..SimulatorConfig::default()
    }
}

fn kubectl(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .arg("--cache-dir")
        .arg(env.dir.path().join("kubectl-cache"))
        .args(args)
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_user_retried_by_annotation_becomes_ready() {
    let people = users("86300", 2, Some("passwords"));
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        failing(&[&people[1]]),
    )
    .await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_passwords("passwords", &people).await;
    env.create_batch("retry", "creds", people.clone()).await;
    let operator = env.operator("op", &[]);
    let ub = env
        .wait_for("retry", "UsersFailed", |s| {
            ready_reason(s) == Some("UsersFailed")
        })
        .await;
    let status = ub.status.unwrap();
    assert_eq!(
        state_of(&status, &people[0].phone),
        Some(UserState::Created)
    );
    assert_eq!(state_of(&status, &people[1].phone), Some(UserState::Failed));
    let message = &condition(&status, "Ready").unwrap().message;
    assert!(
        message.contains(&people[1].phone) && message.contains("koodrive.io/retry-failed"),
        "the condition names the user and the way out: {message}"
    );

    // The cause is fixed in KooDrive; a human asks for one retry, as the README shows.
    env.simulator.set_failing_phones(HashSet::new());
    kubectl(
        &env,
        &[
            "annotate",
            "ub",
            "retry",
            "koodrive.io/retry-failed=2026-11-29T10:00:00Z",
            "--overwrite",
        ],
    );
    let ub = env.wait_for("retry", "Ready", is_ready).await;
    let status = ub.status.unwrap();
    let summary = status.summary.clone().unwrap();
    assert_eq!(
        (summary.submitted, summary.succeeded, summary.failed),
        (2, 2, 0),
        "{summary:?}"
    );
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert_eq!(
        state_of(&status, &people[1].phone),
        Some(UserState::Created)
    );
    assert_eq!(status.tasks.len(), 2, "the retry is a task of its own");
    assert_eq!(status.tasks[1].phones, [people[1].phone.clone()]);
    let note = event_note(&env, "retry", "RetryingFailed").await;
    assert!(note.contains(&people[1].phone), "{note}");

    // Once per value: the same value again (here with another change) resends nobody.
    annotate(&env, "retry", "example.com/unrelated", "x").await;
    tokio::time::sleep(QUIET).await;
    let counts = env.simulator.submissions();
    assert_eq!(counts[&people[0].phone], 1);
    assert_eq!(
        counts[&people[1].phone], 2,
        "sent once, and once more on request"
    );
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_user_removed_from_the_spec_leaves_the_userbatch_ready() {
    let mut people = users("86301", 3, None);
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        failing(&[&people[1]]),
    )
    .await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("trim", "creds", people.clone()).await;
    let _operator = env.operator("op", &[]);
    env.wait_for("trim", "UsersFailed", |s| {
        ready_reason(s) == Some("UsersFailed")
    })
    .await;

    let failed = people.remove(1);
    set_users(&env, "trim", &people).await;
    let ub = env
        .wait_for("trim", "Ready at generation 2", ready_at(2))
        .await;
    let status = ub.status.unwrap();
    let summary = status.summary.clone().unwrap();
    assert_eq!(
        (
            summary.requested,
            summary.submitted,
            summary.succeeded,
            summary.failed
        ),
        (2, 2, 2, 0),
        "{summary:?}"
    );
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert_eq!(state_of(&status, &failed.phone), None);
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "False"));
    let note = event_note(&env, "trim", "UsersRemoved").await;
    assert!(
        note.contains(&failed.phone) && note.contains("never provisioned"),
        "{note}"
    );
    assert!(!note.contains("stay provisioned"), "{note}");
    assert!(deletions(&env).is_empty(), "nobody is deleted under Orphan");
    assert!(env.simulator.submissions().values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_policy_deletes_removed_users_and_the_rest_with_the_userbatch_once_across_a_sigkill()
{
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let mut people = users("86302", 6, None);
    create(
        &env,
        &with_policy("offboard", people.clone(), DeletionPolicy::Delete),
    )
    .await;
    let mut operator = env.operator("op", &[]);
    let ub = env.wait_for("offboard", "Ready", is_ready).await;
    assert!(
        ub.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER)),
        "deletionPolicy Delete puts the finalizer on: {:?}",
        ub.metadata.finalizers
    );
    let ids = user_ids(ub.status.as_ref().unwrap());
    assert_eq!(ids.len(), 6, "every created user's KooDrive ID is recorded");
    let created = env.simulator.users();
    for (phone, id) in &ids {
        assert_eq!(created.get(phone), Some(id), "the ID KooDrive created");
    }

    // Three people leave: exactly their three DELETEs, for exactly their IDs.
    let leavers: Vec<User> = people.drain(..3).collect();
    set_users(&env, "offboard", &people).await;
    let ub = env
        .wait_for("offboard", "Ready with 3 users", |s| {
            ready_at(2)(s) && s.users.len() == 3
        })
        .await;
    let leaver_ids: Vec<&String> = leavers.iter().map(|u| &ids[&u.phone]).collect();
    assert_eq!(deletions(&env), once_each(&leaver_ids));
    assert_eq!(ub.status.unwrap().summary.unwrap().requested, 3);
    let note = event_note(&env, "offboard", "UsersDeleted").await;
    for leaver in &leavers {
        assert!(note.contains(&leaver.phone), "{note}");
    }

    // The UserBatch goes: the rest are deleted. KooDrive acts on the first DELETE but
    // answers only after a minute, and the operator is killed while it waits.
    env.simulator.inject(Fault {
        call: Some(Call::DeleteUser),
        times: 1,
        kind: FaultKind::HangAfterProcessing(Duration::from_secs(60)),
    });
    env.userbatches()
        .delete("offboard", &DeleteParams::default())
        .await
        .unwrap();
    eventually("KooDrive to process the first DELETE", || async {
        (deletions(&env).len() == 4).then_some(())
    })
    .await;
    operator.kill();
    let ub = env.userbatches().get("offboard").await.unwrap();
    let status = ub.status.unwrap();
    let in_doubt: Vec<_> = status
        .users
        .iter()
        .filter(|r| r.state == UserState::Deleting)
        .collect();
    assert_eq!(
        in_doubt.len(),
        1,
        "the intent was recorded first: {status:#?}"
    );

    let operator = env.operator("op2", &[]);
    wait_gone(&env, "offboard").await;
    let all: Vec<&String> = ids.values().collect();
    assert_eq!(
        deletions(&env),
        once_each(&all),
        "every user deleted, none twice"
    );
    assert!(env.simulator.users().is_empty());
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_user_is_never_deleted() {
    let people = users("86303", 2, None);
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        SimulatorConfig {
            // Registered before, by someone else.
            registered_phones: HashSet::from([people[0].phone.clone()]),
            ..SimulatorConfig::default()
        },
    )
    .await;
    env.create_credentials("creds", SECRET_KEY).await;
    create(
        &env,
        &with_policy("skips", people.clone(), DeletionPolicy::Delete),
    )
    .await;
    let _operator = env.operator("op", &[]);
    let ub = env.wait_for("skips", "Ready", is_ready).await;
    let status = ub.status.unwrap();
    assert_eq!(
        state_of(&status, &people[0].phone),
        Some(UserState::Skipped)
    );
    assert_eq!(
        state_of(&status, &people[1].phone),
        Some(UserState::Created)
    );
    let created_id = user_ids(&status)[&people[1].phone].clone();

    set_users(&env, "skips", &people[1..]).await;
    env.wait_for("skips", "Ready at generation 2", |s| {
        ready_at(2)(s) && s.users.len() == 1
    })
    .await;
    let note = event_note(&env, "skips", "UsersRemoved").await;
    assert!(note.contains("not created by this UserBatch"), "{note}");
    assert!(deletions(&env).is_empty(), "{:?}", deletions(&env));

    env.userbatches()
        .delete("skips", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env, "skips").await;
    assert_eq!(deletions(&env), once_each(&[&created_id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_more_users_than_the_guard_allows_deletes_nothing_until_confirmed() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let mut people = users("86304", 5, None);
    create(
        &env,
        &with_policy("guarded", people.clone(), DeletionPolicy::Delete),
    )
    .await;
    let operator = env.operator("op", &["--max-deletions", "2"]);
    let ub = env.wait_for("guarded", "Ready", is_ready).await;
    let ids = user_ids(ub.status.as_ref().unwrap());

    let leavers: Vec<User> = people.drain(..3).collect();
    set_users(&env, "guarded", &people).await;
    let ub = env
        .wait_for("guarded", "DeletionGuard", |s| {
            ready_reason(s) == Some("DeletionGuard")
        })
        .await;
    let status = ub.status.unwrap();
    assert_eq!(status.deletions_to_confirm, Some(3));
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "True"));
    let message = &condition(&status, "Ready").unwrap().message;
    assert!(
        message.contains("3 user(s)") && message.contains("koodrive.io/confirm-deletions=3"),
        "{message}"
    );
    // A wrong count confirms nothing.
    annotate(&env, "guarded", CONFIRM_DELETIONS_ANNOTATION, "2").await;
    tokio::time::sleep(QUIET).await;
    assert!(
        deletions(&env).is_empty(),
        "nothing deleted before confirmation"
    );
    let ub = env.userbatches().get("guarded").await.unwrap();
    assert_eq!(
        ready_reason(ub.status.as_ref().unwrap()),
        Some("DeletionGuard")
    );

    annotate(&env, "guarded", CONFIRM_DELETIONS_ANNOTATION, "3").await;
    let ub = env.wait_for("guarded", "Ready", is_ready).await;
    let leaver_ids: Vec<&String> = leavers.iter().map(|u| &ids[&u.phone]).collect();
    assert_eq!(deletions(&env), once_each(&leaver_ids));
    assert_eq!(ub.status.unwrap().deletions_to_confirm, None);
    assert!(
        !ub.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(CONFIRM_DELETIONS_ANNOTATION),
        "a confirmation is consumed, so it never confirms a later change"
    );
    event_note(&env, "guarded", "DeletionsConfirmed").await;
    event_note(&env, "guarded", "DeletionGuard").await;
    assert_nothing_leaked(&env, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_sends_nothing_and_resuming_loses_nothing() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let mut people = users("86305", 3, None);
    let mut ub = with_policy("paused", people.clone(), DeletionPolicy::Delete);
    ub.spec.suspend = Some(true);
    create(&env, &ub).await;
    let _operator = env.operator("op", &[]);
    let ub = env
        .wait_for("paused", "Suspended", |s| {
            ready_reason(s) == Some("Suspended")
        })
        .await;
    let status = ub.status.unwrap();
    assert_eq!(reconciling_reason(&status), Some("Suspended"));
    assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "False"));
    assert!(condition(&status, "Reconciling").is_some_and(|c| c.status == "False"));
    assert_eq!(env.simulator.request_count(), 0, "no KooDrive call at all");

    patch(&env, "paused", json!({"spec": {"suspend": false}})).await;
    let ub = env.wait_for("paused", "Ready", is_ready).await;
    let ids = user_ids(ub.status.as_ref().unwrap());

    // Paused again, a removal deletes nobody until the pause ends.
    let leaver = people.remove(0);
    patch(
        &env,
        "paused",
        json!({"spec": {"suspend": true, "users": people}}),
    )
    .await;
    env.wait_for("paused", "Suspended at generation 3", |s| {
        s.observed_generation == Some(3) && reconciling_reason(s) == Some("Suspended")
    })
    .await;
    let requests = env.simulator.request_count();
    tokio::time::sleep(QUIET).await;
    assert_eq!(env.simulator.request_count(), requests);
    assert!(deletions(&env).is_empty());

    patch(&env, "paused", json!({"spec": {"suspend": false}})).await;
    env.wait_for("paused", "Ready at generation 4", |s| {
        ready_at(4)(s) && s.users.len() == 2
    })
    .await;
    assert_eq!(deletions(&env), once_each(&[&ids[&leaver.phone]]));
    assert!(env.simulator.submissions().values().all(|&n| n == 1));
    event_note(&env, "paused", "Suspended").await;
    event_note(&env, "paused", "Resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_userbatch_that_cannot_reach_koodrive_says_why_and_can_be_let_go() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let people = users("86306", 2, None);
    create(
        &env,
        &with_policy("stuck", people.clone(), DeletionPolicy::Delete),
    )
    .await;
    let _operator = env.operator("op", &[]);
    env.wait_for("stuck", "Ready", is_ready).await;
    env.simulator.inject(Fault {
        call: Some(Call::DeleteUser),
        times: 10_000,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 1,
        },
    });
    env.userbatches()
        .delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    let ub = env
        .wait_for("stuck", "KooDriveUnavailable", |s| {
            ready_reason(s) == Some("KooDriveUnavailable")
        })
        .await;
    let message = &condition(ub.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("being deleted") && message.contains(ORPHAN_ON_DELETE_ANNOTATION),
        "{message}"
    );

    annotate(&env, "stuck", ORPHAN_ON_DELETE_ANNOTATION, "true").await;
    wait_gone(&env, "stuck").await;
    assert!(deletions(&env).is_empty());
    assert_eq!(env.simulator.users().len(), 2, "both stay in KooDrive");
    let note = event_note(&env, "stuck", "UsersOrphaned").await;
    for person in &people {
        assert!(note.contains(&person.phone), "{note}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_delete_is_checked_and_never_resent_without_a_human() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let mut people = users("86307", 3, None);
    create(
        &env,
        &with_policy("unsure", people.clone(), DeletionPolicy::Delete),
    )
    .await;
    let _operator = env.operator("op", &[]);
    let ub = env.wait_for("unsure", "Ready", is_ready).await;
    let ids = user_ids(ub.status.as_ref().unwrap());

    // The gateway times out after KooDrive deleted the user: the check finds it gone.
    env.simulator.inject(Fault {
        call: Some(Call::DeleteUser),
        times: 1,
        kind: FaultKind::backend_timeout_after_processing(),
    });
    let first = people.remove(0);
    set_users(&env, "unsure", &people).await;
    env.wait_for("unsure", "Ready at generation 2", |s| {
        ready_at(2)(s) && s.users.len() == 2
    })
    .await;
    assert_eq!(deletions(&env), once_each(&[&ids[&first.phone]]));
    event_note(&env, "unsure", "DeletionInDoubt").await;

    // The connection drops before KooDrive acts: the check finds the user still there,
    // and the operator stops instead of sending the DELETE again.
    env.simulator.inject(Fault {
        call: Some(Call::DeleteUser),
        times: 1,
        kind: FaultKind::DropConnection,
    });
    let second = people.remove(0);
    set_users(&env, "unsure", &people).await;
    let ub = env
        .wait_for("unsure", "DeletionInDoubt", |s| {
            ready_reason(s) == Some("DeletionInDoubt")
        })
        .await;
    let message = &condition(ub.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains(&second.phone) && message.contains(RESUBMIT_IN_DOUBT_ANNOTATION),
        "{message}"
    );
    tokio::time::sleep(QUIET).await;
    assert!(
        !deletions(&env).contains_key(&ids[&second.phone]),
        "an in-doubt DELETE is never resent on its own"
    );

    annotate(&env, "unsure", RESUBMIT_IN_DOUBT_ANNOTATION, "checked").await;
    env.wait_for("unsure", "Ready with 1 user", |s| {
        is_ready(s) && s.users.len() == 1
    })
    .await;
    assert_eq!(
        deletions(&env),
        once_each(&[&ids[&first.phone], &ids[&second.phone]])
    );
    let remaining: HashMap<String, String> = env.simulator.users();
    assert_eq!(remaining.len(), 1);
}

/// Leak check over everything the operator wrote: logs, Events and every status.
async fn assert_nothing_leaked(env: &Env, operator: &Operator) {
    assert_no_secrets("the operator's logs", &operator.logs());
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_no_secrets("Events", &serde_json::to_string(&list.items).unwrap());
    let batches = env
        .userbatches()
        .list(&ListParams::default())
        .await
        .unwrap();
    let statuses: Vec<_> = batches.items.iter().map(|b| &b.status).collect();
    assert_no_secrets("status", &serde_json::to_string(&statuses).unwrap());
}
