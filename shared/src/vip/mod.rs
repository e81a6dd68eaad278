//! VIP allocation: each (mesh, kind, name) holds at most one VIP, and each VIP
//! belongs to at most one service (invariant 1).
//!
//! The algorithm lives here, free of AWS types; atomicity comes from the
//! ledger: [`VipLedger::claim`] takes the address and records it on the
//! service in one conditional step, so two allocators can never both win one
//! address, and one service can never win two.

mod allocator;
#[cfg(any(test, feature = "testing"))]
mod memory;
mod pool;

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;

pub use allocator::{AllocError, Allocation, allocate, allocate_from, release};
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryLedger;
pub use pool::{PoolTooSmall, VipPool};

use crate::error::StoreError;

/// Seconds since the Unix epoch: how time is stored and injected, so tests
/// choose "now" instead of sleeping.
pub type UnixSeconds = u64;

/// The wall clock, read only at the edges (a handler's entry, a CLI command)
/// and passed inward as a value.
pub fn unix_now() -> UnixSeconds {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The kinds of service that get VIPs, each from its own pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    /// Named by the `kuma.io/service` tag; listens on the shared VIP port.
    Service,
    MeshService,
    MeshExternalService,
    MeshMultiZoneService,
}

impl ServiceKind {
    pub const ALL: [Self; 4] =
        [Self::Service, Self::MeshService, Self::MeshExternalService, Self::MeshMultiZoneService];

    /// The short code used in table keys.
    pub fn code(self) -> &'static str {
        match self {
            Self::Service => "svc",
            Self::MeshService => "ms",
            Self::MeshExternalService => "mes",
            Self::MeshMultiZoneService => "mzs",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::MeshService => "MeshService",
            Self::MeshExternalService => "MeshExternalService",
            Self::MeshMultiZoneService => "MeshMultiZoneService",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a VIP is allocated to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub mesh: String,
    pub kind: ServiceKind,
    pub name: String,
}

impl ServiceKey {
    pub fn new(mesh: impl Into<String>, kind: ServiceKind, name: impl Into<String>) -> Self {
        Self { mesh: mesh.into(), kind, name: name.into() }
    }

    /// How a lease names its owner; unique within a mesh.
    pub fn owner_id(&self) -> String {
        format!("{}#{}", self.kind.code(), self.name)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} in mesh {:?}", self.kind, self.name, self.mesh)
    }
}

/// What the ledger knows of a service's VIP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assignment {
    pub current: Option<Ipv4Addr>,
    /// The VIP it had before garbage collection, tried first when it comes back.
    pub previous: Option<Ipv4Addr>,
}

/// The record of one address: who holds it, or until when it rests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    /// [`ServiceKey::owner_id`] of the holder, or of the last holder when released.
    pub owner: String,
    /// `Some` once released: the address is in quarantine until then.
    pub quarantined_until: Option<UnixSeconds>,
}

impl Lease {
    /// A released address is free for anyone after its quarantine, and at once
    /// for its last owner (the DNS records still point at that same service).
    pub fn is_free_for(&self, owner: &str, now: UnixSeconds) -> bool {
        self.owner == owner || self.quarantined_until.is_some_and(|until| until <= now)
    }
}

/// The outcome of one atomic claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Won,
    /// Another service holds the address, or it is in quarantine.
    Taken,
    /// The service got a VIP meanwhile (a concurrent allocator won).
    AlreadyAssigned,
}

/// Where leases and assignments live: DynamoDB in production, memory in unit tests.
pub trait VipLedger: Send + Sync {
    fn assignment(&self, key: &ServiceKey) -> impl Future<Output = Result<Assignment, StoreError>> + Send;

    /// The assignments of several services of one mesh in one read, in the order of `keys`
    /// (at most [`LEASE_READ_BATCH`]).
    fn assignments(&self, keys: &[ServiceKey]) -> impl Future<Output = Result<Vec<Assignment>, StoreError>> + Send;

    /// The leases that exist among `addrs` (at most [`LEASE_READ_BATCH`]), in any order.
    fn leases(&self, mesh: &str, addrs: &[Ipv4Addr]) -> impl Future<Output = Result<Vec<Lease>, StoreError>> + Send;

    /// Atomically: takes `addr` if it is free for `key` at `now`, and records
    /// it on the service if the service has no VIP yet.
    fn claim(
        &self,
        key: &ServiceKey,
        addr: Ipv4Addr,
        now: UnixSeconds,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Atomically: marks the lease released until `quarantined_until` and moves
    /// the service's VIP to `previous`. False when `key` did not hold `addr`.
    fn release(
        &self,
        key: &ServiceKey,
        addr: Ipv4Addr,
        quarantined_until: UnixSeconds,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// How many leases one read asks for: DynamoDB's BatchGetItem limit.
pub const LEASE_READ_BATCH: usize = 100;
