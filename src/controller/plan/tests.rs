//! The planning table: what every kind of answer to every call leads to. A change to the
//! at-most-once rules shows up here first.

use super::*;
use crate::crd::{CredentialsRef, TaskResult, UserBatchSpec};
use koodrive_client::{CreatedTask, UserResult};
use status::GuardHold;

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
            suspend: None,
            deletion_policy: None,
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
        users_recorded: false,
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
    max_deletions: 3,
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
            records: vec![],
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

// --- The user lifecycle (issue #12) --------------------------------------------------------

fn user_record(phone: &str, user_id: Option<&str>, state: UserState) -> UserRecord {
    UserRecord {
        phone: phone.into(),
        user_id: user_id.map(str::to_string),
        state,
    }
}

fn created(phone: &str) -> UserRecord {
    user_record(phone, Some(&format!("id{phone}")), UserState::Created)
}

/// A finished, recorded task carrying `phones`, and a record per user.
fn recorded(spec: &[&str], records: Vec<UserRecord>, policy: Option<DeletionPolicy>) -> UserBatch {
    let mut task = record("t", Some("42"), &[], 0);
    task.phones = records.iter().map(|r| r.phone.clone()).collect();
    task.result = Some(TaskResult {
        total: records.len() as i64,
        succeeded: records.len() as i64,
        failed: 0,
        skipped: 0,
        finished: true,
    });
    task.users_recorded = true;
    let mut ub = with_tasks(batch(spec, None), vec![task]);
    ub.spec.deletion_policy = policy;
    ub.status.as_mut().unwrap().users = records;
    ub
}

fn annotate(ub: &mut UserBatch, name: &str, value: &str) {
    ub.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(name.to_string(), value.to_string());
}

fn applied(ub: &UserBatch, edits: &[Edit]) -> UserBatchStatus {
    let mut status = ub.status.clone().unwrap_or_default();
    for edit in edits {
        apply(edit, &mut status);
    }
    status
}

fn op(phone: &str) -> DeleteOp {
    DeleteOp {
        phone: phone.into(),
        user_id: format!("id{phone}"),
    }
}

/// What one row of the DELETE table says, in words.
#[derive(Debug, PartialEq, Eq)]
struct DeleteRow {
    /// The record is dropped (deleted), put back (not sent), or kept `Deleting` (in doubt).
    record: &'static str,
    blocker: Option<Reason>,
    event: Option<(EventReason, Severity)>,
    check: bool,
    stop: bool,
    retry: Option<Option<Duration>>,
}

fn delete_row(outcome: &DeleteOutcome) -> DeleteRow {
    let step = after_delete(&op("1"), "trace", outcome);
    let t = step.transition;
    DeleteRow {
        record: match &t.edit {
            Some(Edit::Deleted { .. }) => "dropped",
            Some(Edit::DeleteNotSent { .. }) => "put back",
            None => "kept",
            other => panic!("unexpected edit {other:?}"),
        },
        blocker: t.blocker.as_ref().map(|b| b.reason),
        event: t.event.as_ref().map(|e| (e.reason, e.severity)),
        check: step.check,
        stop: t.stop,
        retry: t.retry,
    }
}

