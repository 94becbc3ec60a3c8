//! A local KooDrive that verifies every request's signature, for tests, the demo and users'
//! experiments without Huawei credentials.
//!
//! It recomputes each signature from the request it received (so any client-side
//! canonicalisation bug shows up as the gateway's `APIG.0303` with its canonical request),
//! enforces the `X-Date` window, validates bodies, creates tasks whose per-user results
//! appear after a delay, pages results, injects faults, and counts how often each phone was
//! submitted so tests can prove nothing is provisioned twice.

mod api;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
pub use koodrive_client::Call;
use koodrive_client::{CREATE_PATH, GET_PATH, SecretKey};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One AK/SK/user-ID triple the simulator accepts. `Debug` redacts the SK.
#[derive(Clone, Debug)]
pub struct Account {
    pub access_key: String,
    pub secret_key: SecretKey,
    pub user_id: String,
}

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    pub accounts: Vec<Account>,
    /// How long after creation a task's per-user results appear.
    pub result_delay: Duration,
    /// Phones that already exist: reported as skipped.
    pub registered_phones: HashSet<String>,
    /// Phones whose registration fails.
    pub failing_phones: HashSet<String>,
    /// Oldest accepted `X-Date` (KooDrive: 15 minutes). Dates in the future are refused.
    pub max_clock_skew: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            result_delay: Duration::ZERO,
            registered_phones: HashSet::new(),
            failing_phones: HashSet::new(),
            max_clock_skew: Duration::from_secs(15 * 60),
        }
    }
}

/// A fault to inject into the next `times` matching KooDrive calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Which call it hits; `None`: either.
    #[serde(default)]
    pub call: Option<Call>,
    #[serde(default = "one")]
    pub times: u32,
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

/// What goes wrong. JSON (for `POST /_sim/faults`): `{"status5xx":503}`,
/// `{"too_many_requests":{"retry_after_secs":2}}`, `{"latency":250}` (milliseconds),
/// `"drop_connection"`, `"drop_after_processing"`, `"garbled_json"`,
/// `{"reject":{"code":13000102,"msg":"parameter validation failed"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this 5xx status and KooDrive's error envelope, without processing.
    Status5xx(u16),
    /// Answer 429 with `Retry-After` and the gateway's throttling envelope, without processing.
    TooManyRequests { retry_after_secs: u64 },
    /// Wait this long, then process normally.
    Latency(#[serde(with = "millis")] Duration),
    /// Close the connection without answering and without processing.
    DropConnection,
    /// Process the request (a create makes its task), then close without answering.
    DropAfterProcessing,
    /// Process the request, then answer with a truncated, unparsable JSON body.
    GarbledJson,
    /// Refuse the request with HTTP 400 and this KooDrive code and message, without
    /// processing: a permanent rejection such as `13000102` (parameter validation failed).
    Reject { code: i64, msg: String },
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A running simulator. Dropping it (or [`Simulator::shutdown`]) stops the server.
pub struct Simulator {
    state: Arc<State>,
    addr: SocketAddr,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Shared between the handle and the request handlers.
struct State {
    inner: Mutex<Inner>,
    requests: AtomicUsize,
}

struct Inner {
    accounts: HashMap<String, Account>,
    result_delay: Duration,
    max_clock_skew: Duration,
    registered_phones: HashSet<String>,
    failing_phones: HashSet<String>,
    tasks: HashMap<String, Task>,
    next_task_id: u64,
    submissions: HashMap<String, u32>,
    faults: VecDeque<Fault>,
    page_limit: Option<usize>,
}

struct Task {
    owner_user_id: String,
    created: Instant,
    users: Vec<(String, Outcome)>,
}

#[derive(Clone)]
enum Outcome {
    Registered { user_id: String },
    Skipped,
    Failed,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters half-updated in a way
        // that matters to a test double, so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one use of the first queued fault that matches `call`.
    fn take_fault(&self, call: Call) -> Option<FaultKind> {
        let mut inner = self.lock();
        let index = inner
            .faults
            .iter()
            .position(|f| f.call.is_none_or(|c| c == call))?;
        let fault = inner.faults.get_mut(index)?;
        let kind = fault.kind.clone();
        fault.times = fault.times.saturating_sub(1);
        if fault.times == 0 {
            inner.faults.remove(index);
        }
        Some(kind)
    }
}

impl Simulator {
    /// Starts serving on `listen` (port 0 picks a free port; see [`Simulator::url`]).
    pub async fn start(listen: SocketAddr, config: SimulatorConfig) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                accounts: config
                    .accounts
                    .into_iter()
                    .map(|a| (a.access_key.clone(), a))
                    .collect(),
                result_delay: config.result_delay,
                max_clock_skew: config.max_clock_skew,
                registered_phones: config.registered_phones,
                failing_phones: config.failing_phones,
                tasks: HashMap::new(),
                // Shaped like the documented example task ID.
                next_task_id: 1_893_596_414_966_089_600,
                submissions: HashMap::new(),
                faults: VecDeque::new(),
                page_limit: None,
            }),
            requests: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let router = api::router(state.clone());
        let server = tokio::spawn(serve(listener, state.clone(), router, stop.clone()));
        tracing::info!(%addr, "KooDrive simulator listening");
        Ok(Simulator {
            state,
            addr,
            stop,
            server: Some(server),
        })
    }

    /// The base URL to use as the KooDrive endpoint, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Phone → how many times it was carried by an accepted create request.
    pub fn submissions(&self) -> HashMap<String, u32> {
        self.state.lock().submissions.clone()
    }

    /// Queues a fault for upcoming requests (faults apply in the order queued).
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push_back(fault);
    }

    /// Replaces every account (e.g. to "fix" a wrong SK mid-test).
    pub fn set_accounts(&self, accounts: Vec<Account>) {
        self.state.lock().accounts = accounts
            .into_iter()
            .map(|a| (a.access_key.clone(), a))
            .collect();
    }

    pub fn add_account(&self, account: Account) {
        self.state
            .lock()
            .accounts
            .insert(account.access_key.clone(), account);
    }

    /// Caps `batchRegister/get` pages below the requested `pageSize`, so paging can be
    /// exercised with small tasks.
    pub fn set_page_limit(&self, limit: Option<usize>) {
        self.state.lock().page_limit = limit.map(|l| l.max(1));
    }

    /// Every KooDrive request received (any path but `/_sim/`), including rejected and
    /// faulted ones.
    pub fn request_count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting connections and waits for the server loop to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("simulated dropped connection")]
