//! The HTTPS client for KooDrive's two provisioning calls, with at-most-once retries.
//!
//! `create_batch` retries only when KooDrive provably did not process the request (no
//! connection, 429, or an error envelope); anything else that leaves the outcome unknown is
//! reported as [`ErrorClass::InDoubt`]. `get_task` is a read and retries every transient
//! failure. Every attempt is signed afresh, because KooDrive rejects stale or reused dates.

use super::body::{HashedBody, is_blank};
use super::error::{Call, Error, ErrorClass};
use super::signer::{self, Signature, SigningInput};
use super::{CREATE_PATH, Credentials, GET_PATH, MAX_USERS_PER_REQUEST, RegisterUser};
use jiff::Timestamp;
use rand::RngExt;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Page size asked of `batchRegister/get` (KooDrive's maximum).
const PAGE_SIZE: u32 = 1000;
/// Longest `Retry-After` waited for inside one call.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(30);
/// Guard against a server whose cursors never end.
const MAX_PAGES: usize = 10_000;

/// Timeouts, retry policy and the certificate authorities trusted.
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
        }
    }
}

/// Certificate authorities trusted in addition to the WebPKI (Mozilla) roots that are
/// compiled into the binary, which is why a `FROM scratch` image needs no `/etc/ssl`.
/// They are for KooDrive behind a private CA: a private gateway, or a TLS-inspecting proxy.
///
/// Loaded once at start-up, so a bad file stops the process with its name instead of
/// failing every UserBatch later; cheap to clone into each client.
#[derive(Clone, Default)]
pub struct ExtraRoots {
    certificates: Vec<reqwest::Certificate>,
    /// The files the certificates came from, for logs and `Debug`.
    sources: Vec<PathBuf>,
}

/// Why a CA bundle could not be used. Each names the file (or directory) at fault.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("cannot read the CA bundle {path} ({origin}): {source}")]
    Read {
        path: PathBuf,
        origin: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA bundle {path} ({origin}) holds no PEM certificate (expected `-----BEGIN CERTIFICATE-----` blocks)"
    )]
    NoCertificate { path: PathBuf, origin: &'static str },
    #[error("the CA bundle {path} ({origin}) is not valid PEM: {detail}")]
    Pem {
        path: PathBuf,
        origin: &'static str,
        detail: String,
    },
    #[error(
        "certificate #{number} in the CA bundle {path} ({origin}) cannot be used as a trust anchor: {detail}"
    )]
    Unusable {
        path: PathBuf,
        origin: &'static str,
        /// 1-based position among the file's certificates.
        number: usize,
        detail: String,
    },
    #[error("cannot list the CA directory {path} (from SSL_CERT_DIR): {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExtraRoots {
    /// The CAs of `ca_bundle` (the `--ca-bundle` flag) plus those named by the OpenSSL
    /// conventions `SSL_CERT_FILE` (a PEM file) and `SSL_CERT_DIR` (`:`-separated
    /// directories of PEM files), which other tools in the same container already honour.
    pub fn from_environment(ca_bundle: Option<&Path>) -> Result<ExtraRoots, CaBundleError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self::load(
            ca_bundle,
            var("SSL_CERT_FILE").as_deref(),
            var("SSL_CERT_DIR").as_deref(),
        )
    }

    /// As [`ExtraRoots::from_environment`], with the variables' values passed in.
    pub fn load<'a>(
        ca_bundle: Option<&'a Path>,
        cert_file: Option<&'a Path>,
        cert_dirs: Option<&Path>,
    ) -> Result<ExtraRoots, CaBundleError> {
        // An empty path is no path, as for an empty SSL_CERT_FILE.
        let given = |path: Option<&'a Path>| path.filter(|p| !p.as_os_str().is_empty());
        let (ca_bundle, cert_file) = (given(ca_bundle), given(cert_file));
        let mut roots = Collector::default();
        let files = [
            (ca_bundle, "--ca-bundle, KOODRIVE_CA_BUNDLE"),
            (cert_file, "SSL_CERT_FILE"),
        ];
        for (file, origin) in files {
            let Some(file) = file else { continue };
            let pem = std::fs::read(file).map_err(|source| CaBundleError::Read {
                path: file.to_path_buf(),
                origin,
                source,
            })?;
            if roots.add_pem(file, origin, &pem)? == 0 {
                return Err(CaBundleError::NoCertificate {
                    path: file.to_path_buf(),
                    origin,
                });
            }
        }
        if let Some(dirs) = cert_dirs {
            for dir in std::env::split_paths(dirs).filter(|d| !d.as_os_str().is_empty()) {
                roots.add_dir(&dir)?;
            }
        }
        roots.finish()
    }

    /// How many certificates are trusted besides the built-in roots.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    /// The files the certificates came from.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("certificates", &self.certificates.len())
            .field("sources", &self.sources)
            .finish()
    }
}