#[test]
fn the_delete_table() {
    use EventReason as E;
    use Reason as R;
    use Severity::Warning;
    let row = |record, blocker, event, check, stop, retry| DeleteRow {
        record,
        blocker,
        event,
        check,
        stop,
        retry,
    };
    // Deleted, or unknown to KooDrive: done either way.
    for answer in [Deletion::Deleted, Deletion::NotFound] {
        assert_eq!(
            delete_row(&Ok(answer)),
            row("dropped", None, None, false, false, None),
            "{answer:?}"
        );
    }
    let expected = [
        // Provably not processed: back to pending, retried with backoff.
        row(
            "put back",
            Some(R::KooDriveUnavailable),
            Some((E::KooDriveUnavailable, Warning)),
            false,
            true,
            Some(None),
        ),
        row(
            "put back",
            Some(R::KooDriveUnavailable),
            Some((E::KooDriveUnavailable, Warning)),
            false,
            true,
            Some(Some(Duration::from_secs(40))),
        ),
        // Refused credentials: not retried until the Secret changes.
        row(
            "put back",
            Some(R::CredentialsInvalid),
            Some((E::CredentialsInvalid, Warning)),
            false,
            true,
            None,
        ),
        row(
            "put back",
            Some(R::ClockSkew),
            Some((E::ClockSkew, Warning)),
            false,
            true,
            Some(None),
        ),
        // Refused outright: KooDrive did nothing; a human looks before it is sent again.
        row(
            "put back",
            Some(R::KooDriveRejected),
            Some((E::KooDriveRejected, Warning)),
            false,
            true,
            None,
        ),
        row(
            "put back",
            Some(R::InvalidSpec),
            Some((E::InvalidSpec, Warning)),
            false,
            true,
            None,
        ),
        // Ambiguous: the intent stays, KooDrive is asked at once, nothing is resent.
        row(
            "kept",
            None,
            Some((E::DeletionInDoubt, Warning)),
            true,
            true,
            None,
        ),
    ];
    for (class, expected) in every_class().into_iter().zip(expected) {
        assert_eq!(
            delete_row(&Err(failure(class))),
            expected,
            "DELETE answered {class:?}"
        );
    }
    // Events name the user and the request, never more.
    let step = after_delete(&op("1"), "trace", &Err(failure(ErrorClass::InDoubt)));
    let note = &step.transition.event.unwrap().note;
    assert!(
        note.contains("user 1 (id1)") && note.contains("X-Traceid trace"),
        "{note}"
    );
}

#[test]
fn the_check_table() {
    // Unknown to KooDrive: the DELETE took effect.
    let gone = after_check(&op("1"), &Ok(None));
    assert_eq!(gone.edit, Some(Edit::Deleted { phone: "1".into() }));
    assert!(!gone.stop && gone.blocker.is_none());
    // Still there: nothing changes; the records keep it in doubt for a human.
    let there = after_check(&op("1"), &Ok(Some(UserInfo::default())));
    assert_eq!(there.edit, None);
    assert!(!there.stop && there.blocker.is_none() && there.retry.is_none());
    // A failed read is retried like any read, and changes nothing.
    let expected = [
        (Reason::KooDriveUnavailable, Some(None)),
        (
            Reason::KooDriveUnavailable,
            Some(Some(Duration::from_secs(40))),
        ),
        (Reason::CredentialsInvalid, None),
        (Reason::ClockSkew, Some(None)),
        (Reason::KooDriveUnavailable, Some(None)),
        (Reason::KooDriveUnavailable, Some(None)),
        (Reason::KooDriveUnavailable, Some(None)),
    ];
    for (class, (reason, retry)) in every_class().into_iter().zip(expected) {
        let t = after_check(&op("1"), &Err(failure(class)));
        assert_eq!(t.edit, None, "{class:?}");
        assert_eq!(t.blocker.map(|b| b.reason), Some(reason), "{class:?}");
        assert_eq!(t.retry, retry, "{class:?}");
        assert!(t.stop, "{class:?}");
    }
}

fn listed(phone: &str, user_id: Option<&str>, code: Option<&str>) -> UserResult {
    UserResult {
        phone: phone.into(),
        user_id: user_id.map(str::to_string),
        code: code.map(str::to_string),
        reason: code.map(|_| "why".to_string()),
    }
}

fn records_of(task: &TaskRecord, report: TaskReport) -> Vec<(String, Option<String>, UserState)> {
    let t = after_poll(task, &Ok(report));
    let Some(Edit::Results { records, .. }) = t.edit else {
        panic!("{t:?}");
    };
    records
        .into_iter()
        .map(|r| (r.phone, r.user_id, r.state))
        .collect()
}

