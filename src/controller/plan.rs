//! The pure core of a reconcile: from what was observed, decide what to send and what to
//! poll, and how every answer changes the status and which Events follow. No I/O and no
//! clock (the time is an input), so every decision is a table test away.
//!
//! The at-most-once protocol (Crossplane's "create pending" guard) is expressed here as
//! edits; the executor ([`super::reconcile`]) only performs them in order:
//! 1. [`Edit::Intent`] is written, with a `resourceVersion` precondition, only when the
//!    request is about to leave (after any wait for the rate limit);
//! 2. the request is sent;
//! 3. the answer becomes [`Edit::Created`], [`Edit::NotSent`] (only for answers proving
//!    KooDrive did not act) or [`Edit::InDoubt`], written on a fresh copy until it sticks.
//!
//! An intent found without an answer is in doubt: its users are not resent until a human
//! releases them (`koodrive.io/resubmit-in-doubt`) or, with `inDoubtPolicy: Resubmit`, once
//! by the operator after a delay.

use super::status::{self, Blocker};
use crate::crd::{
    InDoubtPolicy, MAX_ANNOTATION_VALUE_LEN, MAX_CONDITION_MESSAGE_LEN, MAX_ID_LEN,
    MAX_MESSAGE_LEN, MAX_REASON_LEN, MAX_TASKS, RESUBMIT_IN_DOUBT_ANNOTATION, StalledInputs,
    TaskRecord, TaskResult, User, UserBatch, UserBatchStatus, UserFailure,
};
use crate::vocabulary::{EventAction, EventReason, Reason};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use koodrive_client::{ErrorClass, TaskReport};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// The knobs planning depends on (from the operator's settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most users per request.
    pub max_batch_size: usize,
    /// How long an in-doubt request waits before `inDoubtPolicy: Resubmit` resends it.
    pub resubmit_delay: Duration,
    /// How long a task may take to finish before it is reported overdue.
    pub results_timeout: Duration,
}

/// Whether an Event is routine or needs attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// An Event to publish about the UserBatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub severity: Severity,
    pub reason: EventReason,
    pub action: EventAction,
    pub note: String,
}

impl PlannedEvent {
    fn normal(reason: EventReason, action: EventAction, note: String) -> Self {
        Self {
            severity: Severity::Normal,
            reason,
            action,
            note,
        }
    }

    fn warning(reason: EventReason, action: EventAction, note: String) -> Self {
        Self {
            severity: Severity::Warning,
            reason,
            action,
            note,
        }
    }
}

/// One request to send: its users (by phone, in spec order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub phones: Vec<String>,
    /// The in-doubt request these users are resent for (`inDoubtPolicy: Resubmit`).
    pub resubmit_of: Option<String>,
}

/// A change to the status, applied to a fresh copy by [`apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Forget in-doubt intents, so their users are pending again; remember the annotation
    /// value that asked for it.
    ReleaseInDoubt {
        traces: Vec<String>,
        annotation: Option<String>,
    },
    /// The intent to send, recorded before sending.
    Intent(TaskRecord),
    /// KooDrive created the task.
    Created {
        trace_id: String,
        task_id: String,
        code: String,
        message: String,
        users_digest: String,
    },
    /// KooDrive provably did not act: the intent goes (its users are pending again). A
    /// permanent refusal is remembered with the inputs it was seen with.
    NotSent {
        trace_id: String,
        code: Option<String>,
        message: String,
        stalled: Option<StalledInputs>,
    },
    /// Nobody knows whether KooDrive acted: the intent stays, with what happened.
    InDoubt { trace_id: String, message: String },
    /// A task's results as KooDrive reports them.
    Results {
        task_id: String,
        result: TaskResult,
        failures: Vec<UserFailure>,
    },
}

