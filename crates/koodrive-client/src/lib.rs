//! KooDrive's provisioning and user-management API: request signing ([`signer`]), the HTTP
//! client ([`Client`]) with its at-most-once error classes ([`ErrorClass`]), the request
//! limit ([`limit`]) and KooDrive's clock ([`clock`]). Nothing in here knows about Kubernetes.
//!
//! Secrets (the SK and users' initial passwords) only ever live in [`SecretKey`] and
//! [`Password`], whose `Debug` output is redacted, so they cannot leak through `{:?}`.

mod body;
mod client;
pub mod clock;
mod error;
pub mod limit;
mod roots;
pub mod signer;

pub use client::{
    CREDENTIAL_CHECK_TASK_ID, Client, ClientConfig, CreatedTask, CredentialCheck, Deletion,
    HttpObserver, HttpOutcome, PreparedRequest, Reservation, TaskReport, UserInfo, UserResult,
    normalize_endpoint,
};
pub use clock::ServerClock;
pub use error::{
    AUTHENTICATION_FAILED, Call, CanonicalRequests, Error, ErrorClass, PARAMETER_VALIDATION_FAILED,
};
pub use limit::RequestLimiter;
pub use roots::{CaBundleError, ExtraRoots};

use rand::RngExt;
use serde::{Serialize, Serializer};
use std::fmt;

/// KooDrive's documented limit on `userList` entries in one `batchRegister/create` request.
pub const MAX_USERS_PER_REQUEST: usize = 1000;

/// Path of "create a batch provisioning task".
pub const CREATE_PATH: &str = "/koodrive/ose/v1/user/batchRegister/create";
/// Path of "query a batch provisioning task".
pub const GET_PATH: &str = "/koodrive/ose/v1/user/batchRegister/get";
/// Prefix of the user-management calls: `DELETE` and `GET {USERS_PATH}/{userId}`.
pub const USERS_PATH: &str = "/koodrive/ose/v1/users";

/// Length of an `X-Traceid` (the docs say "58 bits", meaning 58 characters).
pub const TRACE_ID_LEN: usize = 58;

/// The credentials a KooDrive request is signed with. Comparable, so a caller can tell
/// whether a credentials Secret really changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The access key (AK, "AppId"). Not secret: it is sent in every `Authorization` header.
    pub access_key: String,
    pub secret_key: SecretKey,
    /// The KooDrive user ID the credentials belong to, sent as `X-User-Id`.
    pub user_id: String,
}

/// The secret key (SK, "AppSecret"). Its `Debug` prints `<redacted>`; read it only to sign.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The raw key, for the HMAC and nothing else.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether `candidate` is this key, compared in constant time: lets a caller refuse to
    /// send the key anywhere else (as a user's password, say) without exposing it.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user's initial password. Serializes as the plain string (KooDrive needs it), but its
/// `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// The plain password, for encoding the request body and nothing else.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Password {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// One entry of `userList` (KooDrive's `RegisterUserInfo`). Absent optional fields are
/// omitted from the JSON, as KooDrive requires (never `null` or `""`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterUser {
    pub firstname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    pub phone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
}

/// A fresh `X-Traceid`: 58 characters of `[0-9a-z]` from the thread-local CSPRNG, so trace
/// IDs of different requests never collide in practice and cannot be predicted.
pub fn new_trace_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..TRACE_ID_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_58_lowercase_alphanumerics_and_differ() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_eq!(a.len(), TRACE_ID_LEN);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let credentials = Credentials {
            access_key: "AK123".into(),
            secret_key: SecretKey::new("super-secret-sk".into()),
            user_id: "42".into(),
        };
        let user = RegisterUser {
            firstname: "Ada".into(),
            surname: None,
            phone: "8613800000001".into(),
            email: None,
            password: Some(Password::new("hunter2-password".into())),
        };
        let shown = format!("{credentials:?} {user:?}");
        assert!(!shown.contains("super-secret-sk"), "{shown}");
        assert!(!shown.contains("hunter2-password"), "{shown}");
        assert!(shown.contains("AK123"));
    }

    #[test]
    fn register_user_omits_absent_fields_and_sends_the_password() {
        let user = RegisterUser {
            firstname: "Ada".into(),
            surname: None,
            phone: "1".into(),
            email: Some("ada@example.com".into()),
            password: Some(Password::new("pw".into())),
        };
        let json = serde_json::to_string(&user).unwrap();
        assert_eq!(
            json,
            r#"{"firstname":"Ada","phone":"1","email":"ada@example.com","password":"pw"}"#
        );
    }
}
