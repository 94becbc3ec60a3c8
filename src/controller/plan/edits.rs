//! Status edits: every change planning makes to a UserBatch's status, as data, and how
//! each applies to a (fresh) copy. Applying an edit twice is harmless, so a write retried on
//! a fresher copy never duplicates anything.

use super::*;

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
    /// A task's results as KooDrive reports them; once it is finished, each user's outcome.
    Results {
        task_id: String,
        result: TaskResult,
        failures: Vec<UserFailure>,
        records: Vec<UserRecord>,
    },
    /// Failed users are to be sent again: their records and failures go, and no task claims
    /// them any more (so they are pending). Remembers the annotation value that asked.
    ReleaseFailed {
        phones: Vec<String>,
        annotation: Option<String>,
    },
    /// Users removed from the spec that need nothing more: their records and failures go. A
    /// failed user's claim goes too (it was never provisioned: adding it back sends it).
    Forget { phones: Vec<String> },
    /// Users the deletion guard let through: `Created` → `DeletePending`.
    ApproveDeletions { phones: Vec<String> },
    /// Users kept after all (added back to the spec, or `deletionPolicy` back to `Orphan`)
    /// before their DELETE was sent: `DeletePending` → `Created`.
    CancelDeletions { phones: Vec<String> },
    /// The intent to delete, recorded before the DELETE is sent: `DeletePending` →
    /// `Deleting`.
    DeleteIntent { phone: String },
    /// KooDrive deleted the user, or does not know it: the record goes and no task claims
    /// the phone any more (adding it back provisions it anew).
    Deleted { phone: String },
    /// KooDrive provably did not act on the DELETE: `Deleting` → `DeletePending`.
    DeleteNotSent { phone: String },
    /// A human released in-doubt DELETEs (`koodrive.io/resubmit-in-doubt`): `Deleting` →
    /// `DeletePending`.
    ReleaseDeletions { phones: Vec<String> },
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
            records,
        } => {
            if let Some(task) = status
                .tasks
                .iter_mut()
                .find(|t| t.task_id.as_deref() == Some(task_id.as_str()))
            {
                task.result = Some(result.clone());
                task.users_recorded |= result.finished;
            }
            for record in records {
                upsert(&mut status.users, record.clone());
                if record.state != UserState::Failed {
                    status.failures.retain(|f| f.phone != record.phone);
                }
            }
            status::add_failures(&mut status.failures, failures.iter().cloned());
        }
        Edit::ReleaseFailed { phones, annotation } => {
            for phone in phones {
                let failed = status::record(&status.users, phone)
                    .is_some_and(|r| r.state == UserState::Failed);
                if failed {
                    status.users.retain(|r| &r.phone != phone);
                    status.failures.retain(|f| &f.phone != phone);
                    unclaim(status, phone);
                }
            }
            if let Some(value) = annotation {
                status.retried_failed = Some(value.clone());
            }
        }
        Edit::Forget { phones } => {
            for phone in phones {
                let state = status::record(&status.users, phone).map(|r| r.state);
                if matches!(state, Some(UserState::Deleting)) {
                    // A DELETE may be under way: only its answer (or a human) settles it.
                    continue;
                }
                status.users.retain(|r| &r.phone != phone);
                status.failures.retain(|f| &f.phone != phone);
                if state == Some(UserState::Failed) {
                    unclaim(status, phone);
                }
            }
        }
        Edit::ApproveDeletions { phones } => {
            set_state(status, phones, UserState::Created, UserState::DeletePending);
        }
        Edit::CancelDeletions { phones } => {
            set_state(status, phones, UserState::DeletePending, UserState::Created);
        }
        Edit::DeleteIntent { phone } => {
            set_state(
                status,
                std::slice::from_ref(phone),
                UserState::DeletePending,
                UserState::Deleting,
            );
        }
        Edit::Deleted { phone } => {
            status.users.retain(|r| &r.phone != phone);
            status.failures.retain(|f| &f.phone != phone);
            unclaim(status, phone);
        }
        Edit::DeleteNotSent { phone } => {
            set_state(
                status,
                std::slice::from_ref(phone),
                UserState::Deleting,
                UserState::DeletePending,
            );
        }
        Edit::ReleaseDeletions { phones } => {
            set_state(
                status,
                phones,
                UserState::Deleting,
                UserState::DeletePending,
            );
        }
    }
}

/// Adds or replaces the record of a phone, never beyond the schema's bound.
pub(super) fn upsert(records: &mut Vec<UserRecord>, record: UserRecord) {
    if let Some(existing) = records.iter_mut().find(|r| r.phone == record.phone) {
        *existing = record;
    } else if records.len() < MAX_USERS {
        records.push(record);
    }
}

/// Moves the records of `phones` that are in state `from` to `to`.
pub(super) fn set_state(
    status: &mut UserBatchStatus,
    phones: &[String],
    from: UserState,
    to: UserState,
) {
    for record in status.users.iter_mut() {
        if record.state == from && phones.contains(&record.phone) {
            record.state = to;
        }
    }
}

/// No task claims `phone` any more (nor holds its fingerprint): it may be sent again.
pub(super) fn unclaim(status: &mut UserBatchStatus, phone: &str) {
    for task in status.tasks.iter_mut() {
        while let Some(index) = task.phones.iter().position(|p| p == phone) {
            task.phones.remove(index);
            if let Some(digest) = task.users_digest.as_mut() {
                let start = index * USER_DIGEST_LEN;
                if digest.len() >= start + USER_DIGEST_LEN {
                    digest.replace_range(start..start + USER_DIGEST_LEN, "");
                }
            }
        }
    }
}