#[test]
fn finished_tasks_record_each_users_outcome_and_only_proven_creations() {
    let task = record("t", Some("42"), &["1", "2", "3", "4", "5"], 0);
    let report = TaskReport {
        task_id: "42".into(),
        status: None,
        // 5 counted as created, but not listed.
        total: 5,
        succeeded: 3,
        failed: 0,
        skipped: 2,
        users: vec![
            listed("1", Some("u1"), None),
            // An ID that cannot go into a path as is: created, but never deletable.
            listed("2", Some("u/2"), Some("0")),
            listed("3", None, Some("13000301")),
            listed("4", Some("u4"), Some("13000301")),
            // Not this task's.
            listed("999", Some("u999"), None),
        ],
    };
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        records_of(&task, report.clone()),
        [
            ("1".into(), s("u1"), UserState::Created),
            ("2".into(), None, UserState::Created),
            // Coded, in a task without failures: skipped (its ID kept, never used).
            ("3".into(), None, UserState::Skipped),
            ("4".into(), s("u4"), UserState::Skipped),
            // Not listed at all.
            ("5".into(), None, UserState::Unknown),
        ]
    );
    // A task counting failures: coded users failed.
    let failing = TaskReport {
        succeeded: 3,
        failed: 2,
        skipped: 0,
        ..report.clone()
    };
    assert_eq!(
        records_of(&task, failing)
            .iter()
            .map(|r| r.2)
            .collect::<Vec<_>>(),
        [
            UserState::Created,
            UserState::Created,
            UserState::Failed,
            UserState::Failed,
            UserState::Unknown
        ]
    );
    // More clean entries than KooDrive's successCount: some are skipped users that cannot
    // be told apart, so none of them is recorded as created (and none is ever deleted).
    let ambiguous = TaskReport {
        succeeded: 1,
        skipped: 4,
        ..report
    };
    let records = records_of(&task, ambiguous);
    assert_eq!(records[0], ("1".into(), None, UserState::Unknown));
    assert_eq!(records[1], ("2".into(), None, UserState::Unknown));
    // Unfinished: nothing recorded yet.
    let t = after_poll(
        &task,
        &Ok(TaskReport {
            succeeded: 0,
            ..TaskReport::default()
        }),
    );
    assert!(matches!(t.edit, Some(Edit::Results { records, .. }) if records.is_empty()));
}

