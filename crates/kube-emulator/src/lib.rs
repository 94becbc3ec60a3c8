//! An in-process emulator of the Kubernetes API subset an operator uses (Secret, Event,
//! Lease, Namespace, CustomResourceDefinition, the RBAC kinds and the custom resources the
//! CRDs define), so end-to-end tests and demos can run a real controller, a real kube client
//! and real watch streams where no API server can be installed.
//!
//! It knows no particular operator: it is configured with the CRDs it serves from the start
//! ([`EmulatorConfig::crds`]), the admission checks it runs on writes of a kind
//! ([`EmulatorConfig::admission`]) and, optionally, the RBAC objects and identities it
//! authorizes requests with ([`EmulatorConfig::rbac`]), as a real cluster gets its CRDs
//! applied, its validation from their schemas and CEL rules, and its permissions from RBAC.
//!
//! It is faithful where an operator's correctness depends on it: `resourceVersion`
//! preconditions (409), conditional updates of custom resources (422 without
//! `resourceVersion`), `generation` vs status writes, watch resumption and `410 Gone`,
//! consistent paginated lists, finalizers, DELETE options, server-side apply merging
//! list-maps, admission (422 with field paths), unknown fields per `fieldValidation`,
//! Event validation, a real cluster's size limits ([`limits`]: annotations 256 KiB, request
//! bodies 3 MiB, stored objects 1.5 MiB), `generateName` retries, protobuf bodies from
//! kubectl, and RBAC (403 with the API server's message). Tests can inject faults, drop
//! watches and read the request log. `README.md` beside this crate lists what it does not
//! emulate.
//!
//! Deliberate simplifications, none of which the operator depends on:
//! - field ownership is tracked per leaf field and not returned as `managedFields`;
//! - a LIST without a continue token answers from the latest state, whatever
//!   `resourceVersion` it is given (`resourceVersionMatch` is not honoured);
//! - namespaces are not required to exist (nor removed with their objects), and deleting a
//!   CRD keeps its objects;
//! - strategic merge patch on built-in kinds is served as a JSON merge patch (custom
//!   resources refuse it with 415, as real servers do);
//! - OpenAPI documents only advertise server-side field validation (schemas accept
//!   anything: admission and the `fieldValidation` check are the server's job);
//! - without [`EmulatorConfig::rbac`] every request is allowed; with it, a request without
//!   credentials is the administrator (see [`Rbac`]).
//!
//! ```text
//! let emulator = Emulator::start("127.0.0.1:0".parse()?, EmulatorConfig::default()).await?;
//! let client = emulator.client().await?;           // or emulator.write_kubeconfig(path)
//! emulator.inject(Fault { verb: Some("patch".into()), path_contains: Some("/status".into()),
//!                         times: 1, kind: FaultKind::Status(500) });
//! ```

mod discovery;
mod error;
mod event_conversion;
mod event_validation;
mod fields;
pub mod limits;
mod merge;
mod protobuf;
mod rbac;
mod resources;
mod selectors;
mod server;
mod store;
mod table;
mod traffic;
mod verbs;
mod watch;

use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One field an admission check refuses: `path` in the API server's notation
/// (`spec.users[0].phone`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub problem: String,
}

/// Validates one object of a kind on create and update (spec and status writes alike);
/// violations become `422 Invalid` with one cause per violation.
pub type AdmissionFn = Arc<dyn Fn(&Value) -> Vec<Violation> + Send + Sync>;

/// Validates an update: the new object and the stored one it replaces.
pub type AdmissionUpdateFn = Arc<dyn Fn(&Value, &Value) -> Vec<Violation> + Send + Sync>;

/// An admission check and the kind it applies to.
#[derive(Clone)]
pub struct Admission {
    pub group: String,
    pub kind: String,
    pub check: AdmissionFn,
    /// Used for updates instead of `check` when set: lets a check validate only what an
    /// update changed, as the API server's validation ratcheting does (since 1.30, an
    /// unchanged field is not refused again), so that a status write to an object with a
    /// large spec does not re-run every spec rule.
    pub update_check: Option<AdmissionUpdateFn>,
}

impl Admission {
    pub fn new(
        group: impl Into<String>,
        kind: impl Into<String>,
        check: impl Fn(&Value) -> Vec<Violation> + Send + Sync + 'static,
    ) -> Admission {
        Admission {
            group: group.into(),
            kind: kind.into(),
            check: Arc::new(check),
            update_check: None,
        }
    }

    /// Checks updates with `check(new, old)` instead of the create check.
    pub fn with_update_check(
        mut self,
        check: impl Fn(&Value, &Value) -> Vec<Violation> + Send + Sync + 'static,
    ) -> Admission {
        self.update_check = Some(Arc::new(check));
        self
    }
}

