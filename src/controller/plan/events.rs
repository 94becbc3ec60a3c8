//! The Events planning decides on: what each says, and the per-user fingerprints that let
//! the operator notice (and announce) edits to users already sent.

use super::*;

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
    pub(super) fn normal(reason: EventReason, action: EventAction, note: String) -> Self {
        Self {
            severity: Severity::Normal,
            reason,
            action,
            note,
        }
    }

    pub(super) fn warning(reason: EventReason, action: EventAction, note: String) -> Self {
        Self {
            severity: Severity::Warning,
            reason,
            action,
            note,
        }
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

/// Hex characters of one user's fingerprint in `TaskRecord::users_digest`.
pub(super) const USER_DIGEST_LEN: usize = 8;

/// One user's fingerprint: a short hash of the non-secret fields as sent. Passwords are
/// represented only by where they come from, so it reveals nothing about them; 32 bits are
/// plenty to notice an edit.
pub(super) fn user_digest(user: &User) -> String {
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
pub(super) fn changed_after_submission(ub: &UserBatch, status: &UserBatchStatus) -> Vec<String> {
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