#[test]
fn lifecycle_edits_apply_as_the_protocol_says_and_twice_changes_nothing() {
    let mut task = record("t", Some("42"), &["1", "2", "3"], 0);
    task.users_digest = Some("aaaaaaaabbbbbbbbcccccccc".into());
    let mut status = UserBatchStatus {
        tasks: vec![task],
        failures: vec![UserFailure {
            phone: "2".into(),
            code: Some("C".into()),
            reason: None,
        }],
        ..UserBatchStatus::default()
    };
    let results = Edit::Results {
        task_id: "42".into(),
        result: TaskResult {
            total: 3,
            succeeded: 2,
            failed: 1,
            skipped: 0,
            finished: true,
        },
        failures: vec![UserFailure {
            phone: "3".into(),
            code: Some("C".into()),
            reason: None,
        }],
        records: vec![
            created("1"),
            created("2"),
            user_record("3", None, UserState::Failed),
        ],
    };
    apply(&results, &mut status);
    apply(&results, &mut status);
    assert!(status.tasks[0].users_recorded);
    assert_eq!(status.users.len(), 3);
    // A user recorded as created is no longer failed.
    assert_eq!(
        status
            .failures
            .iter()
            .map(|f| f.phone.as_str())
            .collect::<Vec<_>>(),
        ["3"]
    );

    // Retrying releases the failed user: record, failure and claim go (digest aligned).
    let retry = Edit::ReleaseFailed {
        phones: vec!["3".into(), "1".into()],
        annotation: Some("v1".into()),
    };
    apply(&retry, &mut status);
    apply(&retry, &mut status);
    assert_eq!(status.retried_failed.as_deref(), Some("v1"));
    assert_eq!(
        status.tasks[0].phones,
        ["1", "2"],
        "only the failed user goes"
    );
    assert_eq!(
        status.tasks[0].users_digest.as_deref(),
        Some("aaaaaaaabbbbbbbb")
    );
    assert!(status.failures.is_empty());

    // Approve → intent → not sent → intent → deleted.
    let approve = Edit::ApproveDeletions {
        phones: vec!["1".into()],
    };
    apply(&approve, &mut status);
    apply(&approve, &mut status);
    let intent = Edit::DeleteIntent { phone: "1".into() };
    apply(&intent, &mut status);
    assert_eq!(
        status::record(&status.users, "1").unwrap().state,
        UserState::Deleting
    );
    apply(&Edit::DeleteNotSent { phone: "1".into() }, &mut status);
    assert_eq!(
        status::record(&status.users, "1").unwrap().state,
        UserState::DeletePending
    );
    apply(&intent, &mut status);
    apply(
        &Edit::ReleaseDeletions {
            phones: vec!["1".into()],
        },
        &mut status,
    );
    assert_eq!(
        status::record(&status.users, "1").unwrap().state,
        UserState::DeletePending
    );
    apply(&intent, &mut status);
    let deleted = Edit::Deleted { phone: "1".into() };
    apply(&deleted, &mut status);
    apply(&deleted, &mut status);
    assert!(status::record(&status.users, "1").is_none());
    assert_eq!(
        status.tasks[0].phones,
        ["2"],
        "a deleted user may be provisioned anew"
    );
    assert_eq!(status.tasks[0].users_digest.as_deref(), Some("bbbbbbbb"));

    // Cancel puts a pending deletion back; a Deleting one only moves on its answer.
    apply(
        &Edit::ApproveDeletions {
            phones: vec!["2".into()],
        },
        &mut status,
    );
    apply(
        &Edit::CancelDeletions {
            phones: vec!["2".into()],
        },
        &mut status,
    );
    assert_eq!(
        status::record(&status.users, "2").unwrap().state,
        UserState::Created
    );
    apply(
        &Edit::ApproveDeletions {
            phones: vec!["2".into()],
        },
        &mut status,
    );
    apply(&Edit::DeleteIntent { phone: "2".into() }, &mut status);
    apply(
        &Edit::Forget {
            phones: vec!["2".into()],
        },
        &mut status,
    );
    assert_eq!(
        status::record(&status.users, "2").unwrap().state,
        UserState::Deleting,
        "an in-doubt DELETE is never forgotten"
    );
}

#[test]
fn forgetting_a_failed_user_releases_its_claim_but_a_provisioned_one_keeps_it() {
    let mut status = UserBatchStatus {
        tasks: vec![record("t", Some("42"), &["1", "2"], 0)],
        users: vec![created("1"), user_record("2", None, UserState::Failed)],
        ..UserBatchStatus::default()
    };
    apply(
        &Edit::Forget {
            phones: vec!["1".into(), "2".into()],
        },
        &mut status,
    );
    assert!(status.users.is_empty());
    // Added back later, 1 is never sent twice; 2 was never provisioned and may be.
    assert_eq!(status.tasks[0].phones, ["1"]);
}

#[test]
fn retry_failed_releases_failed_users_in_the_spec_once_per_value() {
    let mut ub = recorded(
        &["1", "2", "3"],
        vec![
            created("1"),
            user_record("2", None, UserState::Failed),
            user_record("3", None, UserState::Failed),
            // Removed from the spec (and forgotten, not retried).
            user_record("4", None, UserState::Failed),
        ],
        None,
    );
    // No annotation: failed users stay failed.
    assert!(plan(&ub, at(1), LIMITS).sends.is_empty());
    annotate(&mut ub, RETRY_FAILED_ANNOTATION, "2026-11-29");
    let retried = plan(&ub, at(1), LIMITS);
    assert_eq!(
        retried.prepare[0],
        Edit::ReleaseFailed {
            phones: vec!["2".into(), "3".into()],
            annotation: Some("2026-11-29".into()),
        }
    );
    assert_eq!(retried.sends, vec![send(&["2", "3"])]);
    let reasons: Vec<EventReason> = retried.events.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [EventReason::RetryingFailed, EventReason::UsersRemoved]
    );
    assert!(
        retried.events[0].note.contains("2, 3"),
        "{}",
        retried.events[0].note
    );
    // Once written, the same value does nothing more.
    ub.status = Some(applied(&ub, &retried.prepare));
    let again = plan(&ub, at(2), LIMITS);
    assert!(again.prepare.is_empty(), "{:?}", again.prepare);
}

