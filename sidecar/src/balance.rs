//! Endpoint choice: least connections by power of two choices among healthy
//! endpoints, preferring the task's own availability zone while any there is
//! healthy; passive health ejects an endpoint after consecutive connect
//! failures, for longer each time, never more than half of them at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::view::{Endpoint, split_host_port};

/// Consecutive connect failures that eject an endpoint.
pub const EJECT_AFTER: u32 = 3;
/// Consecutive 5xx answers (gateway errors, resets and timeouts of an HTTP
/// outbound included) that eject an endpoint: Envoy's `consecutive_5xx`.
pub const EJECT_AFTER_5XX: u32 = 5;
const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Where a connection goes: an address, or a name resolved at connect time
/// (MeshExternalService endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Socket(SocketAddr),
    Name(String, u16),
}

impl Target {
    pub fn parse(address: &str) -> Option<Self> {
        if let Ok(sa) = address.parse() {
            return Some(Self::Socket(sa));
        }
        split_host_port(address).map(|(h, p)| Self::Name(h.to_owned(), p))
    }
}

/// One endpoint's live state. Shared (`Arc`) between the balancers of
/// successive views, so its open-connection count and health survive a
/// refresh that keeps it.
#[derive(Debug)]
pub struct EndpointState {
    pub address: String,
    pub target: Target,
    pub zone: Option<String>,
    /// The service its certificate must name under mTLS (`None`: not a mesh endpoint).
    pub identity: Option<String>,
    /// Open connections: the least-connections signal.
    pub active: AtomicUsize,
    failures: AtomicU32,
    /// Consecutive 5xx answers (HTTP outbounds).
    server_errors: AtomicU32,
    /// Nanoseconds after the balancer's `epoch` until which the endpoint is
    /// ejected (0: never ejected). Atomic so the per-connection pick takes no lock.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<EndpointState>>,
    local_zone: Option<String>,
    epoch: Instant,
}

impl Balancer {
    /// `local_zone: None` turns zone preference off. Endpoints whose address
    /// does not parse are left out (a validated view has none).
    pub fn new(endpoints: &[Endpoint], local_zone: Option<String>) -> Self {
        Self::carry_over(endpoints, local_zone, None)
    }

    /// A balancer for a new view that keeps the state of endpoints `previous`
    /// already had: their connection counts and ejections.
    pub fn carry_over(endpoints: &[Endpoint], local_zone: Option<String>, previous: Option<&Balancer>) -> Self {
        let endpoints = endpoints
            .iter()
            .filter_map(|e| {
                let kept = previous.and_then(|p| {
                    p.endpoints.iter().find(|s| s.address == e.address && s.zone == e.zone && s.identity == e.identity)
                });
                if let Some(kept) = kept {
                    return Some(kept.clone());
                }
                Some(Arc::new(EndpointState {
                    address: e.address.clone(),
                    target: Target::parse(&e.address)?,
                    zone: e.zone.clone(),
                    identity: e.identity.clone(),
                    active: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    server_errors: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                }))
            })
            .collect();
        let epoch = previous.map_or_else(Instant::now, |p| p.epoch);
        Self { endpoints, local_zone, epoch }
    }

    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
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
                // Two distinct candidates: with two endpoints the less loaded always wins.
                let ka = fastrand::usize(..count);
                let kb = fastrand::usize(..count - 1);
                let (a, b) = (nth(ka)?, nth(if kb >= ka { kb + 1 } else { kb })?);
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
        if self.endpoints[i].failures.fetch_add(1, Ordering::Relaxed) + 1 < EJECT_AFTER {
            return false;
        }
        self.eject(i, now)
    }

    /// Counts an HTTP answer: a 5xx (or a reset or timeout standing for one)
    /// or not. Returns true when it ejected the endpoint.
    pub fn answered(&self, i: usize, server_error: bool, now: Instant) -> bool {
        let e = &self.endpoints[i];
        if !server_error {
            e.server_errors.store(0, Ordering::Relaxed);
            return false;
        }
        if e.server_errors.fetch_add(1, Ordering::Relaxed) + 1 < EJECT_AFTER_5XX {
            return false;
        }
        self.eject(i, now)
    }

    fn eject(&self, i: usize, now: Instant) -> bool {
        let e = &self.endpoints[i];
        let ejected_now = (0..self.endpoints.len()).filter(|o| !self.healthy(*o, now)).count();
        if (ejected_now + 1) * 2 > self.endpoints.len().max(1) {
            return false; // never more than half ejected: better a slow pool than none
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed);
        let span = (BASE_EJECTION * 2u32.saturating_pow(times.min(6))).min(MAX_EJECTION);
        e.ejected_until.store(self.since_epoch(now + span), Ordering::Relaxed);
        e.failures.store(0, Ordering::Relaxed);
        e.server_errors.store(0, Ordering::Relaxed);
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
            .map(|(i, z)| Endpoint { address: format!("10.0.0.{}:80", i + 1), zone: Some((*z).into()), identity: None })
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
        let now = Instant::now();
        // Ejections made when every endpoint fails EJECT_AFTER times.
        let ejections = |b: &Balancer| {
            (0..b.endpoints.len()).map(|i| (0..EJECT_AFTER).filter(|_| b.failed(i, now)).count()).sum::<usize>()
        };
        let b = Balancer::new(&eps(&["a", "a"]), None);
        assert_eq!(ejections(&b), 1, "one of two is half: the second stays");
        let b = Balancer::new(&eps(&["a", "a", "a", "a"]), None);
        assert_eq!(ejections(&b), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_server_errors_eject_and_a_success_resets_the_count() {
        let b = Balancer::new(&eps(&["a", "a", "a"]), None);
        let now = Instant::now();
        for _ in 0..EJECT_AFTER_5XX - 1 {
            assert!(!b.answered(0, true, now));
        }
        assert!(!b.answered(0, false, now), "a good answer starts the count again");
        for _ in 0..EJECT_AFTER_5XX - 1 {
            assert!(!b.answered(0, true, now));
        }
        assert!(b.answered(0, true, now), "the 5th in a row ejects");
        assert!((0..50).all(|_| b.pick(&[], now) != Some(0)));
    }

    #[test]
    fn least_connections_wins_the_pair() {
        let b = Balancer::new(&eps(&["a", "a"]), None);
        b.endpoints[0].active.store(10, Ordering::Relaxed);
        let picks: Vec<_> = (0..200).map(|_| b.pick(&[], Instant::now()).unwrap()).collect();
        assert!(picks.iter().all(|p| *p == 1), "the less loaded of two always wins");
        assert_eq!(b.pick(&[1], Instant::now()), Some(0));
        assert_eq!(b.pick(&[0, 1], Instant::now()), None);
    }
}

#[cfg(test)]
mod carry_over_tests {
    use super::*;

    #[test]
    fn keeps_the_state_of_endpoints_that_stay() {
        let a = Endpoint { address: "10.0.0.1:80".into(), zone: None, identity: None };
        let b = Endpoint { address: "db.example.com:5432".into(), zone: None, identity: None };
        let first = Balancer::new(std::slice::from_ref(&a), None);
        first.endpoints()[0].active.store(4, Ordering::Relaxed);
        let second = Balancer::carry_over(&[a, b], None, Some(&first));
        assert_eq!(second.endpoints()[0].active.load(Ordering::Relaxed), 4);
        assert!(Arc::ptr_eq(&first.endpoints()[0], &second.endpoints()[0]));
        assert_eq!(second.endpoints()[1].target, Target::Name("db.example.com".into(), 5432));
    }
}
