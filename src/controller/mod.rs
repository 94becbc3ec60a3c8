//! The UserBatch controller: watches UserBatches and the Secrets they reference, and turns
//! pending users into KooDrive tasks — each user at most once.
//!
//! - [`reconcile`] — one pass over one UserBatch (observe, submit, poll, write status).
//! - [`progress`] — pure status computation (phase, conditions, summary).
//! - [`conditions`] — condition types, reasons, transition-time rules.
//! - [`secrets`] — credentials and passwords from Secrets.
//! - [`throttle`] — the global KooDrive concurrency and rate limit.

pub mod conditions;
pub mod progress;
pub mod reconcile;
pub mod secrets;
pub mod throttle;

use crate::crd::UserBatch;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The controller's name, as it appears in Events and field managers.
pub const CONTROLLER_NAME: &str = "koodrive-operator";

/// Settings of a controller run (from `koodrive-operator run`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Empty: all namespaces.
    pub watch_namespace: Option<String>,
    pub default_endpoint: String,
    pub max_batch_size: usize,
    pub max_in_flight: usize,
    pub requests_per_second: f64,
    pub poll_interval: Duration,
    /// First delay after a failure of one UserBatch; doubles per consecutive failure.
    pub retry_base_delay: Duration,
    /// Cap of the per-UserBatch backoff.
    pub retry_max_delay: Duration,
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
            max_batch_size: koodrive_client::MAX_USERS_PER_REQUEST,
            max_in_flight: 4,
            requests_per_second: 5.0,
            poll_interval: Duration::from_secs(30),
            retry_base_delay: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(300),
            koodrive: koodrive_client::ClientConfig::default(),
            instance: None,
        }
    }
}

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the UserBatch CRD (userbatches.koodrive.io) is not installed in this cluster; install it with `kubectl apply -f crds/userbatch.yaml` (or `koodrive-operator crd | kubectl apply -f -`)"
    )]
    CrdNotInstalled,
    #[error("cannot list UserBatches to check the CRD is installed")]
    CrdCheck(#[source] kube::Error),
}

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub throttle: throttle::Throttle,
    /// Consecutive failures per UserBatch, for per-object backoff; cleared on success.
    failures: Mutex<HashMap<ObjectRef<UserBatch>, u32>>,
    /// KooDrive clients by endpoint and credentials Secret version, so a reconcile reuses
    /// connections instead of opening new TLS sessions each time.
    clients: Mutex<HashMap<String, koodrive_client::Client>>,
    /// Last phase seen per UserBatch, to keep the per-phase gauge exact.
    phases: Mutex<HashMap<ObjectRef<UserBatch>, crate::crd::Phase>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.into(),
                instance: settings.instance.clone(),
            },
        );
        let throttle =
            throttle::Throttle::new(settings.max_in_flight, settings.requests_per_second);
        Self {
            client,
            settings,
            recorder,
            throttle,
            failures: Mutex::default(),
            clients: Mutex::default(),
            phases: Mutex::default(),
            metrics,
        }
    }

    fn record_success(&self, key: &ObjectRef<UserBatch>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }

    /// Per-object exponential backoff with ±20% jitter, never shorter than `at_least`.
    fn backoff(&self, key: &ObjectRef<UserBatch>, at_least: Option<Duration>) -> Duration {
        let attempt = match self.failures.lock() {
            Ok(mut failures) => {
                let n = failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        let base = self.settings.retry_base_delay;
        let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
        let capped = exp.min(self.settings.retry_max_delay);
        let jitter = rand::random_range(0.8..1.2);
        capped.mul_f64(jitter).max(at_least.unwrap_or_default())
    }

    /// A KooDrive client for `endpoint` and these credentials, reused while the Secret's
    /// version is unchanged.
    pub fn koodrive_client(
        &self,
        endpoint: &str,
        secret_version: &str,
        credentials: koodrive_client::Credentials,
    ) -> Result<koodrive_client::Client, koodrive_client::Error> {
        let key = format!("{endpoint}|{secret_version}");
        if let Ok(clients) = self.clients.lock()
            && let Some(client) = clients.get(&key)
        {
            return Ok(client.clone());
        }
        let client =
            koodrive_client::Client::new(endpoint, credentials, self.settings.koodrive.clone())?;
        if let Ok(mut clients) = self.clients.lock() {
            // Old entries belong to rotated credentials; a small cache is enough.
            if clients.len() >= 256 {
                clients.clear();
            }
            clients.insert(key, client.clone());
        }
        Ok(client)
    }
}

/// Checks the CRD is served; the message tells how to install it when it is not.
pub async fn check_crd_installed(api: &Api<UserBatch>) -> Result<(), StartError> {
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartError::CrdNotInstalled),
        Err(e) => Err(StartError::CrdCheck(e)),
    }
}

/// Runs the controller until `shutdown` resolves. `on_synced` is called once the watch
/// caches have their first full list (the readiness signal).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    on_synced: impl FnOnce() + Send + 'static,
) -> Result<(), StartError> {
    let (userbatches, secrets): (Api<UserBatch>, Api<Secret>) = match &settings.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    check_crd_installed(&userbatches).await?;

    let concurrency = reconcile_concurrency(&settings);
    let context = Arc::new(Context::new(client, settings, metrics));
    let controller = Controller::new(userbatches, watcher::Config::default().any_semantic())
        .with_config(controller::Config::default().concurrency(concurrency));
    let store = controller.store();
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

    controller
        // A created, fixed or rotated Secret re-triggers exactly the UserBatches that use it.
        .watches(
            secrets,
            watcher::Config::default().any_semantic(),
            move |secret: Secret| {
                let namespace = secret.namespace();
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|ub| ub.namespace() == namespace && references_secret(ub, &name))
                    .map(|ub| ObjectRef::from_obj(ub.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %crate::report::chain(&err), "reconcile loop");
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
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

/// Whether the UserBatch reads the named Secret (credentials or any password).
pub fn references_secret(ub: &UserBatch, secret: &str) -> bool {
    ub.spec.credentials_ref.name == secret
        || ub.spec.users.iter().any(|u| {
            u.password_secret_ref
                .as_ref()
                .is_some_and(|r| r.name == secret)
        })
}

/// Synchronous, as kube's Controller requires: pick the delay before the next attempt.
fn error_policy(ub: Arc<UserBatch>, error: &reconcile::Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(ub.as_ref());
    let delay = ctx.backoff(&key, error.retry_after());
    tracing::warn!(
        userbatch = %key,
        error = %crate::report::chain(error),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}
