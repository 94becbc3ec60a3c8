//! The HTTPS client for KooDrive's calls, with at-most-once retries.
//!
//! `create_batch` retries only when KooDrive provably did not process the request (see
//! [`crate::error`] for the list); anything else that leaves the outcome unknown is reported
//! as [`ErrorClass::InDoubt`]. Reads retry every transient failure. Every attempt is signed
//! afresh with KooDrive's clock ([`ServerClock`]), because KooDrive rejects stale, future or
//! reused dates, and takes its own permit from the shared [`RequestLimiter`], so the limit
//! counts HTTP requests, retries included.

use super::body::{HashedBody, is_blank};
use super::clock::{self, ServerClock};
use super::error::{AUTHENTICATION_FAILED, Call, CanonicalRequests, Error, ErrorClass};
use super::limit::{Permit, RequestLimiter};
use super::roots::ExtraRoots;
use super::signer::{self, Signature, SigningInput};
use super::{CREATE_PATH, Credentials, GET_PATH, MAX_USERS_PER_REQUEST, RegisterUser, USERS_PATH};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Page size asked of `batchRegister/get` (KooDrive's maximum).
const PAGE_SIZE: u32 = 1000;
/// Longest `Retry-After` waited for inside one call; a longer one is handed back to the
/// caller (in the error's class) so it can schedule the retry instead of holding a task.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(30);
/// Guard against a server whose cursors never end.
const MAX_PAGES: usize = 10_000;
/// Largest answer read. A full 1000-user result page is about 150 KB; anything far larger
/// is not KooDrive talking, and must not be buffered (or logged) whole.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Longest KooDrive message kept (in errors, hence logs, status and Events).
const MAX_MESSAGE_CHARS: usize = 1024;
/// Longest code or request ID kept.
const MAX_ID_CHARS: usize = 128;

/// What happened to one HTTP request, for metrics (`koodrive_http_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpOutcome {
    Success,
    /// A 4xx or a KooDrive error code other than authentication and throttling.
    Rejected,
    /// Credentials, signature or date refused.
    Authentication,
    Throttled,
    ServerError,
    ConnectError,
    /// Sent, but no (readable) answer.
    NoAnswer,
}

impl HttpOutcome {
    pub fn label(self) -> &'static str {
        match self {
            HttpOutcome::Success => "success",
            HttpOutcome::Rejected => "rejected",
            HttpOutcome::Authentication => "authentication",
            HttpOutcome::Throttled => "throttled",
            HttpOutcome::ServerError => "server_error",
            HttpOutcome::ConnectError => "connect_error",
            HttpOutcome::NoAnswer => "no_answer",
        }
    }

    fn of(result: &Result<Envelope, Error>) -> HttpOutcome {
        match result {
            Ok(_) => HttpOutcome::Success,
            Err(Error::Connect { .. }) => HttpOutcome::ConnectError,
            Err(Error::NoAnswer { .. } | Error::BadResponse { .. }) => HttpOutcome::NoAnswer,
            Err(Error::Authentication { .. } | Error::ClockSkew { .. }) => {
                HttpOutcome::Authentication
            }
            Err(Error::Unavailable { status: 429, .. }) => HttpOutcome::Throttled,
            Err(Error::Unavailable { .. }) => HttpOutcome::ServerError,
            Err(_) => HttpOutcome::Rejected,
        }
    }
}

/// Told about every HTTP request the client makes (metrics live outside this crate).
pub trait HttpObserver: Send + Sync + fmt::Debug {
    fn http_request(&self, call: Call, outcome: HttpOutcome, elapsed: Duration);
}

/// Timeouts, retry policy, the certificate authorities trusted, and what clients share.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Accept `http://` endpoints (simulator, tests). Never in production.
    pub allow_insecure_endpoints: bool,
    /// CAs trusted besides the WebPKI roots compiled into the binary.
    pub extra_roots: ExtraRoots,
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect, send, and read the answer).
    pub request_timeout: Duration,
    /// Attempts per call, including the first (0 behaves as 1).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The limit every HTTP request waits for. KooDrive throttles per AK: share one per set
    /// of credentials (or one for all). `None`: unlimited.
    pub limiter: Option<Arc<RequestLimiter>>,
    /// KooDrive's clock for this endpoint, shared by its clients. `None`: the client keeps
    /// its own.
    pub clock: Option<Arc<ServerClock>>,
    /// Told about every HTTP request.
    pub observer: Option<Arc<dyn HttpObserver>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_insecure_endpoints: false,
            extra_roots: ExtraRoots::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            limiter: None,
            clock: None,
            observer: None,
        }
    }
}

/// Room for one HTTP request under the client's limit, taken before anything that must
/// happen only once the request is really about to leave (the operator records its intent
/// to create only then, so a restart while waiting for the limit leaves no false intent).
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<Permit>,
}

/// The answer to a successful `batchRegister/create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTask {
    pub task_id: String,
    /// KooDrive's `code` as a string (`"0"`).
    pub code: String,
    pub message: String,
    /// The `X-Traceid` the request was sent with.
    pub trace_id: String,
}

/// A task's progress and per-user results, all pages merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskReport {
    pub task_id: String,
    /// KooDrive's status (a string or a number); its values are undocumented, so nothing
    /// depends on them.
    pub status: Option<String>,
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub users: Vec<UserResult>,
}

impl TaskReport {
    /// The documented completion rule: every user is accounted for.
    pub fn is_finished(&self) -> bool {
        self.total > 0 && self.succeeded + self.failed + self.skipped == self.total
    }
}

/// One user's outcome, matched to the request by phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserResult {
    pub phone: String,
    pub user_id: Option<String>,
    /// Set when the registration failed (or was skipped, depending on KooDrive).
    pub code: Option<String>,
    pub reason: Option<String>,
}

/// The task ID [`Client::check_credentials`] asks about. Real task IDs are 19-digit
/// decimals; no task is `0`.
pub const CREDENTIAL_CHECK_TASK_ID: &str = "0";

/// KooDrive's answer to [`Client::check_credentials`]: it got past authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialCheck {
    /// KooDrive's code (`"0"`, or the code it refused the made-up task ID with).
    pub code: String,
    /// What KooDrive said (its `msg`), bounded and secret-free.
    pub message: String,
}

/// What `DELETE users/{userId}` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// KooDrive does not know the user (already deleted, or never existed): nothing to do.
    NotFound,
}

