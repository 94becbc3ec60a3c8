//! The UserBatch controller: watches UserBatches and the Secrets and accounts they reference,
//! and turns pending users into KooDrive tasks — each user at most once. Beside it, the
//! account controllers check the credentials of KooDriveAccounts and ClusterKooDriveAccounts.
//!
//! A reconcile is observe → plan → execute:
//! - [`reconcile`] — the executor: reads what it needs, performs the plan's I/O in the
//!   at-most-once order, writes the status.
//! - [`plan`] — the pure core: what to send and poll, how each answer changes the status.
//! - [`status`] — pure status computation (phase, conditions, summary);
//!   [`conditions`] — the rules for updating conditions.
//! - [`secrets`] — credentials and passwords from Secrets, read on demand.
//! - [`accounts`] — KooDriveAccount and ClusterKooDriveAccount: their credential check and
//!   what a UserBatch naming one sends with.
//! - [`guard`] — one authentication guard per credential (the AK/SK lockout).
//! - [`endpoints`] — which KooDrive endpoints the operator may talk to.
//! - [`backoff`] — per-UserBatch backoff; [`events`] — Kubernetes Events.

pub mod accounts;
pub mod backoff;
pub mod conditions;
pub mod endpoints;
pub mod events;
pub mod guard;
pub mod plan;
pub mod reconcile;
pub mod secrets;
pub mod status;

use crate::crd::account::{ClusterKooDriveAccount, KooDriveAccount};
use crate::crd::{Phase, UserBatch};
use crate::metrics::Metrics;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use koodrive_client::{RequestLimiter, ServerClock};
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The controller's name, as it appears in Events and field managers.
pub const CONTROLLER_NAME: &str = "koodrive-operator";

/// Most users one change may delete without confirmation, by default. Offboarding usually
/// removes a handful of people per change; ten is above that and far below what a mistaken
/// edit (or deleting a whole UserBatch) removes, so routine removals flow and mass deletions
/// — irreversible, files included — wait for a human to confirm the exact count.
pub const DEFAULT_MAX_DELETIONS: usize = 10;

/// How often a task overdue for results is still looked at.
pub const OVERDUE_POLL_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Settings of a controller run (from `koodrive-operator run`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Empty: all namespaces.
    pub watch_namespace: Option<String>,
    pub default_endpoint: String,
    /// Endpoints a UserBatch may name in `spec.endpoint`, besides the default.
    pub allowed_endpoints: Vec<String>,
    pub max_batch_size: usize,
    pub max_in_flight: usize,
    pub requests_per_second: f64,
    pub poll_interval: Duration,
    /// First delay after a failure of one UserBatch; doubles per consecutive failure.
    pub retry_base_delay: Duration,
    /// Cap of the per-UserBatch backoff.
    pub retry_max_delay: Duration,
    /// How long after an ambiguous create `inDoubtPolicy: Resubmit` resends its users.
    pub resubmit_delay: Duration,
    /// How long a task may take to report all its results before it is called overdue.
    pub results_timeout: Duration,
    /// How long credentials refused by KooDrive are left alone (at least 5 minutes).
    pub auth_retry_interval: Duration,
    /// Most users one change may delete in KooDrive without `koodrive.io/confirm-deletions`.
    pub max_deletions: usize,
    /// Where ClusterKooDriveAccount Secrets are when the account names no namespace: the
    /// operator's own namespace.
    pub cluster_account_secret_namespace: Option<String>,
    /// How often an account whose credentials were accepted is checked again (a change to
    /// the account or its Secret checks it at once).
    pub account_check_interval: Duration,
    /// How the KooDrive client connects and retries within one call.
    pub koodrive: koodrive_client::ClientConfig,
    /// Reported in Events (`reportingInstance`): the pod name.
    pub instance: Option<String>,
}

impl Settings {
    pub fn new(default_endpoint: impl Into<String>) -> Self {
        Self {
            watch_namespace: None,
            default_endpoint: default_endpoint.into(),
            allowed_endpoints: Vec::new(),
            max_batch_size: koodrive_client::MAX_USERS_PER_REQUEST,
            max_in_flight: 4,
            requests_per_second: 5.0,
            poll_interval: Duration::from_secs(30),
            retry_base_delay: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(300),
            resubmit_delay: Duration::from_secs(10 * 60),
            results_timeout: Duration::from_secs(60 * 60),
            auth_retry_interval: Duration::from_secs(15 * 60),
            max_deletions: DEFAULT_MAX_DELETIONS,
            cluster_account_secret_namespace: None,
            account_check_interval: Duration::from_secs(6 * 3600),
            koodrive: koodrive_client::ClientConfig::default(),
            instance: None,
        }
    }

