//! What a UserBatch's status should say, computed from what was observed. Pure functions: no
//! I/O, no clock, so every message is deterministic and an unchanged situation is never
//! rewritten.

use super::conditions::Desired;
use crate::crd::{
    MAX_FAILURES, Phase, RESUBMIT_IN_DOUBT_ANNOTATION, Summary, TaskRecord, User, UserFailure,
};
use crate::vocabulary::{ConditionType, Reason};
use std::collections::HashSet;

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

pub fn summary(users: &[User], tasks: &[TaskRecord]) -> Summary {
    let submitted: HashSet<&str> = tasks
        .iter()
        .filter(|t| t.task_id.is_some())
        .flat_map(|t| t.phones.iter().map(String::as_str))
        .collect();
    let mut summary = Summary {
        requested: users.len() as i64,
        submitted: users
            .iter()
            .filter(|u| submitted.contains(u.phone.as_str()))
            .count() as i64,
        ..Summary::default()
    };
    for result in tasks.iter().filter_map(|t| t.result.as_ref()) {
        summary.succeeded += result.succeeded;
        summary.failed += result.failed;
        summary.skipped += result.skipped;
    }
    summary
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

/// The phase, conditions and summary for what was observed.
pub fn assess(
    users: &[User],
    tasks: &[TaskRecord],
    failures: &[UserFailure],
    observed: Observed<'_>,
) -> Assessment {
    let total = users.len();
    let summary = summary(users, tasks);
    let submitted = summary.submitted as usize;
    let recorded_tasks = tasks.iter().filter(|t| t.task_id.is_some()).count();
    let doubtful = in_doubt(tasks);
    let unfinished = unfinished(tasks).count();
    let all_submitted = submitted == total;

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
        Verdict::of(blocker.reason, blocker.message.clone())
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
    } else if summary.failed > 0 || !failures.is_empty() {
        Verdict::Stalled {
            reason: Reason::UsersFailed,
            message: format!(
                "{} of {total} users failed in KooDrive (see status.failures); the operator does not resend them: fix the cause and provision them in a new UserBatch",
                summary.failed.max(failures.len() as i64)
            ),
        }
    } else {
        Verdict::Ready
    };

    let (phase, ready, reconciling, stalled) = match &verdict {
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
    Assessment {
        phase,
        verdict,
        conditions: vec![ready, submitted_condition, reconciling, stalled],
        summary,
    }
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
}