/// What `GET users/{userId}` says about a user (the documented fields; all optional).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub user_id: Option<String>,
    pub name: Option<String>,
    /// Masked by KooDrive, e.g. `0086181****8439`.
    pub mobile: Option<String>,
    /// `0` enabled, `1` disabled.
    pub status: Option<String>,
}

/// A signed request, ready to send (or to show, for `submit --dry-run`).
#[derive(Clone)]
pub struct PreparedRequest {
    pub method: &'static str,
    pub url: String,
    /// The `Host` header the request is signed for (sent by the HTTP stack itself).
    pub host: String,
    /// Every header sent besides `Host` and `Content-Length`.
    pub headers: Vec<(String, String)>,
    pub signature: Signature,
    /// May hold users' passwords: never print it. Shared, not copied, by each send.
    body: Bytes,
}

impl PreparedRequest {
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

// Hand-written: the body may contain passwords.
impl fmt::Debug for PreparedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("host", &self.host)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// KooDrive client. Cheap to clone; `Debug` shows the endpoint and AK, never the SK.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `scheme://host[:port]` plus any path prefix of the endpoint, without trailing `/`.
    base: String,
    path_prefix: String,
    /// The exact `Host` header reqwest sends for `base`.
    host: String,
    credentials: Credentials,
    clock: Arc<ServerClock>,
    config: ClientConfig,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.base)
            .field("access_key", &self.inner.credentials.access_key)
            .field("user_id", &self.inner.credentials.user_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let endpoint = Endpoint::parse(endpoint, config.allow_insecure_endpoints)?;
        check_header_text("access key", &credentials.access_key)?;
        check_header_text("user ID", &credentials.user_id)?;
        if credentials.access_key.contains(',') {
            return Err(Error::InvalidRequest {
                reason: "the access key contains a comma, which cannot be sent in an Authorization header".into(),
            });
        }
        let mut http = reqwest::Client::builder().use_rustls_tls();
        for certificate in config.extra_roots.certificates() {
            http = http.add_root_certificate(certificate.clone());
        }
        let http = http
            .https_only(!config.allow_insecure_endpoints)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A redirect would resend a create to somewhere else: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("koodrive-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        let clock = config.clock.clone().unwrap_or_default();
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: endpoint.base,
                path_prefix: endpoint.path_prefix,
                host: endpoint.host,
                credentials,
                clock,
                config,
            }),
        })
    }

    /// The endpoint requests go to (`scheme://host[:port]` and path prefix).
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.inner.base, self.inner.path_prefix)
    }

    /// The AK these requests are signed with (not secret: it is in every request).
    pub fn access_key(&self) -> &str {
        &self.inner.credentials.access_key
    }

    /// KooDrive's clock as this client sees it.
    pub fn clock(&self) -> &ServerClock {
        &self.inner.clock
    }

    /// Waits for room under the limit for one request (see [`Reservation`]).
    pub async fn reserve(&self) -> Reservation {
        let permit = match &self.inner.config.limiter {
            Some(limiter) => limiter.acquire().await,
            None => None,
        };
        Reservation { _permit: permit }
    }

    /// Validates and signs a `batchRegister/create` request at `now` without sending it.
    pub fn prepare_create(
        &self,
        users: &[RegisterUser],
        trace_id: &str,
        now: Timestamp,
    ) -> Result<PreparedRequest, Error> {
        check_user_count(users)?;
        check_trace_id(trace_id)?;
        let Some(body) = super::body::encode_create_body_reusing(users) else {
            // The encoder only notices that a required field is blank; say which.
            return Err(validate_users(users)
                .err()
                .unwrap_or_else(|| Error::InvalidRequest {
                    reason: "a user has a blank firstname or phone, which KooDrive requires".into(),
                }));
        };
        Ok(self.prepare("POST", CREATE_PATH, &[], body, trace_id, now))
    }

    fn prepare(
        &self,
        method: &'static str,
        call_path: &str,
        query: &[(String, String)],
        body: HashedBody,
        trace_id: &str,
        now: Timestamp,
    ) -> PreparedRequest {
        let inner = &self.inner;
        let path = format!("{}{call_path}", inner.path_prefix);
        let input = SigningInput {
            method,
            path: &path,
            query,
            host: &inner.host,
            user_id: &inner.credentials.user_id,
            body: &body.bytes,
        };
        let signature = signer::sign_with_body_hash(
            &input,
            &body.sha256_hex,
            &inner.credentials.access_key,
            &inner.credentials.secret_key,
            now,
        );
        // The query is sent in its canonical form, so the signed bytes are the sent bytes.
        let query_string = signer::canonical_query(query);
        let url = if query_string.is_empty() {
            format!("{}{path}", inner.base)
        } else {
            format!("{}{path}?{query_string}", inner.base)
        };
        let mut headers = Vec::with_capacity(5);
        if method == "POST" {
            headers.push(("Content-Type".to_string(), "application/json".to_string()));
        }
        headers.push(("X-Date".to_string(), signature.x_date.clone()));
        headers.push(("X-User-Id".to_string(), inner.credentials.user_id.clone()));
        headers.push(("X-Traceid".to_string(), trace_id.to_string()));
        headers.push(("Authorization".to_string(), signature.authorization.clone()));
        PreparedRequest {
            method,
            url,
            host: inner.host.clone(),
            headers,
            signature,
            body: body.into_recycled_bytes(),
        }
    }

    /// Creates a batch provisioning task. `trace_id` is chosen by the caller so it can be
    /// recorded before sending; every attempt carries it.
    pub async fn create_batch(
        &self,
        users: &[RegisterUser],
        trace_id: &str,
    ) -> Result<CreatedTask, Error> {
        let reservation = self.reserve().await;
        self.create_batch_reserved(reservation, users, trace_id)
            .await
    }

    /// [`Client::create_batch`] whose first attempt uses `reservation`, taken before the
    /// caller recorded its intent; retries (only after answers proving nothing was
    /// processed) wait for their own room under the limit.
    pub async fn create_batch_reserved(
        &self,
        reservation: Reservation,
        users: &[RegisterUser],
        trace_id: &str,
    ) -> Result<CreatedTask, Error> {
        // Refuse an invalid request before any attempt (and so before any retry logic).
        validate_users(users)?;
        check_trace_id(trace_id)?;
        let first = Mutex::new(Some(reservation));
        let first = &first;
        self.with_retries(Call::Create, trace_id, move || async move {
            let reserved = first.lock().ok().and_then(|mut r| r.take());
            let reservation = match reserved {
                Some(reservation) => reservation,
                None => self.reserve().await,
            };
            let prepared = self.prepare_create(users, trace_id, self.inner.clock.signing_time())?;
            let envelope = self.execute(Call::Create, &prepared, reservation).await?;
            let task_id = scalar_from_value(&envelope.data_value())
                .filter(|id| !id.is_empty())
                .ok_or_else(|| Error::BadResponse {
                    call: Call::Create,
                    status: 200,
                    detail: "success without a task ID in `data`".into(),
                })?;
            Ok(CreatedTask {
                task_id: bounded(&task_id, MAX_ID_CHARS),
                code: envelope.code.map(Scalar::into_string).unwrap_or_default(),
                message: envelope
                    .msg
                    .map(|m| bounded(&m.into_string(), MAX_MESSAGE_CHARS))
                    .unwrap_or_default(),
                trace_id: trace_id.to_string(),
            })
        })
        .await
    }

    /// Reads a task's progress and results, following every page.
    pub async fn get_task(&self, task_id: &str) -> Result<TaskReport, Error> {
        if task_id.is_empty() {
            return Err(Error::InvalidRequest {
                reason: "empty task ID".into(),
            });
        }
        let mut report = TaskReport {
            task_id: task_id.to_string(),
            ..TaskReport::default()
        };
        let mut cursor = "0".to_string();
        let mut seen_cursors = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let query = vec![
                ("taskId".to_string(), task_id.to_string()),
                ("cursor".to_string(), cursor.clone()),
                ("pageSize".to_string(), PAGE_SIZE.to_string()),
            ];
            let page = self
                .read(Call::Get, GET_PATH, &query)
                .await
                .and_then(|data| {
                    let Some(data) = data.filter(|raw| raw.get() != "null") else {
                        return Ok(TaskPage::default());
                    };
                    serde_json::from_str::<TaskPage>(data.get()).map_err(|e| Error::BadResponse {
                        call: Call::Get,
                        status: 200,
                        detail: format!("unexpected `data` shape: {e}"),
                    })
                })?;
            if let Some(info) = page.task_info {
                report.status = info
                    .status
                    .map(Scalar::into_string)
                    .or(report.status.take());
                report.total = info.total_count.map_or(report.total, Scalar::into_count);
                report.succeeded = info
                    .success_count
                    .map_or(report.succeeded, Scalar::into_count);
                report.failed = info.fail_count.map_or(report.failed, Scalar::into_count);
                report.skipped = info.skip_count.map_or(report.skipped, Scalar::into_count);
            }
            report.users.extend(
                page.register_list
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .map(|entry| UserResult {
                        phone: entry.phone.map(Scalar::into_string).unwrap_or_default(),
                        user_id: entry
                            .user_id
                            .map(Scalar::into_string)
                            .filter(|s| !s.is_empty())
                            .map(|s| bounded(&s, MAX_ID_CHARS)),
                        code: entry
                            .code
                            .map(Scalar::into_string)
                            .filter(|s| !s.is_empty())
                            .map(|s| bounded(&s, MAX_ID_CHARS)),
                        reason: entry
                            .reason
                            .map(Scalar::into_string)
                            .filter(|s| !s.is_empty())
                            .map(|s| bounded(&s, MAX_MESSAGE_CHARS)),
                    }),
            );
            let next = page
                .next_page_cursor
                .or(page.next_cursor)
                .map(Scalar::into_string)
                .unwrap_or_default();
            let next = next.trim();
            // The documented end is an absent or empty cursor; servers also end with a
            // cursor that points back to the start ("0", "-1") or repeats. Any of those
            // after the first page means there is nothing more to read.
            let ends = next.is_empty()
                || next == "0"
                || next == "-1"
                || next == cursor
                || !seen_cursors.insert(next.to_string());
            if ends {
                return Ok(report);
            }
            cursor = next.to_string();
        }
        Err(Error::BadResponse {
            call: Call::Get,
            status: 200,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Checks that KooDrive accepts these credentials, with one request that cannot create
    /// or change anything: `batchRegister/get` for [`CREDENTIAL_CHECK_TASK_ID`], a task ID no
    /// task has. It is a documented provisioning call signed exactly like a create (same
    /// headers, same app authentication, scoped to `X-User-Id`), so the gateway and KooDrive
    /// authenticate it as they would a create: a wrong AK, SK or signature is refused
    /// (`APIG.0303`, or KooDrive's `13000001`), and any answer in KooDrive's own envelope
    /// below HTTP 500 — success, or KooDrive saying the made-up task does not exist — got
    /// past authentication. Reads are retried like any read; an authentication failure is
    /// never retried (the caller guards the AK/SK against Huawei's lockout).
    pub async fn check_credentials(&self) -> Result<CredentialCheck, Error> {
        let query = vec![
            ("taskId".to_string(), CREDENTIAL_CHECK_TASK_ID.to_string()),
            ("cursor".to_string(), "0".to_string()),
            ("pageSize".to_string(), "1".to_string()),
        ];
        match self.read(Call::Get, GET_PATH, &query).await {
            Ok(_) => Ok(CredentialCheck {
                code: "0".into(),
                message: "KooDrive answered the credential check".into(),
            }),
            Err(err) if err.proves_authenticated() => Ok(CredentialCheck {
                code: err.code().unwrap_or_default().to_string(),
                message: match &err {
                    Error::Rejected { msg: Some(msg), .. } => msg.clone(),
                    _ => err.message(),
                },
            }),
            Err(err) => Err(err),
        }
    }

    /// Deletes a KooDrive user ("and the corresponding resources": irreversible). Sent
    /// once: an ambiguous outcome is [`ErrorClass::InDoubt`], never retried here.
    pub async fn delete_user(&self, user_id: &str, trace_id: &str) -> Result<Deletion, Error> {
        let reservation = self.reserve().await;
        self.delete_user_reserved(reservation, user_id, trace_id)
            .await
    }

    /// [`Client::delete_user`] with room under the limit already taken (see
    /// [`Reservation`]): the caller records its intent to delete only once the request is
    /// really about to leave.
    pub async fn delete_user_reserved(
        &self,
        reservation: Reservation,
        user_id: &str,
        trace_id: &str,
    ) -> Result<Deletion, Error> {
        check_user_id(user_id)?;
        check_trace_id(trace_id)?;
        let path = format!("{USERS_PATH}/{user_id}");
        let prepared = self.prepare(
            "DELETE",
            &path,
            &[],
            HashedBody::empty(),
            trace_id,
            self.inner.clock.signing_time(),
        );
        match self.execute(Call::DeleteUser, &prepared, reservation).await {
            Ok(_) => Ok(Deletion::Deleted),
            Err(err) if is_user_not_found(&err) => Ok(Deletion::NotFound),
            Err(err) => Err(err),
        }
    }

    /// Reads what KooDrive knows of a user; `None` when it does not know the user.
    pub async fn get_user(&self, user_id: &str) -> Result<Option<UserInfo>, Error> {
        check_user_id(user_id)?;
        let path = format!("{USERS_PATH}/{user_id}");
        match self.read(Call::GetUser, &path, &[]).await {
            Ok(data) => {
                let data: serde_json::Value = data
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
                    .unwrap_or_default();
                let text = |field: &str| {
                    data.get(field)
                        .and_then(scalar_from_value)
                        .map(|s| bounded(&s, MAX_ID_CHARS))
                };
                Ok(Some(UserInfo {
                    user_id: text("userId"),
                    name: text("name"),
                    mobile: text("mobile"),
                    status: text("status"),
                }))
            }
            Err(err) if is_user_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// A signed GET with retries; the envelope's `data`.
    async fn read(
        &self,
        call: Call,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Option<Box<RawValue>>, Error> {
        let trace_id = super::new_trace_id();
        let trace = trace_id.as_str();
        self.with_retries(call, trace, move || async move {
            let reservation = self.reserve().await;
            let prepared = self.prepare(
                "GET",
                path,
                query,
                HashedBody::empty(),
                trace,
                self.inner.clock.signing_time(),
            );
            let envelope = self.execute(call, &prepared, reservation).await?;
            Ok(envelope.data)
        })
        .await
    }

    /// Repeats `attempt` while its failure is safe to repeat: a transient one (for a create,
    /// only those proving nothing was processed), or — once per call — a refused date after
    /// the clock was corrected from KooDrive's answer. Exponential backoff with jitter,
    /// never shorter than the server's `Retry-After`.
    async fn with_retries<T, F, Fut>(
        &self,
        call: Call,
        trace_id: &str,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let config = &self.inner.config;
        let retries = usize::try_from(config.max_attempts.max(1) - 1).unwrap_or(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(config.initial_backoff)
            .with_max_delay(config.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(retries);
        let mut clock_retried = false;
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|err: &Error| match err.class() {
                ErrorClass::Transient { retry_after } => {
                    retry_after.is_none_or(|after| after <= MAX_RETRY_AFTER_WAIT)
                }
                // The answer corrected the clock (see `execute`): one more try is cheap, and
                // a second refusal is an authentication failure the caller guards against.
                ErrorClass::ClockSkew if !clock_retried => {
                    clock_retried = true;
                    true
                }
                _ => false,
            })
            .adjust(|err: &Error, next: Option<Duration>| match err.class() {
                ErrorClass::ClockSkew => next.map(|_| Duration::ZERO),
                ErrorClass::Transient {
                    retry_after: Some(after),
                } => next.map(|delay| delay.max(after)),
                _ => next,
            })
            .notify(|err: &Error, delay: Duration| {
                tracing::warn!(
                    %call,
                    trace_id,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %err,
                    "KooDrive call failed in a way that is safe to repeat; retrying"
                );
            })
            .await
    }

    /// Sends one request and classifies its answer. Learns KooDrive's clock from the answer.
    async fn execute(
        &self,
        call: Call,
        prepared: &PreparedRequest,
        reservation: Reservation,
    ) -> Result<Envelope, Error> {
        let started = Instant::now();
        let result = self.send(call, prepared).await;
        // The permit covers the request until its answer is read.
        drop(reservation);
        if let Some(observer) = &self.inner.config.observer {
            observer.http_request(call, HttpOutcome::of(&result), started.elapsed());
        }
        result
    }

    async fn send(&self, call: Call, prepared: &PreparedRequest) -> Result<Envelope, Error> {
        let method = match prepared.method {
            "POST" => reqwest::Method::POST,
            "DELETE" => reqwest::Method::DELETE,
            _ => reqwest::Method::GET,
        };
        let mut request = self.inner.http.request(method, &prepared.url);
        for (name, value) in &prepared.headers {
            request = request.header(name, value);
        }
        if !prepared.body.is_empty() {
            request = request.body(prepared.body.clone());
        }
        let trace_id = prepared
            .headers
            .iter()
            .find(|(name, _)| name == "X-Traceid")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        let sent = Timestamp::now();
        let mut response = request.send().await.map_err(|source| {
            let error = if source.is_connect() {
                Error::Connect { call, source }
            } else {
                Error::NoAnswer {
                    call,
                    status: None,
                    source,
                }
            };
            tracing::warn!(%call, trace_id, %error, "KooDrive request failed");
            error
        })?;
        let received = Timestamp::now();
        let status = response.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(date) = header(reqwest::header::DATE) {
            self.inner.clock.observe_date_header(&date, sent, received);
        }
        let header_request_id = header(reqwest::header::HeaderName::from_static("x-request-id"))
            .map(|id| bounded(&id, MAX_ID_CHARS));
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .as_deref()
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(Error::BadResponse {
                            call,
                            status,
                            detail: format!(
                                "the answer is larger than {} MiB",
                                MAX_ANSWER_BYTES / 1024 / 1024
                            ),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(Error::NoAnswer {
                        call,
                        status: Some(status),
                        source,
                    });
                }
            }
        }
        tracing::debug!(%call, trace_id, status, "KooDrive answered");
        let result = classify(
            call,
            status,
            &body,
            header_request_id,
            retry_after,
            &prepared.signature,
        );
        if let Err(Error::ClockSkew {
            server_time: Some(server),
            ..
        }) = &result
            && let Ok(server) = Timestamp::from_second(*server)
        {
            self.inner.clock.observe_server_time(server, received);
        }
        result
    }
}

/// An endpoint URL taken apart into what requests and signatures need.
struct Endpoint {
    base: String,
    path_prefix: String,
    host: String,
}

impl Endpoint {
    fn parse(endpoint: &str, allow_insecure: bool) -> Result<Endpoint, Error> {
        let invalid = |reason: &str| Error::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(endpoint).map_err(|e| {
            invalid(&format!(
                "not a URL ({e}); expected e.g. https://intl.myhuaweicloud-koodrive.com"
            ))
        })?;
        match url.scheme() {
            "https" => {}
            "http" if allow_insecure => {}
            "http" => {
                return Err(invalid(
                    "plain http:// is refused because KooDrive is HTTPS only; allow insecure endpoints (--allow-insecure-endpoints) only for a simulator or tests",
                ));
            }
            other => {
                return Err(invalid(&format!(
                    "unsupported scheme `{other}`; use https://"
                )));
            }
        }
        let Some(host_name) = url.host_str() else {
            return Err(invalid("no host name"));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "credentials in the URL are not supported; use the access key and secret key",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a query string or fragment is not allowed"));
        }
        // `Url::port` is None for the scheme's default port, exactly when the Host header
        // carries no port.
        let host = match url.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        Ok(Endpoint {
            base: format!("{}://{host}", url.scheme()),
            path_prefix: url.path().trim_end_matches('/').to_string(),
            host,
        })
    }
}

/// The canonical form of an endpoint (`scheme://host[:port]/prefix`, default port and
/// trailing `/` dropped, host lower-cased), for comparing endpoints as the client would
/// reach them; `None` when it is not a URL the client could use at all.
pub fn normalize_endpoint(endpoint: &str) -> Option<String> {
    let parsed = Endpoint::parse(endpoint, true).ok()?;
    Some(format!(
        "{}{}",
        parsed.base.to_ascii_lowercase(),
        parsed.path_prefix
    ))
}

/// Either of KooDrive's envelopes: `code`/`msg`/`data`, or the gateway's
/// `error_code`/`error_msg`/`request_id`.
#[derive(Deserialize, Default, Debug)]
struct Envelope {
    code: Option<Scalar>,
    msg: Option<Scalar>,
    /// Kept as text and decoded once into what the call expects: a 1000-user task page
    /// decoded into a `Value` tree first cost the operator ~1 MB per poll.
    data: Option<Box<RawValue>>,
    error_code: Option<Scalar>,
    error_msg: Option<Scalar>,
    request_id: Option<Scalar>,
}

impl Envelope {
    /// `data` as a JSON value (`null` when absent or not JSON): for the small answers.
    fn data_value(&self) -> serde_json::Value {
        self.data
            .as_ref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }
}

/// KooDrive documents string fields but its examples send numbers: accept both, and keep
/// anything else rather than failing on it.
///
/// Deserialised by hand with what serde's `untagged` derive tries in order (an `i64`, else
/// an `f64`, else a string, else any value), minus the trying: the derive buffers each
/// value and builds (and formats) an error for every variant that does not fit, three per
/// string field. A task's results carry five of those per user, and that was 6 % of the
/// operator's CPU (callgrind, `benches/scale.rs` 1000 × 10).
#[derive(Debug, Clone)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
    Other(serde_json::Value),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        use serde::de::{MapAccess, SeqAccess, Visitor};

        struct ScalarVisitor;

        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a number or any JSON value")
            }

            fn visit_i64<E>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(n))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Scalar, E> {
                // Beyond i64 the derive fell through to f64.
                Ok(i64::try_from(n).map_or(Scalar::Float(n as f64), Scalar::Int))
            }

            fn visit_f64<E>(self, n: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(n))
            }

            fn visit_str<E>(self, text: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(text.to_owned()))
            }

            fn visit_string<E>(self, text: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(text))
            }

            fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other(serde_json::Value::Bool(b)))
            }

            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other(serde_json::Value::Null))
            }

            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other(serde_json::Value::Null))
            }

            fn visit_some<D: serde::Deserializer<'de>>(self, inner: D) -> Result<Scalar, D::Error> {
                Scalar::deserialize(inner)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                serde_json::Value::deserialize(SeqAccessDeserializer::new(seq)).map(Scalar::Other)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                serde_json::Value::deserialize(MapAccessDeserializer::new(map)).map(Scalar::Other)
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Text(s) => s,
            Scalar::Other(serde_json::Value::Null) => String::new(),
            Scalar::Other(value) => value.to_string(),
        }
    }

    fn into_count(self) -> i64 {
        match self {
            Scalar::Int(n) => n,
            Scalar::Float(n) => n as i64,
            Scalar::Text(s) => s.trim().parse().unwrap_or(0),
            Scalar::Other(_) => 0,
        }
    }
}

