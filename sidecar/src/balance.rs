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

/// How a balancer picks (MeshLoadBalancingStrategy) and ejects
/// (MeshCircuitBreaker's outlier detection).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balancing {
    pub algorithm: Algorithm,
    pub outlier: Outlier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// The least loaded of this many random endpoints.
    LeastRequest(u32),
    Random,
    RoundRobin,
}

impl Default for Algorithm {
    fn default() -> Self {
        Self::LeastRequest(2)
    }
}

/// When consecutive failures eject an endpoint. A success (a connect, an
/// answer under 500) starts every count again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub disabled: bool,
    /// 5xx answers in a row (and local failures, unless `split`).
    pub total: Option<u32>,
    /// 502, 503 and 504 answers in a row (and local failures, unless `split`).
    pub gateway: Option<u32>,
    /// Local failures in a row: failed connects, resets, timeouts.
    pub local: Option<u32>,
    pub split: bool,
    pub base_ejection: Duration,
    /// `None`: never more than half the endpoints (never the only one);
    /// else Envoy's rule, at least one whatever the percentage.
    pub max_ejection_percent: Option<u32>,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            disabled: false,
            total: Some(EJECT_AFTER_5XX),
            gateway: None,
            local: Some(EJECT_AFTER),
            split: true,
            base_ejection: BASE_EJECTION,
            max_ejection_percent: None,
        }
    }
}

/// What an attempt on an endpoint came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A connect or an answer under 500.
    Success,
    /// An HTTP answer of 500 or more.
    ServerError(u16),
    /// No connection, a reset or a timeout.
    LocalFailure,
}

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

/// A connection or request outstanding at an endpoint, in its `active`
/// count (the least-request signal) until dropped. A request's future is
/// dropped at whatever await it waits on when its client leaves, so a count
/// taken back by hand after an await leaked: 54 requests per load run cut
/// off mid-flight, each skewing the balancing away from its endpoint for
/// good.
#[derive(Debug)]
pub struct Outstanding(Arc<EndpointState>);