/// Certificates gathered from several files, each kept once: `SSL_CERT_DIR` usually holds
/// every CA twice (`name.pem` and its `hash.0` link) and `SSL_CERT_FILE` a third time.
#[derive(Default)]
struct Collector {
    seen: std::collections::HashSet<Vec<u8>>,
    /// With where each came from, to name a bad one.
    certificates: Vec<(Origin, Vec<u8>)>,
    sources: Vec<PathBuf>,
}

impl Collector {
    /// Adds the certificates of one PEM file; returns how many it held.
    fn add_pem(
        &mut self,
        path: &Path,
        origin: &'static str,
        pem: &[u8],
    ) -> Result<usize, CaBundleError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut count = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| CaBundleError::Pem {
                path: path.to_path_buf(),
                origin,
                detail: e.to_string(),
            })?;
            count += 1;
            let der = certificate.as_ref().to_vec();
            if self.seen.insert(der.clone()) {
                let from = Origin {
                    path: path.to_path_buf(),
                    origin,
                    number: count,
                };
                self.certificates.push((from, der));
            }
        }
        if count > 0 {
            self.sources.push(path.to_path_buf());
        }
        Ok(count)
    }

    /// Adds every PEM file directly in `dir`. Files holding no certificate are skipped:
    /// OpenSSL's directories also hold CRLs, READMEs and links to subdirectories.
    fn add_dir(&mut self, dir: &Path) -> Result<(), CaBundleError> {
        let read_dir = |source| CaBundleError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_dir)?
            .map(|entry| entry.map(|e| e.path()).map_err(read_dir))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            // `is_file` follows symlinks: the hash links are how OpenSSL finds a CA.
            if !file.is_file() {
                continue;
            }
            let pem = std::fs::read(&file).map_err(|source| CaBundleError::Read {
                path: file.clone(),
                origin: "SSL_CERT_DIR",
                source,
            })?;
            self.add_pem(&file, "SSL_CERT_DIR", &pem)?;
        }
        Ok(())
    }

    /// Checks the certificates the way the HTTPS client will, so a bad one is reported now,
    /// with its file, rather than as a TLS set-up failure of every later client.
    fn finish(self) -> Result<ExtraRoots, CaBundleError> {
        let mut certificates = Vec::with_capacity(self.certificates.len());
        for (from, der) in &self.certificates {
            let certificate = reqwest::Certificate::from_der(der).map_err(|e| from.unusable(&e))?;
            certificates.push(certificate);
        }
        // One trial client for all; only when it fails is each tried alone, to name the
        // culprit (a system bundle holds some 150 CAs).
        if trial_client(&certificates).is_err() {
            for ((from, _), certificate) in self.certificates.iter().zip(&certificates) {
                if let Err(e) = trial_client(std::slice::from_ref(certificate)) {
                    return Err(from.unusable(&e));
                }
            }
        }
        Ok(ExtraRoots {
            certificates,
            sources: self.sources,
        })
    }
}

/// Where a certificate came from.
struct Origin {
    path: PathBuf,
    origin: &'static str,
    /// 1-based position among the file's certificates.
    number: usize,
}

impl Origin {
    fn unusable(&self, err: &reqwest::Error) -> CaBundleError {
        CaBundleError::Unusable {
            path: self.path.clone(),
            origin: self.origin,
            number: self.number,
            detail: error_chain(err),
        }
    }
}