/// Applies an edit to a status (the same edit can be applied again to a fresher copy).
pub fn apply(edit: &Edit, status: &mut UserBatchStatus) {
    match edit {
        Edit::ReleaseInDoubt { traces, annotation } => {
            status
                .tasks
                .retain(|t| t.task_id.is_some() || !traces.contains(&t.trace_id));
            if let Some(value) = annotation {
                status.resubmitted_in_doubt = Some(value.clone());
            }
        }
        Edit::Intent(record) => {
            if !status.tasks.iter().any(|t| t.trace_id == record.trace_id) {
                status.tasks.push(record.clone());
            }
        }
        Edit::Created {
            trace_id,
            task_id,
            code,
            message,
            users_digest,
        } => {
            let message = bounded(message, MAX_MESSAGE_LEN);
            if let Some(task) = status.tasks.iter_mut().find(|t| &t.trace_id == trace_id) {
                task.task_id = Some(task_id.clone());
                task.code = Some(code.clone());
                task.message = Some(message.clone());
                task.users_digest = Some(users_digest.clone());
            }
            status.task_id = Some(task_id.clone());
            status.code = Some(code.clone());
            status.message = Some(message);
            status.stalled_inputs = None;
        }
        Edit::NotSent {
            trace_id,
            code,
            message,
            stalled,
        } => {
            status.tasks.retain(|t| &t.trace_id != trace_id);
            status.code = code.clone();
            status.message = Some(bounded(message, MAX_MESSAGE_LEN));
            status.stalled_inputs = stalled.clone();
        }
        Edit::InDoubt { trace_id, message } => {
            let message = bounded(message, MAX_MESSAGE_LEN);
            if let Some(task) = status.tasks.iter_mut().find(|t| &t.trace_id == trace_id) {
                task.message = Some(message.clone());
            }
            status.message = Some(message);
        }
        Edit::Results {
            task_id,
            result,
            failures,
        } => {
            if let Some(task) = status
                .tasks
                .iter_mut()
                .find(|t| t.task_id.as_deref() == Some(task_id.as_str()))
            {
                task.result = Some(result.clone());
            }
            status::add_failures(&mut status.failures, failures.iter().cloned());
        }
    }
}

/// What one reconcile pass should do before and besides sending.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Status edits to write before any KooDrive call.
    pub prepare: Vec<Edit>,
    /// Events announcing those edits.
    pub events: Vec<PlannedEvent>,
    /// Requests to send, in order.
    pub sends: Vec<Send>,
    /// Why nothing is sent although users are pending.
    pub hold: Option<Blocker>,
    /// When in-doubt requests will be resent automatically (not yet due).
    pub resubmit_at: Option<Timestamp>,
    /// Recorded tasks to poll for results.
    pub polls: Vec<String>,
    /// Unfinished tasks older than the results timeout.
    pub overdue: usize,
}

