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
//!
//! The user lifecycle follows the same rules. When a task finishes, each user's outcome (and
//! KooDrive user ID) becomes a record in `status.users`; failed users are sent again once per
//! new `koodrive.io/retry-failed` value; users removed from the spec are forgotten, or —
//! with `deletionPolicy: Delete`, and for every user when the UserBatch is deleted — deleted
//! in KooDrive once the deletion guard lets the change through. A DELETE is an intent too
//! ([`Edit::DeleteIntent`], `resourceVersion` precondition) before it is sent, and a user
//! found `Deleting` is checked with `GET users/{userId}`, never sent a DELETE again without
//! a human. While `spec.suspend` is true, nothing at all is sent.

use super::status::{self, Blocker, GuardHold, Lifecycle, abbreviate};
use crate::crd::{
    CONFIRM_DELETIONS_ANNOTATION, DeletionPolicy, FINALIZER, InDoubtPolicy,
    MAX_ANNOTATION_VALUE_LEN, MAX_CONDITION_MESSAGE_LEN, MAX_ID_LEN, MAX_MESSAGE_LEN,
    MAX_REASON_LEN, MAX_TASK_PHONES, MAX_TASKS, MAX_USER_ID_LEN, MAX_USERS,
    ORPHAN_ON_DELETE_ANNOTATION, RESUBMIT_IN_DOUBT_ANNOTATION, RETRY_FAILED_ANNOTATION,
    StalledInputs, TaskRecord, TaskResult, User, UserBatch, UserBatchStatus, UserFailure,
    UserRecord, UserState,
};
use crate::vocabulary::{EventAction, EventReason, Reason};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use koodrive_client::{Deletion, ErrorClass, TaskReport, UserInfo};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
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
    /// Most users one change may delete without `koodrive.io/confirm-deletions`.
    pub max_deletions: usize,
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
fn upsert(records: &mut Vec<UserRecord>, record: UserRecord) {
    if let Some(existing) = records.iter_mut().find(|r| r.phone == record.phone) {
        *existing = record;
    } else if records.len() < MAX_USERS {
        records.push(record);
    }
}

/// Moves the records of `phones` that are in state `from` to `to`.
fn set_state(status: &mut UserBatchStatus, phones: &[String], from: UserState, to: UserState) {
    for record in status.users.iter_mut() {
        if record.state == from && phones.contains(&record.phone) {
            record.state = to;
        }
    }
}

/// No task claims `phone` any more (nor holds its fingerprint): it may be sent again.
fn unclaim(status: &mut UserBatchStatus, phone: &str) {
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

/// One user to delete in KooDrive (or to check after an ambiguous DELETE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOp {
    pub phone: String,
    pub user_id: String,
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
    /// Users to delete in KooDrive, in order (each under its own intent).
    pub deletes: Vec<DeleteOp>,
    /// Users found `Deleting` (a DELETE sent, no answer recorded): asked about with
    /// `GET users/{userId}`, never sent a DELETE again.
    pub checks: Vec<DeleteOp>,
    /// The deletion guard holds a change back.
    pub guard: Option<GuardHold>,
    /// The `koodrive.io/confirm-deletions` value acted on: removed from the UserBatch before
    /// the approval is written, so it never confirms a later change.
    pub confirmed: Option<String>,
    /// Deletions, polls, sends: everything the pass may do, before the pause.
    pub lifecycle: Lifecycle,
}

/// What the spec and metadata say about deletions and the pause (no guard yet).
pub fn lifecycle(ub: &UserBatch) -> Lifecycle {
    let delete_policy = ub.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete;
    let finalized = ub
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    Lifecycle {
        delete_removed: delete_policy,
        deleting: ub.metadata.deletion_timestamp.is_some()
            && finalized
            && delete_policy
            && !orphan_on_delete(ub),
        suspended: ub.spec.suspend == Some(true),
        guard: None,
    }
}

/// Whether a human asked to let the UserBatch go without deleting its users.
pub fn orphan_on_delete(ub: &UserBatch) -> bool {
    annotation(ub, ORPHAN_ON_DELETE_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn annotation<'a>(ub: &'a UserBatch, name: &str) -> Option<&'a String> {
    ub.metadata.annotations.as_ref()?.get(name)
}