#[test]
fn removed_users_are_forgotten_with_what_becomes_of_each() {
    let records = vec![
        created("1"),
        created("2"),
        user_record("3", None, UserState::Created),
        user_record("4", Some("id4"), UserState::Skipped),
        user_record("5", None, UserState::Failed),
        user_record("6", None, UserState::Unknown),
    ];
    // Orphan (the default): everyone removed is forgotten, nobody deleted.
    let ub = recorded(&["1"], records.clone(), None);
    let p = plan(&ub, at(1), LIMITS);
    assert_eq!(
        p.prepare,
        vec![Edit::Forget {
            phones: ["2", "3", "4", "5", "6"].map(String::from).to_vec()
        }]
    );
    assert!(p.deletes.is_empty());
    let note = &p.events[0].note;
    for expected in [
        "2 stay in KooDrive (deletionPolicy Orphan)",
        "3 stay in KooDrive: KooDrive reported no user ID",
        "4 stay in KooDrive: they were already registered",
        "5 had failed and were never provisioned",
        "6 stay as they are",
    ] {
        assert!(note.contains(expected), "{expected:?} not in {note}");
    }
    // Delete: the one user it created (with an ID) is deleted; the others forgotten.
    let ub = recorded(&["1"], records, Some(DeletionPolicy::Delete));
    let p = plan(&ub, at(1), LIMITS);
    assert_eq!(
        p.prepare,
        vec![
            Edit::Forget {
                phones: ["3", "4", "5", "6"].map(String::from).to_vec()
            },
            Edit::ApproveDeletions {
                phones: vec!["2".into()]
            }
        ]
    );
    assert_eq!(p.deletes, vec![op("2")]);
    assert!(p.events[1].note.contains("2 (id2)"), "{}", p.events[1].note);
    assert!(
        !p.events.iter().any(|e| e.note.contains("4 (")),
        "a skipped user is never deleted"
    );
}

#[test]
fn the_guard_holds_a_large_change_until_its_exact_count_is_confirmed() {
    // LIMITS.max_deletions is 3; four removed users is one change too many.
    let records: Vec<UserRecord> = ["1", "2", "3", "4", "5"].map(created).to_vec();
    let mut ub = recorded(&["5"], records, Some(DeletionPolicy::Delete));
    let held = plan(&ub, at(1), LIMITS);
    assert_eq!(held.guard, Some(GuardHold { count: 4, max: 3 }));
    assert!(held.prepare.is_empty() && held.deletes.is_empty());
    assert_eq!(held.confirmed, None);
    // A wrong count confirms nothing.
    annotate(&mut ub, CONFIRM_DELETIONS_ANNOTATION, "3");
    assert_eq!(plan(&ub, at(1), LIMITS).guard.map(|g| g.count), Some(4));
    // The exact count lets the change through, and the annotation is consumed.
    annotate(&mut ub, CONFIRM_DELETIONS_ANNOTATION, " 4 ");
    let confirmed = plan(&ub, at(1), LIMITS);
    assert_eq!(confirmed.guard, None);
    assert_eq!(confirmed.confirmed.as_deref(), Some(" 4 "));
    assert_eq!(confirmed.deletes.len(), 4);
    assert_eq!(confirmed.events[0].reason, EventReason::DeletionsConfirmed);
    // Once approved, the deletions go on without the annotation (a restart midway does not
    // ask again).
    let mut ub2 = ub.clone();
    ub2.status = Some(applied(&ub, &confirmed.prepare));
    ub2.metadata.annotations = None;
    let resumed = plan(&ub2, at(2), LIMITS);
    assert_eq!(resumed.guard, None);
    assert_eq!(resumed.deletes.len(), 4);
    // Within the limit, nothing needs confirming (and an annotation is not consumed).
    let small = recorded(
        &["1", "2"],
        ["1", "2", "3"].map(created).to_vec(),
        Some(DeletionPolicy::Delete),
    );
    let mut small = small;
    annotate(&mut small, CONFIRM_DELETIONS_ANNOTATION, "1");
    let p = plan(&small, at(1), LIMITS);
    assert_eq!((p.guard, p.confirmed, p.deletes.len()), (None, None, 1));
}

