//! The pure decisions about accounts: which namespaces a ClusterKooDriveAccount allows, whether
//! a UserBatch may use the account it names (and if not, what its status says), and what an
//! account's own status says after its credential check. No I/O, no clock.

use super::super::conditions::Desired;
use super::super::status::Blocker;
use crate::crd::account::{AccountStatus, AllowedNamespaces, NamespaceSelector, SelectorOperator};
use crate::crd::{AccountKind, AccountRef};
use crate::vocabulary::{ConditionType, Reason};
use std::collections::BTreeMap;

/// Whether a namespace (its name and labels) may use an account with these rules: listed by
/// name, or matched by the selector. An empty selector (`{}`) matches every namespace, as
/// Kubernetes label selectors do; a namespace whose labels are unknown has none.
pub fn namespace_allowed(
    allowed: &AllowedNamespaces,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_name = allowed
        .names
        .as_ref()
        .is_some_and(|names| names.iter().any(|n| n == namespace));
    let by_label = allowed
        .selector
        .as_ref()
        .is_some_and(|selector| selector_matches(selector, labels));
    by_name || by_label
}

/// Kubernetes label-selector semantics: every `matchLabels` entry and every expression must
/// hold. `NotIn` and `DoesNotExist` hold for a label that is absent.
pub fn selector_matches(selector: &NamespaceSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_match = selector.match_expressions.iter().all(|requirement| {
        let value = labels.get(&requirement.key);
        match requirement.operator {
            SelectorOperator::In => value.is_some_and(|v| requirement.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !requirement.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    });
    labels_match && expressions_match
}

/// What a UserBatch's resolution needs to know about the account it names.
#[derive(Debug, Clone, Copy)]
pub struct AccountView<'a> {
    pub generation: Option<i64>,
    pub status: Option<&'a AccountStatus>,
    /// The namespaces a ClusterKooDriveAccount allows; `None` for a KooDriveAccount (its own
    /// namespace only, which the lookup already guarantees).
    pub allowed: Option<&'a AllowedNamespaces>,
}

/// How a UserBatch names its account, for messages: `KooDriveAccount team-a/x` or
/// `ClusterKooDriveAccount x`.
pub fn describe(namespace: &str, reference: &AccountRef) -> String {
    match reference.kind {
        AccountKind::KooDriveAccount => format!("KooDriveAccount {namespace}/{}", reference.name),
        AccountKind::ClusterKooDriveAccount => {
            format!("ClusterKooDriveAccount {}", reference.name)
        }
    }
}

/// Where the cluster accounts stand in this operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterAccounts {
    /// Watched: resolve them.
    Watched,
    /// The operator watches one namespace (`--watch-namespace`) and has no cluster-wide
    /// permissions, so it does not use ClusterKooDriveAccounts.
    NotWatched,
}

/// Whether a UserBatch in `namespace` may use the account it names, in this order (so a
/// namespace that is not allowed learns nothing about the account's state):
/// 1. the account must exist (`AccountNotFound`, which resolves by itself once it is
///    created);
/// 2. a ClusterKooDriveAccount must allow the namespace (`AccountNotAllowed`: a human must
///    act; nothing is read or sent);
/// 3. the account's credentials must have been accepted by KooDrive for its current
///    generation (`AccountNotReady`, with the account's own explanation).
pub fn decide(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    reference: &AccountRef,
    account: Option<AccountView<'_>>,
    cluster_accounts: ClusterAccounts,
) -> Result<(), Blocker> {
    let named = describe(namespace, reference);
    if reference.kind == AccountKind::ClusterKooDriveAccount
        && cluster_accounts == ClusterAccounts::NotWatched
    {
        return Err(Blocker::new(
            Reason::AccountNotAllowed,
            format!(
                "spec.accountRef names {named}, but this operator watches only its own namespace (--watch-namespace) and uses no ClusterKooDriveAccounts; nothing is sent for this UserBatch. Use a KooDriveAccount in this namespace"
            ),
        ));
    }
    let Some(account) = account else {
        let hint = match reference.kind {
            AccountKind::KooDriveAccount => {
                "a KooDriveAccount must be in the UserBatch's own namespace"
            }
            AccountKind::ClusterKooDriveAccount => "list them with `kubectl get ckda`",
        };
        return Err(Blocker::new(
            Reason::AccountNotFound,
            format!("{named} (spec.accountRef) does not exist; {hint}. The UserBatch waits for it"),
        ));
    };
    if let Some(allowed) = account.allowed
        && !namespace_allowed(allowed, namespace, namespace_labels)
    {
        return Err(Blocker::new(
            Reason::AccountNotAllowed,
            format!(
                "{named} does not allow namespace {namespace} (its spec.allowedNamespaces); nothing is sent for this UserBatch. Ask the platform team to allow the namespace, or use another account"
            ),
        ));
    }
    let status = account.status;
    let ready = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready.as_str())
    });
    let current = status.is_some_and(|s| s.observed_generation == account.generation);
    match ready {
        Some(ready) if ready.status == "True" && current => Ok(()),
        Some(ready) if current => Err(Blocker::new(
            Reason::AccountNotReady,
            format!(
                "{named} is not ready ({}): {}; the UserBatch waits for it",
                ready.reason, ready.message
            ),
        )),
        _ => Err(Blocker::new(
            Reason::AccountNotReady,
            format!("{named} has not had its credentials checked yet; the UserBatch waits for it"),
        )),
    }
}

