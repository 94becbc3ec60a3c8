//! A local KooDrive that verifies every request's signature, for tests, the demo and users'
//! experiments without Huawei credentials.
//!
//! It recomputes each signature from the request it received (so any client-side
//! canonicalisation bug shows up as the gateway's `APIG.0303` with its canonical request),
//! enforces the `X-Date` window against its own (possibly skewed) clock, validates bodies,
//! creates tasks whose per-user results appear after a delay, pages results, keeps the users
//! it created per account (so they can be queried, deleted, and created again), injects
//! faults — including the worst cases a real gateway produces, such as answering 5xx after
//! the backend acted — and counts how often each phone was submitted and each user deleted,
//! so tests can prove nothing is done twice.

mod api;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
pub use koodrive_client::Call;
use koodrive_client::{CREATE_PATH, GET_PATH, SecretKey, USERS_PATH};
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
    /// How far the simulated KooDrive's clock is ahead of this machine's (negative: behind).
    /// It judges `X-Date` by that clock and reports it in the `Date` header and in refusals.
    pub clock_offset: jiff::SignedDuration,
    /// Documented-but-loose answer shapes to exercise clients with.
    pub quirks: Quirks,
}

/// Answer shapes KooDrive's docs allow (or do not rule out) that a client must survive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Quirks {
    /// `taskInfo.status` as a number (the docs type it as a string).
    pub numeric_status: bool,
    /// Per-user `code` and `reason` as numbers.
    pub numeric_reason: bool,
    /// `registerList: null` instead of an empty or absent list.
    pub null_register_list: bool,
    /// The cursor of the last page, instead of an empty string (e.g. `"0"` or `"-1"`).
    pub end_cursor: Option<String>,
    /// The task's counts never add up to its total: it never finishes.
    pub never_finish: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            result_delay: Duration::ZERO,
            registered_phones: HashSet::new(),
            failing_phones: HashSet::new(),
            max_clock_skew: Duration::from_secs(15 * 60),
            clock_offset: jiff::SignedDuration::ZERO,
            quirks: Quirks::default(),
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
/// `"drop_connection"`, `"drop_after_processing"`, `{"hang_after_processing":60000}`,
/// `"garbled_json"`,
/// `{"reject":{"code":13000102,"msg":"parameter validation failed"}}`,
/// `{"respond":{"status":504,"body":{"error_code":"APIG.0203","error_msg":"Backend timeout."},"process":true}}`.
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
    /// Process the request at once, then answer only after this long (milliseconds in
    /// JSON): a client that is killed, or times out, meanwhile never learns that KooDrive
    /// acted. For killing an operator mid-request without racing the request itself.
    HangAfterProcessing(#[serde(with = "millis")] Duration),
    /// Process the request, then answer with a truncated, unparsable JSON body.
    GarbledJson,
    /// Refuse the request with HTTP 400 and this KooDrive code and message, without
    /// processing: a permanent rejection such as `13000102` (parameter validation failed).
    Reject { code: i64, msg: String },
    /// Answer with exactly this status and JSON body; when `process` is set, process the
    /// request first (a create makes its task). The gateway's "Backend timeout" is
    /// `{status: 504, body: {"error_code":"APIG.0203",...}, process: true}`.
    Respond {
        status: u16,
        body: serde_json::Value,
        #[serde(default)]
        process: bool,
    },
}

impl FaultKind {
    /// The gateway's answer when KooDrive did not reply in time — after it may have acted.
    pub fn backend_timeout_after_processing() -> FaultKind {
        FaultKind::Respond {
            status: 504,
            body: serde_json::json!({"error_code": "APIG.0203", "error_msg": "Backend timeout.",
                                     "request_id": "sim-backend-timeout"}),
            process: true,
        }
    }

    /// KooDrive's own "authentication failed" (`鉴权不通过`) on HTTP 400, without processing.
    pub fn authentication_failed_400() -> FaultKind {
        FaultKind::Respond {
            status: 400,
            body: serde_json::json!({"code": 13000001, "msg": "鉴权不通过"}),
            process: false,
        }
    }
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
    /// Every KooDrive request, in arrival order (see [`Simulator::request_log`]).
    log: Mutex<Vec<RequestRecord>>,
}