/// Decides what this pass does. Whether an earlier permanent refusal still holds is decided
/// separately ([`held_by_refusal`]), once the inputs it depended on have been read.
pub fn plan(ub: &UserBatch, now: Timestamp, limits: Limits) -> Plan {
    let mut status = ub.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let policy = ub.spec.in_doubt_policy.unwrap_or_default();

    // A human asked to release what is in doubt.
    if let Some(value) = new_annotation_value(ub, status.resubmitted_in_doubt.as_deref()) {
        let traces: Vec<String> = status::in_doubt(&status.tasks)
            .iter()
            .map(|t| t.trace_id.clone())
            .collect();
        if !traces.is_empty() {
            plan.events.push(PlannedEvent::normal(
                EventReason::ResubmittingInDoubt,
                EventAction::Resubmit,
                format!(
                    "{RESUBMIT_IN_DOUBT_ANNOTATION} changed: the users of request(s) {} will be sent again",
                    traces.join(", ")
                ),
            ));
        }
        let edit = Edit::ReleaseInDoubt {
            traces,
            annotation: Some(value),
        };
        apply(&edit, &mut status);
        plan.prepare.push(edit);
    }

    // The operator's own resubmission of what is in doubt (once per request, after a delay).
    let mut resends = Vec::new();
    if policy == InDoubtPolicy::Resubmit {
        let mut due = Vec::new();
        for record in status::in_doubt(&status.tasks) {
            if record.resubmit_of.is_some() {
                // Already the resend of an in-doubt request: a human decides now.
                continue;
            }
            let at = resubmit_time(record, limits.resubmit_delay);
            if at <= now {
                due.push(record.clone());
            } else {
                plan.resubmit_at = Some(plan.resubmit_at.map_or(at, |t: Timestamp| t.min(at)));
            }
        }
        if !due.is_empty() {
            let traces: Vec<String> = due.iter().map(|t| t.trace_id.clone()).collect();
            plan.events.push(PlannedEvent::normal(
                EventReason::ResubmittingInDoubt,
                EventAction::Resubmit,
                format!(
                    "inDoubtPolicy is Resubmit: the users of request(s) {} are sent once more; KooDrive skips any it already registered",
                    traces.join(", ")
                ),
            ));
            let edit = Edit::ReleaseInDoubt {
                traces,
                annotation: None,
            };
            apply(&edit, &mut status);
            plan.prepare.push(edit);
            resends = due;
        }
    }

    plan.polls = status::unfinished(&status.tasks)
        .filter_map(|t| t.task_id.clone())
        .collect();
    plan.overdue = status::unfinished(&status.tasks)
        .filter(|t| {
            t.submitted_at
                .0
                .saturating_add(limits.results_timeout)
                .unwrap_or(now)
                < now
        })
        .count();

    // Nothing is sent while a request's fate is unknown (the condition explains why).
    if !status::in_doubt(&status.tasks).is_empty() {
        return plan;
    }
    let pending = status::pending_users(&ub.spec.users, &status.tasks);
    if pending.is_empty() {
        return plan;
    }
    // The status holds at most MAX_TASKS task records: larger requests when few slots are
    // left, so a small --max-batch-size can never make the status outgrow its schema.
    let slots = MAX_TASKS.saturating_sub(status.tasks.len());
    if slots == 0 {
        plan.hold = Some(Blocker::new(
            Reason::InvalidSpec,
            format!(
                "the status already holds {MAX_TASKS} task records, the most it can; provision the remaining users in a new UserBatch"
            ),
        ));
        return plan;
    }
    let batch_size = limits
        .max_batch_size
        .max(pending.len().div_ceil(slots))
        .clamp(1, koodrive_client::MAX_USERS_PER_REQUEST);
    // Resent users go in requests of their own, naming the request they resend.
    let mut resent = std::collections::HashSet::new();
    for record in &resends {
        let phones: Vec<String> = pending
            .iter()
            .filter(|u| record.phones.contains(&u.phone))
            .map(|u| u.phone.clone())
            .collect();
        for chunk in phones.chunks(batch_size) {
            resent.extend(chunk.iter().cloned());
            plan.sends.push(Send {
                phones: chunk.to_vec(),
                resubmit_of: Some(record.trace_id.clone()),
            });
        }
    }
    let fresh: Vec<String> = pending
        .iter()
        .filter(|u| !resent.contains(&u.phone))
        .map(|u| u.phone.clone())
        .collect();
    for chunk in fresh.chunks(batch_size) {
        plan.sends.push(Send {
            phones: chunk.to_vec(),
            resubmit_of: None,
        });
    }
    plan
}

/// A permanent refusal stays put until something it depended on changes: the refusal, if
/// the inputs (`inputs_digest`, see [`inputs_digest`]) are those it was seen with.
pub fn held_by_refusal(status: &UserBatchStatus, inputs_digest: &str) -> Option<Blocker> {
    let stalled = status.stalled_inputs.as_ref()?;
    if stalled.digest != inputs_digest {
        return None;
    }
    let reason = Reason::parse(&stalled.reason)?;
    Some(Blocker::new(
        reason,
        status
            .message
            .clone()
            .unwrap_or_else(|| "KooDrive refused the request".into()),
    ))
}

/// When an in-doubt request is resent under `inDoubtPolicy: Resubmit`.
pub fn resubmit_time(record: &TaskRecord, delay: Duration) -> Timestamp {
    record
        .submitted_at
        .0
        .saturating_add(delay)
        .unwrap_or(record.submitted_at.0)
}

/// The annotation value asking to release in-doubt requests, if it is new. Values longer
/// than the status can hold are compared (and remembered) by digest.
fn new_annotation_value(ub: &UserBatch, acted_on: Option<&str>) -> Option<String> {
    let value = ub
        .metadata
        .annotations
        .as_ref()?
        .get(RESUBMIT_IN_DOUBT_ANNOTATION)?;
    if value.is_empty() {
        return None;
    }
    let remembered = remembered_value(value);
    (acted_on != Some(remembered.as_str())).then_some(remembered)
}

/// How an annotation value is remembered in status: as is, or as `sha256:<hex>` when it is
/// longer than the status field allows.
pub fn remembered_value(value: &str) -> String {
    if value.len() <= MAX_ANNOTATION_VALUE_LEN {
        value.to_string()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
    }
}

