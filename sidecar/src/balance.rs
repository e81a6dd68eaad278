//! Endpoint choice: least connections by power of two choices among healthy
//! endpoints, preferring the task's own availability zone while any there is
//! healthy; passive health ejects an endpoint after consecutive connect
//! failures, for longer each time, never more than half of them at once.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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
    // A std mutex: held for a compare and a store, never across an await.
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    times: u32,
}

#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<EndpointState>,
    local_zone: Option<String>,
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
                ejection: Mutex::new(Ejection::default()),
            })
            .collect();
        Self { endpoints, local_zone, ejections: AtomicUsize::new(0) }
    }

    pub fn endpoints(&self) -> &[EndpointState] {
        &self.endpoints
    }

    fn healthy(&self, e: &EndpointState, now: Instant) -> bool {
        e.ejection.lock().unwrap_or_else(std::sync::PoisonError::into_inner).until.is_none_or(|u| u <= now)
    }

    /// The endpoint for a new connection, skipping `tried`.
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !tried.contains(i) && self.healthy(&self.endpoints[*i], now))
            .collect();
        let local: Vec<usize> = match &self.local_zone {
            Some(z) => candidates.iter().copied().filter(|i| self.endpoints[*i].zone.as_ref() == Some(z)).collect(),
            None => Vec::new(),
        };
        let pool = if local.is_empty() { &candidates } else { &local };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => {
                let a = pool[fastrand::usize(..n)];
                let b = pool[fastrand::usize(..n)];
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
        let ejected_now = self.endpoints.iter().filter(|o| !self.healthy(o, now)).count();
        if (ejected_now + 1) * 2 > self.endpoints.len().max(1) {
            return false; // never more than half ejected: better a slow pool than none
        }
        let mut ej = e.ejection.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let span = (BASE_EJECTION * 2u32.saturating_pow(ej.times.min(6))).min(MAX_EJECTION);
        ej.until = Some(now + span);
        ej.times += 1;
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
