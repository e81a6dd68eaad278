//! An HTTP outbound's counters, read by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in milliseconds
/// (Envoy's default buckets, from 0.5 ms to 1 h).
pub const BUCKETS_MS: [f64; 20] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    600000.0,
    1800000.0,
    3600000.0,
    f64::INFINITY,
];

/// Why the sidecar answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReason {
    NoHealthyEndpoint,
    ConnectFailure,
    Reset,
    Timeout,
    Overflow,
}

impl LocalReason {
    pub const ALL: [Self; 5] =
        [Self::NoHealthyEndpoint, Self::ConnectFailure, Self::Reset, Self::Timeout, Self::Overflow];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoHealthyEndpoint => "no_healthy_endpoint",
            Self::ConnectFailure => "upstream_connect_failure",
            Self::Reset => "upstream_reset",
            Self::Timeout => "timeout",
            Self::Overflow => "circuit_open",
        }
    }
}

#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    /// Responses by status class: 1xx .. 5xx (local replies included).
    pub by_class: [AtomicU64; 5],
    pub retries: AtomicU64,
    /// Retries not made because MeshCircuitBreaker's maxRetries were in flight.
    pub retries_overflow: AtomicU64,
    /// Requests an HTTP/2 endpoint did not process, sent again (not retries).
    pub resends: AtomicU64,
    /// Requests ended by the request timeout or a per-try timeout.
    pub timeouts: AtomicU64,
    /// Local replies, by [`LocalReason`] in the order of `ALL`.
    pub local: [AtomicU64; 5],
    /// Endpoints ejected after consecutive 5xx answers.
    pub ejections_5xx: AtomicU64,
    /// Endpoints ejected after consecutive connect failures.
    pub ejections_connect: AtomicU64,
    /// Request latency (start to the response's end), per bucket of `BUCKETS_MS`.
    pub latency: [AtomicU64; 20],
    pub latency_sum_us: AtomicU64,
    /// HTTP/1.1 upgrades and CONNECT tunnels carried.
    pub upgrades: AtomicU64,
}

impl HttpStats {
    pub fn status(&self, status: u16) {
        if let Some(c) = (status / 100).checked_sub(1).and_then(|i| self.by_class.get(usize::from(i))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn local(&self, reason: LocalReason) {
        let i = LocalReason::ALL.iter().position(|r| *r == reason).unwrap_or_default();
        self.local[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let i = BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS_MS.len() - 1);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_and_buckets() {
        let s = HttpStats::default();
        s.status(503);
        s.status(200);
        s.status(99);
        assert_eq!(s.by_class[4].load(Ordering::Relaxed), 1);
        assert_eq!(s.by_class[1].load(Ordering::Relaxed), 1);
        s.observe(Duration::from_micros(700));
        assert_eq!(s.latency[1].load(Ordering::Relaxed), 1, "0.7 ms falls in the 1 ms bucket");
    }
}