    fn limits(&self) -> plan::Limits {
        plan::Limits {
            max_batch_size: self.max_batch_size,
            resubmit_delay: self.resubmit_delay,
            results_timeout: self.results_timeout,
            max_deletions: self.max_deletions,
        }
    }
}

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the UserBatch CRD (userbatches.koodrive.io) is not installed in this cluster; install the operator's CRDs with `kubectl apply -f crds/` (or `koodrive-operator crd | kubectl apply -f -`)"
    )]
    CrdNotInstalled,
    #[error(
        "the {kind} CRD ({plural}.koodrive.io) is not installed in this cluster; install the operator's CRDs with `kubectl apply -f crds/` (or `koodrive-operator crd | kubectl apply -f -`)"
    )]
    AccountCrdNotInstalled {
        kind: &'static str,
        plural: &'static str,
    },
    #[error("cannot list UserBatches to check the CRD is installed")]
    CrdCheck(#[source] kube::Error),
    #[error("cannot list {kind}s to check their CRD is installed")]
    AccountCrdCheck {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("invalid KooDrive endpoint settings")]
    Endpoints(#[source] endpoints::EndpointError),
}

/// A UserBatch's namespace and name.
pub type Key = (String, String);

/// The objects the controller is driven by: UserBatch metadata only (a reconcile reads the
/// whole object when it needs it, so memory does not grow with the users listed).
pub type Meta = PartialObjectMeta<UserBatch>;

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub endpoints: endpoints::Trusted,
    pub events: events::Publisher,
    pub guard: guard::AuthGuard,
    /// The limit on HTTP requests to KooDrive, across every UserBatch that names its own
    /// credentials Secret (each account has its own, see [`accounts::Registry::limiter`]).
    pub limiter: Arc<RequestLimiter>,
    /// The accounts, their limiters, and who uses what.
    pub accounts: accounts::Registry,
    pub backoff: backoff::Backoff<Key>,
    /// KooDrive clients by endpoint and credentials Secret version, so a reconcile reuses
    /// connections instead of opening new TLS sessions each time.
    clients: Mutex<HashMap<String, koodrive_client::Client>>,
    /// KooDrive's clock per endpoint, shared by that endpoint's clients.
    clocks: Mutex<HashMap<String, Arc<ServerClock>>>,
    pub secrets: secrets::SecretCache,
    /// Every Secret's metadata (names and versions, never data), from the watch.
    pub secret_versions: Store<PartialObjectMeta<Secret>>,
    /// Which UserBatches reference which Secrets, as last reconciled.
    references: Mutex<References>,
    /// Last phase and conditions seen per UserBatch, to keep the gauges exact.
    observed: Mutex<HashMap<Key, crate::metrics::ObjectState>>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the process is stopping: loops that would otherwise retry forever
    /// (recording an answer against a vanished API server) give up.
    pub shutdown: CancellationToken,
}