impl Outstanding {
    pub fn new(endpoint: Arc<EndpointState>) -> Self {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl std::ops::Deref for Outstanding {
    type Target = EndpointState;

    fn deref(&self) -> &EndpointState {
        &self.0
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
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
    /// Consecutive 5xx answers, and gateway errors (HTTP outbounds).
    server_errors: AtomicU32,
    gateway_errors: AtomicU32,
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
    pub balancing: Balancing,
    /// Round robin's next turn.
    turn: AtomicUsize,
}

impl Balancer {
    /// `local_zone: None` turns zone preference off. Endpoints whose address
    /// does not parse are left out (a validated view has none).
    pub fn new(endpoints: &[Endpoint], local_zone: Option<String>) -> Self {
        Self::carry_over(endpoints, local_zone, None, Balancing::default())
    }

    /// A balancer for a new view that keeps the state of endpoints `previous`
    /// already had: their connection counts and ejections.
    pub fn carry_over(
        endpoints: &[Endpoint],
        local_zone: Option<String>,
        previous: Option<&Balancer>,
        balancing: Balancing,
    ) -> Self {
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
                    gateway_errors: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                }))
            })
            .collect();
        let epoch = previous.map_or_else(Instant::now, |p| p.epoch);
        Self { endpoints, local_zone, epoch, balancing, turn: AtomicUsize::new(0) }
    }

    pub fn local_zone(&self) -> Option<&str> {
        self.local_zone.as_deref()
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

    /// The endpoint for a new connection or request, skipping `tried`.
    /// Allocation-free: it runs for every accepted connection.
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        let usable = |i: &usize| !tried.contains(i) && self.healthy(*i, now);
        let local_count = (0..n).filter(|i| self.local(*i) && usable(i)).count();
        let in_pool = |i: &usize| usable(i) && (local_count == 0 || self.local(*i));
        let count = if local_count > 0 { local_count } else { (0..n).filter(usable).count() };
        let nth = |k: usize| (0..n).filter(in_pool).nth(k);
        let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
        match (count, self.balancing.algorithm) {
            (0, _) => None,
            (1, _) => nth(0),
            (_, Algorithm::Random) => nth(fastrand::usize(..count)),
            (_, Algorithm::RoundRobin) => nth(self.turn.fetch_add(1, Ordering::Relaxed) % count),
            (_, Algorithm::LeastRequest(2)) => {
                // Two distinct candidates: with two endpoints the less loaded always wins.
                let ka = fastrand::usize(..count);
                let kb = fastrand::usize(..count - 1);
                let (a, b) = (nth(ka)?, nth(if kb >= ka { kb + 1 } else { kb })?);
                Some(if load(b) < load(a) { b } else { a })
            }
            (_, Algorithm::LeastRequest(choices)) => {
                (0..choices.max(1)).filter_map(|_| nth(fastrand::usize(..count))).min_by_key(|i| load(*i))
            }
        }
    }

    /// Counts a connect failure; returns true when it ejected the endpoint.
    pub fn failed(&self, i: usize, now: Instant) -> bool {
        self.record(i, Outcome::LocalFailure, now)
    }

    /// Counts what an attempt came to; returns true when it ejected the endpoint.
    pub fn record(&self, i: usize, outcome: Outcome, now: Instant) -> bool {
        let e = &self.endpoints[i];
        let o = &self.balancing.outlier;
        let bump = |counter: &AtomicU32, threshold: Option<u32>| {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            threshold.is_some_and(|t| n >= t)
        };
        let reached = match outcome {
            Outcome::Success => {
                e.failures.store(0, Ordering::Relaxed);
                e.server_errors.store(0, Ordering::Relaxed);
                e.gateway_errors.store(0, Ordering::Relaxed);
                false
            }
            Outcome::ServerError(status) => {
                e.failures.store(0, Ordering::Relaxed);
                let total = bump(&e.server_errors, o.total);
                let gateway = if matches!(status, 502..=504) {
                    bump(&e.gateway_errors, o.gateway)
                } else {
                    e.gateway_errors.store(0, Ordering::Relaxed);
                    false
                };
                total || gateway
            }
            Outcome::LocalFailure => {
                let local = bump(&e.failures, o.local);
                // Unsplit, a local failure also counts as a 5xx and a gateway error (Envoy's 503).
                let (total, gateway) = if o.split {
                    (false, false)
                } else {
                    (bump(&e.server_errors, o.total), bump(&e.gateway_errors, o.gateway))
                };
                local || total || gateway
            }
        };
        reached && !o.disabled && self.eject(i, now)
    }

    fn eject(&self, i: usize, now: Instant) -> bool {
        let e = &self.endpoints[i];
        let n = self.endpoints.len();
        let ejected_now = (0..n).filter(|o| !self.healthy(*o, now)).count();
        let allowed = match self.balancing.outlier.max_ejection_percent {
            // Never more than half: better a slow pool than none.
            None => n / 2,
            Some(pct) => (n * pct as usize / 100).max(1),
        };
        if ejected_now >= allowed {
            return false;
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed);
        let base = self.balancing.outlier.base_ejection;
        let span = (base * 2u32.saturating_pow(times.min(6))).min(MAX_EJECTION.max(base));
        e.ejected_until.store(self.since_epoch(now + span), Ordering::Relaxed);
        e.failures.store(0, Ordering::Relaxed);
        e.server_errors.store(0, Ordering::Relaxed);
        e.gateway_errors.store(0, Ordering::Relaxed);
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
            assert!(!b.record(0, Outcome::ServerError(503), now));
        }
        assert!(!b.record(0, Outcome::Success, now), "a good answer starts the count again");
        for _ in 0..EJECT_AFTER_5XX - 1 {
            assert!(!b.record(0, Outcome::ServerError(500), now));
        }
        assert!(b.record(0, Outcome::ServerError(500), now), "the 5th in a row ejects");
        assert!((0..50).all(|_| b.pick(&[], now) != Some(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_breaker_sets_the_detectors_and_how_many_may_be_out() {
        let outlier = Outlier {
            total: None,
            gateway: Some(2),
            split: false,
            max_ejection_percent: Some(100),
            ..Outlier::default()
        };
        let b = Balancer::carry_over(&eps(&["a", "a"]), None, None, Balancing { outlier, ..Balancing::default() });
        let now = Instant::now();
        assert!(!b.record(0, Outcome::ServerError(500), now), "500 is no gateway error; total is off");
        assert!(!b.record(0, Outcome::ServerError(503), now));
        assert!(b.record(0, Outcome::LocalFailure, now), "unsplit, a local failure counts as a gateway error");
        assert!(!b.record(1, Outcome::ServerError(502), now));
        assert!(b.record(1, Outcome::ServerError(502), now), "100 %: every endpoint may be ejected");
        assert_eq!(b.pick(&[], now), None);
        let off = Outlier { disabled: true, ..Outlier::default() };
        let b = Balancer::carry_over(&eps(&["a", "a"]), None, None, Balancing { outlier: off, ..Balancing::default() });
        assert!((0..20).all(|_| !b.record(0, Outcome::LocalFailure, now)), "disabled: never ejected");
    }

    #[test]
    fn round_robin_and_random_take_turns() {
        let rr = Balancing { algorithm: Algorithm::RoundRobin, ..Balancing::default() };
        let b = Balancer::carry_over(&eps(&["a", "a", "a"]), None, None, rr);
        b.endpoints[0].active.store(100, Ordering::Relaxed);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[], Instant::now()).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2], "round robin ignores load");
        let random = Balancing { algorithm: Algorithm::Random, ..Balancing::default() };
        let b = Balancer::carry_over(&eps(&["a", "a", "a"]), None, None, random);
        b.endpoints[0].active.store(100, Ordering::Relaxed);
        assert!((0..300).any(|_| b.pick(&[], Instant::now()) == Some(0)), "random ignores load");
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
        let second = Balancer::carry_over(&[a, b], None, Some(&first), Balancing::default());
        assert_eq!(second.endpoints()[0].active.load(Ordering::Relaxed), 4);
        assert!(Arc::ptr_eq(&first.endpoints()[0], &second.endpoints()[0]));
        assert_eq!(second.endpoints()[1].target, Target::Name("db.example.com".into(), 5432));
    }
}