fn trial_client(certificates: &[reqwest::Certificate]) -> Result<(), reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for certificate in certificates {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder.build().map(drop)
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
    /// KooDrive's status string; its values are undocumented, so nothing depends on them.
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
    /// May hold users' passwords: never print it.
    body: Vec<u8>,
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
            "http" if config.allow_insecure_endpoints => {}
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
        let path_prefix = url.path().trim_end_matches('/').to_string();
        let base = format!("{}://{host}", url.scheme());
        check_header_text("access key", &credentials.access_key)?;
        check_header_text("user ID", &credentials.user_id)?;
        if credentials.access_key.contains(',') {
            return Err(Error::InvalidRequest {
                reason: "the access key contains a comma, which cannot be sent in an Authorization header".into(),
            });
        }
        let mut http = reqwest::Client::builder().use_rustls_tls();
        for certificate in &config.extra_roots.certificates {
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
            .map_err(|e| Error::HttpClient {
                detail: error_chain(&e),
            })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                path_prefix,
                host,
                credentials,
                config,
            }),
        })
    }

    /// The endpoint requests go to (`scheme://host[:port]` and path prefix).
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.inner.base, self.inner.path_prefix)
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
        let Some(body) = super::body::encode_create_body(users) else {
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
            body: body.bytes,
        }
    }

    /// Creates a batch provisioning task. `trace_id` is chosen by the caller so it can be
    /// recorded before sending; every attempt carries it.
    pub async fn create_batch(
        &self,
        users: &[RegisterUser],
        trace_id: &str,
    ) -> Result<CreatedTask, Error> {
        // Refuse an invalid request before any attempt (and so before any retry logic).
        validate_users(users)?;
        check_trace_id(trace_id)?;
        self.with_retries(Call::Create, trace_id, || async {
            let prepared = self.prepare_create(users, trace_id, Timestamp::now())?;
            let envelope = self.execute(Call::Create, &prepared).await?;
            let task_id = envelope
                .data
                .as_ref()
                .and_then(scalar_from_value)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| Error::BadResponse {
                    call: Call::Create,
                    status: 200,
                    detail: "success without a task ID in `data`".into(),
                })?;
            Ok(CreatedTask {
                task_id,
                code: envelope.code.map(|c| c.into_string()).unwrap_or_default(),
                message: envelope.msg.unwrap_or_default(),
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
                .with_retries(Call::Get, "", || async {
                    let prepared = self.prepare(
                        "GET",
                        GET_PATH,
                        &query,
                        HashedBody::empty(),
                        &super::new_trace_id(),
                        Timestamp::now(),
                    );
                    let envelope = self.execute(Call::Get, &prepared).await?;
                    let data = envelope.data.unwrap_or(serde_json::Value::Null);
                    serde_json::from_value::<TaskPage>(data).map_err(|e| Error::BadResponse {
                        call: Call::Get,
                        status: 200,
                        detail: format!("unexpected `data` shape: {e}"),
                    })
                })
                .await?;
            if let Some(info) = page.task_info {
                report.status = info.status.or(report.status.take());
                report.total = info.total_count.map_or(report.total, Scalar::into_count);
                report.succeeded = info
                    .success_count
                    .map_or(report.succeeded, Scalar::into_count);
                report.failed = info.fail_count.map_or(report.failed, Scalar::into_count);
                report.skipped = info.skip_count.map_or(report.skipped, Scalar::into_count);
            }
            report
                .users
                .extend(page.register_list.into_iter().map(|entry| {
                    UserResult {
                        phone: entry.phone.map(Scalar::into_string).unwrap_or_default(),
                        user_id: entry
                            .user_id
                            .map(Scalar::into_string)
                            .filter(|s| !s.is_empty()),
                        code: entry
                            .code
                            .map(Scalar::into_string)
                            .filter(|s| !s.is_empty()),
                        reason: entry.reason.filter(|s| !s.is_empty()),
                    }
                }));
            let next = page
                .next_page_cursor
                .or(page.next_cursor)
                .map(Scalar::into_string)
                .unwrap_or_default();
            if next.is_empty() {
                return Ok(report);
            }
            if !seen_cursors.insert(next.clone()) || next == cursor {
                return Err(Error::BadResponse {
                    call: Call::Get,
                    status: 200,
                    detail: format!(
                        "page cursor `{next}` repeats; stopping to avoid an endless loop"
                    ),
                });
            }
            cursor = next;
        }
        Err(Error::BadResponse {
            call: Call::Get,
            status: 200,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    async fn with_retries<T, F, Fut>(
        &self,
        call: Call,
        trace_id: &str,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let max_attempts = self.inner.config.max_attempts.max(1);
        let mut number = 1;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    // Only `Transient` errors are safe to repeat: for a create, the error
                    // types guarantee that means KooDrive provably did not process it.
                    let ErrorClass::Transient { retry_after } = err.class() else {
                        return Err(err);
                    };
                    // A long Retry-After is handed back (it is in the error's class) so the
                    // caller can schedule the retry instead of holding a task for minutes.
                    let wait_too_long = retry_after.is_some_and(|r| r > MAX_RETRY_AFTER_WAIT);
                    if number >= max_attempts || wait_too_long {
                        return Err(err);
                    }
                    let delay = self.backoff(number, retry_after);
                    tracing::warn!(
                        %call,
                        trace_id,
                        attempt = number,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %err,
                        "KooDrive call failed transiently; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    number += 1;
                }
            }
        }
    }

    /// Exponential backoff with "equal jitter" (half fixed, half random), never shorter than
    /// the server's `Retry-After`.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let config = &self.inner.config;
        let exponential = config
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(config.max_backoff);
        let half = exponential / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        (half + jitter).max(retry_after.unwrap_or_default())
    }

    async fn execute(&self, call: Call, prepared: &PreparedRequest) -> Result<Envelope, Error> {
        let method = if prepared.method == "POST" {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
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
        let response = request.send().await.map_err(|e| {
            tracing::warn!(%call, trace_id, error = %error_chain(&e), "KooDrive request failed");
            if e.is_connect() {
                let mut detail = error_chain(&e);
                if detail.contains("certificate") {
                    detail.push_str(
                        "; if KooDrive is reached through a private CA, trust it with --ca-bundle (KOODRIVE_CA_BUNDLE) or SSL_CERT_FILE",
                    );
                }
                Error::Connect { call, detail }
            } else {
                Error::NoAnswer {
                    call,
                    detail: error_chain(&e),
                }
            }
        })?;
        let status = response.status().as_u16();
        let header_request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.bytes().await.map_err(|e| Error::NoAnswer {
            call,
            detail: format!("HTTP {status}, body unreadable: {}", error_chain(&e)),
        })?;
        tracing::debug!(%call, trace_id, status, "KooDrive answered");
        classify(
            call,
            status,
            &body,
            header_request_id,
            retry_after,
            &prepared.signature.canonical_request,
        )
    }
}

/// Either of KooDrive's envelopes: `code`/`msg`/`data`, or the gateway's
/// `error_code`/`error_msg`/`request_id`.
#[derive(Deserialize, Default, Debug)]
struct Envelope {
    code: Option<Scalar>,
    msg: Option<String>,
    data: Option<serde_json::Value>,
    error_code: Option<Scalar>,
    error_msg: Option<String>,
    request_id: Option<String>,
}

/// KooDrive documents string fields but its examples send numbers: accept both.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Text(s) => s,
        }
    }

    fn into_count(self) -> i64 {
        match self {
            Scalar::Int(n) => n,
            Scalar::Float(n) => n as i64,
            Scalar::Text(s) => s.trim().parse().unwrap_or(0),
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskPage {
    task_info: Option<TaskInfo>,
    #[serde(default)]
    register_list: Vec<RegisterEntry>,
    next_page_cursor: Option<Scalar>,
    next_cursor: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskInfo {
    status: Option<String>,
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
    reason: Option<String>,
}

/// Turns an HTTP answer into the success envelope or a classified error.
fn classify(
    call: Call,
    status: u16,
    body: &[u8],
    header_request_id: Option<String>,
    retry_after: Option<Duration>,
    client_canonical_request: &str,
) -> Result<Envelope, Error> {
    let parsed: Option<Envelope> = serde_json::from_slice(body).ok();
    let (code, msg, request_id) = match &parsed {
        Some(env) if env.error_code.is_some() || env.error_msg.is_some() => (
            env.error_code.clone().map(Scalar::into_string),
            env.error_msg.clone(),
            env.request_id.clone().or(header_request_id),
        ),
        Some(env) => (
            env.code.clone().map(Scalar::into_string),
            env.msg.clone(),
            env.request_id.clone().or(header_request_id),
        ),
        None => (None, None, header_request_id),
    };
    let is_gateway = code
        .as_deref()
        .is_some_and(|c| c.starts_with("APIG.") || c.starts_with("APIGW."));
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
    // KooDrive documents 400 as "authentication failed" and 401 as "not authorized", but
    // also answers 400 for bad parameters: the code and message tell them apart.
    let mentions_auth = msg
        .as_deref()
        .is_some_and(|m| m.to_ascii_lowercase().contains("auth"));
    if status == 401 || status == 403 || (status == 400 && (is_gateway || mentions_auth)) {
        let server_canonical_request = msg.as_deref().and_then(|m| {
            m.find("canonicalRequest:")
                .map(|at| m[at + "canonicalRequest:".len()..].replace('|', "\n"))
        });
        return Err(Error::Authentication {
            call,
            status,
            code,
            msg,
            request_id,
            server_canonical_request,
            client_canonical_request: client_canonical_request.to_string(),
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

/// An error and its causes on one line (reqwest's own message alone says little).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    crate::cli::error_chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::koodrive::SecretKey;

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
    fn ca_bundle_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ExtraRoots::load(Some(&missing), None, None).unwrap_err();
        assert!(matches!(err, CaBundleError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = ExtraRoots::load(None, Some(&empty), None).unwrap_err();
        assert!(matches!(err, CaBundleError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = ExtraRoots::load(Some(&broken), None, None).unwrap_err();
        assert!(matches!(err, CaBundleError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        let garbage_der = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage_der,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = ExtraRoots::load(Some(&garbage_der), None, None).unwrap_err();
        assert!(
            matches!(err, CaBundleError::Unusable { number: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let err = ExtraRoots::load(None, None, Some(&missing)).unwrap_err();
        assert!(matches!(err, CaBundleError::ReadDir { .. }), "{err}");
    }

    #[test]
    fn nothing_configured_trusts_only_the_built_in_roots() {
        let roots = ExtraRoots::load(None, None, None).unwrap();
        assert!(roots.is_empty());
        let empty = Path::new("");
        let roots = ExtraRoots::load(Some(empty), Some(empty), Some(empty)).unwrap();
        assert!(roots.is_empty());
        // A directory of non-certificates (OpenSSL keeps CRLs and READMEs there) is no error.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README"), "hashed links to CAs\n").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let roots = ExtraRoots::load(None, None, Some(dir.path())).unwrap();
        assert!(roots.is_empty());
        assert!(roots.sources().is_empty());
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
    fn debug_shows_neither_sk_nor_body() {
        let c = client("https://example.com", false).unwrap();
        let mut u = user("1");
        u.password = Some(crate::koodrive::Password::new("pw-secret".into()));
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
            "",
        )
        .unwrap();
        assert_eq!(ok.code.unwrap().into_string(), "0");
        let ok = classify(
            Call::Create,
            200,
            br#"{"code":"0","msg":"Success","data":"123"}"#,
            None,
            None,
            "",
        )
        .unwrap();
        assert_eq!(ok.data.unwrap(), serde_json::json!("123"));
        let err = classify(
            Call::Create,
            200,
            br#"{"code":13000201,"msg":"inner server invoke failure"}"#,
            None,
            None,
            "",
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Rejected);
        assert_eq!(err.code(), Some("13000201"));
    }

    #[test]
    fn parses_the_gateway_envelope_and_echoed_canonical_request() {
        let body = br#"{"error_code":"APIG.0303","error_msg":"Incorrect app authentication information: verify signature fail, canonicalRequest:GET|/test/||host:h|x-date:d||host;x-date|abc","request_id":"r-9"}"#;
        let err = classify(Call::Get, 401, body, None, None, "ours").unwrap_err();
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
            "",
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
            "",
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Authentication);
        let err = classify(
            Call::Create,
            429,
            br#"{"error_code":"APIG.0308","error_msg":"throttled"}"#,
            None,
            Some(Duration::from_secs(3)),
            "",
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
            "",
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient { retry_after: None });
        let err = classify(Call::Create, 200, b"{\"code\":0,", None, None, "").unwrap_err();
        assert_eq!(err.class(), ErrorClass::InDoubt);
        let err = classify(Call::Get, 200, b"garbage", None, None, "").unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient { retry_after: None });
        let err = classify(Call::Get, 404, b"", Some("hdr-id".into()), None, "").unwrap_err();
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
            page.register_list[0].user_id.clone().unwrap().into_string(),
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

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
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
                ..ClientConfig::default()
            },
        )
        .unwrap();
        for _ in 0..50 {
            let first = c.backoff(1, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = c.backoff(10, None);
            assert!(late >= Duration::from_millis(200) && late <= Duration::from_millis(400));
            assert_eq!(
                c.backoff(1, Some(Duration::from_secs(2))),
                Duration::from_secs(2)
            );
        }
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