/// Decides what this pass does. Whether an earlier permanent refusal still holds is decided
/// separately ([`held_by_refusal`]), once the inputs it depended on have been read.
pub fn plan(ub: &UserBatch, now: Timestamp, limits: Limits) -> Plan {
    let mut status = ub.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let policy = ub.spec.in_doubt_policy.unwrap_or_default();
    let mut lifecycle = lifecycle(ub);

    // A human asked to release what is in doubt: requests, and DELETEs.
    if let Some(value) = new_annotation_value(
        ub,
        RESUBMIT_IN_DOUBT_ANNOTATION,
        status.resubmitted_in_doubt.as_deref(),
    ) {
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
        let deleting: Vec<&UserRecord> = status
            .users
            .iter()
            .filter(|r| r.state == UserState::Deleting)
            .collect();
        if !deleting.is_empty() {
            plan.events.push(PlannedEvent::normal(
                EventReason::ResubmittingInDoubt,
                EventAction::Delete,
                format!(
                    "{RESUBMIT_IN_DOUBT_ANNOTATION} changed: the DELETE of {} user(s) whose deletion was in doubt will be sent again: {}",
                    deleting.len(),
                    status::named(&deleting, 20)
                ),
            ));
            let edit = Edit::ReleaseDeletions {
                phones: deleting.iter().map(|r| r.phone.clone()).collect(),
            };
            apply(&edit, &mut status);
            plan.prepare.push(edit);
        }
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

    // A human asked to send the failed users again (once per new value).
    if let Some(value) = new_annotation_value(
        ub,
        RETRY_FAILED_ANNOTATION,
        status.retried_failed.as_deref(),
    ) {
        let wanted: HashSet<&str> = ub.spec.users.iter().map(|u| u.phone.as_str()).collect();
        let phones: Vec<String> = status
            .users
            .iter()
            .filter(|r| r.state == UserState::Failed && wanted.contains(r.phone.as_str()))
            .map(|r| r.phone.clone())
            .collect();
        plan.events.push(PlannedEvent::normal(
            EventReason::RetryingFailed,
            EventAction::Retry,
            if phones.is_empty() {
                format!("{RETRY_FAILED_ANNOTATION} changed, but no user in spec.users is recorded as failed: nothing to send again")
            } else {
                format!(
                    "{RETRY_FAILED_ANNOTATION} changed: {} failed user(s) will be sent again once: {}",
                    phones.len(),
                    abbreviate(&phones, 20)
                )
            },
        ));
        let edit = Edit::ReleaseFailed {
            phones,
            annotation: Some(value),
        };
        apply(&edit, &mut status);
        plan.prepare.push(edit);
    }

    // Users who left the spec (or, while the UserBatch is deleted, everyone).
    if !lifecycle.deleting {
        let removal = removals(ub, &status, lifecycle);
        if !removal.forget.is_empty() {
            let edit = Edit::Forget {
                phones: removal.forget.clone(),
            };
            apply(&edit, &mut status);
            plan.prepare.push(edit);
        }
        if !removal.cancel.is_empty() {
            let edit = Edit::CancelDeletions {
                phones: removal.cancel.clone(),
            };
            apply(&edit, &mut status);
            plan.prepare.push(edit);
        }
        plan.events.extend(removal.events);
    }

    // The deletion guard: one change deletes at most `max_deletions` users unconfirmed.
    let candidates: Vec<UserRecord> =
        status::deletion_candidates(&ub.spec.users, &status.users, lifecycle)
            .into_iter()
            .cloned()
            .collect();
    if !candidates.is_empty() {
        let count = candidates.len();
        let given = annotation(ub, CONFIRM_DELETIONS_ANNOTATION);
        let confirmed =
            count > limits.max_deletions && given.is_some_and(|v| v.trim() == count.to_string());
        if count <= limits.max_deletions || confirmed {
            let names: Vec<&UserRecord> = candidates.iter().collect();
            let who = status::named(&names, 20);
            if confirmed {
                plan.confirmed = given.cloned();
                plan.events.push(PlannedEvent::normal(
                    EventReason::DeletionsConfirmed,
                    EventAction::Delete,
                    format!(
                        "{CONFIRM_DELETIONS_ANNOTATION}={count} confirmed deleting {count} user(s) in KooDrive (more than --max-deletions {}); the annotation is removed so it confirms nothing else",
                        limits.max_deletions
                    ),
                ));
            }
            let note = if lifecycle.deleting {
                format!(
                    "The UserBatch is being deleted (deletionPolicy Delete): {count} user(s) it created will be deleted in KooDrive: {who}"
                )
            } else {
                format!(
                    "{count} user(s) removed from spec.users will be deleted in KooDrive (deletionPolicy Delete): {who}"
                )
            };
            plan.events.push(PlannedEvent::normal(
                if lifecycle.deleting {
                    EventReason::UsersDeleted
                } else {
                    EventReason::UsersRemoved
                },
                EventAction::Delete,
                note,
            ));
            let edit = Edit::ApproveDeletions {
                phones: candidates.iter().map(|r| r.phone.clone()).collect(),
            };
            apply(&edit, &mut status);
            plan.prepare.push(edit);
        } else {
            lifecycle.guard = Some(GuardHold {
                count,
                max: limits.max_deletions,
            });
        }
    }
    plan.guard = lifecycle.guard;
    plan.lifecycle = lifecycle;

    // A pause stops every KooDrive call; the bookkeeping above is not one.
    if lifecycle.suspended {
        return plan;
    }

    plan.checks = status
        .users
        .iter()
        .filter(|r| r.state == UserState::Deleting)
        .filter_map(delete_op)
        .collect();
    plan.deletes = status
        .users
        .iter()
        .filter(|r| r.state == UserState::DeletePending)
        .filter_map(delete_op)
        .collect();

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

    // Nothing is sent while a request's fate is unknown (the condition explains why), nor
    // to a UserBatch on its way out.
    if !status::in_doubt(&status.tasks).is_empty() || ub.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let pending = status::pending_users(&ub.spec.users, &status.tasks);
    if pending.is_empty() {
        return plan;
    }
    // The status holds at most MAX_TASKS task records: larger requests when few slots are
    // left, so a small --max-batch-size can never make the status outgrow its schema.
    let slots = MAX_TASKS.saturating_sub(status.tasks.len());
    let carried: usize = status.tasks.iter().map(|t| t.phones.len()).sum();
    if slots == 0 || carried + pending.len() > MAX_TASK_PHONES {
        plan.hold = Some(Blocker::new(
            Reason::InvalidSpec,
            format!(
                "the status already holds {} task records carrying {carried} phones, and can hold at most {MAX_TASKS} carrying {MAX_TASK_PHONES}; provision the remaining users in a new UserBatch",
                status.tasks.len()
            ),
        ));
        return plan;
    }
    // Every user sent gets a record once its task finishes: while removed users wait to be
    // deleted, new ones wait for room (status.users holds at most MAX_USERS).
    let recorded: HashSet<&str> = status.users.iter().map(|r| r.phone.as_str()).collect();
    let awaiting_records: HashSet<&str> = status::in_doubt(&status.tasks)
        .into_iter()
        .chain(status::unfinished(&status.tasks))
        .flat_map(|t| t.phones.iter().map(String::as_str))
        .filter(|p| !recorded.contains(p))
        .collect();
    if status.users.len() + awaiting_records.len() + pending.len() > MAX_USERS {
        if lifecycle.guard.is_none() {
            plan.hold = Some(Blocker::new(
                Reason::Deleting,
                format!(
                    "{} new user(s) wait until removed users are deleted in KooDrive: the status records at most {MAX_USERS} users",
                    pending.len()
                ),
            ));
        }
        return plan;
    }
    let batch_size = limits
        .max_batch_size
        .max(pending.len().div_ceil(slots))
        .clamp(1, koodrive_client::MAX_USERS_PER_REQUEST);
    // Resent users go in requests of their own, naming the request they resend.
    let mut resent = HashSet::new();
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

fn delete_op(record: &UserRecord) -> Option<DeleteOp> {
    Some(DeleteOp {
        phone: record.phone.clone(),
        user_id: record.user_id.clone()?,
    })
}

/// What becomes of the records of users no longer in the spec.
#[derive(Debug, Default)]
struct Removal {
    forget: Vec<String>,
    cancel: Vec<String>,
    events: Vec<PlannedEvent>,
}

/// Sorts the users who left the spec by what happens to them: records to forget (with an
/// Event saying why each stays or goes), deletions to cancel for users added back.
/// Candidates for deletion are left to the guard.
fn removals(ub: &UserBatch, status: &UserBatchStatus, lifecycle: Lifecycle) -> Removal {
    let wanted: HashSet<&str> = ub.spec.users.iter().map(|u| u.phone.as_str()).collect();
    let mut removal = Removal::default();
    // Each group of users that leaves the status, with what happens to them.
    let mut orphaned = Vec::new();
    let mut kept_after_all = Vec::new();
    let mut no_user_id = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    let mut unknown = Vec::new();
    for record in &status.users {
        let phone = record.phone.clone();
        if wanted.contains(record.phone.as_str()) {
            if record.state == UserState::DeletePending {
                removal.cancel.push(phone);
            }
            continue;
        }
        match record.state {
            UserState::Created if status::deletable(record) && lifecycle.delete_removed => {}
            UserState::Created if record.user_id.is_none() => no_user_id.push(phone),
            UserState::Created => orphaned.push(phone),
            UserState::DeletePending if lifecycle.delete_removed => {}
            UserState::DeletePending => kept_after_all.push(phone),
            UserState::Deleting => {}
            UserState::Skipped => skipped.push(phone),
            UserState::Failed => failed.push(phone),
            UserState::Unknown => unknown.push(phone),
        }
    }
    // Failures recorded before per-user records.
    for failure in &status.failures {
        if !wanted.contains(failure.phone.as_str())
            && status::record(&status.users, &failure.phone).is_none()
            && !failed.contains(&failure.phone)
        {
            failed.push(failure.phone.clone());
        }
    }
    let groups: [(&Vec<String>, &str); 6] = [
        (&orphaned, "stay in KooDrive (deletionPolicy Orphan)"),
        (
            &kept_after_all,
            "are no longer deleted and stay in KooDrive (deletionPolicy Orphan)",
        ),
        (
            &no_user_id,
            "stay in KooDrive: KooDrive reported no user ID for them, so the operator cannot delete them",
        ),
        (
            &skipped,
            "stay in KooDrive: they were already registered, not created by this UserBatch",
        ),
        (
            &failed,
            "had failed and were never provisioned: they no longer count as failed",
        ),
        (
            &unknown,
            "stay as they are: KooDrive's results did not say what happened to them",
        ),
    ];
    let parts: Vec<String> = groups
        .iter()
        .filter(|(phones, _)| !phones.is_empty())
        .map(|(phones, what)| format!("{} {what}", abbreviate(phones, 20)))
        .collect();
    for (phones, _) in groups {
        removal.forget.extend(phones.iter().cloned());
    }
    if !parts.is_empty() {
        removal.events.push(PlannedEvent::normal(
            EventReason::UsersRemoved,
            EventAction::Reconcile,
            format!(
                "{} user(s) removed from spec.users: {}",
                removal.forget.len(),
                parts.join("; ")
            ),
        ));
    }
    if !removal.cancel.is_empty() {
        removal.events.push(PlannedEvent::normal(
            EventReason::UsersRemoved,
            EventAction::Delete,
            format!(
                "{} user(s) were added back to spec.users before their DELETE was sent, and stay: {}",
                removal.cancel.len(),
                abbreviate(&removal.cancel, 20)
            ),
        ));
    }
    removal
}

/// What to do with the UserBatch's finalizer.
#[derive(Debug, Clone, PartialEq)]
pub enum FinalizerStep {
    Keep,
    /// `deletionPolicy: Delete`: the finalizer must be on before any user is created.
    Add,
    /// Not needed (any more): the event says what became of the users.
    Remove(Option<PlannedEvent>),
}

/// Whether the finalizer goes on, stays or comes off. While the UserBatch is being deleted
/// it comes off once nothing is left to delete — or at once when the users are let go
/// (`koodrive.io/orphan-on-delete`, or `deletionPolicy` back to `Orphan`).
pub fn finalizer_step(ub: &UserBatch) -> FinalizerStep {
    let has = ub
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    let delete_policy = ub.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete;
    if ub.metadata.deletion_timestamp.is_none() {
        return match (delete_policy, has) {
            (true, false) => FinalizerStep::Add,
            (false, true) => FinalizerStep::Remove(None),
            _ => FinalizerStep::Keep,
        };
    }
    if !has {
        return FinalizerStep::Keep;
    }
    let status = ub.status.clone().unwrap_or_default();
    let left: Vec<&UserRecord> = status
        .users
        .iter()
        .filter(|r| {
            status::deletable(r)
                || matches!(r.state, UserState::DeletePending | UserState::Deleting)
        })
        .collect();
    if !delete_policy || orphan_on_delete(ub) {
        let why = if delete_policy {
            format!("{ORPHAN_ON_DELETE_ANNOTATION} is true")
        } else {
            "deletionPolicy is Orphan".to_string()
        };
        let note = if left.is_empty() {
            format!("The UserBatch is deleted without deleting users in KooDrive ({why})")
        } else {
            format!(
                "The UserBatch is deleted without deleting its users ({why}): {} user(s) it created stay in KooDrive: {}",
                left.len(),
                status::named(&left, 20)
            )
        };
        return FinalizerStep::Remove(Some(PlannedEvent::warning(
            EventReason::UsersOrphaned,
            EventAction::Delete,
            note,
        )));
    }
    if ub.spec.suspend == Some(true)
        || !left.is_empty()
        || status::unfinished(&status.tasks).next().is_some()
    {
        return FinalizerStep::Keep;
    }
    // Every user it created is deleted. Users it did not (provably) create stay, and so may
    // users of requests still in doubt, whom nobody can name: say so instead of holding on.
    let stay: Vec<String> = status.users.iter().map(|r| r.phone.clone()).collect();
    let doubtful: Vec<&str> = status::in_doubt(&status.tasks)
        .iter()
        .map(|t| t.trace_id.as_str())
        .collect();
    let mut parts = Vec::new();
    if !stay.is_empty() {
        parts.push(format!(
            "{} user(s) stay in KooDrive, as this UserBatch did not provably create them or has no user ID for them (see status.users): {}",
            stay.len(),
            abbreviate(&stay, 20)
        ));
    }
    if !doubtful.is_empty() {
        parts.push(format!(
            "request(s) {} were in doubt, and any users they created stay in KooDrive (no user ID was ever reported for them)",
            doubtful.join(", ")
        ));
    }
    let event = (!parts.is_empty()).then(|| {
        let note = format!("The UserBatch is deleted; {}", parts.join("; "));
        if doubtful.is_empty() {
            PlannedEvent::normal(EventReason::UsersOrphaned, EventAction::Delete, note)
        } else {
            PlannedEvent::warning(EventReason::UsersOrphaned, EventAction::Delete, note)
        }
    });
    FinalizerStep::Remove(event)
}

/// Whether a pass that met this problem makes no further KooDrive calls: a DELETE would meet
/// it too (and refused credentials must not be tried again).
pub fn halts_calls(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::KooDriveUnavailable | Reason::ClockSkew | Reason::CredentialsInvalid
    )
}

/// Whether the status a pass ends with already allows more work right away: removed users'
/// records to settle or approve, deletions left, or users that may now be sent. (A
/// deletion held by the guard, or work held by a refusal, waits for a change instead.)
pub fn follow_up(ub: &UserBatch, now: Timestamp, limits: Limits) -> bool {
    let next = plan(ub, now, limits);
    let settles = next.prepare.iter().any(|e| {
        matches!(
            e,
            Edit::Forget { .. } | Edit::CancelDeletions { .. } | Edit::ApproveDeletions { .. }
        )
    });
    settles || (next.hold.is_none() && !next.sends.is_empty())
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

/// The value of annotation `name` asking for something once per value, if it is new. Values
/// longer than the status can hold are compared (and remembered) by digest.
fn new_annotation_value(ub: &UserBatch, name: &str, acted_on: Option<&str>) -> Option<String> {
    let value = annotation(ub, name)?;
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
        users_recorded: false,
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
fn user_records(task: &TaskRecord, report: &TaskReport) -> Vec<UserRecord> {
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
fn valid_user_id(user: &koodrive_client::UserResult) -> Option<String> {
    user.user_id.clone().filter(|id| {
        !id.is_empty()
            && id.len() <= MAX_USER_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The answer to a DELETE, for planning.
pub type DeleteOutcome = Result<Deletion, Failure>;

/// What follows a DELETE's answer: the usual transition, and whether to ask KooDrive about
/// the user right away (`GET users/{userId}`) because the answer settled nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteStep {
    pub transition: Transition,
    pub check: bool,
}

/// How the answer to `DELETE users/{userId}` changes things. Deleted or not found: done.
/// A failure proving KooDrive did not act: the intent is withdrawn (the user waits for the
/// next pass, as a create's users do). Anything ambiguous: the intent stays — the user is
/// `Deleting` — and KooDrive is asked whether the user still exists; a DELETE is never
/// repeated without a human.
pub fn after_delete(op: &DeleteOp, trace_id: &str, outcome: &DeleteOutcome) -> DeleteStep {
    let who = format!("user {} ({})", op.phone, op.user_id);
    let failure = match outcome {
        Ok(_) => {
            return DeleteStep {
                transition: Transition {
                    edit: Some(Edit::Deleted {
                        phone: op.phone.clone(),
                    }),
                    event: None,
                    blocker: None,
                    stop: false,
                    retry: None,
                },
                check: false,
            };
        }
        Err(failure) => failure,
    };
    let not_sent = || {
        Some(Edit::DeleteNotSent {
            phone: op.phone.clone(),
        })
    };
    let (edit, reason, retry, check) = match failure.class {
        ErrorClass::Transient { retry_after } => (
            not_sent(),
            Reason::KooDriveUnavailable,
            Some(retry_after),
            false,
        ),
        ErrorClass::ClockSkew => (not_sent(), Reason::ClockSkew, Some(None), false),
        ErrorClass::Authentication => (not_sent(), Reason::CredentialsInvalid, None, false),
        // Refused outright: nothing happened, and repeating it soon would be refused too.
        ErrorClass::Rejected => (not_sent(), Reason::KooDriveRejected, None, false),
        ErrorClass::Invalid => (not_sent(), Reason::InvalidSpec, None, false),
        ErrorClass::InDoubt => (None, Reason::DeletionInDoubt, None, true),
    };
    let message = if check {
        format!(
            "the DELETE of {who} got no clear answer (X-Traceid {trace_id}): {}; asking KooDrive whether the user still exists before anything is resent",
            failure.message
        )
    } else {
        format!(
            "KooDrive did not delete {who} (X-Traceid {trace_id}): {}",
            failure.message
        )
    };
    DeleteStep {
        transition: Transition {
            edit,
            event: EventReason::from_condition(reason)
                .map(|r| PlannedEvent::warning(r, EventAction::Delete, message.clone())),
            // An in-doubt DELETE is explained by the records (`Deleting`), after the check.
            blocker: (!check).then(|| Blocker::new(reason, message.clone())),
            stop: true,
            retry,
        },
        check,
    }
}

/// The answer to `GET users/{userId}`, for planning (`None`: KooDrive does not know it).
pub type CheckOutcome = Result<Option<UserInfo>, Failure>;

/// How KooDrive's answer about a user whose DELETE is in doubt changes things: unknown to
/// KooDrive means deleted; still there means still in doubt (the records say so, and a
/// human decides); a failed read is retried later like any read.
pub fn after_check(op: &DeleteOp, outcome: &CheckOutcome) -> Transition {
    match outcome {
        Ok(None) => Transition {
            edit: Some(Edit::Deleted {
                phone: op.phone.clone(),
            }),
            event: None,
            blocker: None,
            stop: false,
            retry: None,
        },
        Ok(Some(_)) => Transition {
            edit: None,
            event: None,
            blocker: None,
            stop: false,
            retry: None,
        },
        Err(failure) => {
            let (reason, retry) = match failure.class {
                ErrorClass::Authentication => (Reason::CredentialsInvalid, None),
                ErrorClass::ClockSkew => (Reason::ClockSkew, Some(None)),
                ErrorClass::Transient { retry_after } => {
                    (Reason::KooDriveUnavailable, Some(retry_after))
                }
                _ => (Reason::KooDriveUnavailable, Some(None)),
            };
            Transition {
                edit: None,
                event: None,
                blocker: Some(Blocker::new(
                    reason,
                    format!(
                        "cannot ask KooDrive whether user {} ({}) was deleted: {}",
                        op.phone, op.user_id, failure.message
                    ),
                )),
                stop: true,
                retry,
            }
        }
    }
}

/// Longest Event note the API server accepts.
const MAX_NOTE_BYTES: usize = 1024;

/// Users deleted in one pass, in as few Events as the API server's 1 KiB note allows, each
/// user named (`already gone`: KooDrive no longer knew it, or a check found it gone after an
/// ambiguous answer).
pub fn deleted_events(deleted: &[(DeleteOp, bool)]) -> Vec<PlannedEvent> {
    let names: Vec<String> = deleted
        .iter()
        .map(|(op, gone)| {
            if *gone {
                format!("{} ({}, already gone)", op.phone, op.user_id)
            } else {
                format!("{} ({})", op.phone, op.user_id)
            }
        })
        .collect();
    // "Deleted NNNN user(s) in KooDrive: " and the names, ", "-separated.
    const PREFIX: usize = 40;
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for name in names {
        match groups.last_mut() {
            Some(group) if size + 2 + name.len() <= MAX_NOTE_BYTES => {
                size += 2 + name.len();
                group.push(name);
            }
            _ => {
                size = PREFIX + name.len();
                groups.push(vec![name]);
            }
        }
    }
    groups
        .into_iter()
        .map(|group| {
            PlannedEvent::normal(
                EventReason::UsersDeleted,
                EventAction::Delete,
                format!(
                    "Deleted {} user(s) in KooDrive: {}",
                    group.len(),
                    group.join(", ")
                ),
            )
        })
        .collect()
}

/// The Event announcing a pause or its end, from the Reconciling reason before and the
/// pause now.
pub fn suspend_transition(previous: Option<&str>, suspended: bool) -> Option<PlannedEvent> {
    let was = previous == Some(Reason::Suspended.as_str());
    match (was, suspended) {
        (false, true) => Some(PlannedEvent::normal(
            EventReason::Suspended,
            EventAction::Reconcile,
            status::SUSPENDED_MESSAGE.to_string(),
        )),
        (true, false) => Some(PlannedEvent::normal(
            EventReason::Resumed,
            EventAction::Reconcile,
            "spec.suspend is false: the operator works on this UserBatch again".to_string(),
        )),
        _ => None,
    }
}

/// Events about the spec itself, for a new generation: inline passwords, users removed
/// whose outcome is not recorded yet (what happens to recorded ones is announced when it
/// happens, see [`plan`]), and users edited after they were sent (KooDrive cannot update
/// them; the operator says so instead of acting).
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
    let recorded: HashSet<&str> = status.users.iter().map(|r| r.phone.as_str()).collect();
    let removed: Vec<String> = status::removed_phones(&ub.spec.users, &status.tasks)
        .into_iter()
        .filter(|p| !recorded.contains(p.as_str()))
        .collect();
    let carried_by = |tasks: Vec<&TaskRecord>| -> Vec<String> {
        removed
            .iter()
            .filter(|p| tasks.iter().any(|t| t.phones.contains(p)))
            .cloned()
            .collect()
    };
    let in_flight = carried_by(
        status::in_doubt(&status.tasks)
            .into_iter()
            .chain(status::unfinished(&status.tasks))
            .collect(),
    );
    let before_records = carried_by(
        status
            .tasks
            .iter()
            .filter(|t| {
                t.task_id.is_some()
                    && !t.users_recorded
                    && t.result.as_ref().is_some_and(|r| r.finished)
            })
            .collect(),
    );
    if !in_flight.is_empty() {
        events.push(PlannedEvent::normal(
            EventReason::UsersRemoved,
            EventAction::Reconcile,
            format!(
                "{} user(s) were removed from spec.users while their request is unanswered or its task unfinished ({}); what happens to them is decided once KooDrive reports their outcome",
                in_flight.len(),
                abbreviate(&in_flight, 10)
            ),
        ));
    }
    if !before_records.is_empty() {
        events.push(PlannedEvent::normal(
            EventReason::UsersRemoved,
            EventAction::Reconcile,
            format!(
                "{} user(s) were removed from spec.users ({}); they were provisioned before the operator recorded each user's KooDrive ID, so they stay in KooDrive",
                before_records.len(),
                abbreviate(&before_records, 10)
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
        Reason::DeletionGuard,
        Reason::DeletionInDoubt,
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
