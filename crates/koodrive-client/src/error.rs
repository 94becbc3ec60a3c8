//! What can go wrong talking to KooDrive, classified by what the caller may safely do next.

use std::fmt;
use std::time::Duration;

/// One of KooDrive's two provisioning calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Call {
    Create,
    Get,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Create => "batchRegister/create",
            Call::Get => "batchRegister/get",
        })
    }
}

/// What a caller may do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Safe to retry later (5xx, 429, connect failures, timeouts on reads).
    Transient { retry_after: Option<Duration> },
    /// Credentials/signature problem: do not retry until the credentials change.
    Authentication,
    /// KooDrive rejected the request (code + msg): do not retry until the input changes.
    Rejected,
    /// The request was refused before sending (too many users, missing field, bad endpoint).
    Invalid,
    /// create_batch only: the request may have reached KooDrive but no answer was read (read
    /// timeout, connection dropped after sending, unparsable 200 body). KooDrive may have
    /// created the task.
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
/// (SKs and passwords never reach this type).
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
        // Without an envelope, a create may have been forwarded before the failure.
        if code.is_none() && *status != 429 { in_doubt_hint(*call) } else { "" }
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
        "KooDrive refused the credentials ({call}): HTTP {status}{}{}; check the access key, secret key, user ID and this machine's clock (Huawei locks an AK/SK for 5 minutes after repeated failures, so fix them before retrying)",
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
        "KooDrive rejected the request ({call}): HTTP {status}{}{}",
        code_msg(code, msg),
        request_id_note(request_id)
    )]
    Rejected {
        call: Call,
        status: u16,
        code: Option<String>,
        msg: Option<String>,
        request_id: Option<String>,
    },

    #[error("KooDrive's answer to {call} could not be understood (HTTP {status}: {detail}){}", if *call == Call::Create { in_doubt_hint(*call) } else { "" })]
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
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        cause = inner.source();
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
        Call::Get => "",
    }
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

impl Error {
    /// What the caller may safely do next.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidEndpoint { .. }
            | Error::InvalidRequest { .. }
            | Error::HttpClient { .. } => ErrorClass::Invalid,
            Error::Connect { .. } => ErrorClass::Transient { retry_after: None },
            Error::NoAnswer { call, .. } | Error::BadResponse { call, .. } => match call {
                Call::Create => ErrorClass::InDoubt,
                Call::Get => ErrorClass::Transient { retry_after: None },
            },
            Error::Unavailable {
                call,
                status,
                code,
                retry_after,
                ..
            } => {
                // A 5xx that carries no KooDrive/gateway envelope may come from a proxy that
                // had already forwarded the request: for a create, only an envelope proves
                // that no task was created.
                if *call == Call::Create && *status != 429 && code.is_none() {
                    ErrorClass::InDoubt
                } else {
                    ErrorClass::Transient {
                        retry_after: *retry_after,
                    }
                }
            }
            Error::Authentication { .. } => ErrorClass::Authentication,
            Error::Rejected { .. } => ErrorClass::Rejected,
        }
    }

    /// The KooDrive or gateway code, if the answer carried one (`"13000102"`, `"APIG.0303"`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Unavailable { code, .. }
            | Error::Authentication { code, .. }
            | Error::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The gateway's request ID, for Huawei support.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Unavailable { request_id, .. }
            | Error::Authentication { request_id, .. }
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

    /// A human message for status fields and Events: no secrets, and deterministic (no
    /// request IDs, dates or echoed canonical requests, which change on every attempt), so
    /// writing it twice does not look like a change.
    pub fn message(&self) -> String {
        match self {
            Error::Authentication {
                status, code, msg, ..
            } => format!(
                "KooDrive refused the credentials (HTTP {status}{}); check the access key, secret key, user ID and clock",
                code_msg(code, &msg.as_deref().map(stable_gateway_message))
            ),
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
            "Incorrect app authentication information: signature expired, signature time:20230527T000431Z,server time:20230527T020608Z",
        );
        assert_eq!(
            err.message(),
            "KooDrive refused the credentials (HTTP 401, code APIG.0303: Incorrect app authentication information: signature expired); check the access key, secret key, user ID and clock"
        );
        let display = err.to_string();
        assert!(
            display.contains("server time:20230527T020608Z"),
            "{display}"
        );
        assert!(display.contains("req-1"), "{display}");
        assert!(!display.contains('\n'));
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
        assert_eq!(
            unavailable(Call::Create, 503, Some("13000201")).class(),
            ErrorClass::Transient { retry_after: None }
        );
        assert_eq!(
            unavailable(Call::Create, 502, None).class(),
            ErrorClass::InDoubt
        );
        assert_eq!(
            unavailable(Call::Get, 502, None).class(),
            ErrorClass::Transient { retry_after: None }
        );
        assert_eq!(
            unavailable(Call::Create, 429, None).class(),
            ErrorClass::Transient { retry_after: None }
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
        assert_eq!(
            no_answer(Call::Get).class(),
            ErrorClass::Transient { retry_after: None }
        );
        assert_eq!(auth("x").class(), ErrorClass::Authentication);
        assert_eq!(auth("x").code(), Some("APIG.0303"));
    }
}
