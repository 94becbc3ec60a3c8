//! What can go wrong talking to KooDrive, classified by what the caller may safely do next.
//!
//! The classification is the at-most-once rule of the whole operator: a create may be sent
//! again only when the answer *proves* KooDrive did not act on it. Those answers are:
//! - the connection failed before the request was written (nothing left this machine);
//! - the API gateway answered with its own envelope (`APIG.*`) and a 4xx status:
//!   authentication, an unknown API — the gateway refuses these before forwarding anything;
//! - HTTP 429 (throttling, e.g. the gateway's `APIG.0308`): refused for its rate;
//! - an authentication failure in KooDrive's own envelope (HTTP 400/401/403 whose code or
//!   message denotes authentication): the request was refused before it was processed;
//! - KooDrive's parameter-validation error (`13000102`): it refused the body outright;
//! - the request was refused before sending (too many users, a blank field, a bad endpoint).
//!
//! Everything else a create can meet — any 5xx with or without an envelope (Huawei's gateway
//! answers `504 APIG.0203 Backend timeout` when KooDrive did not reply in time, and it may
//! already have created the task), another KooDrive error code, a timeout, a dropped,
//! oversized or unreadable answer — is [`ErrorClass::InDoubt`].

use jiff::Timestamp;
use std::fmt;
use std::time::Duration;

/// KooDrive's code for "parameter validation failed": the body was refused outright.
pub const PARAMETER_VALIDATION_FAILED: &str = "13000102";
/// KooDrive's code for "authentication failed" (`鉴权不通过`).
pub const AUTHENTICATION_FAILED: &str = "13000001";

/// One of the KooDrive calls the operator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// `POST batchRegister/create`: the only call that creates anything.
    Create,
    /// `GET batchRegister/get`.
    Get,
    /// `DELETE users/{userId}`: irreversible.
    DeleteUser,
    /// `GET users/{userId}`.
    GetUser,
}

impl Call {
    /// A short label for metrics and logs (`create`, `get`, `delete_user`, `get_user`).
    pub fn label(self) -> &'static str {
        match self {
            Call::Create => "create",
            Call::Get => "get",
            Call::DeleteUser => "delete_user",
            Call::GetUser => "get_user",
        }
    }

    /// Whether repeating this call after an ambiguous outcome could do something twice.
    pub fn changes_state(self) -> bool {
        matches!(self, Call::Create | Call::DeleteUser)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Create => "batchRegister/create",
            Call::Get => "batchRegister/get",
            Call::DeleteUser => "users/{userId} (delete)",
            Call::GetUser => "users/{userId} (query)",
        })
    }
}

/// What a caller may do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Safe to repeat later: for a read, any transient failure; for a create, only a failure
    /// that proves nothing was processed (no connection, gateway throttling). `retry_after`
    /// is the server's floor for the next attempt.
    Transient { retry_after: Option<Duration> },
    /// The credentials or signature were refused. Huawei locks an AK/SK for 5 minutes after
    /// more than five consecutive failures: do not repeat until the credentials change.
    Authentication,
    /// The signature's date was outside KooDrive's window: this machine's clock and
    /// KooDrive's disagree. Transient once the offset is applied; not a credentials problem.
    ClockSkew,
    /// KooDrive refused the request and provably did not act on it (parameter validation,
    /// a gateway 4xx): do not repeat until the input changes.
    Rejected,
    /// Refused before sending (too many users, missing field, bad endpoint).
    Invalid,
    /// A create (or delete) that may have been acted on, with no answer proving either way.
    InDoubt,
}

/// The canonical requests of a signature mismatch, with real newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalRequests {
    /// The gateway's, echoed in `verify signature fail` messages.
    pub server: Option<String>,
    /// The one this client signed, to compare with the server's.
    pub client: String,
}