fn scalar_from_value(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TaskPage {
    task_info: Option<TaskInfo>,
    /// `null` and absent both mean "no entries"; a `null` entry is skipped.
    register_list: Option<Vec<Option<RegisterEntry>>>,
    next_page_cursor: Option<Scalar>,
    next_cursor: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskInfo {
    status: Option<Scalar>,
    total_count: Option<Scalar>,
    success_count: Option<Scalar>,
    fail_count: Option<Scalar>,
    skip_count: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterEntry {
    user_id: Option<Scalar>,
    phone: Option<Scalar>,
    code: Option<Scalar>,
    reason: Option<Scalar>,
}

/// Whether an error answer means "KooDrive does not know this user". KooDrive does not
/// document it; a 404 in KooDrive's own envelope (not the gateway's "no such API") or a
/// message saying the user does not exist are taken as that.
fn is_user_not_found(err: &Error) -> bool {
    let Error::Rejected {
        status, code, msg, ..
    } = err
    else {
        return false;
    };
    if code.as_deref().is_some_and(|c| c.starts_with("APIG")) {
        return false;
    }
    let says_so = msg.as_deref().is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        m.contains("not exist") || m.contains("not found") || m.contains("no such user")
    });
    *status == 404 || says_so
}

/// Whether a refusal is about the request's date rather than its credentials.
fn is_clock_message(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    msg.contains("signature expired") || msg.contains("later than the current time")
}

/// Whether a 400 answer denotes an authentication failure (KooDrive documents HTTP 400 as
/// "authentication failed", but also answers it for bad parameters: code and message tell).
fn denotes_authentication(code: Option<&str>, msg: Option<&str>) -> bool {
    let gateway_auth = code.is_some_and(|c| {
        (c.starts_with("APIG.03") || c.starts_with("APIGW.03")) && !c.ends_with(".0308")
    });
    let koodrive_auth = code == Some(AUTHENTICATION_FAILED);
    let says_so = msg.is_some_and(|m| {
        let lower = m.to_ascii_lowercase();
        lower.contains("auth")
            || lower.contains("signature")
            || lower.contains("appkey")
            || m.contains("鉴权")
            || m.contains("认证")
            || m.contains("签名")
    });
    gateway_auth || koodrive_auth || says_so
}

/// Turns an HTTP answer into the success envelope or a classified error.
fn classify(
    call: Call,
    status: u16,
    body: &[u8],
    header_request_id: Option<String>,
    retry_after: Option<Duration>,
    signed: &Signature,
) -> Result<Envelope, Error> {
    let parsed: Option<Envelope> = serde_json::from_slice(body).ok();
    let (code, msg, request_id) = match &parsed {
        Some(env) if env.error_code.is_some() || env.error_msg.is_some() => (
            env.error_code.clone().map(Scalar::into_string),
            env.error_msg.clone().map(Scalar::into_string),
            env.request_id
                .clone()
                .map(Scalar::into_string)
                .or(header_request_id),
        ),
        Some(env) => (
            env.code.clone().map(Scalar::into_string),
            env.msg.clone().map(Scalar::into_string),
            env.request_id
                .clone()
                .map(Scalar::into_string)
                .or(header_request_id),
        ),
        None => (None, None, header_request_id),
    };
    // Whatever KooDrive (or something pretending to be it) says ends up in logs, status
    // and Events: keep it printable and short.
    let code = code.map(|c| bounded(&c, MAX_ID_CHARS));
    let request_id = request_id.map(|id| bounded(&id, MAX_ID_CHARS));
    let full_msg = msg;
    let msg = full_msg.as_deref().map(|m| bounded(m, MAX_MESSAGE_CHARS));
    let throttled = status == 429 || code.as_deref().is_some_and(|c| c.ends_with(".0308"));
    if (200..300).contains(&status) && !throttled {
        let Some(envelope) = parsed else {
            return Err(Error::BadResponse {
                call,
                status,
                detail: "the body is not the JSON envelope".into(),
            });
        };
        return match code.as_deref() {
            Some("0") => Ok(envelope),
            Some(_) => Err(Error::Rejected {
                call,
                status,
                code,
                msg,
                request_id,
            }),
            None => Err(Error::BadResponse {
                call,
                status,
                detail: "the envelope has no `code`".into(),
            }),
        };
    }
    if throttled || status >= 500 {
        return Err(Error::Unavailable {
            call,
            status,
            code,
            msg,
            request_id,
            retry_after,
        });
    }
    let authentication = status == 401
        || status == 403
        || (status == 400 && denotes_authentication(code.as_deref(), msg.as_deref()));
    if authentication {
        let text = full_msg.as_deref().unwrap_or_default();
        if is_clock_message(text) {
            return Err(Error::ClockSkew {
                call,
                status,
                code,
                msg,
                request_id,
                signed_at: clock::signature_time_in(text)
                    .or_else(|| signer::parse_x_date(&signed.x_date).ok())
                    .map(|t| t.as_second()),
                server_time: clock::server_time_in(text).map(|t| t.as_second()),
            });
        }
        let server_canonical_request = full_msg.as_deref().and_then(|m| {
            m.find("canonicalRequest:")
                .map(|at| m[at + "canonicalRequest:".len()..].replace('|', "\n"))
        });
        return Err(Error::Authentication {
            call,
            status,
            code,
            msg,
            request_id,
            canonical: Box::new(CanonicalRequests {
                server: server_canonical_request,
                client: signed.canonical_request.clone(),
            }),
        });
    }
    Err(Error::Rejected {
        call,
        status,
        code,
        msg,
        request_id,
    })
}

/// `text` without control characters (as spaces), cut to at most `max` characters.
fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value.trim()).ok()?.timestamp();
    let delta = at.duration_since(Timestamp::now());
    Duration::try_from(delta).ok()
}