struct SimulatedDrop;

async fn serve(listener: TcpListener, state: Arc<State>, router: Router, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Typically out of file descriptors: pause instead of spinning.
                    tracing::warn!(error = %err, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let router = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                let router = router.clone();
                async move {
                    // Like a real server, finish processing even if the client disconnects
                    // (hyper would drop this future): the timed-out create still happens.
                    tokio::spawn(async move { handle_with_faults(&state, &router, request).await })
                        .await
                        .unwrap_or(Err(SimulatedDrop))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Applies an injected fault (if one matches), otherwise hands the request to the API.
async fn handle_with_faults(
    state: &State,
    router: &TowerToHyperService<Router>,
    request: Request<Incoming>,
) -> Result<Response<Body>, SimulatedDrop> {
    use hyper::service::Service;
    let call = match request.uri().path() {
        CREATE_PATH => Some(Call::Create),
        GET_PATH => Some(Call::Get),
        _ => None,
    };
    if !request.uri().path().starts_with("/_sim/") {
        state.requests.fetch_add(1, Ordering::SeqCst);
    }
    let fault = call.and_then(|call| state.take_fault(call));
    if let Some(kind) = &fault {
        tracing::info!(?call, fault = ?kind, "simulator injecting fault");
    }
    let forward = |request| async move {
        match router.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    };
    match fault {
        None => Ok(forward(request).await),
        Some(FaultKind::Status5xx(status)) => Ok(api::koodrive_error(
            http::StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_server_error())
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            13000201,
            "inner server invoke failure",
        )),
        Some(FaultKind::TooManyRequests { retry_after_secs }) => {
            let mut response = api::gateway_error(
                http::StatusCode::TOO_MANY_REQUESTS,
                "APIG.0308",
                "The request is throttled.",
            );
            if let Ok(value) = http::HeaderValue::from_str(&retry_after_secs.to_string()) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
            Ok(response)
        }
        Some(FaultKind::Latency(delay)) => {
            tokio::time::sleep(delay).await;
            Ok(forward(request).await)
        }
        Some(FaultKind::Reject { code, msg }) => Ok(api::koodrive_error(
            http::StatusCode::BAD_REQUEST,
            code,
            &msg,
        )),
        Some(FaultKind::DropConnection) => Err(SimulatedDrop),
        Some(FaultKind::DropAfterProcessing) => {
            let _processed = forward(request).await;
            Err(SimulatedDrop)
        }
        Some(FaultKind::GarbledJson) => {
            let response = forward(request).await;
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let garbled = bytes.slice(..bytes.len() / 2);
            let mut response = Response::from_parts(parts, Body::from(garbled));
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
            Ok(response)
        }
    }
}
