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
//!
//! - this module — [`plan()`]: what one pass sends and polls, and what a permanent refusal
//!   holds back;
//! - [`edits`] — every status change as data, and how it applies;
//! - [`answers`] — what follows an answer to a create or a poll (the at-most-once table);
//! - [`mod@lifecycle`] — removals, deletions and their answers, the finalizer, the pause;
//! - [`events`] — the Events, and the fingerprints that reveal edits to sent users.

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

pub mod answers;
pub mod edits;
pub mod events;
pub mod lifecycle;

pub use answers::*;
pub use edits::*;
pub use events::*;
pub use lifecycle::*;

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

/// One request to send: its users (by phone, in spec order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub phones: Vec<String>,
    /// The in-doubt request these users are resent for (`inDoubtPolicy: Resubmit`).
    pub resubmit_of: Option<String>,
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
