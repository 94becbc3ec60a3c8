//! The operator's stable words: condition types and reasons, Event reasons and actions.
//!
//! These are API. `kubectl wait`, Argo CD, Flux, alerts (`charts/…/prometheusrule.yaml`) and
//! people's runbooks match on them, so each has one spelling, defined here and nowhere else.

use std::fmt;

/// Declares a closed set of words: an enum whose variants print as their own names.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }

            /// The word spelled `text`, if it is one.
            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|word| word.as_str() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// The conditions a UserBatch carries (accounts carry Ready, Reconciling and Stalled),
    /// following Kubernetes API conventions and kstatus:
    /// `Ready` is the summary, `Reconciling=True` means work is in progress, `Stalled=True`
    /// means nothing will change without a human.
    ConditionType {
        Ready,
        /// Every user in `spec.users` has been sent.
        Submitted,
        Reconciling,
        Stalled,
    }
}

words! {
    /// Why a condition is what it is.
    Reason {
        // Ready=True.
        Ready,
        /// An account's credentials were accepted by KooDrive (an account's Ready=True).
        CredentialsVerified,
        // Ready=False, waiting for something outside the operator; it retries by itself.
        /// The credentials Secret or one of its keys is missing.
        CredentialsNotFound,
        /// `spec.accountRef` names an account that does not exist (yet).
        AccountNotFound,
        /// The account named in `spec.accountRef` has not (yet) had its credentials accepted
        /// by KooDrive; the UserBatch waits for it (the account's status says why).
        AccountNotReady,
        /// A `passwordSecretRef` points at a missing Secret or key.
        PasswordNotFound,
        /// The operator's RBAC does not let it read what it needs.
        PermissionDenied,
        /// KooDrive cannot be reached or answered with a transient error.
        KooDriveUnavailable,
        /// KooDrive refused the request's date: this machine's clock and KooDrive's differ.
        ClockSkew,
        // Ready=False, work in progress.
        Submitting,
        AwaitingResults,
        /// Users are being deleted in KooDrive (`deletionPolicy: Delete`).
        Deleting,
        // Ready=False (or Reconciling=False) by a human's choice; neither progressing nor
        // stalled.
        /// `spec.suspend` is true: no KooDrive call is made.
        Suspended,
        // Ready=False and Stalled=True: a human must act.
        /// KooDrive refused the credentials; nothing is sent with them until the Secret
        /// changes.
        CredentialsInvalid,
        /// Something only the controller can check is wrong with the spec.
        InvalidSpec,
        /// `spec.endpoint` is not among the endpoints the operator was told to trust.
        EndpointNotAllowed,
        /// The ClusterKooDriveAccount named in `spec.accountRef` does not allow the
        /// UserBatch's namespace.
        AccountNotAllowed,
        /// KooDrive refused a request and provably did not act on it.
        KooDriveRejected,
        /// Some users failed in KooDrive.
        UsersFailed,
        /// A request may or may not have been acted on; its users are not resent blindly.
        SubmissionInDoubt,
        /// A task's results never added up within the allowed time.
        ResultsOverdue,
        /// One change would delete more users than `--max-deletions`: nothing is deleted
        /// until `koodrive.io/confirm-deletions` names the count.
        DeletionGuard,
        /// A DELETE got no clear answer and KooDrive has not confirmed the user gone: it is
        /// not resent blindly.
        DeletionInDoubt,
        // The Submitted condition.
        AllSubmitted,
        UsersPending,
        // Reconciling=False, Stalled=False.
        Idle,
        NotStalled,
    }
}

impl Reason {
    /// Whether a Ready=False with this reason needs a human (kstatus `Stalled=True`).
    pub const fn is_stalled(self) -> bool {
        matches!(
            self,
            Reason::CredentialsInvalid
                | Reason::InvalidSpec
                | Reason::EndpointNotAllowed
                | Reason::AccountNotAllowed
                | Reason::KooDriveRejected
                | Reason::UsersFailed
                | Reason::SubmissionInDoubt
                | Reason::ResultsOverdue
                | Reason::PermissionDenied
                | Reason::DeletionGuard
                | Reason::DeletionInDoubt
        )
    }
}

words! {
    /// What an Event reports. Events about a condition reuse the condition's reason (see
    /// [`EventReason::from_condition`]); these are the others.
    EventReason {
        /// KooDrive created a task for some users.
        TaskCreated,
        /// A task's results are in.
        TaskFinished,
        /// `spec.users[].password` holds a password in plain text.
        InlinePassword,
        /// Users were removed from the spec after they were sent.
        UsersRemoved,
        /// Users were edited after they were sent.
        UsersChangedAfterSubmission,
        /// In-doubt users are being sent again (annotation or `inDoubtPolicy: Resubmit`).
        ResubmittingInDoubt,
        /// Failed users are being sent again (`koodrive.io/retry-failed`).
        RetryingFailed,
        /// Users were deleted in KooDrive (`deletionPolicy: Delete`).
        UsersDeleted,
        /// A deleted UserBatch let go of its users without deleting them.
        UsersOrphaned,
        /// `koodrive.io/confirm-deletions` released deletions held by the guard.
        DeletionsConfirmed,
        /// `spec.suspend` became true: no KooDrive calls until it is false.
        Suspended,
        /// `spec.suspend` became false again.
        Resumed,
        // The condition reasons Events repeat.
        Ready,
        CredentialsVerified,
        CredentialsNotFound,
        AccountNotFound,
        AccountNotAllowed,
        PasswordNotFound,
        PermissionDenied,
        KooDriveUnavailable,
        ClockSkew,
        CredentialsInvalid,
        InvalidSpec,
        EndpointNotAllowed,
        KooDriveRejected,
        UsersFailed,
        SubmissionInDoubt,
        ResultsOverdue,
        DeletionGuard,
        DeletionInDoubt,
    }
}

impl EventReason {
    /// The Event reason announcing a condition reason, if Events announce it.
    pub fn from_condition(reason: Reason) -> Option<EventReason> {
        EventReason::parse(reason.as_str())
    }
}

words! {
    /// What the operator was doing when it emitted an Event (`action` of events.k8s.io/v1).
    EventAction {
        Reconcile,
        Submit,
        PollResults,
        Resubmit,
        /// Sending failed users again.
        Retry,
        /// Deleting users in KooDrive (or checking a DELETE's outcome), or letting them go.
        Delete,
        /// An account's credential check.
        CheckCredentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_print_as_their_names_and_parse_back() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
        }
        assert_eq!(Reason::SubmissionInDoubt.to_string(), "SubmissionInDoubt");
        assert_eq!(EventReason::TaskCreated.as_str(), "TaskCreated");
        assert_eq!(Reason::parse("Submitted"), None);
    }

    #[test]
    fn every_stalling_reason_can_be_announced() {
        for reason in Reason::ALL.iter().filter(|r| r.is_stalled()) {
            assert!(
                EventReason::from_condition(*reason).is_some(),
                "{reason} has no Event reason"
            );
        }
    }

    #[test]
    fn event_reasons_never_collide_with_condition_types() {
        for reason in EventReason::ALL {
            assert!(
                ConditionType::parse(reason.as_str()).is_none() || *reason == EventReason::Ready
            );
        }
    }
}