/// The intent record for a request about to be sent.
pub fn intent(send: &Send, trace_id: &str, now: Timestamp) -> TaskRecord {
    TaskRecord {
        task_id: None,
        code: None,
        message: None,
        trace_id: trace_id.to_string(),
        submitted_at: Time(now),
        phones: send.phones.clone(),
        result: None,
        resubmit_of: send.resubmit_of.clone(),
        users_digest: None,
    }
}

/// A failed KooDrive call as planning sees it: its class and what to tell people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub code: Option<String>,
    /// Deterministic and secret-free (see `koodrive_client::Error::message`).
    pub message: String,
}

impl From<&koodrive_client::Error> for Failure {
    fn from(err: &koodrive_client::Error) -> Failure {
        Failure {
            class: err.class(),
            code: err.code().map(|c| bounded(c, MAX_ID_LEN)),
            message: bounded(&err.message(), MAX_CONDITION_MESSAGE_LEN),
        }
    }
}

/// What follows a KooDrive answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The status edit recording the answer.
    pub edit: Option<Edit>,
    pub event: Option<PlannedEvent>,
    /// Why the pass stops progressing.
    pub blocker: Option<Blocker>,
    /// Stop sending further requests in this pass.
    pub stop: bool,
    /// Retry the UserBatch later with backoff, no sooner than this.
    pub retry: Option<Option<Duration>>,
}

/// The answer to a create, for planning.
pub type CreateOutcome = Result<koodrive_client::CreatedTask, Failure>;

/// How the answer to a create changes things. `users_digest` fingerprints the users as
/// sent; `inputs_digest` what a permanent refusal depends on.
pub fn after_create(
    send: &Send,
    trace_id: &str,
    outcome: &CreateOutcome,
    users_digest: &str,
    inputs_digest: &str,
) -> Transition {
    let users = send.phones.len();
    let failure = match outcome {
        Ok(created) => {
            return Transition {
                edit: Some(Edit::Created {
                    trace_id: trace_id.to_string(),
                    task_id: bounded(&created.task_id, MAX_ID_LEN),
                    code: bounded(&created.code, MAX_ID_LEN),
                    message: bounded(&created.message, MAX_MESSAGE_LEN),
                    users_digest: users_digest.to_string(),
                }),
                event: Some(PlannedEvent::normal(
                    EventReason::TaskCreated,
                    EventAction::Submit,
                    format!(
                        "Submitted {users} user(s) to KooDrive: task {} (X-Traceid {trace_id})",
                        created.task_id
                    ),
                )),
                blocker: None,
                stop: false,
                retry: None,
            };
        }
        Err(failure) => failure,
    };
    let not_sent = |stalled: Option<Reason>| {
        Some(Edit::NotSent {
            trace_id: trace_id.to_string(),
            code: failure.code.clone(),
            message: failure.message.clone(),
            stalled: stalled.map(|reason| StalledInputs {
                reason: reason.to_string(),
                digest: inputs_digest.to_string(),
            }),
        })
    };
    let (edit, reason, retry) = match failure.class {
        ErrorClass::Transient { retry_after } => (
            not_sent(None),
            Reason::KooDriveUnavailable,
            Some(retry_after),
        ),
        ErrorClass::ClockSkew => (not_sent(None), Reason::ClockSkew, Some(None)),
        ErrorClass::Authentication => (
            not_sent(Some(Reason::CredentialsInvalid)),
            Reason::CredentialsInvalid,
            None,
        ),
        ErrorClass::Rejected => (
            not_sent(Some(Reason::KooDriveRejected)),
            Reason::KooDriveRejected,
            None,
        ),
        ErrorClass::Invalid => (
            not_sent(Some(Reason::InvalidSpec)),
            Reason::InvalidSpec,
            None,
        ),
        ErrorClass::InDoubt => (
            Some(Edit::InDoubt {
                trace_id: trace_id.to_string(),
                message: failure.message.clone(),
            }),
            Reason::SubmissionInDoubt,
            None,
        ),
    };
    // An in-doubt request is explained by the in-doubt verdict, computed from the tasks.
    let blocker = (failure.class != ErrorClass::InDoubt)
        .then(|| Blocker::new(reason, failure.message.clone()));
    Transition {
        edit,
        event: EventReason::from_condition(reason).map(|reason| {
            PlannedEvent::warning(
                reason,
                EventAction::Submit,
                format!(
                    "{} (X-Traceid {trace_id}, {users} user(s))",
                    failure.message
                ),
            )
        }),
        blocker,
        stop: true,
        retry,
    }
}

