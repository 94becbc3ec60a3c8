//! What a UserBatch's status should say, computed from what was observed. Pure functions: no
//! I/O, no clock, so every message is deterministic and an unchanged situation is never
//! rewritten.

use super::conditions::Desired;
use crate::crd::{
    MAX_FAILURES, Phase, RESUBMIT_IN_DOUBT_ANNOTATION, RETRY_FAILED_ANNOTATION, Summary,
    TaskRecord, User, UserFailure, UserRecord, UserState,
};
use crate::vocabulary::{ConditionType, Reason};
use std::collections::{HashMap, HashSet};

/// Why the operator cannot (yet) reach Ready, besides plain work in progress: a reason from
/// the vocabulary and a message a human can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub reason: Reason,
    pub message: String,
}

impl Blocker {
    pub fn new(reason: Reason, message: impl Into<String>) -> Blocker {
        Blocker {
            reason,
            message: message.into(),
        }
    }
}

/// Phones already carried by a request (recorded, or in flight / in doubt).
pub fn claimed_phones(tasks: &[TaskRecord]) -> HashSet<&str> {
    tasks
        .iter()
        .flat_map(|t| t.phones.iter().map(String::as_str))
        .collect()
}

/// Users in the spec that no request has carried yet, in spec order.
pub fn pending_users<'a>(users: &'a [User], tasks: &[TaskRecord]) -> Vec<&'a User> {
    let claimed = claimed_phones(tasks);
    users
        .iter()
        .filter(|u| !claimed.contains(u.phone.as_str()))
        .collect()
}

/// Requests written as intent but never completed: sent (or about to be) with no recorded answer.
pub fn in_doubt(tasks: &[TaskRecord]) -> Vec<&TaskRecord> {
    tasks.iter().filter(|t| t.task_id.is_none()).collect()
}

/// Recorded tasks whose results are not all in.
pub fn unfinished(tasks: &[TaskRecord]) -> impl Iterator<Item = &TaskRecord> {
    tasks
        .iter()
        .filter(|t| t.task_id.is_some() && !t.result.as_ref().is_some_and(|r| r.finished))
}

/// Tasks that finished before the operator recorded per-user results: their users are
/// counted from the task's own counts.
fn legacy(tasks: &[TaskRecord]) -> impl Iterator<Item = &TaskRecord> {
    tasks.iter().filter(|t| {
        t.task_id.is_some() && !t.users_recorded && t.result.as_ref().is_some_and(|r| r.finished)
    })
}

/// Phones that were submitted but are no longer in the spec.
pub fn removed_phones(users: &[User], tasks: &[TaskRecord]) -> Vec<String> {
    let wanted: HashSet<&str> = users.iter().map(|u| u.phone.as_str()).collect();
    let mut removed: Vec<String> = claimed_phones(tasks)
        .into_iter()
        .filter(|p| !wanted.contains(p))
        .map(str::to_string)
        .collect();
    removed.sort();
    removed
}

/// The per-user record of `phone`, if any.
pub fn record<'a>(records: &'a [UserRecord], phone: &str) -> Option<&'a UserRecord> {
    records.iter().find(|r| r.phone == phone)
}

/// Whether a record is a user this UserBatch may delete: one it created, with a user ID.
pub fn deletable(record: &UserRecord) -> bool {
    record.state == UserState::Created && record.user_id.is_some()
}

pub fn summary(users: &[User], tasks: &[TaskRecord]) -> Summary {
    summary_of(users, tasks, &[])
}

