//! One authentication guard per credential, shared by every UserBatch and every call.
//!
//! Huawei's gateway locks an AK/SK for 5 minutes after more than five consecutive
//! authentication failures. A wrong Secret shared by many UserBatches must therefore not
//! produce a failure per UserBatch: a credential — the endpoint, AK and user ID *as read from
//! one version of its Secret* — is
//! - *unverified* until a request with it gets past authentication: such requests go one at
//!   a time, so the first failure stops the others before they are sent;
//! - *blocked* after an authentication failure: nothing is sent with it until its Secret
//!   changes (a new version is a new credential), or until a long pause (at least 5
//!   minutes, longer than the gateway's lock) allows one probe;
//! - *verified* once anything got through: requests flow freely.
//!
//! With KooDrive's clock correction (one immediate retry inside a call), that bounds the
//! failed-authentication requests per credential version at two, whatever the number of
//! UserBatches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shortest pause before a blocked credential may be tried again: longer than the
/// gateway's 5-minute lock.
pub const MIN_BLOCK: Duration = Duration::from_secs(5 * 60);

/// A credential, as far as the gateway can tell one from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialKey {
    pub endpoint: String,
    pub access_key: String,
    pub user_id: String,
    /// The `resourceVersion` of the Secret the credential was read from.
    pub secret_version: String,
}

/// How a request with a credential fared, as far as authentication goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It got past authentication (whatever else happened).
    Passed,
    /// The credentials or signature were refused.
    Refused,
    /// The date was refused (clock skew) even after the client corrected its clock.
    ClockRefused,
    /// Nothing was learned (no answer, no connection).
    Unknown,
}

/// Why requests with a credential are held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The refusal that blocked it, for the condition message.
    pub message: String,
    pub clock: bool,
    /// How long until one probe is allowed.
    pub retry_in: Duration,
}

#[derive(Debug)]
struct State {
    verified: bool,
    blocked: Option<(Instant, String, bool)>,
    /// One request at a time while unverified.
    probe: Arc<Semaphore>,
    last_used: Instant,
}

/// Permission to send one request with a credential; hand it back with [`AuthGuard::report`].
#[derive(Debug)]
pub struct Ticket {
    key: CredentialKey,
    _probe: Option<OwnedSemaphorePermit>,
}

/// The guard: cheap to share (`Arc`), one per operator.
#[derive(Debug)]
pub struct AuthGuard {
    states: Mutex<HashMap<CredentialKey, State>>,
    block_for: Duration,
}

/// Credentials not used for this long are forgotten (rotated Secrets leave old versions).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

impl AuthGuard {
    /// `block_for` below [`MIN_BLOCK`] is raised to it.
    pub fn new(block_for: Duration) -> AuthGuard {
        AuthGuard {
            states: Mutex::new(HashMap::new()),
            block_for: block_for.max(MIN_BLOCK),
        }
    }

    /// Waits for the right to send one request with `key`, or says why not.
    pub async fn admit(&self, key: &CredentialKey) -> Result<Ticket, Blocked> {
        loop {
            let probe = {
                let mut states = self.lock();
                let now = Instant::now();
                if states.len() > 1024 {
                    states.retain(|_, s| now.duration_since(s.last_used) < FORGET_AFTER);
                }
                let state = states.entry(key.clone()).or_insert_with(|| State {
                    verified: false,
                    blocked: None,
                    probe: Arc::new(Semaphore::new(1)),
                    last_used: now,
                });
                state.last_used = now;
                if let Some((since, message, clock)) = &state.blocked {
                    let elapsed = now.duration_since(*since);
                    if elapsed < self.block_for {
                        return Err(Blocked {
                            message: message.clone(),
                            clock: *clock,
                            retry_in: self.block_for - elapsed,
                        });
                    }
                }
                if state.verified && state.blocked.is_none() {
                    return Ok(Ticket {
                        key: key.clone(),
                        _probe: None,
                    });
                }
                state.probe.clone()
            };
            // Unverified (or probing after a block): one request at a time. Re-check after
            // the wait: the request ahead may have been refused, or verified the credential.
            let Ok(permit) = probe.acquire_owned().await else {
                continue;
            };
            let states = self.lock();
            let Some(state) = states.get(key) else {
                continue;
            };
            let still_blocked = state
                .blocked
                .as_ref()
                .is_some_and(|(since, _, _)| since.elapsed() < self.block_for);
            if still_blocked {
                drop(permit);
                continue;
            }
            return Ok(Ticket {
                key: key.clone(),
                _probe: (!state.verified || state.blocked.is_some()).then_some(permit),
            });
        }
    }

