//! The user lifecycle beyond the first create: users removed from the spec (forgotten, or
//! deleted under `deletionPolicy: Delete` once the deletion guard lets the change through),
//! the finalizer, the answers to a DELETE and to the `GET users/{userId}` that settles an
//! ambiguous one, and the pause (`spec.suspend`).

use super::*;

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

pub(super) fn delete_op(record: &UserRecord) -> Option<DeleteOp> {
    Some(DeleteOp {
        phone: record.phone.clone(),
        user_id: record.user_id.clone()?,
    })
}

/// What becomes of the records of users no longer in the spec.
#[derive(Debug, Default)]
pub(super) struct Removal {
    pub(super) forget: Vec<String>,
    pub(super) cancel: Vec<String>,
    pub(super) events: Vec<PlannedEvent>,
}

/// Sorts the users who left the spec by what happens to them: records to forget (with an
/// Event saying why each stays or goes), deletions to cancel for users added back.
/// Candidates for deletion are left to the guard.
pub(super) fn removals(ub: &UserBatch, status: &UserBatchStatus, lifecycle: Lifecycle) -> Removal {
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
pub(super) const MAX_NOTE_BYTES: usize = 1024;

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