/// The counts over the users in the spec: submitted by a recorded task, and each user's
/// outcome as recorded (plus the counts of tasks that predate per-user records).
pub fn summary_of(users: &[User], tasks: &[TaskRecord], records: &[UserRecord]) -> Summary {
    let submitted: HashSet<&str> = tasks
        .iter()
        .filter(|t| t.task_id.is_some())
        .flat_map(|t| t.phones.iter().map(String::as_str))
        .chain(records.iter().map(|r| r.phone.as_str()))
        .collect();
    let mut summary = Summary {
        requested: users.len() as i64,
        submitted: users
            .iter()
            .filter(|u| submitted.contains(u.phone.as_str()))
            .count() as i64,
        ..Summary::default()
    };
    let by_phone: HashMap<&str, UserState> = records
        .iter()
        .map(|r| (r.phone.as_str(), r.state))
        .collect();
    for user in users {
        match by_phone.get(user.phone.as_str()) {
            Some(UserState::Created | UserState::DeletePending | UserState::Deleting) => {
                summary.succeeded += 1
            }
            Some(UserState::Skipped) => summary.skipped += 1,
            Some(UserState::Failed) => summary.failed += 1,
            Some(UserState::Unknown) | None => {}
        }
    }
    for result in legacy(tasks).filter_map(|t| t.result.as_ref()) {
        summary.succeeded += result.succeeded;
        summary.failed += result.failed;
        summary.skipped += result.skipped;
    }
    summary
}

/// Users in the spec that failed in KooDrive and were not sent again: recorded as failed,
/// or (for tasks that predate per-user records) listed in `status.failures`.
pub fn failed_phones<'a>(
    users: &'a [User],
    records: &[UserRecord],
    failures: &[UserFailure],
) -> Vec<&'a str> {
    let states: HashMap<&str, UserState> = records
        .iter()
        .map(|r| (r.phone.as_str(), r.state))
        .collect();
    let listed: HashSet<&str> = failures.iter().map(|f| f.phone.as_str()).collect();
    users
        .iter()
        .map(|u| u.phone.as_str())
        .filter(|phone| match states.get(phone) {
            Some(state) => *state == UserState::Failed,
            None => listed.contains(phone),
        })
        .collect()
}

/// The deletion guard holding a change back: how many users it would delete, and the most
/// one change may delete without confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardHold {
    pub count: usize,
    pub max: usize,
}

/// What the lifecycle settings say about deletions and pauses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// `deletionPolicy: Delete`: users removed from the spec are deleted in KooDrive.
    pub delete_removed: bool,
    /// The UserBatch is being deleted and its users with it (finalizer held).
    pub deleting: bool,
    /// `spec.suspend`: no KooDrive call is made.
    pub suspended: bool,
    /// The deletion guard holds a change back.
    pub guard: Option<GuardHold>,
}

/// What was observed, beyond the spec and the recorded tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed<'a> {
    /// What keeps the operator from progressing, if anything.
    pub blocker: Option<&'a Blocker>,
    /// In-doubt requests will be resent automatically (`inDoubtPolicy: Resubmit`), at this
    /// time (RFC 3339), instead of waiting for a human.
    pub resubmit_at: Option<&'a str>,
    /// Recorded tasks whose results did not add up within the allowed time.
    pub overdue_tasks: usize,
    /// Per-user records (`status.users`).
    pub records: &'a [UserRecord],
    pub lifecycle: Lifecycle,
}

/// The Ready verdict: done, working on it, or waiting for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    Working { reason: Reason, message: String },
    Stalled { reason: Reason, message: String },
}

impl Verdict {
    fn of(reason: Reason, message: String) -> Verdict {
        if reason.is_stalled() {
            Verdict::Stalled { reason, message }
        } else {
            Verdict::Working { reason, message }
        }
    }
}

/// What the status should say about what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub phase: Phase,
    pub verdict: Verdict,
    pub conditions: Vec<Desired>,
    pub summary: Summary,
}

/// Users to delete in KooDrive that are not yet approved by the deletion guard: users this
/// UserBatch created that left the spec (`deletionPolicy: Delete`), or all of them while the
/// UserBatch is being deleted.
pub fn deletion_candidates<'a>(
    users: &[User],
    records: &'a [UserRecord],
    lifecycle: Lifecycle,
) -> Vec<&'a UserRecord> {
    if !lifecycle.delete_removed && !lifecycle.deleting {
        return Vec::new();
    }
    let wanted: HashSet<&str> = users.iter().map(|u| u.phone.as_str()).collect();
    records
        .iter()
        .filter(|r| deletable(r))
        .filter(|r| lifecycle.deleting || !wanted.contains(r.phone.as_str()))
        .collect()
}