#[test]
fn users_added_back_before_their_delete_is_sent_stay() {
    let mut ub = recorded(
        &["1", "2"],
        vec![
            user_record("1", Some("id1"), UserState::DeletePending),
            created("2"),
        ],
        Some(DeletionPolicy::Delete),
    );
    let p = plan(&ub, at(1), LIMITS);
    assert_eq!(
        p.prepare,
        vec![Edit::CancelDeletions {
            phones: vec!["1".into()]
        }]
    );
    assert!(p.deletes.is_empty());
    // And deletionPolicy back to Orphan keeps a removed user too.
    ub.spec.users.remove(0);
    ub.spec.deletion_policy = Some(DeletionPolicy::Orphan);
    let p = plan(&ub, at(1), LIMITS);
    assert_eq!(
        p.prepare,
        vec![Edit::Forget {
            phones: vec!["1".into()]
        }]
    );
    assert!(
        p.events[0].note.contains("no longer deleted"),
        "{}",
        p.events[0].note
    );
}

#[test]
fn an_in_doubt_delete_is_checked_and_resent_only_when_a_human_says_so() {
    let mut ub = recorded(
        &["2"],
        vec![
            user_record("1", Some("id1"), UserState::Deleting),
            created("2"),
        ],
        Some(DeletionPolicy::Delete),
    );
    let p = plan(&ub, at(1), LIMITS);
    assert_eq!(p.checks, vec![op("1")]);
    assert!(p.deletes.is_empty(), "never a second DELETE on its own");
    annotate(&mut ub, RESUBMIT_IN_DOUBT_ANNOTATION, "checked");
    let released = plan(&ub, at(1), LIMITS);
    assert_eq!(
        released.prepare[1],
        Edit::ReleaseDeletions {
            phones: vec!["1".into()]
        }
    );
    assert!(released.checks.is_empty());
    assert_eq!(released.deletes, vec![op("1")]);
    assert_eq!(released.events[0].reason, EventReason::ResubmittingInDoubt);
}

#[test]
fn a_suspended_userbatch_keeps_its_books_but_calls_nothing() {
    let mut ub = recorded(
        &["1", "3"],
        vec![
            user_record("9", Some("id9"), UserState::Deleting),
            created("1"),
            created("2"),
        ],
        Some(DeletionPolicy::Delete),
    );
    ub.status
        .as_mut()
        .unwrap()
        .tasks
        .push(record("u", Some("43"), &["8"], 0));
    ub.spec.suspend = Some(true);
    annotate(&mut ub, RETRY_FAILED_ANNOTATION, "x");
    let p = plan(&ub, at(1), LIMITS);
    assert!(p.lifecycle.suspended);
    assert!(
        p.sends.is_empty() && p.polls.is_empty() && p.deletes.is_empty() && p.checks.is_empty()
    );
    // The bookkeeping is no call: it is kept, and acted on when the pause ends.
    assert!(
        p.prepare
            .iter()
            .any(|e| matches!(e, Edit::ApproveDeletions { .. }))
    );
    ub.spec.suspend = None;
    ub.status = Some(applied(&ub, &p.prepare));
    let resumed = plan(&ub, at(2), LIMITS);
    assert_eq!(resumed.sends, vec![send(&["3"])]);
    assert_eq!(resumed.polls, vec!["43".to_string()]);
    assert_eq!(resumed.deletes, vec![op("2")]);
    assert_eq!(resumed.checks, vec![op("9")]);
}

