//! KooDriveAccount and ClusterKooDriveAccount: who may use a KooDrive backend, apart from
//! what to provision.
//!
//! - The account controller checks each account's credentials with a call that cannot
//!   create anything ([`koodrive_client::Client::check_credentials`]) when the account or its
//!   Secret changes, and rarely otherwise (`--account-check-interval`), and writes the verdict
//!   as the account's `Ready` condition. The check goes through the same per-credential
//!   authentication guard as every UserBatch request, so a wrong SK costs at most two
//!   refused requests per Secret version in all, and is reported once, on the account.
//! - A UserBatch naming an account ([`Registry::resolve`]) gets the account's endpoint,
//!   credentials and request limiter — or waits (`AccountNotFound`, `AccountNotReady`), or
//!   is refused (`AccountNotAllowed`) before anything is read or sent. The decisions are pure
//!   ([`resolve`]).
//! - Each account has its own request limiter (KooDrive throttles per AK), shared by its
//!   check and every UserBatch that uses it.
//! - [`Registry`] keeps who uses what, so a Secret change re-checks the accounts that read
//!   it, an account change re-triggers its UserBatches, and a namespace's new labels
//!   re-trigger the UserBatches in it that use a ClusterKooDriveAccount.

pub mod resolve;

use super::backoff::Backoff;
use super::guard::{CredentialKey, Verdict as AuthVerdict};
use super::plan::{PlannedEvent, Severity};
use super::secrets::{SecretRead, SecretReader};
use super::status::Blocker;
use super::{Context, Key, Meta, conditions};
use crate::crd::account::{
    AccountLimits, AccountStatus, AllowedNamespaces, ClusterKooDriveAccount, KooDriveAccount,
};
use crate::crd::{AccountKind, AccountRef, CredentialsRef};
use crate::vocabulary::{ConditionType, EventAction, EventReason, Reason};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use koodrive_client::{ErrorClass, RequestLimiter};
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// An account: its kind, namespace (empty for a cluster account) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId {
    pub kind: AccountKind,
    pub namespace: String,
    pub name: String,
}

impl AccountId {
    /// The account a UserBatch in `namespace` names: a KooDriveAccount in that namespace, or
    /// a ClusterKooDriveAccount.
    pub fn named_by(namespace: &str, reference: &AccountRef) -> AccountId {
        AccountId {
            kind: reference.kind,
            namespace: match reference.kind {
                AccountKind::KooDriveAccount => namespace.to_string(),
                AccountKind::ClusterKooDriveAccount => String::new(),
            },
            name: reference.name.clone(),
        }
    }

    fn of<K: Account>(account: &K) -> AccountId {
        AccountId {
            kind: K::KIND,
            namespace: account.namespace().unwrap_or_default(),
            name: account.name_any(),
        }
    }

    /// `KooDriveAccount team-a/x` or `ClusterKooDriveAccount x`, for messages.
    pub fn describe(&self) -> String {
        match self.kind {
            AccountKind::KooDriveAccount => {
                format!("KooDriveAccount {}/{}", self.namespace, self.name)
            }
            AccountKind::ClusterKooDriveAccount => format!("ClusterKooDriveAccount {}", self.name),
        }
    }
}

/// What the account controller and the resolution need of either kind.
pub trait Account:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    const KIND: AccountKind;
    fn endpoint(&self) -> Option<&str>;
    fn credentials_ref(&self) -> CredentialsRef;
    /// The credentials Secret's namespace; `cluster_default` is the operator's namespace for
    /// ClusterKooDriveAccount Secrets.
    fn secret_namespace(&self, cluster_default: Option<&str>) -> Option<String>;
    fn limits(&self) -> Option<&AccountLimits>;
    /// The namespaces a ClusterKooDriveAccount allows; `None` for a KooDriveAccount.
    fn allowed_namespaces(&self) -> Option<&AllowedNamespaces>;
    fn account_status(&self) -> Option<&AccountStatus>;
    /// The API to write this object's status through.
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;
}