/// Secret → the UserBatches that reference it, and back.
#[derive(Default)]
struct References {
    by_secret: HashMap<Key, HashSet<Key>>,
    by_userbatch: HashMap<Key, Vec<Key>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        secret_versions: Store<PartialObjectMeta<Secret>>,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let instance = settings
            .instance
            .clone()
            .unwrap_or_else(crate::leader::identity);
        let endpoints =
            endpoints::Trusted::new(&settings.default_endpoint, &settings.allowed_endpoints)
                .map_err(StartError::Endpoints)?;
        Ok(Self {
            accounts: accounts::Registry::unwatched(&settings),
            events: events::Publisher::new(client.clone(), CONTROLLER_NAME, &instance),
            guard: guard::AuthGuard::new(settings.auth_retry_interval),
            limiter: Arc::new(RequestLimiter::new(
                settings.max_in_flight,
                settings.requests_per_second,
            )),
            backoff: backoff::Backoff::new(settings.retry_base_delay, settings.retry_max_delay),
            endpoints,
            client,
            settings,
            clients: Mutex::default(),
            clocks: Mutex::default(),
            secrets: secrets::SecretCache::default(),
            secret_versions,
            references: Mutex::default(),
            observed: Mutex::default(),
            metrics,
            shutdown,
        })
    }

    /// The context with the accounts the watches feed (instead of none).
    pub fn with_accounts(mut self, accounts: accounts::Registry) -> Self {
        self.accounts = accounts;
        self
    }

    /// A KooDrive client for `endpoint` and these credentials, reused while the Secret's
    /// version is unchanged.
    pub fn koodrive_client(
        &self,
        endpoint: &str,
        secret_version: &str,
        credentials: koodrive_client::Credentials,
    ) -> Result<koodrive_client::Client, koodrive_client::Error> {
        self.koodrive_client_limited(endpoint, secret_version, credentials, None)
    }

    /// [`Context::koodrive_client`] whose requests wait for `limiter` (an account's) instead
    /// of the operator-wide one.
    pub fn koodrive_client_limited(
        &self,
        endpoint: &str,
        secret_version: &str,
        credentials: koodrive_client::Credentials,
        limiter: Option<Arc<RequestLimiter>>,
    ) -> Result<koodrive_client::Client, koodrive_client::Error> {
        let limiter = limiter.unwrap_or_else(|| self.limiter.clone());
        // The limiter is part of the key: an account whose limits change gets a new one.
        let key = format!(
            "{endpoint}|{}|{secret_version}|{:p}",
            credentials.access_key,
            Arc::as_ptr(&limiter)
        );
        if let Ok(clients) = self.clients.lock()
            && let Some(client) = clients.get(&key)
        {
            return Ok(client.clone());
        }
        let clock = {
            let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
            clocks.entry(endpoint.to_string()).or_default().clone()
        };
        let config = koodrive_client::ClientConfig {
            limiter: Some(limiter),
            clock: Some(clock),
            observer: Some(self.metrics.clone()),
            ..self.settings.koodrive.clone()
        };
        let client = koodrive_client::Client::new(endpoint, credentials, config)?;
        if let Ok(mut clients) = self.clients.lock() {
            // Old entries belong to rotated credentials; a small cache is enough.
            if clients.len() >= 256 {
                clients.clear();
            }
            clients.insert(key, client.clone());
        }
        Ok(client)
    }

    /// Remembers which Secrets a UserBatch references, so a change to one of them
    /// re-triggers exactly the UserBatches that use it.
    pub fn set_references(&self, userbatch: &Key, secrets: Vec<Key>) {
        let mut refs = self.references.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = refs.by_userbatch.remove(userbatch) {
            for secret in old {
                if let Some(users) = refs.by_secret.get_mut(&secret) {
                    users.remove(userbatch);
                    if users.is_empty() {
                        refs.by_secret.remove(&secret);
                    }
                }
            }
        }
        for secret in &secrets {
            refs.by_secret
                .entry(secret.clone())
                .or_default()
                .insert(userbatch.clone());
        }
        if !secrets.is_empty() {
            refs.by_userbatch.insert(userbatch.clone(), secrets);
        }
    }

    /// The UserBatches that reference a Secret.
    fn userbatches_using(&self, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<Meta>> {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        let refs = self.references.lock().unwrap_or_else(|p| p.into_inner());
        refs.by_secret
            .get(&key)
            .into_iter()
            .flatten()
            .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
            .collect()
    }

    /// Updates the per-UserBatch gauges with what was just written.
    pub fn observe(&self, key: &Key, state: crate::metrics::ObjectState) {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let previous = observed.insert(key.clone(), state.clone());
        self.metrics
            .object_state(key, previous.as_ref(), Some(&state));
    }

    /// Forgets a deleted UserBatch: its gauges, references and backoff.
    pub fn forget(&self, key: &Key) {
        let previous = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            observed.remove(key)
        };
        self.metrics.object_state(key, previous.as_ref(), None);
        self.set_references(key, Vec::new());
        self.accounts.set_userbatch_account(key, None);
        self.backoff.succeeded(key);
    }
}

/// Checks the CRD is served; the message tells how to install it when it is not.
pub async fn check_crd_installed(api: &Api<Meta>) -> Result<(), StartError> {
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartError::CrdNotInstalled),
        Err(e) => Err(StartError::CrdCheck(e)),
    }
}

