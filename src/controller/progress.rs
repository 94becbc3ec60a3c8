//! What a UserBatch's status should say, computed from what was observed. Pure functions: no
//! I/O, no clock, so every message is deterministic and an unchanged situation is never
//! rewritten.

use super::conditions::{Desired, reasons, types};
use crate::crd::{Phase, Summary, TaskRecord, User, UserFailure};
use std::collections::HashSet;

/// Most entries kept in `status.failures`.
pub const MAX_FAILURES: usize = 100;

/// Why the operator cannot (yet) reach Ready, besides plain work in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// The credentials Secret or one of its keys is missing. Recovers when the Secret appears.
    CredentialsNotFound(String),
    /// KooDrive refused the credentials or signature. Retried only when the Secret changes.
    CredentialsInvalid(String),
    /// A `passwordSecretRef` points at a missing Secret or key.
    PasswordNotFound(String),
    /// Something only the controller can check is wrong with the spec (e.g. an `http://` endpoint).
    InvalidSpec(String),
    /// KooDrive rejected a request. Retried only when the spec or a referenced Secret changes.
    Rejected(String),
    /// KooDrive could not be reached or answered with a transient error; retried with backoff.
    Unavailable(String),
}

impl Blocker {
    fn is_stalled(&self) -> bool {
        matches!(
            self,
            Blocker::CredentialsInvalid(_) | Blocker::InvalidSpec(_) | Blocker::Rejected(_)
        )
    }