impl Account for KooDriveAccount {
    const KIND: AccountKind = AccountKind::KooDriveAccount;
    fn endpoint(&self) -> Option<&str> {
        self.spec.endpoint.as_deref()
    }
    fn credentials_ref(&self) -> CredentialsRef {
        self.spec.credentials_ref.clone()
    }
    fn secret_namespace(&self, _: Option<&str>) -> Option<String> {
        self.namespace()
    }
    fn limits(&self) -> Option<&AccountLimits> {
        self.spec.limits.as_ref()
    }
    fn allowed_namespaces(&self) -> Option<&AllowedNamespaces> {
        None
    }
    fn account_status(&self) -> Option<&AccountStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
        match namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        }
    }
}

impl Account for ClusterKooDriveAccount {
    const KIND: AccountKind = AccountKind::ClusterKooDriveAccount;
    fn endpoint(&self) -> Option<&str> {
        self.spec.endpoint.as_deref()
    }
    fn credentials_ref(&self) -> CredentialsRef {
        self.spec.credentials_ref.credentials_ref()
    }
    fn secret_namespace(&self, cluster_default: Option<&str>) -> Option<String> {
        self.spec
            .credentials_ref
            .namespace
            .clone()
            .or_else(|| cluster_default.map(str::to_string))
    }
    fn limits(&self) -> Option<&AccountLimits> {
        self.spec.limits.as_ref()
    }
    fn allowed_namespaces(&self) -> Option<&AllowedNamespaces> {
        Some(&self.spec.allowed_namespaces)
    }
    fn account_status(&self) -> Option<&AccountStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
}

/// A limiter's settings, to notice when an account's limits change.
type LimitKey = (usize, u64);

/// Who uses what, as last reconciled.
#[derive(Default)]
struct Index {
    account_of: HashMap<Key, AccountId>,
    userbatches_of: HashMap<AccountId, HashSet<Key>>,
    secret_of: HashMap<AccountId, Key>,
    accounts_reading: HashMap<Key, HashSet<AccountId>>,
}

/// Where re-triggers go: the UserBatch controller and the two account controllers.
struct Triggers {
    userbatches: UnboundedSender<ObjectRef<Meta>>,
    namespaced: UnboundedSender<ObjectRef<KooDriveAccount>>,
    cluster: UnboundedSender<ObjectRef<ClusterKooDriveAccount>>,
}

/// The other ends of the triggers, for the controllers' `reconcile_on`.
pub struct Receivers {
    pub userbatches: UnboundedReceiver<ObjectRef<Meta>>,
    pub namespaced: UnboundedReceiver<ObjectRef<KooDriveAccount>>,
    pub cluster: UnboundedReceiver<ObjectRef<ClusterKooDriveAccount>>,
}

/// The accounts as the UserBatch controller sees them: the watched accounts and namespaces,
/// the per-account limiters, and who uses what.
pub struct Registry {
    namespaced: Store<KooDriveAccount>,
    /// `None` when the operator watches one namespace: it has no cluster-wide permissions,
    /// so it neither reads nor uses ClusterKooDriveAccounts.
    cluster: Option<Store<ClusterKooDriveAccount>>,
    /// Namespace labels, for the cluster accounts' selectors (`None` like `cluster`).
    namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    default_limits: LimitKey,
    limiters: Mutex<HashMap<AccountId, (LimitKey, Arc<RequestLimiter>)>>,
    index: Mutex<Index>,
    /// A fingerprint of what each account looked like to its UserBatches when last seen.
    seen: Mutex<HashMap<AccountId, u64>>,
    triggers: Triggers,
    /// Per-account backoff of failed checks, apart from the UserBatches' (names may repeat
    /// across kinds).
    pub backoff: Backoff<AccountId>,
}

/// What a UserBatch that uses an account sends with.
pub struct AccountTarget {
    pub id: AccountId,
    /// The endpoint, or why it is not trusted.
    pub endpoint: Result<String, String>,
    pub secret_namespace: String,
    pub credentials_ref: CredentialsRef,
    pub limiter: Arc<RequestLimiter>,
}