/// What starts a reconcile: a change to the spec, the annotations or the deletion state.
/// The operator's own status writes change none of these, so they never cut a backoff
/// short or wake the controller in a loop.
/// What `kubectl apply` puts in every object it writes: the whole object as last applied
/// (for a Secret, its data; for a 1000-user UserBatch, ~100 KB).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the controller never reads from the metadata it caches: managed fields (one
/// entry per field manager, listing every field it set) and kubectl's last-applied copy.
/// A metadata-only watch still carries both, so without this the caches would hold about
/// as much as full objects on a cluster managed with `kubectl apply` or server-side apply,
/// and Secret data, as applied, would sit in the Secret cache.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// What the Secret cache needs of a Secret: where it is and its version. A cluster holds
/// Secrets by the thousand (a Helm release is one, with labels and often annotations), and
/// all but a few are nobody's business here.
fn only_identity_and_version(secret: &mut PartialObjectMeta<Secret>) {
    let meta = &mut secret.metadata;
    *meta = kube::api::ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        ..Default::default()
    };
    secret.types = None;
}

fn trigger_predicate(meta: &Meta) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    meta.meta().generation.hash(&mut hasher);
    meta.meta().annotations.hash(&mut hasher);
    meta.meta().deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// Checks an account CRD is served; the message tells how to install it when it is not.
async fn check_account_crd_installed<K>(api: &Api<K>) -> Result<(), StartError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let (kind, plural) = if kind == "KooDriveAccount" {
        ("KooDriveAccount", "koodriveaccounts")
    } else {
        ("ClusterKooDriveAccount", "clusterkoodriveaccounts")
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(StartError::AccountCrdNotInstalled { kind, plural })
        }
        Err(source) => Err(StartError::AccountCrdCheck { kind, source }),
    }
}

/// What starts an account's check: a change to its spec or annotations (its own status
/// writes change neither).
fn account_predicate<K: Resource>(account: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    account.meta().generation.hash(&mut hasher);
    account.meta().annotations.hash(&mut hasher);
    Some(hasher.finish())
}

/// Tells the registry about an account event, so the UserBatches that use it follow.
fn account_event<K: accounts::Account>(registry: &accounts::Registry, event: &watcher::Event<K>) {
    match event {
        watcher::Event::Apply(account) | watcher::Event::InitApply(account) => {
            registry.account_seen(account)
        }
        watcher::Event::Delete(account) => registry.account_deleted(account),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// Runs one account kind's controller until `shutdown`.
async fn run_account_controller<K: accounts::Account>(
    api: Api<K>,
    (store, writer): (Store<K>, reflector::store::Writer<K>),
    pokes: futures::channel::mpsc::UnboundedReceiver<ObjectRef<K>>,
    context: Arc<Context>,
    shutdown: CancellationToken,
) {
    let registry = context.clone();
    let triggers = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| account_event(&registry.accounts, event))
        .applied_objects()
        .predicate_filter(account_predicate, Default::default());
    Controller::for_stream(triggers, store)
        .with_config(controller::Config::default().concurrency(4))
        // A changed Secret, or a UserBatch that saw the credentials refused, re-checks it.
        .reconcile_on(pokes)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            accounts::reconcile::<K>,
            accounts::error_policy::<K>,
            context,
        )
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %crate::report::chain(&err), "account reconcile loop");
            }
        })
        .await;
}