/// A failed KooDrive call. `Display` is one actionable line and never contains a secret
/// (SKs and passwords never reach this type); it never repeats its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid KooDrive endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    #[error("request not sent: {reason}")]
    InvalidRequest { reason: String },

    #[error("could not set up the HTTPS client")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "could not connect to KooDrive for {call} ({}); nothing was sent",
        transport_cause(source)
    )]
    Connect {
        call: Call,
        #[source]
        source: reqwest::Error,
    },

    #[error("{call}: the request was sent but no answer was read ({}{}){}", status.map(|s| format!("HTTP {s}, ")).unwrap_or_default(), transport_cause(source), in_doubt_hint(*call))]
    NoAnswer {
        call: Call,
        /// Set when the status line arrived but the body did not.
        status: Option<u16>,
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "KooDrive is unavailable ({call}): HTTP {status}{}{}{}{}",
        code_msg(code, msg),
        request_id_note(request_id),
        retry_note(retry_after),
        if acted_on_possible(*call, *status, code.as_deref()) { in_doubt_hint(*call) } else { "" }
    )]
    Unavailable {
        call: Call,
        status: u16,
        code: Option<String>,
        msg: Option<String>,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },

    #[error(
        "KooDrive refused the credentials ({call}): HTTP {status}{}{}; check the access key, secret key and user ID (Huawei locks an AK/SK for 5 minutes after repeated failures, so fix them before retrying)",
        code_msg(code, msg),
        request_id_note(request_id)
    )]
    Authentication {
        call: Call,
        status: u16,
        code: Option<String>,
        msg: Option<String>,
        request_id: Option<String>,
        /// What was signed, and what the gateway says it verified (boxed: rarely present,
        /// and it would otherwise double the size of every `Result` carrying this error).
        canonical: Box<CanonicalRequests>,
    },

    #[error(
        "KooDrive refused the request's date ({call}): HTTP {status}{}{}; this machine's clock and KooDrive's differ{}",
        code_msg(code, msg),
        request_id_note(request_id),
        offset_note(*signed_at, *server_time)
    )]
    ClockSkew {
        call: Call,
        status: u16,
        code: Option<String>,
        msg: Option<String>,
        request_id: Option<String>,
        /// The `X-Date` the refused request carried (Unix seconds: small, so every
        /// `Result` carrying this error stays small).
        signed_at: Option<i64>,
        /// KooDrive's time, when its answer says (`server time:…`), in Unix seconds.
        server_time: Option<i64>,
    },

    #[error(
        "KooDrive rejected the request ({call}): HTTP {status}{}{}{}",
        code_msg(code, msg),
        request_id_note(request_id),
        if acted_on_possible(*call, *status, code.as_deref()) { in_doubt_hint(*call) } else { "" }
    )]
    Rejected {
        call: Call,
        status: u16,
        code: Option<String>,
        msg: Option<String>,
        request_id: Option<String>,
    },

    #[error("KooDrive's answer to {call} could not be understood (HTTP {status}: {detail}){}", in_doubt_hint(*call))]
    BadResponse {
        call: Call,
        status: u16,
        detail: String,
    },
}

/// What went wrong on the wire, in a few stable words: the full chain (with the URL and OS
/// error text) stays available through `source()` for logs.
fn transport_cause(error: &reqwest::Error) -> String {
    let mut io_kind = None;
    let mut certificate = false;
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        certificate |= inner.to_string().contains("certificate");
        cause = inner.source();
    }
    if certificate {
        return "the server's certificate is not trusted; if KooDrive is reached through a private CA, trust it with --ca-bundle (KOODRIVE_CA_BUNDLE) or SSL_CERT_FILE".into();
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "the answer's body could not be read"
    } else {
        "transport error"
    };
    match io_kind {
        Some(kind) if !error.is_timeout() => format!("{what}: {kind}"),
        _ => what.to_string(),
    }
}

fn in_doubt_hint(call: Call) -> &'static str {
    match call {
        Call::Create => {
            "; KooDrive may have created the task: check the KooDrive console (or `koodrive-operator task`) before sending these users again"
        }
        Call::DeleteUser => "; KooDrive may have deleted the user",
        Call::Get | Call::GetUser => "",
    }
}