fn validate_users(users: &[RegisterUser]) -> Result<(), Error> {
    check_user_count(users)?;
    for (index, user) in users.iter().enumerate() {
        if is_blank(&user.phone) {
            return Err(Error::InvalidRequest {
                reason: format!(
                    "user #{} ({}) has no phone, which KooDrive requires",
                    index + 1,
                    user.firstname
                ),
            });
        }
        if is_blank(&user.firstname) {
            return Err(Error::InvalidRequest {
                reason: format!(
                    "user with phone {} has no firstname, which KooDrive requires",
                    user.phone
                ),
            });
        }
    }
    Ok(())
}

fn check_user_count(users: &[RegisterUser]) -> Result<(), Error> {
    if users.is_empty() {
        return Err(Error::InvalidRequest {
            reason: "the user list is empty".into(),
        });
    }
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(Error::InvalidRequest {
            reason: format!(
                "{} users in one request; KooDrive accepts at most {MAX_USERS_PER_REQUEST}, so split them",
                users.len()
            ),
        });
    }
    Ok(())
}

fn check_trace_id(trace_id: &str) -> Result<(), Error> {
    let valid = !trace_id.is_empty()
        && trace_id.len() <= 128
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest {
            reason: "the trace ID must be 1-128 characters of [0-9A-Za-z_-]".into(),
        })
    }
}