    fn reason(&self) -> &'static str {
        match self {
            Blocker::CredentialsNotFound(_) => reasons::CREDENTIALS_NOT_FOUND,
            Blocker::CredentialsInvalid(_) => reasons::CREDENTIALS_INVALID,
            Blocker::PasswordNotFound(_) => reasons::PASSWORD_NOT_FOUND,
            Blocker::InvalidSpec(_) => reasons::INVALID_SPEC,
            Blocker::Rejected(_) => reasons::KOODRIVE_REJECTED,
            Blocker::Unavailable(_) => reasons::KOODRIVE_UNAVAILABLE,
        }
    }

    fn message(&self) -> &str {
        match self {
            Blocker::CredentialsNotFound(m)
            | Blocker::CredentialsInvalid(m)
            | Blocker::PasswordNotFound(m)
            | Blocker::InvalidSpec(m)
            | Blocker::Rejected(m)
            | Blocker::Unavailable(m) => m,
        }
    }

    /// Reconstructs a permanent blocker from the conditions a previous pass wrote, so a
    /// rejection keeps being reported (without resending) until its inputs change.
    pub fn from_stalled_reason(reason: &str, message: &str) -> Option<Blocker> {
        match reason {
            reasons::CREDENTIALS_INVALID => Some(Blocker::CredentialsInvalid(message.to_string())),
            reasons::KOODRIVE_REJECTED => Some(Blocker::Rejected(message.to_string())),
            _ => None,
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

/// What the status should say about what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub phase: Phase,
    pub conditions: Vec<Desired>,
    pub summary: Summary,
}

/// The phase, conditions and summary for what was observed.
pub fn assess(
    users: &[User],
    tasks: &[TaskRecord],
    failures: &[UserFailure],
    blocker: Option<&Blocker>,
) -> Assessment {
    let total = users.len();
    let summary = summary(users, tasks);
    let submitted = summary.submitted as usize;
    let recorded_tasks = tasks.iter().filter(|t| t.task_id.is_some()).count();
    let doubtful = in_doubt(tasks);
    let unfinished = tasks
        .iter()
        .filter(|t| t.task_id.is_some() && !t.result.as_ref().is_some_and(|r| r.finished))
        .count();
    let all_submitted = submitted == total;

    let submitted_condition = if all_submitted {
        Desired::new(
            types::SUBMITTED,
            true,
            reasons::ALL_SUBMITTED,
            format!("{total} of {total} users submitted in {recorded_tasks} task(s)"),
        )
    } else {
        Desired::new(
            types::SUBMITTED,
            false,
            reasons::USERS_PENDING,
            format!("{submitted} of {total} users submitted"),
        )
    };

    // (stalled, reason, message); Ready is True only when nothing is left to do.
    let verdict: Option<(bool, &'static str, String)> = if !doubtful.is_empty() {
        let phones: usize = doubtful.iter().map(|t| t.phones.len()).sum();
        let traces: Vec<&str> = doubtful.iter().map(|t| t.trace_id.as_str()).collect();
        Some((
            true,
            reasons::SUBMISSION_IN_DOUBT,
            format!(
                "{phones} user(s) were sent to KooDrive but no answer was recorded (X-Traceid {}); \
                 KooDrive may have provisioned them, so they are not resent automatically. \
                 Check with KooDrive, then annotate {}=<new value> to send them again",
                traces.join(", "),
                crate::crd::RESUBMIT_IN_DOUBT_ANNOTATION
            ),
        ))
    } else if let Some(blocker) = blocker {
        Some((
            blocker.is_stalled(),
            blocker.reason(),
            blocker.message().to_string(),
        ))
    } else if !all_submitted {
        Some((
            false,
            reasons::SUBMITTING,
            format!(
                "{submitted} of {total} users submitted; {} pending",
                total - submitted
            ),
        ))
    } else if unfinished > 0 {
        Some((
            false,
            reasons::AWAITING_RESULTS,
            format!(
                "{total} users submitted in {recorded_tasks} task(s); waiting for KooDrive to finish {unfinished} task(s)"
            ),
        ))
    } else if summary.failed > 0 || !failures.is_empty() {
        Some((
            true,
            reasons::USERS_FAILED,
            format!(
                "{} of {total} users failed in KooDrive (see status.failures); the operator does not resend them: fix the cause and provision them in a new UserBatch",
                summary.failed.max(failures.len() as i64)
            ),
        ))
    } else {
        None
    };

    let (phase, ready, reconciling, stalled) = match verdict {
        None => (
            Phase::Completed,
            Desired::new(
                types::READY,
                true,
                reasons::READY,
                format!(
                    "{total} users provisioned in {recorded_tasks} task(s): {} succeeded, {} skipped (already registered)",
                    summary.succeeded, summary.skipped
                ),
            ),
            Desired::new(
                types::RECONCILING,
                false,
                reasons::IDLE,
                "No work in progress",
            ),
            Desired::new(types::STALLED, false, reasons::NOT_STALLED, ""),
        ),
        Some((true, reason, message)) => (
            Phase::Failed,
            Desired::new(types::READY, false, reason, message.clone()),
            Desired::new(
                types::RECONCILING,
                false,
                reasons::IDLE,
                "Waiting for a human",
            ),
            Desired::new(types::STALLED, true, reason, message),
        ),
        Some((false, reason, message)) => {
            let phase = if all_submitted {
                Phase::Submitted
            } else if tasks.is_empty() {
                Phase::Pending
            } else {
                Phase::Submitting
            };
            (
                phase,
                Desired::new(types::READY, false, reason, message.clone()),
                Desired::new(types::RECONCILING, true, reason, message),
                Desired::new(types::STALLED, false, reasons::NOT_STALLED, ""),
            )
        }
    };
    Assessment {
        phase,
        conditions: vec![ready, submitted_condition, reconciling, stalled],
        summary,
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
        conditions.iter().find(|c| c.type_ == types::READY).unwrap()
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
        } = assess(&[user("1")], &[], &[], None);
        assert_eq!(phase, Phase::Pending);
        assert_eq!(ready_of(&conditions).reason, reasons::SUBMITTING);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == types::RECONCILING && c.status)
        );
    }

    #[test]
    fn submitted_but_unfinished_awaits_results() {
        let Assessment {
            phase, conditions, ..
        } = assess(&[user("1")], &[task(Some("t"), &["1"], None)], &[], None);
        assert_eq!(phase, Phase::Submitted);
        assert_eq!(ready_of(&conditions).reason, reasons::AWAITING_RESULTS);
    }

    #[test]
    fn finished_without_failures_is_ready() {
        let Assessment {
            phase, conditions, ..
        } = assess(
            &[user("1")],
            &[task(Some("t"), &["1"], finished(1, 0))],
            &[],
            None,
        );
        assert_eq!(phase, Phase::Completed);
        assert!(ready_of(&conditions).status);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == types::STALLED && !c.status)
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
            None,
        );
        assert_eq!(phase, Phase::Failed);
        assert_eq!(ready_of(&conditions).reason, reasons::USERS_FAILED);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == types::STALLED && c.status)
        );
    }

    #[test]
    fn an_intent_without_task_is_in_doubt_and_names_the_annotation() {
        let Assessment {
            phase, conditions, ..
        } = assess(&[user("1")], &[task(None, &["1"], None)], &[], None);
        assert_eq!(phase, Phase::Failed);
        let ready = ready_of(&conditions);
        assert_eq!(ready.reason, reasons::SUBMISSION_IN_DOUBT);
        assert!(ready.message.contains("koodrive.io/resubmit-in-doubt"));
        assert!(ready.message.contains("trace-1"));
    }

    #[test]
    fn missing_credentials_keep_reconciling_but_rejections_stall() {
        let users = [user("1")];
        let Assessment { conditions, .. } = assess(
            &users,
            &[],
            &[],
            Some(&Blocker::CredentialsNotFound("x".into())),
        );
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == types::RECONCILING && c.status)
        );
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == types::STALLED && !c.status)
        );
        let Assessment {
            phase, conditions, ..
        } = assess(
            &users,
            &[],
            &[],
            Some(&Blocker::Rejected("13000102: bad".into())),
        );
        assert_eq!(phase, Phase::Failed);
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == types::STALLED && c.status)
        );
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
}