/// Whether an error answer leaves open that a state-changing call was acted on: only a
/// gateway 4xx, an authentication refusal, throttling and KooDrive's parameter validation
/// prove it was not.
fn acted_on_possible(call: Call, status: u16, code: Option<&str>) -> bool {
    call.changes_state() && !proves_not_acted(status, code)
}

fn is_gateway_code(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.starts_with("APIG.") || c.starts_with("APIGW."))
}

/// The answers that prove KooDrive did not process a request (see the module docs).
fn proves_not_acted(status: u16, code: Option<&str>) -> bool {
    let gateway_refusal = (400..500).contains(&status) && is_gateway_code(code);
    // RFC 6585: a 429 refuses the request for its rate; nothing that acted on a request
    // answers 429 afterwards.
    let throttled = status == 429;
    gateway_refusal || throttled || code == Some(PARAMETER_VALIDATION_FAILED)
}

fn code_msg(code: &Option<String>, msg: &Option<String>) -> String {
    match (code, msg) {
        (Some(code), Some(msg)) => format!(", code {code}: {msg}"),
        (Some(code), None) => format!(", code {code}"),
        (None, Some(msg)) => format!(": {msg}"),
        (None, None) => String::new(),
    }
}

fn request_id_note(request_id: &Option<String>) -> String {
    request_id
        .as_ref()
        .map(|id| format!(" (request ID {id})"))
        .unwrap_or_default()
}

fn retry_note(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|after| format!(" (retry after {} s)", after.as_secs()))
        .unwrap_or_default()
}

fn offset_note(signed_at: Option<i64>, server_time: Option<i64>) -> String {
    let time = |s: i64| {
        Timestamp::from_second(s)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| s.to_string())
    };
    match (signed_at, server_time) {
        (Some(signed), Some(server)) => format!(
            " by about {} s (this machine signed at {}, KooDrive's time was {})",
            signed - server,
            time(signed),
            time(server)
        ),
        _ => String::new(),
    }
}

impl Error {
    /// The call that failed, when it got as far as choosing one.
    pub fn call(&self) -> Option<Call> {
        match self {
            Error::Connect { call, .. }
            | Error::NoAnswer { call, .. }
            | Error::Unavailable { call, .. }
            | Error::Authentication { call, .. }
            | Error::ClockSkew { call, .. }
            | Error::Rejected { call, .. }
            | Error::BadResponse { call, .. } => Some(*call),
            Error::InvalidEndpoint { .. }
            | Error::InvalidRequest { .. }
            | Error::HttpClient { .. } => None,
        }
    }

    /// What the caller may safely do next.
    pub fn class(&self) -> ErrorClass {
        let ambiguous = |call: Call, transient: ErrorClass| {
            if call.changes_state() {
                ErrorClass::InDoubt
            } else {
                transient
            }
        };
        let retry = ErrorClass::Transient { retry_after: None };
        match self {
            Error::InvalidEndpoint { .. }
            | Error::InvalidRequest { .. }
            | Error::HttpClient { .. } => ErrorClass::Invalid,
            Error::Connect { .. } => retry,
            Error::NoAnswer { call, .. } | Error::BadResponse { call, .. } => {
                ambiguous(*call, retry)
            }
            Error::Unavailable {
                call,
                status,
                code,
                retry_after,
                ..
            } => {
                let transient = ErrorClass::Transient {
                    retry_after: *retry_after,
                };
                if proves_not_acted(*status, code.as_deref()) {
                    transient
                } else {
                    ambiguous(*call, transient)
                }
            }
            Error::Authentication { .. } => ErrorClass::Authentication,
            Error::ClockSkew { .. } => ErrorClass::ClockSkew,
            Error::Rejected {
                call, status, code, ..
            } => {
                if proves_not_acted(*status, code.as_deref()) {
                    ErrorClass::Rejected
                } else {
                    ambiguous(*call, ErrorClass::Rejected)
                }
            }
        }
    }