    /// Records how the request sent with `ticket` fared.
    pub fn report(&self, ticket: Ticket, verdict: Verdict, message: &str) {
        let mut states = self.lock();
        let Some(state) = states.get_mut(&ticket.key) else {
            return;
        };
        match verdict {
            Verdict::Passed => {
                state.verified = true;
                state.blocked = None;
            }
            Verdict::Refused | Verdict::ClockRefused => {
                state.verified = false;
                state.blocked = Some((
                    Instant::now(),
                    message.to_string(),
                    verdict == Verdict::ClockRefused,
                ));
            }
            Verdict::Unknown => {}
        }
        // The ticket (and with it the probe permit) is released only now, so a waiter sees
        // the verdict.
        drop(ticket);
    }

    /// Whether requests with this credential are held back right now.
    pub fn is_blocked(&self, key: &CredentialKey) -> bool {
        self.lock().get(key).is_some_and(|s| {
            s.blocked
                .as_ref()
                .is_some_and(|(since, _, _)| since.elapsed() < self.block_for)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialKey, State>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: &str) -> CredentialKey {
        CredentialKey {
            endpoint: "https://k".into(),
            access_key: "AK".into(),
            user_id: "1".into(),
            secret_version: version.into(),
        }
    }

    #[tokio::test]
    async fn a_refusal_blocks_every_waiter_until_the_secret_changes() {
        let guard = Arc::new(AuthGuard::new(Duration::from_secs(600)));
        let first = guard.admit(&key("1")).await.unwrap();
        // A second user of the same credential waits while the first is unverified.
        let waiter = {
            let guard = guard.clone();
            tokio::spawn(async move { guard.admit(&key("1")).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        guard.report(first, Verdict::Refused, "refused");
        let blocked = waiter.await.unwrap().unwrap_err();
        assert_eq!(blocked.message, "refused");
        assert!(blocked.retry_in >= MIN_BLOCK - Duration::from_secs(1));
        assert!(guard.is_blocked(&key("1")));
        // A new version of the Secret is a new credential.
        let fresh = guard.admit(&key("2")).await.unwrap();
        guard.report(fresh, Verdict::Passed, "");
        assert!(!guard.is_blocked(&key("2")));
    }

    #[tokio::test]
    async fn verified_credentials_flow_without_serialising() {
        let guard = AuthGuard::new(Duration::ZERO);
        let ticket = guard.admit(&key("1")).await.unwrap();
        guard.report(ticket, Verdict::Passed, "");
        let a = guard.admit(&key("1")).await.unwrap();
        let b = guard.admit(&key("1")).await.unwrap();
        guard.report(a, Verdict::Unknown, "");
        guard.report(b, Verdict::Passed, "");
    }

    #[tokio::test]
    async fn the_pause_is_never_shorter_than_the_gateways_lock() {
        let guard = AuthGuard::new(Duration::from_secs(1));
        let ticket = guard.admit(&key("1")).await.unwrap();
        guard.report(ticket, Verdict::ClockRefused, "clock");
        let blocked = guard.admit(&key("1")).await.unwrap_err();
        assert!(blocked.clock);
        assert!(blocked.retry_in > Duration::from_secs(4 * 60));
    }
}
