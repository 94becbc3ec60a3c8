//! Per-UserBatch backoff: failures of one UserBatch delay its next attempt exponentially
//! (with jitter), never delaying the others, reset by a success.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// Consecutive failures per key and the delays they earn.
pub struct Backoff<K> {
    failures: Mutex<HashMap<K, usize>>,
    base: Duration,
    max: Duration,
}

impl<K: Eq + Hash + Clone> Backoff<K> {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            base,
            max: max.max(base),
        }
    }

    /// Records a failure of `key`; the delay before its next attempt, never shorter than
    /// `at_least` (a server's `Retry-After`).
    pub fn failed(&self, key: &K, at_least: Option<Duration>) -> Duration {
        let attempt = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        // The jitter spreads UserBatches that failed together (a KooDrive outage) so they
        // do not all come back at once.
        let delay = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.min(64) - 1)
            .unwrap_or(self.max)
            .min(self.max);
        delay.max(at_least.unwrap_or_default())
    }

    /// Clears the failures of `key`.
    pub fn succeeded(&self, key: &K) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_honours_retry_after_and_resets() {
        let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let first = backoff.failed(&"a", None);
        assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(10));
        for _ in 0..20 {
            backoff.failed(&"a", None);
        }
        assert_eq!(backoff.failed(&"a", None), Duration::from_secs(300));
        // Another UserBatch is not delayed by the first one's failures.
        assert!(backoff.failed(&"b", None) <= Duration::from_secs(10));
        assert!(backoff.failed(&"b", Some(Duration::from_secs(40))) >= Duration::from_secs(40));
        backoff.succeeded(&"a");
        assert!(backoff.failed(&"a", None) <= Duration::from_secs(10));
    }
}