    /// Whether this answer proves the request got past authentication: KooDrive's own
    /// envelope (a code not from the API gateway) with a status below 500 that is not an
    /// authentication or clock refusal. Only KooDrive's backend answers like that, and the
    /// gateway forwards nothing it did not authenticate.
    pub fn proves_authenticated(&self) -> bool {
        matches!(self.class(), ErrorClass::Rejected | ErrorClass::InDoubt)
            && self
                .code()
                .is_some_and(|code| !code.is_empty() && !code.starts_with("APIG"))
            && self.status().is_some_and(|status| status < 500)
    }

    /// The KooDrive or gateway code, if the answer carried one (`"13000102"`, `"APIG.0303"`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Unavailable { code, .. }
            | Error::Authentication { code, .. }
            | Error::ClockSkew { code, .. }
            | Error::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status of the answer, if one arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unavailable { status, .. }
            | Error::Authentication { status, .. }
            | Error::ClockSkew { status, .. }
            | Error::Rejected { status, .. }
            | Error::BadResponse { status, .. } => Some(*status),
            Error::NoAnswer { status, .. } => *status,
            _ => None,
        }
    }

    /// The gateway's request ID, for Huawei support.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Unavailable { request_id, .. }
            | Error::Authentication { request_id, .. }
            | Error::ClockSkew { request_id, .. }
            | Error::Rejected { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// For a signature mismatch: `(server's canonical request, ours)`, with real newlines.
    pub fn canonical_requests(&self) -> Option<(&str, &str)> {
        match self {
            Error::Authentication { canonical, .. } => canonical
                .server
                .as_deref()
                .map(|server| (server, canonical.client.as_str())),
            _ => None,
        }
    }

    /// For a clock problem: how far this machine's signing clock was ahead of KooDrive's
    /// (negative: behind), when KooDrive's answer gave its time.
    pub fn clock_offset(&self) -> Option<jiff::SignedDuration> {
        match self {
            Error::ClockSkew {
                signed_at: Some(signed),
                server_time: Some(server),
                ..
            } => Some(jiff::SignedDuration::from_secs(signed - server)),
            _ => None,
        }
    }

    /// A human message for status fields and Events: no secrets, and deterministic (no
    /// request IDs, dates or echoed canonical requests, which change on every attempt), so
    /// writing it twice does not look like a change.
    pub fn message(&self) -> String {
        match self {
            Error::Authentication {
                status, code, msg, ..
            } => format!(
                "KooDrive refused the credentials (HTTP {status}{}); check the access key, secret key and user ID",
                code_msg(code, &msg.as_deref().map(stable_gateway_message))
            ),
            Error::ClockSkew {
                status, code, msg, ..
            } => {
                let offset = self
                    .clock_offset()
                    .map(|d| format!(" by about {} s", d.as_secs()))
                    .unwrap_or_default();
                format!(
                    "KooDrive refused the request's date (HTTP {status}{}): this machine's clock differs from KooDrive's{offset}; the operator signs with KooDrive's clock once it has seen it, otherwise fix the node's time (NTP)",
                    code_msg(code, &msg.as_deref().map(stable_gateway_message))
                )
            }
            Error::Unavailable {
                call,
                status,
                code,
                msg,
                ..
            } => format!(
                "KooDrive is unavailable ({call}): HTTP {status}{}",
                code_msg(code, msg)
            ),
            Error::Rejected {
                call,
                status,
                code,
                msg,
                ..
            } => format!(
                "KooDrive rejected the request ({call}): HTTP {status}{}",
                code_msg(code, msg)
            ),
            other => other.to_string(),
        }
    }
}