/// The answer to a poll, for planning.
pub type PollOutcome = Result<TaskReport, Failure>;

/// How the answer to a poll of `task` changes things.
pub fn after_poll(task: &TaskRecord, outcome: &PollOutcome) -> Transition {
    let task_id = task.task_id.clone().unwrap_or_default();
    let report = match outcome {
        Ok(report) => report,
        Err(failure) => {
            let (reason, retry) = match failure.class {
                ErrorClass::Authentication => (Reason::CredentialsInvalid, None),
                ErrorClass::ClockSkew => (Reason::ClockSkew, Some(None)),
                // A failed read changed nothing in KooDrive: read again later.
                ErrorClass::Transient { retry_after } => {
                    (Reason::KooDriveUnavailable, Some(retry_after))
                }
                _ => (Reason::KooDriveUnavailable, Some(None)),
            };
            return Transition {
                edit: None,
                event: None,
                blocker: Some(Blocker::new(reason, failure.message.clone())),
                stop: true,
                retry,
            };
        }
    };
    let finished = report.is_finished();
    let result = TaskResult {
        total: report.total.max(0),
        succeeded: report.succeeded.max(0),
        failed: report.failed.max(0),
        skipped: report.skipped.max(0),
        finished,
    };
    // Only phones this task carried count: whatever else KooDrive reports is not ours.
    // Skipped users may carry a code too; only a task that counts failures has any.
    let carried: std::collections::HashSet<&str> = task.phones.iter().map(String::as_str).collect();
    let failures: Vec<UserFailure> = if finished && report.failed > 0 {
        report
            .users
            .iter()
            .filter(|u| carried.contains(u.phone.as_str()))
            .filter(|u| u.code.as_deref().is_some_and(|c| !c.is_empty() && c != "0"))
            .map(|u| UserFailure {
                phone: bounded(&u.phone, MAX_ID_LEN),
                code: u.code.as_deref().map(|c| bounded(c, MAX_ID_LEN)),
                reason: u.reason.as_deref().map(|r| bounded(r, MAX_REASON_LEN)),
            })
            .collect()
    } else {
        Vec::new()
    };
    let event = finished.then(|| {
        let note = format!(
            "KooDrive task {task_id} finished: {} succeeded, {} failed, {} skipped",
            result.succeeded, result.failed, result.skipped
        );
        if result.failed > 0 {
            PlannedEvent::warning(EventReason::TaskFinished, EventAction::PollResults, note)
        } else {
            PlannedEvent::normal(EventReason::TaskFinished, EventAction::PollResults, note)
        }
    });
    Transition {
        edit: Some(Edit::Results {
            task_id,
            result,
            failures,
        }),
        event,
        blocker: None,
        stop: false,
        retry: None,
    }
}

/// Events about the spec itself, for a new generation: inline passwords, and users removed
/// or edited after they were sent (KooDrive cannot undo or update them; the operator says so
/// instead of acting).
pub fn spec_edit_events(ub: &UserBatch) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    if ub.spec.users.iter().any(|u| u.password.is_some()) {
        events.push(PlannedEvent::warning(
            EventReason::InlinePassword,
            EventAction::Reconcile,
            "spec.users[].password holds passwords in plain text in the UserBatch; use passwordSecretRef instead".into(),
        ));
    }
    let Some(status) = ub.status.as_ref() else {
        return events;
    };
    let removed = status::removed_phones(&ub.spec.users, &status.tasks);
    if !removed.is_empty() {
        events.push(PlannedEvent::normal(
            EventReason::UsersRemoved,
            EventAction::Reconcile,
            format!(
                "{} user(s) were removed from spec.users after submission ({}); KooDrive has no deprovisioning call, so they stay provisioned",
                removed.len(),
                abbreviate(&removed, 10)
            ),
        ));
    }
    let changed = changed_after_submission(ub, status);
    if !changed.is_empty() {
        events.push(PlannedEvent::normal(
            EventReason::UsersChangedAfterSubmission,
            EventAction::Reconcile,
            format!(
                "{} submitted user(s) were edited ({}); changes are not sent to KooDrive, users are never resent",
                changed.len(),
                abbreviate(&changed, 10)
            ),
        ));
    }
    events
}

