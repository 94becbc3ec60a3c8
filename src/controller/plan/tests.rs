//! The planning table: what every kind of answer to every call leads to. A change to the
//! at-most-once rules shows up here first.

use super::*;
use crate::crd::{CredentialsRef, TaskResult, UserBatchSpec};
use koodrive_client::{CreatedTask, UserResult};

fn user(phone: &str) -> User {
    User {
        firstname: "Ada".into(),
        surname: None,
        phone: phone.into(),
        email: None,
        password: None,
        password_secret_ref: None,
    }
}

fn batch(phones: &[&str], policy: Option<InDoubtPolicy>) -> UserBatch {
    let mut ub = UserBatch::new(
        "b",
        UserBatchSpec {
            credentials_ref: Some(CredentialsRef {
                name: "c".into(),
                access_key_key: None,
                secret_key_key: None,
                user_id_key: None,
            }),
            account_ref: None,
            endpoint: None,
            users: phones.iter().map(|p| user(p)).collect(),
            in_doubt_policy: policy,
        },
    );
    ub.metadata.generation = Some(1);
    ub
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn record(trace: &str, task_id: Option<&str>, phones: &[&str], sent: i64) -> TaskRecord {
    TaskRecord {
        task_id: task_id.map(str::to_string),
        code: task_id.map(|_| "0".into()),
        message: None,
        trace_id: trace.into(),
        submitted_at: Time(at(sent)),
        phones: phones.iter().map(|p| p.to_string()).collect(),
        result: None,
        resubmit_of: None,
        users_digest: None,
    }
}

fn with_tasks(mut ub: UserBatch, tasks: Vec<TaskRecord>) -> UserBatch {
    ub.status = Some(UserBatchStatus {
        tasks,
        ..UserBatchStatus::default()
    });
    ub
}

const LIMITS: Limits = Limits {
    max_batch_size: 2,
    resubmit_delay: Duration::from_secs(600),
    results_timeout: Duration::from_secs(3600),
};

fn failure(class: ErrorClass) -> Failure {
    Failure {
        class,
        code: Some("C".into()),
        message: "what KooDrive said".into(),
    }
}

fn send(phones: &[&str]) -> Send {
    Send {
        phones: phones.iter().map(|p| p.to_string()).collect(),
        resubmit_of: None,
    }
}

/// Every class a failed call can have.
fn every_class() -> Vec<ErrorClass> {
    vec![
        ErrorClass::Transient { retry_after: None },
        ErrorClass::Transient {
            retry_after: Some(Duration::from_secs(40)),
        },
        ErrorClass::Authentication,
        ErrorClass::ClockSkew,
        ErrorClass::Rejected,
        ErrorClass::Invalid,
        ErrorClass::InDoubt,
    ]
}

/// What one row of the create table says, in words.
#[derive(Debug, PartialEq, Eq)]
struct CreateRow {
    /// The intent is kept (in doubt), dropped (users pending again), or made a task.
    intent: &'static str,
    /// The refusal is remembered until the inputs change.
    remembered: Option<Reason>,
    blocker: Option<Reason>,
    event: Option<(EventReason, Severity)>,
    stop: bool,
    retry: Option<Option<Duration>>,
}

fn create_row(outcome: &CreateOutcome) -> CreateRow {
    let t = after_create(&send(&["1", "2"]), "trace", outcome, "digest", "inputs");
    CreateRow {
        intent: match &t.edit {
            Some(Edit::Created { .. }) => "task",
            Some(Edit::NotSent { .. }) => "dropped",
            Some(Edit::InDoubt { .. }) => "kept",
            other => panic!("unexpected edit {other:?}"),
        },
        remembered: match &t.edit {
            Some(Edit::NotSent {
                stalled: Some(s), ..
            }) => Reason::parse(&s.reason),
            _ => None,
        },
        blocker: t.blocker.as_ref().map(|b| b.reason),
        event: t.event.as_ref().map(|e| (e.reason, e.severity)),
        stop: t.stop,
        retry: t.retry,
    }
}

#[test]
fn the_create_table() {
    use EventReason as E;
    use Reason as R;
    use Severity::{Normal, Warning};
    let created: CreateOutcome = Ok(CreatedTask {
        task_id: "42".into(),
        code: "0".into(),
        message: "Success".into(),
        trace_id: "trace".into(),
    });
    let row = |intent, remembered, blocker, event, stop, retry| CreateRow {
        intent,
        remembered,
        blocker,
        event,
        stop,
        retry,
    };
    assert_eq!(
        create_row(&created),
        row(
            "task",
            None,
            None,
            Some((E::TaskCreated, Normal)),
            false,
            None
        )
    );
    let expected = [
        // Provably not processed, and transient: users pending again, back off.
        row(
            "dropped",
            None,
            Some(R::KooDriveUnavailable),
            Some((E::KooDriveUnavailable, Warning)),
            true,
            Some(None),
        ),
        // Retry-After is handed on as the backoff's floor.
        row(
            "dropped",
            None,
            Some(R::KooDriveUnavailable),
            Some((E::KooDriveUnavailable, Warning)),
            true,
            Some(Some(Duration::from_secs(40))),
        ),
        // Refused credentials: not retried until the Secret changes.
        row(
            "dropped",
            Some(R::CredentialsInvalid),
            Some(R::CredentialsInvalid),
            Some((E::CredentialsInvalid, Warning)),
            true,
            None,
        ),
        // A clock difference is transient, never a credentials problem.
        row(
            "dropped",
            None,
            Some(R::ClockSkew),
            Some((E::ClockSkew, Warning)),
            true,
            Some(None),
        ),
        row(
            "dropped",
            Some(R::KooDriveRejected),
            Some(R::KooDriveRejected),
            Some((E::KooDriveRejected, Warning)),
            true,
            None,
        ),
        row(
            "dropped",
            Some(R::InvalidSpec),
            Some(R::InvalidSpec),
            Some((E::InvalidSpec, Warning)),
            true,
            None,
        ),
        // Anything else: the intent stays, nothing is resent, the tasks explain it.
        row(
            "kept",
            None,
            None,
            Some((E::SubmissionInDoubt, Warning)),
            true,
            None,
        ),
    ];
    for (class, expected) in every_class().into_iter().zip(expected) {
        assert_eq!(
            create_row(&Err(failure(class))),
            expected,
            "create answered {class:?}"
        );
    }
}

#[test]
fn the_poll_table() {
    let task = record("t", Some("42"), &["1", "2"], 0);
    let expected = [
        (Reason::KooDriveUnavailable, Some(None)),
        (
            Reason::KooDriveUnavailable,
            Some(Some(Duration::from_secs(40))),
        ),
        (Reason::CredentialsInvalid, None),
        (Reason::ClockSkew, Some(None)),
        // A read changes nothing in KooDrive: whatever else went wrong, read again later.
        (Reason::KooDriveUnavailable, Some(None)),
        (Reason::KooDriveUnavailable, Some(None)),
        (Reason::KooDriveUnavailable, Some(None)),
    ];
    for (class, (reason, retry)) in every_class().into_iter().zip(expected) {
        let t = after_poll(&task, &Err(failure(class)));
        assert_eq!(t.edit, None, "{class:?}");
        assert_eq!(t.blocker.map(|b| b.reason), Some(reason), "{class:?}");
        assert_eq!(t.retry, retry, "{class:?}");
        assert!(t.stop, "{class:?}");
    }
}

#[test]
fn finished_tasks_record_counts_and_only_their_own_failures() {
    let task = record("t", Some("42"), &["1", "2"], 0);
    let failed = |phone: &str| UserResult {
        phone: phone.into(),
        user_id: None,
        code: Some("13000302".into()),
        reason: Some("failed".into()),
    };
    let report = TaskReport {
        task_id: "42".into(),
        status: None,
        total: 2,
        succeeded: 1,
        failed: 1,
        skipped: 0,
        users: vec![failed("2"), failed("999")],
    };
    let t = after_poll(&task, &Ok(report.clone()));
    let Some(Edit::Results {
        result, failures, ..
    }) = &t.edit
    else {
        panic!("{t:?}");
    };
    assert!(result.finished);
    assert_eq!(failures.len(), 1, "phone 999 is not this task's");
    assert_eq!(failures[0].phone, "2");
    assert_eq!(
        t.event.as_ref().map(|e| (e.reason, e.severity)),
        Some((EventReason::TaskFinished, Severity::Warning))
    );
    // Unfinished: counts recorded, no Event, no failures yet.
    let unfinished = TaskReport {
        succeeded: 0,
        failed: 1,
        ..report
    };
    let t = after_poll(&task, &Ok(unfinished));
    assert!(t.event.is_none());
    assert!(
        matches!(&t.edit, Some(Edit::Results { result, failures, .. }) if !result.finished && failures.is_empty())
    );
}

#[test]
fn pending_users_are_sent_in_batches_and_nothing_while_in_doubt() {
    let ub = batch(&["1", "2", "3"], None);
    let first = plan(&ub, at(0), LIMITS);
    assert_eq!(first.sends, vec![send(&["1", "2"]), send(&["3"])]);
    let in_doubt = with_tasks(
        batch(&["1", "2", "3"], None),
        vec![record("t", None, &["1"], 0)],
    );
    let held = plan(&in_doubt, at(10_000), LIMITS);
    assert!(
        held.sends.is_empty(),
        "nothing is sent while a request is in doubt"
    );
    assert_eq!(held.resubmit_at, None, "Stall: a human decides");
}

#[test]
fn unfinished_tasks_are_polled_and_overdue_ones_counted() {
    let ub = with_tasks(
        batch(&["1", "2"], None),
        vec![
            record("a", Some("1"), &["1"], 0),
            record("b", Some("2"), &["2"], 3000),
        ],
    );
    let polling = plan(&ub, at(4000), LIMITS);
    assert_eq!(polling.polls, vec!["1".to_string(), "2".to_string()]);
    assert_eq!(polling.overdue, 1);
}

#[test]
fn resubmit_policy_resends_each_in_doubt_request_once_after_the_delay() {
    let ub = with_tasks(
        batch(&["1", "2", "3"], Some(InDoubtPolicy::Resubmit)),
        vec![record("t", None, &["1", "2"], 0)],
    );
    // Before the delay: nothing yet, but it says when.
    let early = plan(&ub, at(599), LIMITS);
    assert!(early.sends.is_empty());
    assert_eq!(early.resubmit_at, Some(at(600)));
    // After: the in-doubt users go again, in a request naming the one they resend, and the
    // other pending users follow.
    let due = plan(&ub, at(600), LIMITS);
    assert_eq!(
        due.sends,
        vec![
            Send {
                phones: vec!["1".into(), "2".into()],
                resubmit_of: Some("t".into()),
            },
            send(&["3"]),
        ]
    );
    assert_eq!(
        due.prepare,
        vec![Edit::ReleaseInDoubt {
            traces: vec!["t".into()],
            annotation: None
        }]
    );
    assert_eq!(due.events[0].reason, EventReason::ResubmittingInDoubt);
    // A resend that is itself in doubt waits for a human.
    let mut again = record("u", None, &["1", "2"], 700);
    again.resubmit_of = Some("t".into());
    let ub = with_tasks(
        batch(&["1", "2"], Some(InDoubtPolicy::Resubmit)),
        vec![again],
    );
    let human = plan(&ub, at(100_000), LIMITS);
    assert!(human.sends.is_empty() && human.prepare.is_empty());
    assert_eq!(human.resubmit_at, None);
}

#[test]
fn a_new_annotation_value_releases_what_is_in_doubt_once() {
    let mut ub = with_tasks(batch(&["1"], None), vec![record("t", None, &["1"], 0)]);
    ub.metadata.annotations = Some(
        [(
            RESUBMIT_IN_DOUBT_ANNOTATION.to_string(),
            "checked".to_string(),
        )]
        .into(),
    );
    let released = plan(&ub, at(1), LIMITS);
    assert_eq!(released.sends, vec![send(&["1"])]);
    let mut status = ub.status.clone().unwrap();
    for edit in &released.prepare {
        apply(edit, &mut status);
    }
    assert_eq!(status.resubmitted_in_doubt.as_deref(), Some("checked"));
    assert!(status.tasks.is_empty());
    // The same value again does nothing.
    ub.status = Some(UserBatchStatus {
        tasks: vec![record("u", None, &["1"], 5)],
        resubmitted_in_doubt: Some("checked".into()),
        ..UserBatchStatus::default()
    });
    let again = plan(&ub, at(10), LIMITS);
    assert!(again.sends.is_empty() && again.prepare.is_empty());
}

#[test]
fn annotation_values_too_long_for_status_are_remembered_by_digest() {
    let long = "x".repeat(MAX_ANNOTATION_VALUE_LEN + 1);
    let remembered = remembered_value(&long);
    assert!(remembered.starts_with("sha256:"));
    assert!(remembered.len() <= MAX_ANNOTATION_VALUE_LEN);
    assert_eq!(remembered, remembered_value(&long));
    assert_eq!(remembered_value("short"), "short");
}

#[test]
fn a_refusal_holds_until_its_inputs_change() {
    let mut status = UserBatchStatus {
        message: Some("KooDrive rejected the request".into()),
        stalled_inputs: Some(StalledInputs {
            reason: Reason::KooDriveRejected.to_string(),
            digest: "d1".into(),
        }),
        ..UserBatchStatus::default()
    };
    let held = held_by_refusal(&status, "d1").unwrap();
    assert_eq!(held.reason, Reason::KooDriveRejected);
    assert!(held_by_refusal(&status, "d2").is_none());
    status.stalled_inputs = None;
    assert!(held_by_refusal(&status, "d1").is_none());
    // The digest changes with the generation, the endpoint and every Secret version.
    let base = inputs_digest(Some(1), "https://e", "c=1,p=1");
    assert_eq!(base, inputs_digest(Some(1), "https://e", "c=1,p=1"));
    assert_ne!(base, inputs_digest(Some(2), "https://e", "c=1,p=1"));
    assert_ne!(base, inputs_digest(Some(1), "https://f", "c=1,p=1"));
    assert_ne!(base, inputs_digest(Some(1), "https://e", "c=1,p=2"));
}

#[test]
fn answers_apply_to_the_status_as_the_protocol_says() {
    let mut status = UserBatchStatus::default();
    let intent = intent(&send(&["1", "2"]), "t", at(0));
    apply(&Edit::Intent(intent.clone()), &mut status);
    // Applying twice (a retried write on a fresh copy) does not duplicate.
    apply(&Edit::Intent(intent), &mut status);
    assert_eq!(status::in_doubt(&status.tasks).len(), 1);
    let created = Edit::Created {
        trace_id: "t".into(),
        task_id: "42".into(),
        code: "0".into(),
        message: "Success".into(),
        users_digest: "abcd".into(),
    };
    apply(&created, &mut status);
    assert_eq!(status.tasks[0].task_id.as_deref(), Some("42"));
    assert_eq!(status.task_id.as_deref(), Some("42"));
    apply(
        &Edit::Results {
            task_id: "42".into(),
            result: TaskResult {
                total: 2,
                succeeded: 2,
                failed: 0,
                skipped: 0,
                finished: true,
            },
            failures: vec![],
        },
        &mut status,
    );
    assert!(status.tasks[0].result.as_ref().unwrap().finished);
    // A provable refusal forgets its intent; an ambiguous answer keeps it.
    apply(&Edit::Intent(record("u", None, &["3"], 1)), &mut status);
    apply(
        &Edit::NotSent {
            trace_id: "u".into(),
            code: Some("13000102".into()),
            message: "rejected".into(),
            stalled: None,
        },
        &mut status,
    );
    assert_eq!(status.tasks.len(), 1);
    apply(&Edit::Intent(record("v", None, &["3"], 2)), &mut status);
    apply(
        &Edit::InDoubt {
            trace_id: "v".into(),
            message: "504".into(),
        },
        &mut status,
    );
    assert_eq!(status.tasks.len(), 2);
    assert_eq!(status.tasks[1].message.as_deref(), Some("504"));
}

#[test]
fn spec_edits_are_announced_without_passwords() {
    let sent = ["1", "2", "3"].map(user);
    let mut ub = with_tasks(batch(&["1", "2", "3"], None), vec![]);
    let mut task = record("t", Some("42"), &["1", "2", "3"], 0);
    task.users_digest = Some(users_digest(&sent, &task.phones));
    ub.status.as_mut().unwrap().tasks = vec![task];
    ub.spec.users.remove(0);
    ub.spec.users[0].email = Some("changed@example.com".into());
    ub.spec.users[1].password = Some("hunter2-secret".into());
    let events = spec_edit_events(&ub);
    let reasons: Vec<EventReason> = events.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [
            EventReason::InlinePassword,
            EventReason::UsersRemoved,
            EventReason::UsersChangedAfterSubmission
        ]
    );
    assert!(events[1].note.contains('1'));
    assert!(events[2].note.contains("2, 3"), "{}", events[2].note);
    assert!(events.iter().all(|e| !e.note.contains("hunter2")));
}