/// Waits until every store has its first full list, or `shutdown`. The readiness of a
/// store is a oneshot that wakes only its latest poller, so it is re-polled on a short tick
/// (which also re-polls the controllers sharing this task, should they be that poller).
async fn wait_until_synced(
    stores: Vec<Box<dyn Fn() -> bool + Send>>,
    shutdown: &CancellationToken,
) -> bool {
    let started = std::time::Instant::now();
    let mut warned = Duration::ZERO;
    loop {
        if stores.iter().all(|ready| ready()) {
            return true;
        }
        if started.elapsed() > warned + Duration::from_secs(10) {
            warned = started.elapsed();
            tracing::warn!(
                waited = ?warned,
                "still waiting for the first list of accounts and namespaces; UserBatches are reconciled once it arrives"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
}

/// Runs the controllers (UserBatches, KooDriveAccounts and, cluster-wide, the
/// ClusterKooDriveAccounts) until `shutdown` is cancelled. `on_synced` is called once the
/// UserBatch watch cache has its first full list (the readiness signal).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    on_synced: impl FnOnce() + Send + 'static,
) -> Result<(), StartError> {
    // Metadata-only APIs: the watches carry names, versions, generations and annotations,
    // never specs or Secret data.
    let (userbatches, secrets): (Api<Meta>, Api<PartialObjectMeta<Secret>>) =
        match &settings.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    check_crd_installed(&userbatches).await?;
    // Accounts are small and hold no secret: watched whole. Cluster accounts and namespace
    // labels only when the operator watches every namespace (with --watch-namespace it has
    // no cluster-wide permissions, and does not use ClusterKooDriveAccounts).
    let cluster_wide = settings.watch_namespace.is_none();
    let namespaced_accounts: Api<KooDriveAccount> = match &settings.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    check_account_crd_installed(&namespaced_accounts).await?;
    let cluster_accounts: Option<Api<ClusterKooDriveAccount>> =
        cluster_wide.then(|| Api::all(client.clone()));
    if let Some(api) = &cluster_accounts {
        check_account_crd_installed(api).await?;
    }
    let namespaces: Option<Api<PartialObjectMeta<Namespace>>> =
        cluster_wide.then(|| Api::all(client.clone()));

    let concurrency = reconcile_concurrency(&settings);
    let (secret_store, secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
    let (store, writer) = reflector::store::<Meta>();
    let (namespaced_store, namespaced_writer) = reflector::store::<KooDriveAccount>();
    let (cluster_store, cluster_writer) = reflector::store::<ClusterKooDriveAccount>();
    let (namespace_store, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let (registry, receivers) = accounts::Registry::new(
        namespaced_store.clone(),
        cluster_wide.then(|| cluster_store.clone()),
        cluster_wide.then(|| namespace_store.clone()),
        &settings,
    );
    let context = Arc::new(
        Context::new(client, settings, metrics, secret_store, shutdown.clone())?
            .with_accounts(registry),
    );

    let forget = context.clone();
    let triggers = watcher(userbatches, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(meta) = event {
                forget.forget(&(meta.namespace().unwrap_or_default(), meta.name_any()));
            }
        })
        .applied_objects()
        .predicate_filter(trigger_predicate, Default::default());
    // Secrets: metadata only. Their data is read when a UserBatch or an account needs it.
    let secret_notify = context.clone();
    let secret_changes = watcher(secrets, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(only_identity_and_version)
        .reflect(secret_writer)
        .touched_objects()
        .inspect_ok(move |secret| {
            secret_notify
                .accounts
                .secret_touched(&secret.namespace().unwrap_or_default(), &secret.name_any());
        });
    // Namespaces: metadata only (their labels, for the cluster accounts' selectors). Driven
    // on its own: UserBatches are reconciled only once this list is in.
    let namespace_notify = context.clone();
    let namespace_shutdown = shutdown.clone();
    let namespace_watch = async move {
        if let Some(api) = namespaces {
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(slim)
                .reflect(namespace_writer)
                .touched_objects()
                .take_until(namespace_shutdown.cancelled_owned())
                .for_each(|namespace| {
                    if let Ok(namespace) = namespace {
                        // New labels may allow (or no longer allow) a cluster account.
                        namespace_notify
                            .accounts
                            .namespace_touched(&namespace.name_any());
                    }
                    futures::future::ready(())
                })
                .await;
        }
    };

    let ready_store = store.clone();
    tokio::spawn(async move {
        // The store's readiness is a oneshot that wakes only its latest poller, and the
        // Controller polls it too; re-polling on a short tick observes it all the same.
        loop {
            match tokio::time::timeout(Duration::from_millis(50), ready_store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    on_synced();
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });

    let namespaced_controller = run_account_controller(
        namespaced_accounts,
        (namespaced_store.clone(), namespaced_writer),
        receivers.namespaced,
        context.clone(),
        shutdown.clone(),
    );
    let cluster_controller = {
        let context = context.clone();
        let shutdown = shutdown.clone();
        let cluster_store = cluster_store.clone();
        async move {
            if let Some(api) = cluster_accounts {
                run_account_controller(
                    api,
                    (cluster_store.clone(), cluster_writer),
                    receivers.cluster,
                    context,
                    shutdown,
                )
                .await;
            }
        }
    };

    let mapper = context.clone();
    let userbatch_controller = async move {
        // A UserBatch resolves its account from these stores: reconciling before their first
        // list would report accounts as missing that only are not listed yet.
        let mut synced: Vec<Box<dyn Fn() -> bool + Send>> = vec![Box::new({
            let store = namespaced_store.clone();
            move || is_ready(&store)
        })];
        if cluster_wide {
            synced.push(Box::new(move || is_ready(&cluster_store)));
            synced.push(Box::new(move || is_ready(&namespace_store)));
        }
        if !wait_until_synced(synced, &shutdown).await {
            return;
        }
        Controller::for_stream(triggers, store)
            .with_config(controller::Config::default().concurrency(concurrency))
            // A created, fixed or rotated Secret re-triggers exactly the UserBatches that use it.
            .watches_stream(secret_changes, move |secret| {
                mapper.userbatches_using(&secret)
            })
            // A changed account (its status too), or new namespace labels, re-trigger the
            // UserBatches that use the account.
            .reconcile_on(receivers.userbatches)
            .graceful_shutdown_on(shutdown.cancelled_owned())
            .run(reconcile::reconcile, error_policy, context)
            .for_each(|result| async move {
                if let Err(err) = result {
                    tracing::debug!(error = %crate::report::chain(&err), "reconcile loop");
                }
            })
            .await;
    };
    tokio::join!(
        userbatch_controller,
        namespaced_controller,
        cluster_controller,
        namespace_watch
    );
    tracing::info!("controller stopped");
    Ok(())
}

/// Whether a store has had its first full list (without waiting).
fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}

/// How many UserBatches are reconciled at once. Unbounded, every UserBatch in the cluster
/// starts its first reconcile together, each holding copies of its object and its own API
/// connection while most of them only wait for a KooDrive permit: 1000 small UserBatches
/// took the operator to 105 MiB (benches/scale.rs). Twice the KooDrive concurrency keeps
/// KooDrive busy while the others read and write status.
fn reconcile_concurrency(settings: &Settings) -> u16 {
    let wanted = settings.max_in_flight.saturating_mul(2).max(8);
    u16::try_from(wanted).unwrap_or(u16::MAX)
}

/// Synchronous, as kube's Controller requires: pick the delay before the next attempt.
fn error_policy(meta: Arc<Meta>, error: &reconcile::Error, ctx: Arc<Context>) -> Action {
    let key = (meta.namespace().unwrap_or_default(), meta.name_any());
    let delay = ctx.backoff.failed(&key, error.retry_after());
    ctx.metrics.reconcile_error(error.metric_reason());
    tracing::warn!(
        userbatch = %format!("{}/{}", key.0, key.1),
        error = %crate::report::chain(error),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The phase a status write left a UserBatch in (for the gauges).
pub fn phase_label(phase: Phase) -> String {
    format!("{phase:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
    use std::collections::BTreeMap;

    #[test]
    fn cached_metadata_keeps_no_managed_fields_or_last_applied_copy() {
        let mut secret = PartialObjectMeta::<Secret> {
            types: None,
            metadata: ObjectMeta {
                name: Some("creds".into()),
                annotations: Some(BTreeMap::from([
                    (
                        LAST_APPLIED.to_string(),
                        r#"{"data":{"secretKey":"c2VjcmV0"}}"#.to_string(),
                    ),
                    ("team".to_string(), "platform".to_string()),
                ])),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    ..Default::default()
                }]),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            _phantom: Default::default(),
        };
        slim(&mut secret);
        assert_eq!(secret.metadata.managed_fields, None);
        assert_eq!(
            secret.metadata.annotations,
            Some(BTreeMap::from([(
                "team".to_string(),
                "platform".to_string()
            )]))
        );
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn cached_secret_metadata_is_its_identity_and_version() {
        let mut secret = PartialObjectMeta::<Secret> {
            types: None,
            metadata: ObjectMeta {
                name: Some("sh.helm.release.v1.web.v3".into()),
                namespace: Some("apps".into()),
                labels: Some(BTreeMap::from([("owner".to_string(), "helm".to_string())])),
                uid: Some("0b0e5f8e".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            _phantom: Default::default(),
        };
        only_identity_and_version(&mut secret);
        assert_eq!(
            secret.metadata,
            ObjectMeta {
                name: Some("sh.helm.release.v1.web.v3".into()),
                namespace: Some("apps".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            }
        );
    }
}
