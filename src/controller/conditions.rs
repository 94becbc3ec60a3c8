//! The rules for updating conditions (their words are in [`crate::vocabulary`]).
//!
//! Conditions follow the Kubernetes API conventions and kstatus, so `kubectl wait`, Flux and
//! Argo CD read them without custom code. They are compared without timestamps, so an
//! unchanged situation is never rewritten.

use crate::vocabulary::{ConditionType, Reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as computed by the controller, before timestamps are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: ConditionType,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: ConditionType,
        status: bool,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Builds the new condition list. `lastTransitionTime` is carried over from `previous` unless
/// the condition's status flipped, so an unchanged situation never produces a new timestamp
/// (and never a status write).
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|want| {
            let status = status_str(want.status);
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == want.type_.as_str() && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: want.type_.to_string(),
                status: status.to_string(),
                reason: want.reason.to_string(),
                // The schema's bound: a longer message would make the whole write fail.
                message: crate::controller::plan::bounded(
                    &want.message,
                    crate::crd::MAX_CONDITION_MESSAGE_LEN,
                ),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Finds a condition by type.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// True when the condition of that type exists with status `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(
            &[],
            &[Desired::new(
                ConditionType::Ready,
                false,
                Reason::Submitting,
                "sending",
            )],
            Some(1),
            &time(100),
        );
        assert_eq!(first[0].last_transition_time, time(100));

        // Same status, new reason and message: the transition time stays.
        let second = merge(
            &first,
            &[Desired::new(
                ConditionType::Ready,
                false,
                Reason::AwaitingResults,
                "waiting",
            )],
            Some(2),
            &time(200),
        );
        assert_eq!(second[0].last_transition_time, time(100));
        assert_eq!(second[0].reason, "AwaitingResults");
        assert_eq!(second[0].observed_generation, Some(2));

        // Status flips: the transition time moves.
        let third = merge(
            &second,
            &[Desired::new(
                ConditionType::Ready,
                true,
                Reason::Ready,
                "done",
            )],
            Some(2),
            &time(300),
        );
        assert_eq!(third[0].last_transition_time, time(300));
        assert_eq!(third[0].status, "True");
    }

    #[test]
    fn unchanged_conditions_are_identical() {
        let desired = [
            Desired::new(ConditionType::Ready, true, Reason::Ready, "done"),
            Desired::new(ConditionType::Stalled, false, Reason::NotStalled, ""),
        ];
        let first = merge(&[], &desired, Some(1), &time(100));
        let again = merge(&first, &desired, Some(1), &time(999));
        assert_eq!(first, again);
    }
}