/// The conditions of an account after its credential check: `Ready=True` when KooDrive
/// accepted the credentials, otherwise `Ready=False` with the reason; `Stalled` when only a
/// human can fix it (kstatus), `Reconciling` while the operator retries by itself.
pub fn account_conditions(outcome: &Result<String, Blocker>) -> Vec<Desired> {
    match outcome {
        Ok(message) => vec![
            Desired::new(
                ConditionType::Ready,
                true,
                Reason::CredentialsVerified,
                message.clone(),
            ),
            Desired::new(
                ConditionType::Reconciling,
                false,
                Reason::Idle,
                "No work in progress",
            ),
            Desired::new(ConditionType::Stalled, false, Reason::NotStalled, ""),
        ],
        Err(blocker) if blocker.reason.is_stalled() => vec![
            Desired::new(
                ConditionType::Ready,
                false,
                blocker.reason,
                blocker.message.clone(),
            ),
            Desired::new(
                ConditionType::Reconciling,
                false,
                Reason::Idle,
                "Waiting for a human",
            ),
            Desired::new(
                ConditionType::Stalled,
                true,
                blocker.reason,
                blocker.message.clone(),
            ),
        ],
        Err(blocker) => vec![
            Desired::new(
                ConditionType::Ready,
                false,
                blocker.reason,
                blocker.message.clone(),
            ),
            Desired::new(
                ConditionType::Reconciling,
                true,
                blocker.reason,
                blocker.message.clone(),
            ),
            Desired::new(ConditionType::Stalled, false, Reason::NotStalled, ""),
        ],
    }
}