fn deleted_ub(mut ub: UserBatch, finalizer: bool) -> UserBatch {
    ub.metadata.deletion_timestamp = Some(Time(at(5)));
    if finalizer {
        ub.metadata.finalizers = Some(vec!["other".into(), FINALIZER.into()]);
    }
    ub
}

#[test]
fn the_finalizer_goes_on_with_delete_and_off_once_everything_is_deleted() {
    let live = recorded(&["1", "2"], vec![created("1"), created("2")], None);
    assert_eq!(finalizer_step(&live), FinalizerStep::Keep);
    let mut delete = live.clone();
    delete.spec.deletion_policy = Some(DeletionPolicy::Delete);
    assert_eq!(finalizer_step(&delete), FinalizerStep::Add);
    let mut held = live.clone();
    held.metadata.finalizers = Some(vec![FINALIZER.into()]);
    assert_eq!(
        finalizer_step(&held),
        FinalizerStep::Remove(None),
        "Orphan needs none"
    );

    // Deleted with deletionPolicy Delete: every user it created is deleted, guarded.
    let going = deleted_ub(delete.clone(), true);
    assert!(lifecycle(&going).deleting);
    assert_eq!(finalizer_step(&going), FinalizerStep::Keep);
    let p = plan(&going, at(6), LIMITS);
    assert!(p.sends.is_empty());
    assert_eq!(p.deletes, vec![op("1"), op("2")]);
    assert_eq!(p.events[0].reason, EventReason::UsersDeleted);
    // Nothing left: it lets go.
    let mut done = going.clone();
    done.status.as_mut().unwrap().users.clear();
    assert_eq!(finalizer_step(&done), FinalizerStep::Remove(None));
    // Users it did not create stay, and the Event says who.
    let mut skipped = done.clone();
    skipped.status.as_mut().unwrap().users = vec![user_record("3", None, UserState::Skipped)];
    let FinalizerStep::Remove(Some(event)) = finalizer_step(&skipped) else {
        panic!("a skipped user does not hold the finalizer");
    };
    assert_eq!(event.severity, Severity::Normal);
    assert!(
        event.note.contains("1 user(s) stay in KooDrive") && event.note.contains(": 3"),
        "{}",
        event.note
    );
    // Unfinished tasks are waited for: their users may need deleting.
    let mut waiting = done.clone();
    waiting.status.as_mut().unwrap().tasks[0].result = None;
    assert_eq!(finalizer_step(&waiting), FinalizerStep::Keep);
    // A request in doubt is not waited for forever: the Event says what may remain.
    let mut doubtful = done.clone();
    doubtful
        .status
        .as_mut()
        .unwrap()
        .tasks
        .push(record("d", None, &["7"], 1));
    let FinalizerStep::Remove(Some(event)) = finalizer_step(&doubtful) else {
        panic!("an in-doubt request does not hold the finalizer");
    };
    assert!(event.note.contains("d were in doubt"), "{}", event.note);
    // Suspended: nothing happens, the finalizer stays.
    let mut paused = going.clone();
    paused.spec.suspend = Some(true);
    assert_eq!(finalizer_step(&paused), FinalizerStep::Keep);
    // A human lets it go without deleting: the Event names who stays.
    let mut orphaned = going.clone();
    annotate(&mut orphaned, ORPHAN_ON_DELETE_ANNOTATION, "true");
    assert!(!lifecycle(&orphaned).deleting);
    let FinalizerStep::Remove(Some(event)) = finalizer_step(&orphaned) else {
        panic!("orphan-on-delete releases the finalizer");
    };
    assert_eq!(
        (event.reason, event.severity),
        (EventReason::UsersOrphaned, Severity::Warning)
    );
    assert!(event.note.contains("1 (id1), 2 (id2)"), "{}", event.note);
    // Without our finalizer there is nothing to hold.
    assert_eq!(
        finalizer_step(&deleted_ub(delete, false)),
        FinalizerStep::Keep
    );
}

