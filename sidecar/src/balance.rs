//! Endpoint choice: least connections by power of two choices among healthy
//! endpoints, preferring the task's own availability zone while any there is
//! healthy; passive health ejects an endpoint after consecutive connect
//! failures, for longer each time, never more than half of them at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::view::Endpoint;

/// Consecutive connect failures that eject an endpoint.
pub const EJECT_AFTER: u32 = 3;
const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct EndpointState {
    pub address: SocketAddr,
    pub zone: Option<String>,
    /// Open connections: the least-connections signal.
    pub active: AtomicUsize,
    failures: AtomicU32,
    /// Nanoseconds after the balancer's `epoch` until which the endpoint is
    /// ejected (0: never ejected). Atomic so the per-connection pick takes no lock.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<EndpointState>,
    local_zone: Option<String>,
    epoch: Instant,
    pub ejections: AtomicUsize,
}

impl Balancer {
    pub fn new(endpoints: &[Endpoint], local_zone: Option<String>) -> Self {
        let endpoints = endpoints
            .iter()
            .map(|e| EndpointState {
                address: e.address,
                zone: e.zone.clone(),
                active: AtomicUsize::new(0),
                failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                ejections: AtomicU32::new(0),
            })
            .collect();
        Self { endpoints, local_zone, epoch: Instant::now(), ejections: AtomicUsize::new(0) }
    }

    pub fn endpoints(&self) -> &[EndpointState] {
        &self.endpoints
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn healthy(&self, i: usize, now: Instant) -> bool {
        self.endpoints[i].ejected_until.load(Ordering::Relaxed) <= self.since_epoch(now)
    }

    fn local(&self, i: usize) -> bool {
        self.local_zone.is_some() && self.endpoints[i].zone == self.local_zone
    }

    /// The endpoint for a new connection, skipping `tried`. Allocation-free:
    /// it runs for every accepted connection.
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        let usable = |i: &usize| !tried.contains(i) && self.healthy(*i, now);
        let local_count = (0..n).filter(|i| self.local(*i) && usable(i)).count();
        let in_pool = |i: &usize| usable(i) && (local_count == 0 || self.local(*i));
        let count = if local_count > 0 { local_count } else { (0..n).filter(usable).count() };
        let nth = |k: usize| (0..n).filter(in_pool).nth(k);
        match count {
            0 => None,
            1 => nth(0),
            _ => {
                let (a, b) = (nth(fastrand::usize(..count))?, nth(fastrand::usize(..count))?);
                let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    pub fn connected(&self, i: usize) {
        self.endpoints[i].failures.store(0, Ordering::Relaxed);
    }

    /// Counts a connect failure; returns true when it ejected the endpoint.
    pub fn failed(&self, i: usize, now: Instant) -> bool {
        let e = &self.endpoints[i];
        if e.failures.fetch_add(1, Ordering::Relaxed) + 1 < EJECT_AFTER {
            return false;
        }
        let ejected_now = (0..self.endpoints.len()).filter(|o| !self.healthy(*o, now)).count();
        if (ejected_now + 1) * 2 > self.endpoints.len().max(1) {
            return false; // never more than half ejected: better a slow pool than none
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed);
        let span = (BASE_EJECTION * 2u32.saturating_pow(times.min(6))).min(MAX_EJECTION);
        e.ejected_until.store(self.since_epoch(now + span), Ordering::Relaxed);
        e.failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(zones: &[&str]) -> Vec<Endpoint> {
        zones
            .iter()
            .enumerate()
            .map(|(i, z)| Endpoint {
                address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                zone: Some((*z).into()),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn prefers_the_local_zone_while_it_is_healthy() {
        let b = Balancer::new(&eps(&["a", "b", "b"]), Some("a".into()));
        let now = Instant::now();
        assert!((0..50).all(|_| b.pick(&[], now) == Some(0)));
        for _ in 0..EJECT_AFTER {
            b.failed(0, now);
        }
        assert!((0..50).all(|_| b.pick(&[], now) != Some(0)));
        tokio::time::advance(BASE_EJECTION).await;
        assert_eq!(b.pick(&[], Instant::now()), Some(0), "back after the ejection");
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_half() {
        let b = Balancer::new(&eps(&["a", "a"]), None);
        let now = Instant::now();
        for i in 0..2 {
            for _ in 0..EJECT_AFTER {
                b.failed(i, now);
            }
        }
        assert_eq!(b.ejections.load(Ordering::Relaxed), 1, "one of two is half: the second stays");
        let b = Balancer::new(&eps(&["a", "a", "a", "a"]), None);
        for i in 0..4 {
            for _ in 0..EJECT_AFTER {
                b.failed(i, now);
            }
        }
        assert_eq!(b.ejections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn least_connections_wins_the_pair() {
        let b = Balancer::new(&eps(&["a", "a"]), None);
        b.endpoints[0].active.store(10, Ordering::Relaxed);
        let picks: Vec<_> = (0..200).map(|_| b.pick(&[], Instant::now()).unwrap()).collect();
        assert!(picks.iter().filter(|p| **p == 1).count() > 140);
        assert_eq!(b.pick(&[1], Instant::now()), Some(0));
        assert_eq!(b.pick(&[0, 1], Instant::now()), None);
    }
}