/// Cuts the per-request details (echoed canonical request, timestamps) off a gateway message.
fn stable_gateway_message(msg: &str) -> String {
    let mut stable = msg;
    for marker in [
        ", canonicalRequest:",
        "canonicalRequest:",
        ", signature time:",
        "signature time:",
    ] {
        if let Some(at) = stable.find(marker) {
            stable = &stable[..at];
        }
    }
    stable.trim_end_matches([',', ' ']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(msg: &str) -> Error {
        Error::Authentication {
            call: Call::Create,
            status: 401,
            code: Some("APIG.0303".into()),
            msg: Some(msg.into()),
            request_id: Some("req-1".into()),
            canonical: Box::new(CanonicalRequests {
                server: None,
                client: "POST\n/".into(),
            }),
        }
    }

    #[test]
    fn status_message_drops_volatile_gateway_details() {
        let err = auth(
            "Incorrect app authentication information: verify signature fail, canonicalRequest:GET|/x/||host:h",
        );
        assert_eq!(
            err.message(),
            "KooDrive refused the credentials (HTTP 401, code APIG.0303: Incorrect app authentication information: verify signature fail); check the access key, secret key and user ID"
        );
        let display = err.to_string();
        assert!(display.contains("canonicalRequest:GET"), "{display}");
        assert!(display.contains("req-1"), "{display}");
        assert!(!display.contains('\n'));
    }

    #[test]
    fn clock_messages_name_the_offset_and_stay_stable() {
        let skew = |signed: i64, server: i64| Error::ClockSkew {
            call: Call::Get,
            status: 401,
            code: Some("APIG.0303".into()),
            msg: Some(format!(
                "Incorrect app authentication information: signature expired, signature time:{signed},server time:{server}"
            )),
            request_id: Some("r".into()),
            signed_at: Some(signed),
            server_time: Some(server),
        };
        let a = skew(1_000_100, 1_000_000);
        assert_eq!(a.class(), ErrorClass::ClockSkew);
        assert!(a.message().contains("by about 100 s"), "{}", a.message());
        assert!(!a.message().contains("signature time"), "{}", a.message());
        assert_eq!(a.clock_offset(), Some(jiff::SignedDuration::from_secs(100)));
        assert_eq!(a.message(), skew(1_000_200, 1_000_100).message());
    }

    #[test]
    fn classes_follow_what_is_safe_to_repeat() {
        let unavailable = |call, status, code: Option<&str>| Error::Unavailable {
            call,
            status,
            code: code.map(str::to_string),
            msg: None,
            request_id: None,
            retry_after: None,
        };
        let retry = ErrorClass::Transient { retry_after: None };
        // A 5xx on a create is in doubt whatever its envelope: the backend may have acted.
        assert_eq!(
            unavailable(Call::Create, 503, Some("13000201")).class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            unavailable(Call::Create, 504, Some("APIG.0203")).class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            unavailable(Call::Create, 502, None).class(),
            ErrorClass::InDoubt
        );
        // Reads are always safe to repeat.
        assert_eq!(unavailable(Call::Get, 502, None).class(), retry);
        assert_eq!(unavailable(Call::Get, 503, Some("13000201")).class(), retry);
        // Throttling proves nothing was processed.
        assert_eq!(
            unavailable(Call::Create, 429, Some("APIG.0308")).class(),
            retry
        );
        assert_eq!(unavailable(Call::Create, 429, None).class(), retry);
        let rejected = |call, status, code: &str| Error::Rejected {
            call,
            status,
            code: Some(code.into()),
            msg: None,
            request_id: None,
        };
        assert_eq!(
            rejected(Call::Create, 400, PARAMETER_VALIDATION_FAILED).class(),
            ErrorClass::Rejected
        );
        assert_eq!(
            rejected(Call::Create, 404, "APIG.0101").class(),
            ErrorClass::Rejected
        );
        // Any other KooDrive code on a create leaves the outcome open.
        assert_eq!(
            rejected(Call::Create, 200, "13000201").class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            rejected(Call::Get, 400, "13000404").class(),
            ErrorClass::Rejected
        );
        let no_answer = |call| Error::NoAnswer {
            call,
            status: None,
            source: reqwest::Client::new()
                .get("not a url")
                .build()
                .expect_err("an unparsable URL is refused"),
        };
        assert_eq!(no_answer(Call::Create).class(), ErrorClass::InDoubt);
        assert_eq!(no_answer(Call::DeleteUser).class(), ErrorClass::InDoubt);
        assert_eq!(no_answer(Call::Get).class(), retry);
        assert_eq!(auth("x").class(), ErrorClass::Authentication);
        assert_eq!(auth("x").code(), Some("APIG.0303"));
    }
}