#[test]
fn ready_transitions_announce_completion_and_what_needs_a_human() {
    let ready = ready_transition(
        Some(("False", "AwaitingResults")),
        (true, Reason::Ready, "3 users provisioned"),
    );
    assert_eq!(ready.map(|e| e.reason), Some(EventReason::Ready));
    assert!(ready_transition(Some(("True", "Ready")), (true, Reason::Ready, "x")).is_none());
    let stalled = ready_transition(None, (false, Reason::EndpointNotAllowed, "untrusted"));
    assert_eq!(
        stalled.map(|e| (e.reason, e.severity)),
        Some((EventReason::EndpointNotAllowed, Severity::Warning))
    );
    // Announced where they arise (the failing call), not again here.
    assert!(ready_transition(None, (false, Reason::KooDriveUnavailable, "x")).is_none());
}

#[test]
fn user_digests_reveal_nothing_about_passwords() {
    let mut other = user("1");
    other.password = Some("another-password".into());
    let mut one = user("1");
    one.password = Some("secret-password".into());
    let phones = vec!["1".to_string()];
    assert_eq!(
        users_digest(&[one], &phones),
        users_digest(&[other], &phones)
    );
    assert_eq!(users_digest(&[user("1")], &phones).len(), USER_DIGEST_LEN);
}

