//! A limit on HTTP requests to KooDrive: at most N in flight and R started per second.
//!
//! Every HTTP request takes a permit, retries included, so a limit of 5 per second is 5
//! requests per second on the wire whatever the retry policy does. Waiters are served in
//! arrival order, so one huge batch (which takes a permit per request) cannot starve the
//! small ones queued behind it. KooDrive throttles per AK, so callers share one limiter per
//! set of credentials (or one for everything).

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct RequestLimiter {
    in_flight: Arc<Semaphore>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// Held for the duration of one HTTP request.
#[derive(Debug)]
pub struct Permit {
    _in_flight: OwnedSemaphorePermit,
}

impl RequestLimiter {
    /// `requests_per_second <= 0` lifts the rate limit.
    pub fn new(max_in_flight: usize, requests_per_second: f64) -> Self {
        let rate = quota(requests_per_second).map(RateLimiter::direct);
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            rate,
        }
    }

    /// Waits for room in flight, then for the rate. `None` only if the limiter was closed,
    /// which never happens: the semaphore is private and never closed.
    pub async fn acquire(&self) -> Option<Permit> {
        let permit = self.in_flight.clone().acquire_owned().await.ok()?;
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        Some(Permit { _in_flight: permit })
    }
}

fn quota(requests_per_second: f64) -> Option<Quota> {
    if !(requests_per_second.is_finite() && requests_per_second > 0.0) {
        return None;
    }
    if requests_per_second >= 1.0 {
        let per_second = NonZeroU32::new(requests_per_second.round().min(u32::MAX as f64) as u32)?;
        Some(Quota::per_second(per_second))
    } else {
        // Below one per second: one request every 1/rate seconds.
        Quota::with_period(std::time::Duration::from_secs_f64(
            1.0 / requests_per_second,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_calls_in_flight() {
        let limiter = RequestLimiter::new(2, 0.0);
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        assert_eq!(limiter.in_flight.available_permits(), 0);
        drop(a);
        assert_eq!(limiter.in_flight.available_permits(), 1);
    }

    #[test]
    fn zero_or_negative_rate_means_unlimited() {
        assert!(quota(0.0).is_none());
        assert!(quota(-1.0).is_none());
        assert!(quota(f64::NAN).is_none());
        assert!(quota(0.5).is_some());
        assert!(quota(20.0).is_some());
    }
}