/// One KooDrive request as the simulator saw it: whose it was, when it arrived and when its
/// answer left. KooDrive throttles per AK, so tests measure limits per access key from this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The `AppId` of the `Authorization` header, if it could be read.
    pub access_key: Option<String>,
    pub call: Option<Call>,
    pub arrived: Instant,
    /// When the answer was ready (or the connection dropped).
    pub finished: Instant,
    /// The HTTP status answered; `None` for a dropped connection.
    pub status: Option<u16>,
}

/// Per access key: requests received, authentication failures (HTTP 401) and the most
/// requests in progress at once (what `GET /_sim/requests` reports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyStats {
    pub requests: usize,
    pub failed_authentication: usize,
    pub peak_in_flight: usize,
}

/// Summarises a request log per access key (requests without a readable AK count under "").
pub fn stats_by_access_key(log: &[RequestRecord]) -> HashMap<String, AccessKeyStats> {
    let mut out: HashMap<String, AccessKeyStats> = HashMap::new();
    let mut spans: HashMap<String, Vec<(Instant, Instant)>> = HashMap::new();
    for record in log {
        let key = record.access_key.clone().unwrap_or_default();
        let stats = out.entry(key.clone()).or_default();
        stats.requests += 1;
        if record.status == Some(401) {
            stats.failed_authentication += 1;
        }
        spans
            .entry(key)
            .or_default()
            .push((record.arrived, record.finished));
    }
    for (key, spans) in spans {
        if let Some(stats) = out.get_mut(&key) {
            stats.peak_in_flight = peak_overlap(&spans);
        }
    }
    out
}