impl Registry {
    /// A registry over the watched stores; the receivers feed the controllers.
    pub fn new(
        namespaced: Store<KooDriveAccount>,
        cluster: Option<Store<ClusterKooDriveAccount>>,
        namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
        settings: &super::Settings,
    ) -> (Registry, Receivers) {
        let (userbatches, userbatches_rx) = unbounded();
        let (namespaced_tx, namespaced_rx) = unbounded();
        let (cluster_tx, cluster_rx) = unbounded();
        let registry = Registry {
            namespaced,
            cluster,
            namespaces,
            default_limits: limit_key(settings.max_in_flight, settings.requests_per_second),
            limiters: Mutex::default(),
            index: Mutex::default(),
            seen: Mutex::default(),
            triggers: Triggers {
                userbatches,
                namespaced: namespaced_tx,
                cluster: cluster_tx,
            },
            backoff: Backoff::new(settings.retry_base_delay, settings.retry_max_delay),
        };
        (
            registry,
            Receivers {
                userbatches: userbatches_rx,
                namespaced: namespaced_rx,
                cluster: cluster_rx,
            },
        )
    }

    /// A registry that knows no account (no watch feeds it): every accountRef is
    /// AccountNotFound. For a context built without the account controllers.
    pub fn unwatched(settings: &super::Settings) -> Registry {
        let (namespaced, _) = kube::runtime::reflector::store();
        let (cluster, _) = kube::runtime::reflector::store();
        let (namespaces, _) = kube::runtime::reflector::store();
        Registry::new(namespaced, Some(cluster), Some(namespaces), settings).0
    }