/// How an emulator behaves.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// CustomResourceDefinitions (as JSON objects) that exist from the start, as if applied
    /// before the test. A kind whose CRD is absent answers 404 until one is created, as on a
    /// cluster where it was never installed.
    pub crds: Vec<Value>,
    /// How many past watch events are kept for resuming watches; older `resourceVersion`s get
    /// `410 Gone`. Small values let tests force expiry.
    pub watch_history: usize,
    /// Admission checks by kind (the first matching check applies).
    pub admission: Vec<Admission>,
    /// Where `generateName` suffixes come from; random (as on a real server) when `None`.
    /// Tests use it to force name collisions.
    pub name_suffixes: Option<NameSuffixes>,
    /// RBAC mode: requests are authenticated by bearer token and authorized against the
    /// RBAC objects, as on a real cluster. `None`: everything is allowed to everyone.
    pub rbac: Option<Rbac>,
}

/// What an emulator in RBAC mode starts with: RBAC objects (Roles, ClusterRoles and their
/// bindings, as JSON) and the identities its bearer tokens stand for.
///
/// A request with a bearer token is authenticated by it (a token nobody holds gets `401
/// Unauthorized`) and authorized by RBAC. A request without credentials is the
/// administrator (user `emulator-admin`, group `system:masters`), like the insecure port API
/// servers had until 1.20: that keeps tests' own clients and `kubectl` working (kubectl
/// never sends a token over plain HTTP, so it cannot act as a restricted identity against
/// the emulator). [`Emulator::client`] sends the admin token explicitly.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    pub objects: Vec<Value>,
    pub identities: Vec<Identity>,
}

/// A bearer token and the user and groups it authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub token: String,
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A ServiceAccount's identity, with the groups the API server gives every
    /// ServiceAccount token.
    pub fn service_account(namespace: &str, name: &str, token: impl Into<String>) -> Identity {
        Identity {
            token: token.into(),
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// Why RBAC objects could not be read from manifests.
#[derive(Debug, thiserror::Error)]
#[error("the manifests are not valid YAML")]
pub struct ManifestError(#[source] Box<serde_saphyr::Error>);

impl Rbac {
    /// The Roles, ClusterRoles, RoleBindings and ClusterRoleBindings among (multi-document)
    /// YAML manifests, e.g. `helm template` output; other documents are skipped.
    pub fn objects_from_manifests(yaml: &str) -> Result<Vec<Value>, ManifestError> {
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| ManifestError(Box::new(e)))?;
        Ok(documents
            .into_iter()
            .filter(|d| {
                d.get("apiVersion").and_then(Value::as_str) == Some("rbac.authorization.k8s.io/v1")
                    && matches!(
                        d.get("kind").and_then(Value::as_str),
                        Some("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")
                    )
            })
            .collect())
    }
}
/// Produces the next five-character suffix for a `generateName`.
pub type NameSuffixes = Arc<dyn Fn() -> String + Send + Sync>;

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            crds: Vec::new(),
            // Every retained event holds a full object; large custom resources make this the
            // emulator's main memory cost.
            watch_history: 1_000,
            admission: Vec::new(),
            name_suffixes: None,
            rbac: None,
        }
    }
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<String> = self
            .admission
            .iter()
            .map(|a| format!("{}/{}", a.group, a.kind))
            .collect();
        f.debug_struct("EmulatorConfig")
            .field("crds", &self.crds.len())
            .field("watch_history", &self.watch_history)
            .field("admission", &kinds)
            .finish()
    }
}

/// A planned failure: the next `times` requests matching `verb` (get, list, watch, create,
/// update, patch, delete; any when `None`) and whose path contains `path_contains` fail or
/// are delayed.
#[derive(Debug, Clone)]
pub struct Fault {
    pub verb: Option<String>,
    pub path_contains: Option<String>,
    pub times: u32,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer with this HTTP status and a matching `Status` body.
    Status(u16),
    /// Hold the request this long, then serve it normally.
    Delay(Duration),
}

/// The request log keeps the most recent requests only, so a long-running standalone
/// emulator does not grow without bound.
const REQUEST_LOG_LIMIT: usize = 100_000;

/// One served request: verb, path and HTTP status.
pub type LoggedRequest = (String, String, u16);

/// One served request and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub verb: String,
    pub path: String,
    pub status: u16,
    /// The authenticated user in RBAC mode (`system:serviceaccount:ns:name`,
    /// `emulator-admin`); empty without RBAC or when authentication failed.
    pub user: String,
}

/// Errors building a client for the emulator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("emulator URL {url} is not a valid URI")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("cannot build a kube client for the emulator at {url}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// State shared by the handle and the request handlers.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub store: Mutex<store::Store>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<VecDeque<RequestRecord>>,
    traffic: Arc<traffic::Traffic>,
    /// Served resource types and the CRD revision they were read at.
    served: Mutex<Option<(u64, Arc<Vec<resources::ResourceDef>>)>>,
    shutdown: CancellationToken,
    /// Cancelled (and replaced) by [`Emulator::drop_watches`]; every watch stream holds a clone.
    watches: Mutex<CancellationToken>,
    pub base_url: String,
    /// The token of the emulator's own clients in RBAC mode.
    pub admin_token: String,
}