#[test]
fn deleting_a_large_userbatch_is_guarded_too() {
    let records: Vec<UserRecord> = ["1", "2", "3", "4"].map(created).to_vec();
    let going = deleted_ub(
        recorded(&["1", "2", "3", "4"], records, Some(DeletionPolicy::Delete)),
        true,
    );
    let p = plan(&going, at(6), LIMITS);
    assert_eq!(p.guard, Some(GuardHold { count: 4, max: 3 }));
    assert!(p.deletes.is_empty());
}

#[test]
fn new_users_wait_for_room_while_removed_ones_are_deleted() {
    // 999 removed users still to delete, 2 new ones: one too many records for the status.
    let records: Vec<UserRecord> = (0..999)
        .map(|i| {
            user_record(
                &format!("9{i:05}"),
                Some(&format!("id{i}")),
                UserState::DeletePending,
            )
        })
        .collect();
    let ub = recorded(&["1", "2"], records, Some(DeletionPolicy::Delete));
    let p = plan(&ub, at(1), LIMITS);
    assert!(p.sends.is_empty());
    assert_eq!(p.hold.as_ref().map(|b| b.reason), Some(Reason::Deleting));
    assert_eq!(p.deletes.len(), 999, "deletions go on meanwhile");
    // Deleting makes room: follow_up says so once the status has it.
    let mut after = ub.clone();
    after.status.as_mut().unwrap().users.truncate(10);
    assert!(follow_up(&after, at(2), LIMITS));
    assert!(!follow_up(
        &recorded(&["1"], vec![created("1")], None),
        at(2),
        LIMITS
    ));
}

#[test]
fn deleted_users_are_named_in_notes_that_fit_the_api_servers_limit() {
    let gone: Vec<(DeleteOp, bool)> = (0..45)
        .map(|i| {
            (
                DeleteOp {
                    phone: format!("+{:020}", i),
                    user_id: "9".repeat(64),
                },
                i == 0,
            )
        })
        .collect();
    let events = deleted_events(&gone);
    assert_eq!(events.len(), 5, "ten of the longest names fit one note");
    assert!(events[0].note.contains("already gone"));
    for event in &events {
        assert!(event.note.len() <= 1024, "{}", event.note.len());
        assert_eq!(event.reason, EventReason::UsersDeleted);
    }
    let named: usize = events.iter().map(|e| e.note.matches(" (9").count()).sum();
    assert_eq!(named, 45, "every deleted user is named");
}

#[test]
fn pauses_and_resumes_are_announced_once() {
    let paused = suspend_transition(Some("AwaitingResults"), true).unwrap();
    assert_eq!(paused.reason, EventReason::Suspended);
    assert!(suspend_transition(Some("Suspended"), true).is_none());
    let resumed = suspend_transition(Some("Suspended"), false).unwrap();
    assert_eq!(resumed.reason, EventReason::Resumed);
    assert!(suspend_transition(Some("Idle"), false).is_none());
}

#[test]
fn removed_users_without_an_outcome_yet_are_announced_as_such() {
    let mut ub = with_tasks(
        batch(&["2"], None),
        vec![record("t", Some("42"), &["1", "2"], 0)],
    );
    ub.metadata.generation = Some(2);
    let events = spec_edit_events(&ub);
    assert_eq!(events.len(), 1);
    assert!(
        events[0].note.contains("decided once KooDrive reports"),
        "{}",
        events[0].note
    );
    // Once recorded, the plan announces what happens to them instead (here: nothing, again).
    let ub = recorded(&["2"], vec![created("1"), created("2")], None);
    assert!(spec_edit_events(&ub).is_empty());
}