    /// The request limiter of an account, created on first use and replaced when its limits
    /// change. Unset limits take the operator's `--max-in-flight` and
    /// `--requests-per-second`.
    pub fn limiter(&self, id: &AccountId, limits: Option<&AccountLimits>) -> Arc<RequestLimiter> {
        let (default_in_flight, default_rate) = self.default_limits;
        let key = limit_key(
            limits
                .and_then(|l| l.max_in_flight)
                .map_or(default_in_flight, |n| n as usize),
            limits
                .and_then(|l| l.requests_per_second)
                .unwrap_or(f64::from_bits(default_rate)),
        );
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, limiter)) = limiters.get(id)
            && *current == key
        {
            return limiter.clone();
        }
        let limiter = Arc::new(RequestLimiter::new(key.0, f64::from_bits(key.1)));
        limiters.insert(id.clone(), (key, limiter.clone()));
        limiter
    }

    /// Resolves the account a UserBatch in `namespace` names: what to send with, or why not
    /// (see [`resolve::decide`]).
    pub fn resolve(
        &self,
        namespace: &str,
        reference: &AccountRef,
        endpoints: &super::endpoints::Trusted,
        cluster_secret_namespace: Option<&str>,
    ) -> Result<AccountTarget, Blocker> {
        let id = AccountId::named_by(namespace, reference);
        match reference.kind {
            AccountKind::KooDriveAccount => {
                let account = self
                    .namespaced
                    .get(&ObjectRef::new(&reference.name).within(namespace));
                self.decide(namespace, reference, id, account.as_deref())
                    .and_then(|(id, account)| self.account_target(id, account, endpoints, None))
            }
            AccountKind::ClusterKooDriveAccount => {
                let account = self
                    .cluster
                    .as_ref()
                    .and_then(|store| store.get(&ObjectRef::new(&reference.name)));
                self.decide(namespace, reference, id, account.as_deref())
                    .and_then(|(id, account)| {
                        self.account_target(id, account, endpoints, cluster_secret_namespace)
                    })
            }
        }
    }

    /// Decides, then hands the account back for [`Registry::account_target`].
    fn decide<'a, K: Account>(
        &self,
        namespace: &str,
        reference: &AccountRef,
        id: AccountId,
        account: Option<&'a K>,
    ) -> Result<(AccountId, &'a K), Blocker> {
        let watched = if K::KIND == AccountKind::ClusterKooDriveAccount && self.cluster.is_none() {
            resolve::ClusterAccounts::NotWatched
        } else {
            resolve::ClusterAccounts::Watched
        };
        let labels = self.namespace_labels(namespace);
        let view = account.map(|a| resolve::AccountView {
            generation: a.meta().generation,
            status: a.account_status(),
            allowed: a.allowed_namespaces(),
        });
        resolve::decide(namespace, &labels, reference, view, watched)?;
        match account {
            Some(account) => Ok((id, account)),
            // `decide` refuses a missing account; this only keeps the types honest.
            None => Err(Blocker::new(
                Reason::AccountNotFound,
                format!("{} does not exist", id.describe()),
            )),
        }
    }

    fn account_target<K: Account>(
        &self,
        id: AccountId,
        account: &K,
        endpoints: &super::endpoints::Trusted,
        cluster_secret_namespace: Option<&str>,
    ) -> Result<AccountTarget, Blocker> {
        let Some(secret_namespace) = account.secret_namespace(cluster_secret_namespace) else {
            return Err(Blocker::new(
                Reason::AccountNotReady,
                format!(
                    "{} names no namespace for its credentials Secret; the UserBatch waits for it",
                    id.describe()
                ),
            ));
        };
        Ok(AccountTarget {
            endpoint: endpoints.resolve(account.endpoint()),
            secret_namespace,
            credentials_ref: account.credentials_ref(),
            limiter: self.limiter(&id, account.limits()),
            id,
        })
    }

    /// A namespace's labels, as the watch last saw them (none when unknown).
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .as_ref()
            .and_then(|store| store.get(&ObjectRef::new(namespace)))
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Remembers which account a UserBatch uses (`None`: none), so a change to the account
    /// re-triggers it.
    pub fn set_userbatch_account(&self, userbatch: &Key, account: Option<AccountId>) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = index.account_of.remove(userbatch)
            && let Some(users) = index.userbatches_of.get_mut(&old)
        {
            users.remove(userbatch);
            if users.is_empty() {
                index.userbatches_of.remove(&old);
            }
        }
        if let Some(account) = account {
            index
                .userbatches_of
                .entry(account.clone())
                .or_default()
                .insert(userbatch.clone());
            index.account_of.insert(userbatch.clone(), account);
        }
    }

    /// Remembers which Secret an account reads (`None`: none), so a change to it re-checks
    /// the account.
    fn set_account_secret(&self, account: &AccountId, secret: Option<Key>) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = index.secret_of.remove(account)
            && let Some(readers) = index.accounts_reading.get_mut(&old)
        {
            readers.remove(account);
            if readers.is_empty() {
                index.accounts_reading.remove(&old);
            }
        }
        if let Some(secret) = secret {
            index
                .accounts_reading
                .entry(secret.clone())
                .or_default()
                .insert(account.clone());
            index.secret_of.insert(account.clone(), secret);
        }
    }

    /// A Secret was created, changed or deleted: re-check the accounts that read it.
    pub fn secret_touched(&self, namespace: &str, name: &str) {
        let accounts: Vec<AccountId> = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .accounts_reading
                .get(&(namespace.to_string(), name.to_string()))
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default()
        };
        for account in accounts {
            self.recheck(&account);
        }
    }

    /// Asks the account controller to check an account again (a UserBatch saw its
    /// credentials refused; the guard answers the check without a request).
    pub fn recheck(&self, account: &AccountId) {
        // A closed channel means the controllers are stopping: nothing left to trigger.
        match account.kind {
            AccountKind::KooDriveAccount => {
                let _ = self
                    .triggers
                    .namespaced
                    .unbounded_send(ObjectRef::new(&account.name).within(&account.namespace));
            }
            AccountKind::ClusterKooDriveAccount => {
                let _ = self
                    .triggers
                    .cluster
                    .unbounded_send(ObjectRef::new(&account.name));
            }
        }
    }

    /// An account was seen (created, changed, its status written): re-trigger its
    /// UserBatches if what they depend on changed — its generation, status or allowed
    /// namespaces.
    pub fn account_seen<K: Account>(&self, account: &K) {
        let id = AccountId::of(account);
        let mut hasher = DefaultHasher::new();
        account.meta().generation.hash(&mut hasher);
        serde_json::to_string(&(account.account_status(), account.allowed_namespaces()))
            .unwrap_or_default()
            .hash(&mut hasher);
        let fingerprint = hasher.finish();
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.insert(id.clone(), fingerprint) != Some(fingerprint)
        };
        if changed {
            self.trigger_userbatches_of(&id);
        }
    }

    /// An account was deleted: its UserBatches learn it, its limiter and records go.
    pub fn account_deleted<K: Account>(&self, account: &K) {
        let id = AccountId::of(account);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.set_account_secret(&id, None);
        self.backoff.succeeded(&id);
        self.trigger_userbatches_of(&id);
    }

    /// A namespace's labels may have changed: re-trigger its UserBatches that use a
    /// ClusterKooDriveAccount (whose selector may now match, or no longer).
    pub fn namespace_touched(&self, namespace: &str) {
        let userbatches: Vec<Key> = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .account_of
                .iter()
                .filter(|((ns, _), account)| {
                    ns == namespace && account.kind == AccountKind::ClusterKooDriveAccount
                })
                .map(|(key, _)| key.clone())
                .collect()
        };
        for (namespace, name) in userbatches {
            let _ = self
                .triggers
                .userbatches
                .unbounded_send(ObjectRef::new(&name).within(&namespace));
        }
    }

    fn trigger_userbatches_of(&self, account: &AccountId) {
        let userbatches: Vec<Key> = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .userbatches_of
                .get(account)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default()
        };
        for (namespace, name) in userbatches {
            let _ = self
                .triggers
                .userbatches
                .unbounded_send(ObjectRef::new(&name).within(&namespace));
        }
    }
}