/// Locks a mutex, recovering the data if a handler panicked while holding it: the emulator's
/// state stays usable for the rest of a test.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// The first planned fault matching this request, consuming one of its `times`.
    pub fn take_fault(&self, verb: &str, path: &str) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|f| {
            f.times > 0
                && f.verb
                    .as_deref()
                    .is_none_or(|v| v.eq_ignore_ascii_case(verb))
                && f.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        let fault = &mut faults[index];
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            faults.remove(index);
        }
        Some(kind)
    }

    pub fn log_request(&self, verb: &str, path: &str, status: u16, user: &str) {
        let mut log = lock(&self.log);
        if log.len() == REQUEST_LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(RequestRecord {
            verb: verb.to_string(),
            path: path.to_string(),
            status,
            user: user.to_string(),
        });
    }

    pub fn watch_token(&self) -> CancellationToken {
        lock(&self.watches).clone()
    }
}

/// A running emulator. Dropping it (or [`Emulator::shutdown`]) stops the server.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url())
            .finish()
    }
}

impl Emulator {
    /// Binds `listen` (port 0 picks a free port) and serves until dropped or shut down.
    pub async fn start(listen: SocketAddr, config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            store: Mutex::new(store::Store::new(config.watch_history)),
            config,
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(VecDeque::new()),
            traffic: Arc::default(),
            served: Mutex::new(None),
            watches: Mutex::new(shutdown.child_token()),
            shutdown: shutdown.clone(),
            base_url: format!("http://{addr}"),
            admin_token: format!(
                "emulator-admin-{}",
                uuid::Builder::from_random_bytes(rand::random()).into_uuid()
            ),
        });
        // Seeding only fails on a bug in the emulator itself; report it as a start-up error.
        server::seed_default_namespace(&shared)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for crd in shared.config.crds.clone() {
            server::install_crd(&shared, crd).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        for object in shared.config.rbac.iter().flat_map(|r| r.objects.clone()) {
            server::seed_object(&shared, object)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let app = server::router(shared.clone())
            .into_make_service_with_connect_info::<traffic::Connection>();
        let listener = traffic::CountingListener {
            inner: listener,
            traffic: shared.traffic.clone(),
        };
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "emulator server stopped with an error");
            }
        });
        Ok(Emulator {
            shared,
            addr,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig with cluster, user and context all named `emulator` (plain HTTP), for the
    /// emulator's admin: no credentials, or the admin token in RBAC mode.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_with(self.own_token())
    }

    /// A kubeconfig that authenticates with `token`: one of the [`Rbac::identities`].
    pub fn kubeconfig_yaml_as(&self, token: &str) -> String {
        self.kubeconfig_yaml_with(Some(token))
    }

    fn kubeconfig_yaml_with(&self, token: Option<&str>) -> String {
        let user = match token {
            // A JSON string is valid YAML, whatever the token holds.
            Some(token) => format!("{{token: {}}}", Value::String(token.to_string())),
            None => "{}".to_string(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {url}\nusers:\n- name: emulator\n  user: {user}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\ncurrent-context: emulator\npreferences: {{}}\n",
            url = self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Writes a kubeconfig that authenticates with `token` (see [`Rbac::identities`]).
    pub fn write_kubeconfig_as(&self, path: &Path, token: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml_as(token))
    }

    /// The token the emulator's own clients use in RBAC mode (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    fn own_token(&self) -> Option<&str> {
        self.shared
            .config
            .rbac
            .as_ref()
            .map(|_| self.shared.admin_token.as_str())
    }

    /// A kube client talking to this emulator, default namespace `default`.
    pub async fn client(&self) -> Result<kube::Client, ClientError> {
        let url = self.url();
        let uri = url
            .parse::<http::Uri>()
            .map_err(|source| ClientError::Url {
                url: url.clone(),
                source,
            })?;
        let mut config = kube::Config::new(uri);
        if let Some(token) = self.own_token() {
            config.auth_info.token = Some(token.to_string().into());
        }
        kube::Client::try_from(config).map_err(|source| ClientError::Client { url, source })
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Forgets every planned fault not yet used up.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Ends every open watch stream; clients see the stream close and re-watch.
    pub fn drop_watches(&self) {
        let mut token = lock(&self.shared.watches);
        token.cancel();
        *token = self.shared.shutdown.child_token();
    }

    /// The most recent requests served (up to 100 000), oldest first.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log)
            .iter()
            .map(|r| (r.verb.clone(), r.path.clone(), r.status))
            .collect()
    }

    /// [`Emulator::request_log`] with the user each request was authenticated as.
    pub fn request_records(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).iter().cloned().collect()
    }

    /// Bytes the emulator wrote to the connections of `user` (as in
    /// [`RequestRecord::user`]; `""` without RBAC): status lines, headers and bodies as
    /// sent, watch streams included.
    pub fn bytes_sent_to(&self, user: &str) -> u64 {
        self.shared.traffic.sent_to(user)
    }

    /// Stops serving and waits for the server task to finish.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            // A panicked server task has nothing left to clean up.
            let _ = server.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