fn sent_batch(sent: &[User], now: Vec<User>) -> UserBatch {
    let mut ub = batch(&[], None);
    ub.spec.users = now;
    let mut task = record("t", Some("1"), &[], 0);
    task.phones = sent.iter().map(|u| u.phone.clone()).collect();
    task.users_digest = Some(users_digest(sent, &task.phones));
    with_tasks(ub, vec![task])
}

fn with_email(phone: &str, email: &str) -> User {
    User {
        email: Some(email.into()),
        password: Some("secret-password".into()),
        ..user(phone)
    }
}

#[test]
fn edits_are_named_per_user_even_when_others_were_removed() {
    let sent = [
        with_email("1", "a@x.io"),
        with_email("2", "b@x.io"),
        with_email("3", "c@x.io"),
    ];
    let now = vec![with_email("2", "changed@x.io"), with_email("3", "c@x.io")];
    let ub = sent_batch(&sent, now);
    assert_eq!(
        changed_after_submission(&ub, ub.status.as_ref().unwrap()),
        ["2"]
    );
}

#[test]
fn unchanged_users_are_not_reported() {
    let sent = [with_email("1", "a@x.io"), with_email("2", "b@x.io")];
    let ub = sent_batch(&sent, sent.to_vec());
    assert!(changed_after_submission(&ub, ub.status.as_ref().unwrap()).is_empty());
}