fn limit_key(max_in_flight: usize, requests_per_second: f64) -> LimitKey {
    (max_in_flight.max(1), requests_per_second.to_bits())
}

/// Why an account reconcile did not finish; the error policy backs the account off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed while {action}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The status says why; the check is repeated with backoff.
    #[error("{reason}: {message}")]
    Retry {
        reason: Reason,
        message: String,
        retry_after: Option<Duration>,
    },
}

/// The outcome of a check: a message for `Ready=True`, or what stands in the way; and when a
/// transient problem may be retried no sooner than.
struct Checked {
    endpoint: Option<String>,
    outcome: Result<String, Blocker>,
    retry_after: Option<Duration>,
}

/// One reconcile of one account: check its credentials, write what was found.
pub async fn reconcile<K: Account>(account: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let id = AccountId::of(&*account);
    let span = tracing::info_span!("account", account = %id.describe());
    let started = Instant::now();
    let checked = async {
        let checked = check(&*account, &id, &ctx).await?;
        write_status(&*account, &checked, &ctx).await?;
        Ok::<_, Error>(checked)
    }
    .instrument(span)
    .await?;
    let label = match &checked.outcome {
        Ok(_) => "success",
        Err(b) if b.reason.is_stalled() => "stalled",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciled(label, started.elapsed().as_secs_f64());
    let settings = &ctx.settings;
    match checked.outcome {
        Ok(_) => {
            ctx.accounts.backoff.succeeded(&id);
            Ok(Action::requeue(settings.account_check_interval))
        }
        // Nothing is sent with refused credentials: a Secret change re-checks the account;
        // otherwise one look after the guard's pause.
        Err(blocker) if blocker.reason == Reason::CredentialsInvalid => {
            ctx.accounts.backoff.succeeded(&id);
            Ok(Action::requeue(settings.auth_retry_interval))
        }
        Err(blocker)
            if matches!(
                blocker.reason,
                Reason::KooDriveUnavailable | Reason::ClockSkew | Reason::PermissionDenied
            ) =>
        {
            Err(Error::Retry {
                reason: blocker.reason,
                message: blocker.message,
                retry_after: checked.retry_after,
            })
        }
        // A missing Secret, an untrusted endpoint, a rejected check: a change to the account
        // or its Secret re-triggers it.
        Err(_) => {
            ctx.accounts.backoff.succeeded(&id);
            Ok(Action::await_change())
        }
    }
}

/// Synchronous, as kube's Controller requires: the delay before the next check.
pub fn error_policy<K: Account>(account: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let id = AccountId::of(&*account);
    let retry_after = match error {
        Error::Retry { retry_after, .. } => *retry_after,
        Error::Kube { .. } => None,
    };
    let delay = ctx.accounts.backoff.failed(&id, retry_after);
    ctx.metrics.reconcile_error(match error {
        Error::Retry { reason, .. } => reason.as_str(),
        Error::Kube { .. } => "KubeApi",
    });
    tracing::warn!(
        account = %id.describe(),
        error = %crate::report::chain(error),
        retry_in = ?delay,
        "account check failed"
    );
    Action::requeue(delay)
}

/// Resolves the endpoint and credentials and asks KooDrive whether it accepts them.
async fn check<K: Account>(account: &K, id: &AccountId, ctx: &Context) -> Result<Checked, Error> {
    let blocked = |endpoint: Option<String>, blocker: Blocker| Checked {
        endpoint,
        outcome: Err(blocker),
        retry_after: None,
    };
    let endpoint = match ctx.endpoints.resolve(account.endpoint()) {
        Ok(endpoint) => endpoint,
        Err(message) => {
            ctx.accounts.set_account_secret(id, None);
            return Ok(blocked(
                None,
                Blocker::new(Reason::EndpointNotAllowed, message),
            ));
        }
    };
    let Some(secret_namespace) =
        account.secret_namespace(ctx.settings.cluster_account_secret_namespace.as_deref())
    else {
        ctx.accounts.set_account_secret(id, None);
        return Ok(blocked(
            Some(endpoint),
            Blocker::new(
                Reason::InvalidSpec,
                "spec.credentialsRef.namespace is not set and the operator has no namespace of its own for ClusterKooDriveAccount Secrets; set spec.credentialsRef.namespace, or run the operator with --cluster-account-secret-namespace (POD_NAMESPACE in a cluster)",
            ),
        ));
    };
    let reference = account.credentials_ref();
    ctx.accounts
        .set_account_secret(id, Some((secret_namespace.clone(), reference.name.clone())));
    let mut secrets = SecretReader::new(
        ctx.client.clone(),
        &secret_namespace,
        &ctx.secrets,
        &ctx.secret_versions,
    );
    let credentials = match secrets.credentials(&reference).await {
        Ok(credentials) => credentials,
        Err(SecretRead::Api(source)) => {
            return Err(Error::Kube {
                action: "reading the account's credentials Secret",
                source,
            });
        }
        Err(SecretRead::Problem(problem)) => {
            return Ok(blocked(
                Some(endpoint),
                super::reconcile::secret_blocker(&problem, Reason::CredentialsNotFound),
            ));
        }
    };
    let version = secrets.version_of(&reference.name);
    let limiter = ctx.accounts.limiter(id, account.limits());
    let client = match ctx.koodrive_client_limited(
        &endpoint,
        &version,
        credentials.clone(),
        Some(limiter),
    ) {
        Ok(client) => client,
        Err(e) => {
            return Ok(blocked(
                Some(endpoint.clone()),
                Blocker::new(
                    Reason::InvalidSpec,
                    format!("endpoint {endpoint:?}: {}", e.message()),
                ),
            ));
        }
    };
    // The same credential, as far as the guard is concerned, as every UserBatch request
    // signed with this Secret version.
    let key = CredentialKey {
        endpoint: endpoint.clone(),
        access_key: credentials.access_key.clone(),
        user_id: credentials.user_id.clone(),
        secret_version: format!("{secret_namespace}/{}@{version}", reference.name),
    };
    let secret = format!("Secret {secret_namespace}/{}", reference.name);
    let ticket = match ctx.guard.admit(&key).await {
        Ok(ticket) => ticket,
        // Refused before (by this check or a UserBatch's request): said the same way, so a
        // check that sends nothing leaves the status as it was.
        Err(held) if !held.clock => {
            return Ok(blocked(
                Some(endpoint),
                Blocker::new(Reason::CredentialsInvalid, refused(&held.message, &secret)),
            ));
        }
        Err(held) => {
            return Ok(blocked(
                Some(endpoint),
                super::reconcile::guard_blocker(&held),
            ));
        }
    };
    let started = Instant::now();
    let answer = client.check_credentials().await;
    let seconds = started.elapsed().as_secs_f64();
    let (verdict, outcome) = match &answer {
        Ok(_) => (AuthVerdict::Passed, "success"),
        Err(err) => {
            tracing::warn!(account = %id.describe(), error = %crate::report::chain(err), "KooDrive did not accept the credential check");
            (
                super::reconcile::auth_verdict(err),
                super::reconcile::outcome_label(err.class()),
            )
        }
    };
    ctx.metrics.koodrive_call("check", outcome, seconds);
    ctx.guard.report(
        ticket,
        verdict,
        &answer
            .as_ref()
            .err()
            .map(|e| e.message())
            .unwrap_or_default(),
    );
    ctx.metrics
        .credential_verdict(&credentials.access_key, verdict);
    let (outcome, retry_after) = match answer {
        Ok(_) => (
            Ok(format!(
                "KooDrive accepted the credentials in {secret} (checked with a read that creates nothing)"
            )),
            None,
        ),
        Err(err) => {
            let message = err.message();
            match err.class() {
                ErrorClass::Authentication => (
                    Err(Blocker::new(
                        Reason::CredentialsInvalid,
                        refused(&message, &secret),
                    )),
                    None,
                ),
                ErrorClass::ClockSkew => (Err(Blocker::new(Reason::ClockSkew, message)), None),
                ErrorClass::Transient { retry_after } => (
                    Err(Blocker::new(Reason::KooDriveUnavailable, message)),
                    retry_after,
                ),
                ErrorClass::InDoubt => (
                    Err(Blocker::new(Reason::KooDriveUnavailable, message)),
                    None,
                ),
                ErrorClass::Rejected => (
                    Err(Blocker::new(
                        Reason::KooDriveRejected,
                        format!("KooDrive refused the credential check: {message}"),
                    )),
                    None,
                ),
                ErrorClass::Invalid => (Err(Blocker::new(Reason::InvalidSpec, message)), None),
            }
        }
    };
    Ok(Checked {
        endpoint: Some(endpoint),
        outcome,
        retry_after,
    })
}

/// The account's message for refused credentials.
fn refused(message: &str, secret: &str) -> String {
    format!(
        "{message} (in {secret}); nothing is sent with these credentials until the Secret changes (to protect the AK/SK from Huawei's lockout)"
    )
}

/// Writes the account's status when it changed, and announces a new Ready state.
async fn write_status<K: Account>(
    account: &K,
    checked: &Checked,
    ctx: &Context,
) -> Result<(), Error> {
    let previous = account.account_status().cloned().unwrap_or_default();
    let generation = account.meta().generation;
    let desired = resolve::account_conditions(&checked.outcome);
    let next = AccountStatus {
        observed_generation: generation,
        endpoint: checked.endpoint.clone(),
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            generation,
            &Time(jiff::Timestamp::now()),
        ),
    };
    if next == previous {
        return Ok(());
    }
    // A merge patch of the whole status, with explicit nulls so a field that went away is
    // removed (the operator is the status's only writer).
    let mut status = serde_json::to_value(&next).unwrap_or_default();
    if let Some(fields) = status.as_object_mut() {
        for field in ["observedGeneration", "endpoint", "conditions"] {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    let api = K::api(ctx.client.clone(), account.namespace().as_deref());
    api.patch_status(
        &account.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "writing the account's status",
        source,
    })?;
    let before = conditions::find(&previous.conditions, ConditionType::Ready)
        .map(|c| (c.status.clone(), c.reason.clone()));
    let now = desired.first();
    if let Some(now) = now
        && before.as_ref().map(|(s, r)| (s.as_str(), r.as_str()))
            != Some((
                if now.status { "True" } else { "False" },
                now.reason.as_str(),
            ))
    {
        let event = if now.status {
            Some(PlannedEvent {
                severity: Severity::Normal,
                reason: EventReason::CredentialsVerified,
                action: EventAction::CheckCredentials,
                note: now.message.clone(),
            })
        } else {
            EventReason::from_condition(now.reason).map(|reason| PlannedEvent {
                severity: Severity::Warning,
                reason,
                action: EventAction::CheckCredentials,
                note: now.message.clone(),
            })
        };
        if let Some(event) = event {
            ctx.events.publish(&account.object_ref(&()), &event).await;
        }
    }
    Ok(())
}