/// `phone (userId)` for each record, for messages and Events.
pub fn named(records: &[&UserRecord], max: usize) -> String {
    let names: Vec<String> = records
        .iter()
        .map(|r| match &r.user_id {
            Some(id) => format!("{} ({id})", r.phone),
            None => r.phone.clone(),
        })
        .collect();
    abbreviate(&names, max)
}

/// At most `max` items, then how many more.
pub fn abbreviate(items: &[String], max: usize) -> String {
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

/// The phase, conditions and summary for what was observed.
pub fn assess(
    users: &[User],
    tasks: &[TaskRecord],
    failures: &[UserFailure],
    observed: Observed<'_>,
) -> Assessment {
    let total = users.len();
    let records = observed.records;
    let lifecycle = observed.lifecycle;
    let summary = summary_of(users, tasks, records);
    let submitted = summary.submitted as usize;
    let recorded_tasks = tasks.iter().filter(|t| t.task_id.is_some()).count();
    let doubtful = in_doubt(tasks);
    let unfinished = unfinished(tasks).count();
    let all_submitted = submitted == total;
    let failed = failed_phones(users, records, failures);
    // Tasks that predate per-user records only have counts.
    let failed_count = (failed.len() as i64).max(summary.failed);
    let deletions_in_doubt: Vec<&UserRecord> = records
        .iter()
        .filter(|r| r.state == UserState::Deleting)
        .collect();
    let to_delete = records
        .iter()
        .filter(|r| r.state == UserState::DeletePending)
        .count()
        + deletion_candidates(users, records, lifecycle).len();

    let submitted_condition = if all_submitted {
        Desired::new(
            ConditionType::Submitted,
            true,
            Reason::AllSubmitted,
            format!("{total} of {total} users submitted in {recorded_tasks} task(s)"),
        )
    } else {
        Desired::new(
            ConditionType::Submitted,
            false,
            Reason::UsersPending,
            format!("{submitted} of {total} users submitted"),
        )
    };

    let verdict = if !doubtful.is_empty() {
        in_doubt_verdict(&doubtful, observed.resubmit_at)
    } else if let Some(blocker) = observed.blocker {
        let message = if lifecycle.deleting {
            // A UserBatch held by its finalizer must never hang unexplained.
            format!(
                "{}; the UserBatch is being deleted and keeps its finalizer until its users are deleted in KooDrive: annotate {}=true to let it go without deleting them",
                blocker.message,
                crate::crd::ORPHAN_ON_DELETE_ANNOTATION
            )
        } else {
            blocker.message.clone()
        };
        Verdict::of(blocker.reason, message)
    } else if let Some(guard) = lifecycle.guard {
        Verdict::Stalled {
            reason: Reason::DeletionGuard,
            message: guard_message(guard, lifecycle.deleting),
        }
    } else if !deletions_in_doubt.is_empty() {
        Verdict::Stalled {
            reason: Reason::DeletionInDoubt,
            message: format!(
                "{} user(s) may or may not have been deleted: a DELETE was sent but no answer was recorded, and KooDrive has not confirmed them gone: {}. The operator does not send a DELETE twice on its own; it checks again with GET users/{{userId}} every poll interval. Check in KooDrive, then annotate {RESUBMIT_IN_DOUBT_ANNOTATION}=<new value> to send the DELETE again",
                deletions_in_doubt.len(),
                named(&deletions_in_doubt, 10)
            ),
        }
    } else if lifecycle.deleting {
        let waiting = if unfinished > 0 {
            format!("; waiting for KooDrive to finish {unfinished} task(s) first")
        } else {
            String::new()
        };
        Verdict::Working {
            reason: Reason::Deleting,
            message: format!(
                "The UserBatch is being deleted (deletionPolicy Delete): {to_delete} user(s) left to delete in KooDrive{waiting}; annotate {}=true to let it go without deleting them",
                crate::crd::ORPHAN_ON_DELETE_ANNOTATION
            ),
        }
    } else if to_delete > 0 {
        Verdict::Working {
            reason: Reason::Deleting,
            message: format!(
                "Deleting {to_delete} user(s) removed from spec.users in KooDrive (deletionPolicy Delete)"
            ),
        }
    } else if !all_submitted {
        Verdict::Working {
            reason: Reason::Submitting,
            message: format!(
                "{submitted} of {total} users submitted; {} pending",
                total - submitted
            ),
        }
    } else if observed.overdue_tasks > 0 {
        Verdict::Stalled {
            reason: Reason::ResultsOverdue,
            message: format!(
                "KooDrive has not finished {} task(s) within the allowed time (see status.tasks[].result); the operator now checks them only rarely. Check the tasks with `koodrive-operator task <taskId>` or Huawei support",
                observed.overdue_tasks
            ),
        }
    } else if unfinished > 0 {
        Verdict::Working {
            reason: Reason::AwaitingResults,
            message: format!(
                "{total} users submitted in {recorded_tasks} task(s); waiting for KooDrive to finish {unfinished} task(s)"
            ),
        }
    } else if failed_count > 0 {
        let phones: Vec<String> = failed.iter().map(|p| p.to_string()).collect();
        let which = if phones.is_empty() {
            String::new()
        } else {
            format!("{}; ", abbreviate(&phones, 10))
        };
        Verdict::Stalled {
            reason: Reason::UsersFailed,
            message: format!(
                "{failed_count} of {total} users failed in KooDrive ({which}see status.failures). Fix the cause, then annotate {RETRY_FAILED_ANNOTATION}=<new value> to send them again once, or remove them from spec.users"
            ),
        }
    } else {
        Verdict::Ready
    };

    let (phase, mut ready, mut reconciling, mut stalled) = match &verdict {
        Verdict::Ready => (
            Phase::Completed,
            Desired::new(
                ConditionType::Ready,
                true,
                Reason::Ready,
                format!(
                    "{total} users provisioned in {recorded_tasks} task(s): {} succeeded, {} skipped (already registered)",
                    summary.succeeded, summary.skipped
                ),
            ),
            Desired::new(
                ConditionType::Reconciling,
                false,
                Reason::Idle,
                "No work in progress",
            ),
            Desired::new(ConditionType::Stalled, false, Reason::NotStalled, ""),
        ),
        Verdict::Stalled { reason, message } => (
            Phase::Failed,
            Desired::new(ConditionType::Ready, false, *reason, message.clone()),
            Desired::new(
                ConditionType::Reconciling,
                false,
                Reason::Idle,
                "Waiting for a human",
            ),
            Desired::new(ConditionType::Stalled, true, *reason, message.clone()),
        ),
        Verdict::Working { reason, message } => {
            let phase = if all_submitted {
                Phase::Submitted
            } else if tasks.is_empty() {
                Phase::Pending
            } else {
                Phase::Submitting
            };
            (
                phase,
                Desired::new(ConditionType::Ready, false, *reason, message.clone()),
                Desired::new(ConditionType::Reconciling, true, *reason, message.clone()),
                Desired::new(ConditionType::Stalled, false, Reason::NotStalled, ""),
            )
        }
    };
    // A pause is a human's choice, not a failure and not progress (Flux's `suspend`,
    // Crossplane's `ReconcilePaused`): Reconciling and Stalled are False, and Ready keeps
    // True only for a UserBatch with nothing left to do.
    let verdict = if lifecycle.suspended {
        reconciling = Desired::new(
            ConditionType::Reconciling,
            false,
            Reason::Suspended,
            SUSPENDED_MESSAGE,
        );
        stalled = Desired::new(ConditionType::Stalled, false, Reason::NotStalled, "");
        match verdict {
            Verdict::Ready => Verdict::Ready,
            Verdict::Working { message, .. } | Verdict::Stalled { message, .. } => {
                let message = format!("{SUSPENDED_MESSAGE}. Meanwhile: {message}");
                ready = Desired::new(
                    ConditionType::Ready,
                    false,
                    Reason::Suspended,
                    message.clone(),
                );
                Verdict::Working {
                    reason: Reason::Suspended,
                    message,
                }
            }
        }
    } else {
        verdict
    };
    Assessment {
        phase,
        verdict,
        conditions: vec![ready, submitted_condition, reconciling, stalled],
        summary,
    }
}

/// The Reconciling message of a suspended UserBatch.
pub const SUSPENDED_MESSAGE: &str = "spec.suspend is true: the operator makes no KooDrive call for this UserBatch (nothing is sent, polled or deleted) until it is false";

fn guard_message(guard: GuardHold, deleting: bool) -> String {
    let what = if deleting {
        "Deleting the UserBatch would delete"
    } else {
        "This change would delete"
    };
    format!(
        "{what} {} user(s) in KooDrive, more than the operator deletes without confirmation (--max-deletions {}): nothing is deleted. If that is intended, annotate {}={}; otherwise restore spec.users{}",
        guard.count,
        guard.max,
        crate::crd::CONFIRM_DELETIONS_ANNOTATION,
        guard.count,
        if deleting {
            format!(
                " or annotate {}=true to let the UserBatch go without deleting anyone",
                crate::crd::ORPHAN_ON_DELETE_ANNOTATION
            )
        } else {
            " or set deletionPolicy: Orphan".to_string()
        }
    )
}

fn in_doubt_verdict(doubtful: &[&TaskRecord], resubmit_at: Option<&str>) -> Verdict {
    let phones: usize = doubtful.iter().map(|t| t.phones.len()).sum();
    let traces: Vec<&str> = doubtful.iter().map(|t| t.trace_id.as_str()).collect();
    let sent = format!(
        "{phones} user(s) were sent to KooDrive but no answer was recorded (X-Traceid {})",
        traces.join(", ")
    );
    match resubmit_at {
        Some(at) => Verdict::Working {
            reason: Reason::SubmissionInDoubt,
            message: format!(
                "{sent}; inDoubtPolicy is Resubmit, so they will be sent once more at {at} (KooDrive skips users it already registered)"
            ),
        },
        None => Verdict::Stalled {
            reason: Reason::SubmissionInDoubt,
            message: format!(
                "{sent}; KooDrive may have provisioned them, so they are not resent automatically. \
                 Check with KooDrive, then annotate {RESUBMIT_IN_DOUBT_ANNOTATION}=<new value> to send them again"
            ),
        },
    }
}

/// Adds failures to `into` (deduplicated by phone, at most [`MAX_FAILURES`] kept).
pub fn add_failures(into: &mut Vec<UserFailure>, new: impl IntoIterator<Item = UserFailure>) {
    for failure in new {
        if into.len() >= MAX_FAILURES {
            break;
        }
        if !into.iter().any(|f| f.phone == failure.phone) {
            into.push(failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TaskResult;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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

    fn task(id: Option<&str>, phones: &[&str], result: Option<TaskResult>) -> TaskRecord {
        TaskRecord {
            task_id: id.map(str::to_string),
            code: id.map(|_| "0".to_string()),
            message: None,
            trace_id: format!("trace-{}", phones.join("-")),
            submitted_at: Time(jiff::Timestamp::UNIX_EPOCH),
            phones: phones.iter().map(|p| p.to_string()).collect(),
            result,
            resubmit_of: None,
            users_digest: None,
            users_recorded: false,
        }
    }

    fn finished(total: i64, failed: i64) -> Option<TaskResult> {
        Some(TaskResult {
            total,
            succeeded: total - failed,
            failed,
            skipped: 0,
            finished: true,
        })
    }

    fn ready_of(conditions: &[Desired]) -> &Desired {
        conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready)
            .unwrap()
    }

    fn blocked(blocker: &Blocker) -> Observed<'_> {
        Observed {
            blocker: Some(blocker),
            ..Observed::default()
        }
    }

    #[test]
    fn pending_users_excludes_every_claimed_phone_including_intents() {
        let users = [user("1"), user("2"), user("3")];
        let tasks = [task(Some("t1"), &["1"], None), task(None, &["2"], None)];
        let pending: Vec<&str> = pending_users(&users, &tasks)
            .iter()
            .map(|u| u.phone.as_str())
            .collect();
        assert_eq!(pending, ["3"]);
    }

    #[test]
    fn removed_phones_are_reported_sorted() {
        let users = [user("1")];
        let tasks = [task(Some("t1"), &["3", "1", "2"], None)];
        assert_eq!(removed_phones(&users, &tasks), ["2", "3"]);
    }

    #[test]
    fn nothing_sent_is_pending_and_reconciling() {
        let Assessment {
            phase, conditions, ..
        } = assess(&[user("1")], &[], &[], Observed::default());
        assert_eq!(phase, Phase::Pending);
        assert_eq!(ready_of(&conditions).reason, Reason::Submitting);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Reconciling && c.status)
        );
    }

    #[test]
    fn submitted_but_unfinished_awaits_results() {
        let Assessment {
            phase, conditions, ..
        } = assess(
            &[user("1")],
            &[task(Some("t"), &["1"], None)],
            &[],
            Observed::default(),
        );
        assert_eq!(phase, Phase::Submitted);
        assert_eq!(ready_of(&conditions).reason, Reason::AwaitingResults);
    }

    #[test]
    fn finished_without_failures_is_ready() {
        let Assessment {
            phase, conditions, ..
        } = assess(
            &[user("1")],
            &[task(Some("t"), &["1"], finished(1, 0))],
            &[],
            Observed::default(),
        );
        assert_eq!(phase, Phase::Completed);
        assert!(ready_of(&conditions).status);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Stalled && !c.status)
        );
    }

    #[test]
    fn failed_users_stall() {
        let Assessment {
            phase, conditions, ..
        } = assess(
            &[user("1")],
            &[task(Some("t"), &["1"], finished(1, 1))],
            &[],
            Observed::default(),
        );
        assert_eq!(phase, Phase::Failed);
        assert_eq!(ready_of(&conditions).reason, Reason::UsersFailed);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Stalled && c.status)
        );
    }

    #[test]
    fn an_intent_without_task_is_in_doubt_and_names_the_annotation() {
        let Assessment {
            phase, conditions, ..
        } = assess(
            &[user("1")],
            &[task(None, &["1"], None)],
            &[],
            Observed::default(),
        );
        assert_eq!(phase, Phase::Failed);
        let ready = ready_of(&conditions);
        assert_eq!(ready.reason, Reason::SubmissionInDoubt);
        assert!(ready.message.contains("koodrive.io/resubmit-in-doubt"));
        assert!(ready.message.contains("trace-1"));
    }

    #[test]
    fn an_automatic_resubmission_keeps_reconciling_and_says_when() {
        let Assessment {
            verdict,
            conditions,
            ..
        } = assess(
            &[user("1")],
            &[task(None, &["1"], None)],
            &[],
            Observed {
                resubmit_at: Some("2026-11-30T10:05:00Z"),
                ..Observed::default()
            },
        );
        assert!(matches!(
            verdict,
            Verdict::Working {
                reason: Reason::SubmissionInDoubt,
                ..
            }
        ));
        assert!(
            ready_of(&conditions)
                .message
                .contains("2026-11-30T10:05:00Z")
        );
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Stalled && !c.status)
        );
    }

    #[test]
    fn missing_credentials_keep_reconciling_but_rejections_stall() {
        let users = [user("1")];
        let missing = Blocker::new(Reason::CredentialsNotFound, "x");
        let Assessment { conditions, .. } = assess(&users, &[], &[], blocked(&missing));
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Reconciling && c.status)
        );
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Stalled && !c.status)
        );
        let rejected = Blocker::new(Reason::KooDriveRejected, "13000102: bad");
        let Assessment {
            phase, conditions, ..
        } = assess(&users, &[], &[], blocked(&rejected));
        assert_eq!(phase, Phase::Failed);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Stalled && c.status)
        );
    }

    #[test]
    fn overdue_results_stall_once_everything_was_sent() {
        let Assessment { verdict, .. } = assess(
            &[user("1")],
            &[task(Some("t"), &["1"], None)],
            &[],
            Observed {
                overdue_tasks: 1,
                ..Observed::default()
            },
        );
        assert!(matches!(
            verdict,
            Verdict::Stalled {
                reason: Reason::ResultsOverdue,
                ..
            }
        ));
    }

    #[test]
    fn summary_counts_only_spec_users_as_submitted() {
        let users = [user("1"), user("2")];
        let tasks = [
            task(Some("t"), &["1", "9"], finished(2, 0)),
            task(None, &["2"], None),
        ];
        let s = summary(&users, &tasks);
        assert_eq!((s.requested, s.submitted, s.succeeded), (2, 1, 2));
    }

    #[test]
    fn failures_are_deduplicated_and_bounded() {
        let failure = |phone: &str| UserFailure {
            phone: phone.into(),
            code: None,
            reason: None,
        };
        let mut kept = vec![failure("1")];
        add_failures(&mut kept, (0..200).map(|i| failure(&i.to_string())));
        assert_eq!(kept.len(), MAX_FAILURES);
        assert_eq!(kept.iter().filter(|f| f.phone == "1").count(), 1);
    }

    // --- The user lifecycle (issue #12) -----------------------------------------------------

    fn rec(phone: &str, state: UserState) -> UserRecord {
        UserRecord {
            phone: phone.into(),
            user_id: Some(format!("id{phone}")),
            state,
        }
    }

    fn recorded_task(phones: &[&str]) -> TaskRecord {
        let mut t = task(Some("t"), phones, finished(phones.len() as i64, 0));
        t.users_recorded = true;
        t
    }

    fn with(records: &[UserRecord], lifecycle: Lifecycle) -> Observed<'_> {
        Observed {
            records,
            lifecycle,
            ..Observed::default()
        }
    }

    fn condition(conditions: &[Desired], type_: ConditionType) -> &Desired {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn counts_come_from_the_records_of_users_in_the_spec() {
        let users = [user("1"), user("2"), user("3")];
        let tasks = [recorded_task(&["1", "2", "3", "4"])];
        let records = [
            rec("1", UserState::Created),
            rec("2", UserState::Skipped),
            rec("3", UserState::DeletePending),
            // Removed from the spec: counts for nobody.
            rec("4", UserState::Failed),
        ];
        let s = summary_of(&users, &tasks, &records);
        assert_eq!(
            (s.requested, s.submitted, s.succeeded, s.skipped, s.failed),
            (3, 3, 2, 1, 0)
        );
    }

    #[test]
    fn a_failed_user_removed_from_the_spec_no_longer_keeps_it_from_ready() {
        let tasks = [recorded_task(&["1", "2"])];
        let records = [rec("1", UserState::Created), rec("2", UserState::Failed)];
        let failures = [UserFailure {
            phone: "2".into(),
            code: None,
            reason: None,
        }];
        let failed = assess(
            &[user("1"), user("2")],
            &tasks,
            &failures,
            with(&records, Lifecycle::default()),
        );
        assert_eq!(ready_of(&failed.conditions).reason, Reason::UsersFailed);
        assert!(
            ready_of(&failed.conditions)
                .message
                .contains("koodrive.io/retry-failed"),
            "the message says how to retry"
        );
        let removed = assess(
            &[user("1")],
            &tasks,
            &failures,
            with(&records, Lifecycle::default()),
        );
        assert_eq!(removed.verdict, Verdict::Ready);
        assert_eq!(removed.summary.failed, 0);
    }

    #[test]
    fn the_guard_stalls_naming_the_count_and_the_annotation() {
        let tasks = [recorded_task(&["1"])];
        let lifecycle = Lifecycle {
            delete_removed: true,
            guard: Some(GuardHold { count: 12, max: 10 }),
            ..Lifecycle::default()
        };
        let a = assess(&[user("1")], &tasks, &[], with(&[], lifecycle));
        let ready = ready_of(&a.conditions);
        assert_eq!(ready.reason, Reason::DeletionGuard);
        assert!(
            ready.message.contains("koodrive.io/confirm-deletions=12")
                && ready.message.contains("--max-deletions 10"),
            "{}",
            ready.message
        );
        assert!(condition(&a.conditions, ConditionType::Stalled).status);
    }

    #[test]
    fn deletions_in_progress_reconcile_and_in_doubt_ones_stall() {
        let tasks = [recorded_task(&["1", "2"])];
        let delete = Lifecycle {
            delete_removed: true,
            ..Lifecycle::default()
        };
        let pending = [
            rec("1", UserState::Created),
            rec("2", UserState::DeletePending),
        ];
        let a = assess(&[user("1")], &tasks, &[], with(&pending, delete));
        assert_eq!(ready_of(&a.conditions).reason, Reason::Deleting);
        assert!(condition(&a.conditions, ConditionType::Reconciling).status);
        // Not approved yet (results just came in): deleting too.
        let candidate = [rec("1", UserState::Created), rec("2", UserState::Created)];
        let a = assess(&[user("1")], &tasks, &[], with(&candidate, delete));
        assert_eq!(ready_of(&a.conditions).reason, Reason::Deleting);
        let doubtful = [rec("1", UserState::Created), rec("2", UserState::Deleting)];
        let a = assess(&[user("1")], &tasks, &[], with(&doubtful, delete));
        let ready = ready_of(&a.conditions);
        assert_eq!(ready.reason, Reason::DeletionInDoubt);
        assert!(ready.message.contains("2 (id2)") && ready.message.contains("resubmit-in-doubt"));
        assert!(condition(&a.conditions, ConditionType::Stalled).status);
    }

    #[test]
    fn a_deleted_userbatch_says_how_to_let_it_go() {
        let tasks = [recorded_task(&["1"])];
        let deleting = Lifecycle {
            delete_removed: true,
            deleting: true,
            ..Lifecycle::default()
        };
        let records = [rec("1", UserState::DeletePending)];
        let a = assess(&[user("1")], &tasks, &[], with(&records, deleting));
        let ready = ready_of(&a.conditions);
        assert_eq!(ready.reason, Reason::Deleting);
        assert!(ready.message.contains("koodrive.io/orphan-on-delete=true"));
        // And when KooDrive cannot be reached, the reason is that, with the way out.
        let down = Blocker::new(Reason::KooDriveUnavailable, "503");
        let a = assess(
            &[user("1")],
            &tasks,
            &[],
            Observed {
                blocker: Some(&down),
                ..with(&records, deleting)
            },
        );
        let ready = ready_of(&a.conditions);
        assert_eq!(ready.reason, Reason::KooDriveUnavailable);
        assert!(ready.message.starts_with("503; ") && ready.message.contains("orphan-on-delete"));
    }

    #[test]
    fn a_suspended_userbatch_is_neither_reconciling_nor_stalled() {
        let paused = Lifecycle {
            suspended: true,
            ..Lifecycle::default()
        };
        // Done before the pause: still Ready, and Reconciling says why nothing happens.
        let done = assess(
            &[user("1")],
            &[recorded_task(&["1"])],
            &[],
            with(&[rec("1", UserState::Created)], paused),
        );
        assert_eq!(done.verdict, Verdict::Ready);
        let reconciling = condition(&done.conditions, ConditionType::Reconciling);
        assert!(!reconciling.status);
        assert_eq!(reconciling.reason, Reason::Suspended);
        // Work left (here a user pending, and one that failed): Ready=False, Suspended, and
        // the message keeps what is left.
        let left = assess(&[user("1"), user("2")], &[], &[], with(&[], paused));
        let ready = ready_of(&left.conditions);
        assert_eq!((ready.status, ready.reason), (false, Reason::Suspended));
        assert!(
            ready.message.contains("0 of 2 users submitted"),
            "{}",
            ready.message
        );
        assert!(!condition(&left.conditions, ConditionType::Reconciling).status);
        assert!(!condition(&left.conditions, ConditionType::Stalled).status);
        let failed = assess(
            &[user("1")],
            &[recorded_task(&["1"])],
            &[],
            with(&[rec("1", UserState::Failed)], paused),
        );
        assert_eq!(ready_of(&failed.conditions).reason, Reason::Suspended);
        assert!(!condition(&failed.conditions, ConditionType::Stalled).status);
    }
}
