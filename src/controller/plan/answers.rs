//! What follows each KooDrive answer to a create or a poll: the status edit, the Event, why
//! the pass stops, and when to come back. The at-most-once rule lives in
//! [`after_create`]'s table: only answers proving KooDrive did not act free the users.

use super::*;

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
    let records = if finished {
        user_records(task, report)
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
            records,
        }),
        event,
        blocker: None,
        stop: false,
        retry: None,
    }
}

/// Each carried user's outcome in a finished task. Deleting is irreversible, so a user is
/// recorded `Created` (the only state ever deleted) only when KooDrive's answer proves it:
/// listed without an error code, in a task whose clean entries do not outnumber its
/// `successCount` — otherwise some of them are skipped users that cannot be told apart, and
/// all of them are `Unknown`. A listed user with a code failed when the task counts
/// failures, and was skipped otherwise (as [`after_poll`] has always read failures).
pub(super) fn user_records(task: &TaskRecord, report: &TaskReport) -> Vec<UserRecord> {
    let carried: HashSet<&str> = task.phones.iter().map(String::as_str).collect();
    let mut by_phone: HashMap<&str, &koodrive_client::UserResult> = HashMap::new();
    for user in &report.users {
        if carried.contains(user.phone.as_str()) {
            by_phone.entry(user.phone.as_str()).or_insert(user);
        }
    }
    let has_code = |u: &koodrive_client::UserResult| {
        u.code.as_deref().is_some_and(|c| !c.is_empty() && c != "0")
    };
    let clean = by_phone.values().filter(|u| !has_code(u)).count() as i64;
    let provably_created = clean <= report.succeeded.max(0);
    task.phones
        .iter()
        .map(|phone| {
            let (state, user_id) = match by_phone.get(phone.as_str()) {
                None => (UserState::Unknown, None),
                Some(u) if has_code(u) && report.failed > 0 => (UserState::Failed, None),
                Some(u) if has_code(u) => (UserState::Skipped, valid_user_id(u)),
                Some(u) if provably_created => (UserState::Created, valid_user_id(u)),
                Some(_) => (UserState::Unknown, None),
            };
            UserRecord {
                phone: phone.clone(),
                user_id,
                state,
            }
        })
        .collect()
}

/// A user ID the operator can record and send in a path (`DELETE users/{userId}`) as is.
pub(super) fn valid_user_id(user: &koodrive_client::UserResult) -> Option<String> {
    user.user_id.clone().filter(|id| {
        !id.is_empty()
            && id.len() <= MAX_USER_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}