/// The Event announcing a new Ready state, for the states not announced where they arise:
/// completion, and problems only a human or another system can fix.
pub fn ready_transition(
    previous: Option<(&str, &str)>,
    next: (bool, Reason, &str),
) -> Option<PlannedEvent> {
    let (ready, reason, message) = next;
    let status = if ready { "True" } else { "False" };
    if previous == Some((status, reason.as_str())) {
        return None;
    }
    if ready {
        return Some(PlannedEvent::normal(
            EventReason::Ready,
            EventAction::Reconcile,
            message.to_string(),
        ));
    }
    let announced_here = [
        Reason::CredentialsNotFound,
        Reason::PasswordNotFound,
        Reason::InvalidSpec,
        Reason::EndpointNotAllowed,
        Reason::PermissionDenied,
        Reason::UsersFailed,
        Reason::ResultsOverdue,
        // AccountNotReady is not: the account announces its own problem, once.
        Reason::AccountNotFound,
        Reason::AccountNotAllowed,
    ];
    if !announced_here.contains(&reason) {
        return None;
    }
    EventReason::from_condition(reason)
        .map(|r| PlannedEvent::warning(r, EventAction::Reconcile, message.to_string()))
}

/// Fingerprint of what a permanent failure depended on: the spec, the endpoint and the
/// versions of the Secrets read.
pub fn inputs_digest(generation: Option<i64>, endpoint: &str, secret_versions: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(generation.unwrap_or_default().to_le_bytes());
    hasher.update(endpoint.as_bytes());
    hasher.update([0]);
    hasher.update(secret_versions.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// Hex characters of one user's fingerprint in `TaskRecord::users_digest`.
const USER_DIGEST_LEN: usize = 8;

/// One user's fingerprint: a short hash of the non-secret fields as sent. Passwords are
/// represented only by where they come from, so it reveals nothing about them; 32 bits are
/// plenty to notice an edit.
fn user_digest(user: &User) -> String {
    let mut hasher = Sha256::new();
    let password_source = match (&user.password, &user.password_secret_ref) {
        (Some(_), _) => "inline".to_string(),
        (None, Some(r)) => format!("secret:{}/{}", r.name, r.key),
        (None, None) => String::new(),
    };
    for field in [
        user.phone.as_str(),
        user.firstname.as_str(),
        user.surname.as_deref().unwrap_or(""),
        user.email.as_deref().unwrap_or(""),
        password_source.as_str(),
    ] {
        hasher.update(field.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..USER_DIGEST_LEN / 2])
}

/// The fingerprints of a request's users, concatenated in `phones` order.
pub fn users_digest(users: &[User], phones: &[String]) -> String {
    let by_phone: HashMap<&str, &User> = users.iter().map(|u| (u.phone.as_str(), u)).collect();
    phones
        .iter()
        .filter_map(|p| by_phone.get(p.as_str()))
        .map(|u| user_digest(u))
        .collect()
}

/// Phones of submitted users whose fields changed since they were sent.
fn changed_after_submission(ub: &UserBatch, status: &UserBatchStatus) -> Vec<String> {
    let by_phone: HashMap<&str, &User> = ub
        .spec
        .users
        .iter()
        .map(|u| (u.phone.as_str(), u))
        .collect();
    let mut changed = Vec::new();
    for task in status.tasks.iter().filter(|t| t.task_id.is_some()) {
        let Some(recorded) = &task.users_digest else {
            continue;
        };
        for (i, phone) in task.phones.iter().enumerate() {
            let sent = recorded.get(i * USER_DIGEST_LEN..(i + 1) * USER_DIGEST_LEN);
            if let (Some(sent), Some(user)) = (sent, by_phone.get(phone.as_str()))
                && user_digest(user) != sent
            {
                changed.push(phone.clone());
            }
        }
    }
    changed
}

fn abbreviate(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!(
            "{}, … and {} more",
            items[..max].join(", "),
            items.len() - max
        )
    }
}

/// A copy of `text` that fits a schema bound of `max` bytes, cut on a character boundary.
pub fn bounded(text: &str, max: usize) -> String {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

#[cfg(test)]
mod tests;