/// The most intervals that overlap at one instant (an answer leaving at the instant the next
/// request arrives does not overlap it).
fn peak_overlap(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::with_capacity(spans.len() * 2);
    for (start, end) in spans {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    // Ends sort before starts at the same instant.
    edges.sort();
    let (mut current, mut peak) = (0i32, 0i32);
    for (_, delta) in edges {
        current += delta;
        peak = peak.max(current);
    }
    usize::try_from(peak).unwrap_or(0)
}

struct Inner {
    accounts: HashMap<String, Account>,
    result_delay: Duration,
    max_clock_skew: Duration,
    clock_offset: jiff::SignedDuration,
    quirks: Quirks,
    /// Phones that exist before any request (any account): reported as skipped.
    registered_phones: HashSet<String>,
    failing_phones: HashSet<String>,
    /// Users created through this simulator, per owner (the account's user ID):
    /// phone → KooDrive user ID.
    users: HashMap<String, HashMap<String, String>>,
    tasks: HashMap<String, Task>,
    next_task_id: u64,
    submissions: HashMap<String, u32>,
    /// KooDrive user ID → how many DELETEs reached it (found or not).
    deletions: HashMap<String, u32>,
    faults: VecDeque<Fault>,
    page_limit: Option<usize>,
}

impl Inner {
    /// The simulated KooDrive's clock.
    fn now(&self) -> jiff::Timestamp {
        let real = jiff::Timestamp::now();
        real.checked_add(self.clock_offset).unwrap_or(real)
    }
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
                clock_offset: config.clock_offset,
                quirks: config.quirks,
                registered_phones: config.registered_phones,
                failing_phones: config.failing_phones,
                users: HashMap::new(),
                deletions: HashMap::new(),
                tasks: HashMap::new(),
                // Shaped like the documented example task ID.
                next_task_id: 1_893_596_414_966_089_600,
                submissions: HashMap::new(),
                faults: VecDeque::new(),
                page_limit: None,
            }),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
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

    /// KooDrive user ID → how many DELETE requests reached it (found or not).
    pub fn deletions(&self) -> HashMap<String, u32> {
        self.state.lock().deletions.clone()
    }

    /// Phone → KooDrive user ID of every user that exists now (created here, not deleted),
    /// across accounts.
    pub fn users(&self) -> HashMap<String, String> {
        self.state
            .lock()
            .users
            .values()
            .flat_map(|users| users.iter().map(|(p, id)| (p.clone(), id.clone())))
            .collect()
    }

    /// Moves the simulated clock (ahead of this machine's when positive).
    pub fn set_clock_offset(&self, offset: jiff::SignedDuration) {
        self.state.lock().clock_offset = offset;
    }

    /// Replaces the answer quirks.
    pub fn set_quirks(&self, quirks: Quirks) {
        self.state.lock().quirks = quirks;
    }

    /// Makes phones fail (or stop failing) from the next task on.
    pub fn set_failing_phones(&self, phones: HashSet<String>) {
        self.state.lock().failing_phones = phones;
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

    /// Every KooDrive request received so far, in arrival order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// [`stats_by_access_key`] of everything received so far.
    pub fn stats_by_access_key(&self) -> HashMap<String, AccessKeyStats> {
        stats_by_access_key(&self.request_log())
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

/// Serves one request and stamps the answer with the simulated KooDrive's clock, as a real
/// server's `Date` header carries its own.
async fn handle_with_faults(
    state: &State,
    router: &TowerToHyperService<Router>,
    request: Request<Incoming>,
) -> Result<Response<Body>, SimulatedDrop> {
    let koodrive = !request.uri().path().starts_with("/_sim/");
    let access_key = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(koodrive_client::signer::parse_authorization)
        .map(|parsed| parsed.access_key);
    let call = call_of(request.method(), request.uri().path());
    let arrived = Instant::now();
    let result = handle(state, router, request).await;
    if koodrive {
        let record = RequestRecord {
            access_key,
            call,
            arrived,
            finished: Instant::now(),
            status: result.as_ref().ok().map(|r| r.status().as_u16()),
        };
        state
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(record);
    }
    let mut response = result?;
    let now = state.lock().now();
    let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&now);
    if let Ok(date) = date
        && let Ok(value) = http::HeaderValue::from_str(&date)
    {
        response.headers_mut().insert(http::header::DATE, value);
    }
    Ok(response)
}

/// Which KooDrive call a request is, by its path.
fn call_of(method: &http::Method, path: &str) -> Option<Call> {
    match path {
        CREATE_PATH => Some(Call::Create),
        GET_PATH => Some(Call::Get),
        _ if path.starts_with(USERS_PATH) && method == http::Method::DELETE => {
            Some(Call::DeleteUser)
        }
        _ if path.starts_with(USERS_PATH) => Some(Call::GetUser),
        _ => None,
    }
}

/// Applies an injected fault (if one matches), otherwise hands the request to the API.
async fn handle(
    state: &State,
    router: &TowerToHyperService<Router>,
    request: Request<Incoming>,
) -> Result<Response<Body>, SimulatedDrop> {
    use hyper::service::Service;
    let call = call_of(request.method(), request.uri().path());
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
        Some(FaultKind::Respond {
            status,
            body,
            process,
        }) => {
            if process {
                let _processed = forward(request).await;
            }
            let status = http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            Ok(api::respond(status, &body))
        }
        Some(FaultKind::DropConnection) => Err(SimulatedDrop),
        Some(FaultKind::HangAfterProcessing(delay)) => {
            let response = forward(request).await;
            tokio::time::sleep(delay).await;
            Ok(response)
        }
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

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn peaks_count_overlapping_requests_per_access_key() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let record = |ak: &str, from: u64, to: u64, status: u16| RequestRecord {
            access_key: Some(ak.into()),
            call: Some(Call::Get),
            arrived: at(from),
            finished: at(to),
            status: Some(status),
        };
        let log = [
            record("a", 0, 10, 200),
            record("a", 5, 15, 401),
            // Arrives as the first answer leaves: not in flight together.
            record("a", 10, 20, 200),
            record("b", 0, 100, 200),
        ];
        let stats = stats_by_access_key(&log);
        assert_eq!(
            stats["a"],
            AccessKeyStats {
                requests: 3,
                failed_authentication: 1,
                peak_in_flight: 2
            }
        );
        assert_eq!(stats["b"].peak_in_flight, 1);
    }
}