/// A KooDrive user ID goes into the path: only the characters KooDrive's IDs use.
fn check_user_id(user_id: &str) -> Result<(), Error> {
    let valid = !user_id.is_empty()
        && user_id.len() <= 64
        && user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest {
            reason: "a KooDrive user ID must be 1-64 characters of [0-9A-Za-z_-]".into(),
        })
    }
}

fn check_header_text(what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidRequest {
            reason: format!("the {what} is empty"),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidRequest {
            reason: format!("the {what} contains spaces or non-ASCII characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    fn client(endpoint: &str, allow_insecure: bool) -> Result<Client, Error> {
        Client::new(
            endpoint,
            Credentials {
                access_key: "AK".into(),
                secret_key: SecretKey::new("the-sk".into()),
                user_id: "42".into(),
            },
            ClientConfig {
                allow_insecure_endpoints: allow_insecure,
                ..ClientConfig::default()
            },
        )
    }

    /// A signature whose canonical request is `canonical` (what `classify` echoes back).
    fn signed(canonical: &str) -> Signature {
        Signature {
            x_date: "20240909T033325Z".into(),
            canonical_request: canonical.into(),
            string_to_sign: String::new(),
            signature: String::new(),
            authorization: String::new(),
        }
    }

    fn user(phone: &str) -> RegisterUser {
        RegisterUser {
            firstname: "Ada".into(),
            surname: None,
            phone: phone.into(),
            email: None,
            password: None,
        }
    }

    #[test]
    fn http_endpoints_are_refused_unless_allowed() {
        let err = client("http://127.0.0.1:8080", false).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Invalid);
        assert!(err.to_string().contains("http://"), "{err}");
        assert!(client("http://127.0.0.1:8080", true).is_ok());
        assert!(client("ftp://x", true).is_err());
    }

    #[test]
    fn host_header_carries_only_a_non_default_port() {
        let c = client("https://intl.myhuaweicloud-koodrive.com:443/", false).unwrap();
        assert_eq!(c.inner.host, "intl.myhuaweicloud-koodrive.com");
        let c = client("https://example.com:8443/prefix/", false).unwrap();
        assert_eq!(c.inner.host, "example.com:8443");
        assert_eq!(c.endpoint(), "https://example.com:8443/prefix");
        let prepared = c
            .prepare_create(&[user("1")], "t", Timestamp::UNIX_EPOCH)
            .unwrap();
        assert_eq!(
            prepared.url,
            "https://example.com:8443/prefix/koodrive/ose/v1/user/batchRegister/create"
        );
        assert!(
            prepared
                .signature
                .canonical_request
                .contains("\nhost:example.com:8443\n")
        );
    }

    #[test]
    fn invalid_user_lists_are_refused_before_sending() {
        let c = client("https://example.com", false).unwrap();
        let too_many: Vec<_> = (0..=MAX_USERS_PER_REQUEST)
            .map(|i| user(&i.to_string()))
            .collect();
        let err = c
            .prepare_create(&too_many, "t", Timestamp::now())
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Invalid);
        assert!(err.to_string().contains("at most 1000"), "{err}");
        let mut nameless = user("1");
        nameless.firstname = " ".into();
        let err = c
            .prepare_create(&[nameless], "t", Timestamp::now())
            .unwrap_err();
        assert!(err.to_string().contains("firstname"), "{err}");
        assert!(
            c.prepare_create(&[user("")], "t", Timestamp::now())
                .is_err()
        );
        assert!(c.prepare_create(&[], "t", Timestamp::now()).is_err());
        assert!(
            c.prepare_create(&[user("1")], "bad id!", Timestamp::now())
                .is_err()
        );
    }

    #[test]
    fn scalar_reads_every_json_value_as_the_untagged_derive_did() {
        /// The derive `Scalar` replaced (its fields are only compared through `Debug`).
        #[derive(Deserialize, Debug)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Derived {
            Int(i64),
            Float(f64),
            Text(String),
            Other(serde_json::Value),
        }
        for text in [
            "0",
            "-5",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "1.5",
            "-0.0",
            "1e300",
            r#""""#,
            r#""12""#,
            r#""héllo \"quoted\"""#,
            "true",
            "false",
            "null",
            r#"[1, "a", null]"#,
            r#"{"a": {"b": [2]}}"#,
        ] {
            let ours: Scalar = serde_json::from_str(text).unwrap();
            let derived: Derived = serde_json::from_str(text).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{derived:?}"), "{text}");
            // Through a `Value` too, as responses are read.
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let ours: Scalar = serde_json::from_value(value.clone()).unwrap();
            let derived: Derived = serde_json::from_value(value).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{derived:?}"), "{text}");
        }
        #[derive(Deserialize, Debug)]
        struct Field {
            field: Option<Scalar>,
        }
        let absent: Field = serde_json::from_str("{}").unwrap();
        let null: Field = serde_json::from_str(r#"{"field": null}"#).unwrap();
        assert!(absent.field.is_none() && null.field.is_none());
    }

    #[test]
    fn debug_shows_neither_sk_nor_body() {
        let c = client("https://example.com", false).unwrap();
        let mut u = user("1");
        u.password = Some(crate::Password::new("pw-secret".into()));
        let prepared = c.prepare_create(&[u], "t", Timestamp::now()).unwrap();
        let shown = format!("{c:?} {prepared:?}");
        assert!(!shown.contains("the-sk"), "{shown}");
        assert!(!shown.contains("pw-secret"), "{shown}");
    }

    #[test]
    fn accepts_numeric_and_string_codes() {
        let ok = classify(
            Call::Create,
            200,
            br#"{"code":0,"msg":"Success","data":"123"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap();
        assert_eq!(ok.code.unwrap().into_string(), "0");
        let ok = classify(
            Call::Create,
            200,
            br#"{"code":"0","msg":"Success","data":"123"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap();
        assert_eq!(ok.data_value(), serde_json::json!("123"));
        let err = classify(
            Call::Create,
            200,
            br#"{"code":13000201,"msg":"inner server invoke failure"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        // Not a refusal that proves nothing was created: on a create, it is in doubt.
        assert_eq!(err.class(), ErrorClass::InDoubt);
        assert_eq!(err.code(), Some("13000201"));
    }

    #[test]
    fn parses_the_gateway_envelope_and_echoed_canonical_request() {
        let body = br#"{"error_code":"APIG.0303","error_msg":"Incorrect app authentication information: verify signature fail, canonicalRequest:GET|/test/||host:h|x-date:d||host;x-date|abc","request_id":"r-9"}"#;
        let err = classify(Call::Get, 401, body, None, None, &signed("ours")).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Authentication);
        assert_eq!(err.code(), Some("APIG.0303"));
        assert_eq!(err.request_id(), Some("r-9"));
        let (server, ours) = err.canonical_requests().unwrap();
        assert_eq!(
            server,
            "GET\n/test/\n\nhost:h\nx-date:d\n\nhost;x-date\nabc"
        );
        assert_eq!(ours, "ours");
    }

    #[test]
    fn classifies_http_failures() {
        let err = classify(
            Call::Create,
            400,
            br#"{"code":13000102,"msg":"parameter validation failed"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Rejected);
        assert_eq!(err.code(), Some("13000102"));
        let err = classify(
            Call::Create,
            400,
            br#"{"code":13000001,"msg":"authentication failed"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Authentication);
        let err = classify(
            Call::Create,
            429,
            br#"{"error_code":"APIG.0308","error_msg":"throttled"}"#,
            None,
            Some(Duration::from_secs(3)),
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(
            err.class(),
            ErrorClass::Transient {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let err = classify(
            Call::Create,
            500,
            br#"{"code":13000201,"msg":"inner server invoke failure"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        // A 5xx on a create may come after KooDrive acted, envelope or not (issue #9).
        assert_eq!(err.class(), ErrorClass::InDoubt);
        let err =
            classify(Call::Create, 200, b"{\"code\":0,", None, None, &signed("")).unwrap_err();
        assert_eq!(err.class(), ErrorClass::InDoubt);
        let err = classify(Call::Get, 200, b"garbage", None, None, &signed("")).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient { retry_after: None });
        let err = classify(
            Call::Get,
            404,
            b"",
            Some("hdr-id".into()),
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Rejected);
        assert_eq!(err.request_id(), Some("hdr-id"));
    }

    #[test]
    fn task_pages_accept_both_cursor_names_and_string_counts() {
        let page: TaskPage = serde_json::from_value(serde_json::json!({
            "taskInfo": {"taskId": "1", "status": "RUNNING", "totalCount": "3", "successCount": 1,
                          "failCount": 0, "skipCount": 0},
            "registerList": [{"id": 5, "userId": 77, "phone": "861", "code": null}],
            "nextCursor": "abc"
        }))
        .unwrap();
        assert_eq!(page.next_cursor.unwrap().into_string(), "abc");
        assert_eq!(page.task_info.unwrap().total_count.unwrap().into_count(), 3);
        assert_eq!(
            page.register_list.unwrap()[0]
                .as_ref()
                .unwrap()
                .user_id
                .clone()
                .unwrap()
                .into_string(),
            "77"
        );
    }

    #[test]
    fn finished_means_every_user_accounted_for() {
        let mut report = TaskReport {
            total: 3,
            succeeded: 1,
            failed: 1,
            skipped: 0,
            ..TaskReport::default()
        };
        assert!(!report.is_finished());
        report.skipped = 1;
        assert!(report.is_finished());
        assert!(!TaskReport::default().is_finished());
    }

    fn transient(retry_after: Option<Duration>) -> Error {
        Error::Unavailable {
            call: Call::Get,
            status: 503,
            code: None,
            msg: None,
            request_id: None,
            retry_after,
        }
    }

    /// Virtual time (paused tokio clock): what the retry loop waited, without waiting.
    async fn retry_time(c: &Client, retry_after: Option<Duration>) -> (u32, Duration) {
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result: Result<(), Error> = c
            .with_retries(Call::Get, "t", || async {
                attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(transient(retry_after))
            })
            .await;
        assert!(result.is_err());
        (attempts.into_inner(), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_is_capped_and_honours_retry_after() {
        let c = Client::new(
            "https://example.com",
            Credentials {
                access_key: "AK".into(),
                secret_key: SecretKey::new("s".into()),
                user_id: "1".into(),
            },
            ClientConfig {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(400),
                max_attempts: 5,
                ..ClientConfig::default()
            },
        )
        .unwrap();
        // 100, 200, 400, 400 ms, each with up to as much again of jitter.
        let (attempts, waited) = retry_time(&c, None).await;
        assert_eq!(attempts, 5);
        assert!(waited >= Duration::from_millis(1100), "{waited:?}");
        assert!(waited <= Duration::from_millis(2200), "{waited:?}");
        // Retry-After is a floor for every wait.
        let (attempts, waited) = retry_time(&c, Some(Duration::from_secs(2))).await;
        assert_eq!(attempts, 5);
        assert!(waited >= Duration::from_secs(8), "{waited:?}");
        // A Retry-After longer than a call may hold is handed back at once.
        let (attempts, _) = retry_time(&c, Some(Duration::from_secs(40))).await;
        assert_eq!(attempts, 1);
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn poll_pages_tolerate_numbers_nulls_and_looping_cursors() {
        let page: TaskPage = serde_json::from_value(serde_json::json!({
            "taskInfo": {"taskId": 7, "status": 2, "totalCount": 1, "successCount": 1,
                          "failCount": 0, "skipCount": 0},
            "registerList": null,
            "nextPageCursor": -1
        }))
        .unwrap();
        assert!(page.register_list.is_none());
        assert_eq!(page.task_info.unwrap().status.unwrap().into_string(), "2");
        assert_eq!(page.next_page_cursor.unwrap().into_string(), "-1");
        let page: TaskPage = serde_json::from_value(serde_json::json!({
            "registerList": [null, {"phone": 8613800000001_i64, "code": 13000301, "reason": 42}]
        }))
        .unwrap();
        let entries: Vec<_> = page.register_list.unwrap().into_iter().flatten().collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].reason.clone().unwrap().into_string(), "42");
    }

    #[test]
    fn koodrive_text_is_bounded_and_printable() {
        let long = "x".repeat(5000);
        let body = format!(r#"{{"code":13000201,"msg":"line\u0000one\nline two {long}"}}"#);
        let err = classify(Call::Get, 400, body.as_bytes(), None, None, &signed("")).unwrap_err();
        let msg = err.message();
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(
            msg.chars().count() < MAX_MESSAGE_CHARS + 200,
            "{}",
            msg.len()
        );
        assert!(msg.contains("line one line two"), "{msg}");
    }

    #[test]
    fn authentication_is_told_apart_from_parameters_and_clocks() {
        let auth_400 = classify(
            Call::Get,
            400,
            "{\"code\":13000001,\"msg\":\"鉴权不通过\"}".as_bytes(),
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(auth_400.class(), ErrorClass::Authentication);
        let params = classify(
            Call::Create,
            400,
            br#"{"code":13000102,"msg":"parameter validation failed"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(params.class(), ErrorClass::Rejected);
        let future = classify(
            Call::Create,
            401,
            br#"{"error_code":"APIG.0303","error_msg":"Incorrect app authentication information: x-date cannot be later than the current time"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(future.class(), ErrorClass::ClockSkew);
        let expired = classify(
            Call::Get,
            401,
            br#"{"error_code":"APIG.0303","error_msg":"Incorrect app authentication information: signature expired, signature time:20230527T000431Z,server time:20230527T020608Z"}"#,
            None,
            None,
            &signed(""),
        )
        .unwrap_err();
        assert_eq!(expired.class(), ErrorClass::ClockSkew);
        assert_eq!(
            expired.clock_offset().map(|d| d.as_secs()),
            Some(-(2 * 3600 + 97))
        );
    }
}
