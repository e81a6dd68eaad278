//! One limiter for every Route53 call, reads included (invariant 3).
//!
//! Calls are spaced evenly, never in bursts: a burst at the end of one
//! invocation followed by one at the start of the next could exceed the rate
//! in a one-second window. The spacing has a small margin because a request
//! sent on time can still arrive early relative to the previous one.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Extra spacing beyond 1/rate, for jitter between sending and arriving.
const MARGIN: f64 = 1.03;

#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    // A Tokio mutex: the holder sleeps while holding it, which is what makes
    // concurrent callers queue behind one schedule.
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `per_second` calls at most, `first_at` the earliest moment of the first
    /// (a previous holder's last call plus one interval).
    pub fn new(per_second: f64, first_at: Option<Instant>) -> Self {
        Self { interval: Duration::from_secs_f64(MARGIN / per_second), next: Mutex::new(first_at) }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits for the next slot; returns the moment the call may go.
    pub async fn acquire(&self) -> Instant {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        let at = next.map_or(now, |n| n.max(now));
        tokio::time::sleep_until(at).await;
        *next = Some(at + self.interval);
        at
    }

    /// When the next call may go: what a successor must wait for.
    pub async fn next_slot(&self) -> Option<Instant> {
        *self.next.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_calls_and_never_bursts() {
        let limiter = std::sync::Arc::new(RateLimiter::new(5.0, None));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..11 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move { l.acquire().await }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap() - start);
        }
        times.sort();
        // Any one-second window holds at most 5 calls.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|u| **u < *t + Duration::from_secs(1)).count();
            assert!(in_window <= 5, "{in_window} calls within 1 s from {t:?}");
        }
        assert!(times[10] >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_starts_after_the_predecessor_slot() {
        let first = RateLimiter::new(5.0, None);
        first.acquire().await;
        let next = first.next_slot().await;
        let second = RateLimiter::new(5.0, next);
        let t0 = Instant::now();
        let at = second.acquire().await;
        assert!(at - t0 >= Duration::from_millis(200));
    }
}