/// What a UserBatch that uses an account says about a refusal of the account's credentials:
/// the account reports it (once, for all its UserBatches); the UserBatch waits for the
/// account. Other blockers are the UserBatch's own.
pub fn as_account_blocker(blocker: Blocker, named: &str) -> Blocker {
    match blocker.reason {
        Reason::CredentialsInvalid => Blocker::new(
            Reason::AccountNotReady,
            format!(
                "{named}: {}; the UserBatch waits for the account",
                blocker.message
            ),
        ),
        _ => blocker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::account::SelectorRequirement;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn by_selector(selector: NamespaceSelector) -> AllowedNamespaces {
        AllowedNamespaces {
            names: None,
            selector: Some(selector),
        }
    }

    #[test]
    fn names_and_selectors_each_allow_a_namespace() {
        let allowed = AllowedNamespaces {
            names: Some(vec!["team-a".into()]),
            selector: Some(NamespaceSelector {
                match_labels: labels(&[("koodrive.io/tenant", "true")]),
                match_expressions: Vec::new(),
            }),
        };
        assert!(namespace_allowed(&allowed, "team-a", &labels(&[])));
        assert!(namespace_allowed(
            &allowed,
            "team-c",
            &labels(&[("koodrive.io/tenant", "true")])
        ));
        assert!(!namespace_allowed(
            &allowed,
            "team-b",
            &labels(&[("koodrive.io/tenant", "false")])
        ));
        // Names are exact: no prefixes, no patterns.
        assert!(!namespace_allowed(&allowed, "team-a-dev", &labels(&[])));
    }

    #[test]
    fn an_empty_selector_allows_every_namespace_and_no_rule_allows_none() {
        let everyone = by_selector(NamespaceSelector::default());
        assert!(namespace_allowed(&everyone, "anything", &labels(&[])));
        // The CRD requires names or a selector; an object without either allows nobody.
        assert!(!namespace_allowed(
            &AllowedNamespaces::default(),
            "team-a",
            &labels(&[])
        ));
        let nobody = AllowedNamespaces {
            names: Some(Vec::new()),
            selector: None,
        };
        assert!(!namespace_allowed(&nobody, "team-a", &labels(&[])));
    }

    #[test]
    fn expressions_follow_kubernetes_label_selector_semantics() {
        let ns = labels(&[("env", "prod"), ("team", "payments")]);
        let case = |requirements: Vec<SelectorRequirement>| {
            selector_matches(
                &NamespaceSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: requirements,
                },
                &ns,
            )
        };
        assert!(case(vec![requirement(
            "env",
            SelectorOperator::In,
            &["prod", "staging"]
        )]));
        assert!(!case(vec![requirement(
            "env",
            SelectorOperator::In,
            &["dev"]
        )]));
        assert!(!case(vec![requirement(
            "missing",
            SelectorOperator::In,
            &["x"]
        )]));
        assert!(case(vec![requirement(
            "env",
            SelectorOperator::NotIn,
            &["dev"]
        )]));
        // NotIn holds for an absent label.
        assert!(case(vec![requirement(
            "missing",
            SelectorOperator::NotIn,
            &["x"]
        )]));
        assert!(!case(vec![requirement(
            "env",
            SelectorOperator::NotIn,
            &["prod"]
        )]));
        assert!(case(vec![requirement(
            "team",
            SelectorOperator::Exists,
            &[]
        )]));
        assert!(!case(vec![requirement(
            "missing",
            SelectorOperator::Exists,
            &[]
        )]));
        assert!(case(vec![requirement(
            "missing",
            SelectorOperator::DoesNotExist,
            &[]
        )]));
        assert!(!case(vec![requirement(
            "env",
            SelectorOperator::DoesNotExist,
            &[]
        )]));
        // All requirements must hold, with matchLabels.
        assert!(!case(vec![
            requirement("env", SelectorOperator::In, &["prod"]),
            requirement("team", SelectorOperator::In, &["search"]),
        ]));
        let both = NamespaceSelector {
            match_labels: labels(&[("env", "prod")]),
            match_expressions: vec![requirement("team", SelectorOperator::Exists, &[])],
        };
        assert!(selector_matches(&both, &ns));
        assert!(!selector_matches(&both, &labels(&[("env", "prod")])));
    }

    fn reference(kind: AccountKind) -> AccountRef {
        AccountRef {
            kind,
            name: "company".into(),
        }
    }

    fn status(ready: bool, reason: &str, message: &str, generation: i64) -> AccountStatus {
        AccountStatus {
            observed_generation: Some(generation),
            endpoint: Some("https://intl.myhuaweicloud-koodrive.com".into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: Some(generation),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
        }
    }

    fn reason_of(result: Result<(), Blocker>) -> Option<Reason> {
        result.err().map(|b| b.reason)
    }

    #[test]
    fn a_ready_account_that_allows_the_namespace_is_used() {
        let ready = status(true, "CredentialsVerified", "ok", 3);
        let allowed = AllowedNamespaces {
            names: Some(vec!["team-a".into()]),
            selector: None,
        };
        let view = AccountView {
            generation: Some(3),
            status: Some(&ready),
            allowed: Some(&allowed),
        };
        let cluster = reference(AccountKind::ClusterKooDriveAccount);
        let none = labels(&[]);
        assert_eq!(
            decide(
                "team-a",
                &none,
                &cluster,
                Some(view),
                ClusterAccounts::Watched
            ),
            Ok(())
        );
        // Another namespace: not allowed, and it learns nothing of the account's state.
        let refused = decide(
            "team-b",
            &none,
            &cluster,
            Some(view),
            ClusterAccounts::Watched,
        )
        .unwrap_err();
        assert_eq!(refused.reason, Reason::AccountNotAllowed);
        assert!(refused.message.contains("team-b"), "{}", refused.message);
        assert!(!refused.message.contains("ok"), "{}", refused.message);
        assert!(Reason::AccountNotAllowed.is_stalled());
        // A namespaced account is looked up in the UserBatch's namespace only.
        let own = AccountView {
            allowed: None,
            ..view
        };
        assert_eq!(
            decide(
                "team-b",
                &none,
                &reference(AccountKind::KooDriveAccount),
                Some(own),
                ClusterAccounts::Watched
            ),
            Ok(())
        );
    }

    #[test]
    fn a_missing_unchecked_stale_or_failing_account_holds_the_userbatch() {
        let none = labels(&[]);
        let namespaced = reference(AccountKind::KooDriveAccount);
        let missing =
            decide("team-a", &none, &namespaced, None, ClusterAccounts::Watched).unwrap_err();
        assert_eq!(missing.reason, Reason::AccountNotFound);
        assert!(
            missing.message.contains("KooDriveAccount team-a/company"),
            "{}",
            missing.message
        );
        assert!(!Reason::AccountNotFound.is_stalled());

        let unchecked = AccountView {
            generation: Some(1),
            status: None,
            allowed: None,
        };
        assert_eq!(
            reason_of(decide(
                "team-a",
                &none,
                &namespaced,
                Some(unchecked),
                ClusterAccounts::Watched
            )),
            Some(Reason::AccountNotReady)
        );
        // Ready, but for an older generation (say, before its endpoint changed).
        let old = status(true, "CredentialsVerified", "ok", 1);
        let stale = AccountView {
            generation: Some(2),
            status: Some(&old),
            allowed: None,
        };
        assert_eq!(
            reason_of(decide(
                "team-a",
                &none,
                &namespaced,
                Some(stale),
                ClusterAccounts::Watched
            )),
            Some(Reason::AccountNotReady)
        );
        let refused = status(
            false,
            "CredentialsInvalid",
            "KooDrive refused the credentials",
            2,
        );
        let failing = AccountView {
            generation: Some(2),
            status: Some(&refused),
            allowed: None,
        };
        let held = decide(
            "team-a",
            &none,
            &namespaced,
            Some(failing),
            ClusterAccounts::Watched,
        )
        .unwrap_err();
        assert_eq!(held.reason, Reason::AccountNotReady);
        assert!(
            held.message.contains("CredentialsInvalid")
                && held.message.contains("KooDrive refused the credentials"),
            "the account's explanation is repeated: {}",
            held.message
        );
        assert!(!Reason::AccountNotReady.is_stalled());
    }

    #[test]
    fn without_cluster_permissions_cluster_accounts_are_not_used() {
        let held = decide(
            "team-a",
            &labels(&[]),
            &reference(AccountKind::ClusterKooDriveAccount),
            None,
            ClusterAccounts::NotWatched,
        )
        .unwrap_err();
        assert_eq!(held.reason, Reason::AccountNotAllowed);
        assert!(
            held.message.contains("--watch-namespace"),
            "{}",
            held.message
        );
    }

    #[test]
    fn account_conditions_follow_kstatus() {
        let ready = account_conditions(&Ok("accepted".into()));
        assert_eq!(ready[0].reason, Reason::CredentialsVerified);
        assert!(ready[0].status && !ready[1].status && !ready[2].status);
        let invalid = account_conditions(&Err(Blocker::new(Reason::CredentialsInvalid, "no")));
        assert!(!invalid[0].status && !invalid[1].status && invalid[2].status);
        let waiting = account_conditions(&Err(Blocker::new(Reason::KooDriveUnavailable, "503")));
        assert!(!waiting[0].status && waiting[1].status && !waiting[2].status);
    }

    #[test]
    fn a_refusal_seen_by_a_userbatch_is_the_accounts() {
        let mapped = as_account_blocker(
            Blocker::new(
                Reason::CredentialsInvalid,
                "KooDrive refused the credentials",
            ),
            "ClusterKooDriveAccount company",
        );
        assert_eq!(mapped.reason, Reason::AccountNotReady);
        assert!(
            mapped
                .message
                .starts_with("ClusterKooDriveAccount company: ")
        );
        let own = as_account_blocker(
            Blocker::new(Reason::PasswordNotFound, "pw"),
            "ClusterKooDriveAccount company",
        );
        assert_eq!(own.reason, Reason::PasswordNotFound);
    }
}
