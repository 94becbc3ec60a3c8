//! The global limit on KooDrive calls: at most N in flight and R started per second, across
//! every UserBatch. Waiters are served in arrival order, so one huge batch (which takes a
//! permit per request) cannot starve the small ones queued behind it.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Throttle {
    in_flight: Arc<Semaphore>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// Held for the duration of one KooDrive call.
pub struct Permit {
    _in_flight: OwnedSemaphorePermit,
}

impl Throttle {
    /// `requests_per_second <= 0` lifts the rate limit.
    pub fn new(max_in_flight: usize, requests_per_second: f64) -> Self {
        let rate = quota(requests_per_second).map(RateLimiter::direct);
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            rate,
        }
    }

    pub async fn acquire(&self) -> Permit {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the throttle's semaphore is never closed");
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        Permit { _in_flight: permit }
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
        let throttle = Throttle::new(2, 0.0);
        let a = throttle.acquire().await;
        let _b = throttle.acquire().await;
        assert_eq!(throttle.in_flight.available_permits(), 0);
        drop(a);
        assert_eq!(throttle.in_flight.available_permits(), 1);
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
