//! The table as dns-sync uses it: the port and what crosses it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;

use super::Report;
use crate::config::HostedZoneId;
use crate::dns::Record;
use crate::error::StoreError;
use crate::model::{HostnameGenerator, Labels};
use crate::vip::{ServiceKey, UnixSeconds};

/// What the table holds for dns-sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsState {
    pub generation: u64,
    pub applied_generation: u64,
    /// A previous run left changes unapplied: run even if nothing new happened.
    pub retry_pending: bool,
    pub meshes: Vec<String>,
    /// Record counts per zone at the last audit: the cheap drift check.
    pub zone_counts: BTreeMap<String, u64>,
    pub last_full_audit: UnixSeconds,
}

/// A service as the table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub key: ServiceKey,
    pub vip: Option<Ipv4Addr>,
    pub labels: Labels,
    pub assigned_at: UnixSeconds,
    pub last_endpoint_change: UnixSeconds,
    /// An applied resource declares it: it lives until the resource is deleted.
    pub declared: bool,
}

/// A name loopmesh could not publish, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub zone: HostedZoneId,
    pub name: String,
    pub reason: String,
    /// A record loopmesh did not create holds the name: later runs look
    /// before they write, instead of sending a CREATE Route53 refuses.
    pub foreign: bool,
}

/// The end of a run, written back to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    pub applied_generation: u64,
    pub retry_pending: bool,
    pub zone_counts: BTreeMap<String, u64>,
    pub last_full_audit: UnixSeconds,
    pub report: Report,
}

/// What the ledger knows of one (zone, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ledgered {
    /// loopmesh created this record and the zone holds it.
    Owned(Record),
    /// A change to this name was sent and its outcome is unknown: the zone
    /// holds one of these records of ours, or none of them (same zone and
    /// name, at most two: the old and the new).
    Intent(Vec<Record>),
}

impl Ledgered {
    pub fn id(&self) -> Option<(&HostedZoneId, &str)> {
        match self {
            Self::Owned(r) => Some(r.id()),
            Self::Intent(rs) => rs.first().map(Record::id),
        }
    }
}

/// Who holds the sync lease, when a run could not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub until: UnixSeconds,
}

/// The answer to taking the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTake {
    /// Taken; no Route53 call may go before this epoch millisecond.
    Taken {
        next_call_ms: u64,
    },
    Held(LeaseHolder),
}

/// The table, as dns-sync uses it.
pub trait DnsStore: Send + Sync {
    /// Takes the sync lease until `until`, unless another holder's lease is
    /// still valid at `now`.
    fn acquire_lease(
        &self,
        holder: &str,
        now: UnixSeconds,
        until: UnixSeconds,
    ) -> impl Future<Output = Result<LeaseTake, StoreError>> + Send;
    /// Extends `holder`'s lease to `until`; `false` when it is not (or no
    /// longer) the holder.
    fn renew_lease(&self, holder: &str, until: UnixSeconds) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn release_lease(&self, holder: &str, next_call_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn state(&self) -> impl Future<Output = Result<DnsState, StoreError>> + Send;
    fn services(&self, meshes: &[String]) -> impl Future<Output = Result<Vec<ServiceRow>, StoreError>> + Send;
    fn generators(&self) -> impl Future<Output = Result<Vec<HostnameGenerator>, StoreError>> + Send;
    fn has_endpoints(&self, key: &ServiceKey) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The ownership ledger: every record loopmesh created, and the intents
    /// of changes whose outcome is not known yet.
    fn ledger(&self) -> impl Future<Output = Result<Vec<Ledgered>, StoreError>> + Send;
    /// Writes these entries (one per zone and name) and removes the names in `removed`.
    fn write_ledger(
        &self,
        entries: &[Ledgered],
        removed: &[Record],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The conflicts the last run recorded.
    fn conflicts(&self) -> impl Future<Output = Result<Vec<Conflict>, StoreError>> + Send;
    /// Replaces the recorded conflicts with these.
    fn set_conflicts(&self, conflicts: &[Conflict]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Releases a collected service's VIP into quarantine, unless an endpoint
    /// arrived since `seen_last_change`.
    fn collect(
        &self,
        key: &ServiceKey,
        vip: Ipv4Addr,
        seen_last_change: UnixSeconds,
        now: UnixSeconds,
        quarantined_until: UnixSeconds,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn finish(&self, record: &RunRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
}
