//! In-memory fakes of dns-sync's ports, for unit tests with paused time:
//! [`MemoryRoute53`] keeps zones as Route53 does (a change batch is all or
//! nothing, refusals name their record) and can be told to fail the way the
//! real one does; [`MemoryDnsStore`] keeps the table's dns-sync items under
//! the same conditions as the DynamoDB adapter.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::provider::{DnsProvider, Page, ProviderError, RecordSet, Refusal, RefusalReason, ZoneInfo};
use super::sync::{Conflict, DnsState, DnsStore, LeaseHolder, LeaseTake, Ledgered, RunRecord, ServiceRow};
use super::{Change, Record};
use crate::config::HostedZoneId;
use crate::error::StoreError;
use crate::model::{HostnameGenerator, Labels};
use crate::vip::{ServiceKey, ServiceKind, UnixSeconds};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Route53 in memory: A records only, which is all loopmesh writes.
#[derive(Debug, Default)]
pub struct MemoryRoute53 {
    state: Mutex<Route53State>,
}

#[derive(Debug, Default)]
struct Route53State {
    zones: BTreeMap<HostedZoneId, MemoryZone>,
    /// Every call to these zones fails so (denied, throttled, ...).
    broken: BTreeMap<HostedZoneId, ProviderError>,
    /// The next this many change batches are applied, then answered with a
    /// lost connection: the caller cannot know they were applied.
    lose_answers: usize,
    /// Change batches never answer (a hung call).
    hang_changes: bool,
    calls: Calls,
}

#[derive(Debug, Default)]
struct MemoryZone {
    name: String,
    private: bool,
    /// A records by name.
    records: BTreeMap<String, (Ipv4Addr, u32)>,
}

/// Calls per operation, as Route53 would count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub get_zone: usize,
    pub list: usize,
    pub change: usize,
}

impl MemoryRoute53 {
    pub fn with_zone(id: &str, name: &str) -> Self {
        let me = Self::default();
        me.add_zone(id, name, true);
        me
    }

    pub fn add_zone(&self, id: &str, name: &str, private: bool) {
        let zone = MemoryZone { name: name.to_owned(), private, records: BTreeMap::new() };
        lock(&self.state).zones.insert(zone_id(id), zone);
    }

    /// A record someone else created.
    pub fn put(&self, zone: &str, name: &str, value: Ipv4Addr) {
        if let Some(z) = lock(&self.state).zones.get_mut(&zone_id(zone)) {
            z.records.insert(name.to_owned(), (value, 60));
        }
    }

    pub fn remove(&self, zone: &str, name: &str) {
        if let Some(z) = lock(&self.state).zones.get_mut(&zone_id(zone)) {
            z.records.remove(name);
        }
    }

    /// The zone's A records, by name.
    pub fn records(&self, zone: &str) -> BTreeMap<String, Ipv4Addr> {
        lock(&self.state)
            .zones
            .get(&zone_id(zone))
            .map(|z| z.records.iter().map(|(n, (v, _))| (n.clone(), *v)).collect())
            .unwrap_or_default()
    }

    pub fn break_zone(&self, zone: &str, error: ProviderError) {
        lock(&self.state).broken.insert(zone_id(zone), error);
    }

    pub fn lose_answers(&self, batches: usize) {
        lock(&self.state).lose_answers = batches;
    }

    pub fn hang_changes(&self, hang: bool) {
        lock(&self.state).hang_changes = hang;
    }

    pub fn calls(&self) -> Calls {
        lock(&self.state).calls
    }

    fn broken(&self, zone: &HostedZoneId) -> Result<(), ProviderError> {
        lock(&self.state).broken.get(zone).map_or(Ok(()), |e| Err(e.clone()))
    }
}

impl DnsProvider for MemoryRoute53 {
    async fn get_zone(&self, zone: &HostedZoneId) -> Result<ZoneInfo, ProviderError> {
        lock(&self.state).calls.get_zone += 1;
        self.broken(zone)?;
        let st = lock(&self.state);
        let z = st.zones.get(zone).ok_or_else(|| ProviderError::NoSuchZone(zone.clone()))?;
        // SOA and NS count, as in Route53.
        Ok(ZoneInfo {
            id: zone.clone(),
            name: z.name.clone(),
            private: z.private,
            record_count: 2 + z.records.len() as u64,
        })
    }

    async fn list_page(
        &self,
        zone: &HostedZoneId,
        start: Option<(String, String)>,
        max_items: Option<i32>,
    ) -> Result<Page, ProviderError> {
        lock(&self.state).calls.list += 1;
        self.broken(zone)?;
        let st = lock(&self.state);
        let z = st.zones.get(zone).ok_or_else(|| ProviderError::NoSuchZone(zone.clone()))?;
        let from = start.map(|(name, _)| name.trim_end_matches('.').to_ascii_lowercase()).unwrap_or_default();
        let max = max_items.map_or(300, |m| m.max(1) as usize);
        let mut sets = z.records.range(from..).map(|(name, (value, ttl))| RecordSet {
            name: name.clone(),
            kind: "A".into(),
            ttl: Some(*ttl),
            values: vec![value.to_string()],
        });
        let page: Vec<RecordSet> = sets.by_ref().take(max).collect();
        let next = sets.next().map(|s| (format!("{}.", s.name), "A".to_owned()));
        Ok((page, next))
    }

    async fn change(&self, zone: &HostedZoneId, changes: &[Change]) -> Result<(), ProviderError> {
        let hang = {
            let mut st = lock(&self.state);
            st.calls.change += 1;
            st.hang_changes
        };
        if hang {
            std::future::pending::<()>().await;
        }
        self.broken(zone)?;
        let mut st = lock(&self.state);
        let z = st.zones.get_mut(zone).ok_or_else(|| ProviderError::NoSuchZone(zone.clone()))?;
        // All or nothing: check every change against the zone as the batch
        // goes, then apply.
        let mut after = z.records.clone();
        let mut refusals = Vec::new();
        for change in changes {
            let rec = change.record();
            let refuse = |reason, words: &str| Refusal {
                name: Some(rec.name.clone()),
                reason,
                message: format!("Tried to {words} resource record set [name='{}.', type='A']", rec.name),
            };
            match change {
                Change::Create(_) if after.contains_key(&rec.name) => {
                    refusals.push(refuse(RefusalReason::AlreadyExists, "create ... but it already exists"))
                }
                Change::Create(_) => {
                    after.insert(rec.name.clone(), (rec.value, rec.ttl));
                }
                Change::Delete(_) => match after.get(&rec.name) {
                    Some(held) if *held == (rec.value, rec.ttl) => {
                        after.remove(&rec.name);
                    }
                    Some(_) => refusals.push(refuse(RefusalReason::Other, "delete ... but the values do not match")),
                    None => refusals.push(refuse(RefusalReason::NotFound, "delete ... but it was not found")),
                },
            }
        }
        if !refusals.is_empty() {
            return Err(ProviderError::InvalidChangeBatch(refusals));
        }
        z.records = after;
        if st.lose_answers > 0 {
            st.lose_answers -= 1;
            return Err(ProviderError::Other {
                message: "connection reset after the request was sent".into(),
                retryable: true,
            });
        }
        Ok(())
    }
}

fn zone_id(id: &str) -> HostedZoneId {
    HostedZoneId::parse(id).unwrap_or_else(|e| panic!("test zone id {id:?}: {e}"))
}

/// The table's dns-sync items in memory.
#[derive(Debug, Default)]
pub struct MemoryDnsStore {
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    dns: DnsState,
    services: Vec<ServiceRow>,
    generators: Vec<HostnameGenerator>,
    with_endpoints: BTreeSet<ServiceKey>,
    ledger: BTreeMap<(HostedZoneId, String), Ledgered>,
    conflicts: Vec<Conflict>,
    lease: Option<LeaseHolder>,
    next_call_ms: u64,
    /// The next renewal finds the lease taken by another run.
    lease_taken: bool,
    /// Renewals from now on fail with this error.
    renew_error: Option<StoreError>,
    runs: Vec<RunRecord>,
    collected: Vec<ServiceKey>,
    requests: usize,
}

impl MemoryDnsStore {
    /// A `kuma.io/service` service of mesh `default` with a VIP and an
    /// endpoint, as registration leaves it; the desired state changes.
    pub fn add_service(&self, name: &str, vip: Ipv4Addr, now: UnixSeconds) {
        let key = ServiceKey::new("default", ServiceKind::Service, name);
        let mut st = lock(&self.state);
        st.services.push(ServiceRow {
            key: key.clone(),
            vip: Some(vip),
            labels: Labels::new(),
            assigned_at: now,
            last_endpoint_change: now,
            declared: false,
        });
        st.with_endpoints.insert(key);
        if !st.dns.meshes.iter().any(|m| m == "default") {
            st.dns.meshes.push("default".into());
        }
        st.dns.generation += 1;
    }

    /// The service's last endpoint stopped at `now`.
    pub fn remove_endpoints(&self, name: &str, now: UnixSeconds) {
        let key = ServiceKey::new("default", ServiceKind::Service, name);
        let mut st = lock(&self.state);
        st.with_endpoints.remove(&key);
        if let Some(row) = st.services.iter_mut().find(|r| r.key == key) {
            row.last_endpoint_change = now;
        }
        st.dns.generation += 1;
    }

    /// Writes an entry straight into the ledger, as an earlier run left it.
    pub fn put_ledger(&self, entry: Ledgered) {
        if let Some((zone, name)) = entry.id().map(|(z, n)| (z.clone(), n.to_owned())) {
            lock(&self.state).ledger.insert((zone, name), entry);
        }
    }

    /// Another run holds the lease until `until`.
    pub fn hold_lease(&self, holder: &str, until: UnixSeconds) {
        lock(&self.state).lease = Some(LeaseHolder { holder: holder.into(), until });
    }

    /// The next renewal finds the lease taken by another run (held as long
    /// as the renewal asked for).
    pub fn take_lease_away(&self) {
        lock(&self.state).lease_taken = true;
    }

    pub fn fail_renewals(&self, error: Option<StoreError>) {
        lock(&self.state).renew_error = error;
    }

    pub fn ledger_entries(&self) -> Vec<Ledgered> {
        lock(&self.state).ledger.values().cloned().collect()
    }

    pub fn recorded_conflicts(&self) -> Vec<Conflict> {
        lock(&self.state).conflicts.clone()
    }

    pub fn runs(&self) -> Vec<RunRecord> {
        lock(&self.state).runs.clone()
    }

    pub fn collected(&self) -> Vec<ServiceKey> {
        lock(&self.state).collected.clone()
    }

    pub fn lease(&self) -> Option<LeaseHolder> {
        lock(&self.state).lease.clone()
    }

    /// Calls so far, as DynamoDB would count requests.
    pub fn requests(&self) -> usize {
        lock(&self.state).requests
    }

    fn call(&self) -> std::sync::MutexGuard<'_, StoreState> {
        let mut st = lock(&self.state);
        st.requests += 1;
        st
    }
}

impl DnsStore for MemoryDnsStore {
    async fn acquire_lease(&self, holder: &str, now: UnixSeconds, until: UnixSeconds) -> Result<LeaseTake, StoreError> {
        let mut st = self.call();
        if let Some(held) = st.lease.as_ref().filter(|l| l.holder != holder && l.until > now) {
            return Ok(LeaseTake::Held(held.clone()));
        }
        st.lease = Some(LeaseHolder { holder: holder.into(), until });
        Ok(LeaseTake::Taken { next_call_ms: st.next_call_ms })
    }

    async fn renew_lease(&self, holder: &str, until: UnixSeconds) -> Result<bool, StoreError> {
        let mut st = self.call();
        if let Some(e) = &st.renew_error {
            return Err(e.clone());
        }
        if std::mem::take(&mut st.lease_taken) {
            st.lease = Some(LeaseHolder { holder: "another-run".into(), until });
        }
        match st.lease.as_mut() {
            Some(l) if l.holder == holder => {
                l.until = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, holder: &str, next_call_ms: u64) -> Result<(), StoreError> {
        let mut st = self.call();
        if st.lease.as_ref().is_some_and(|l| l.holder == holder) {
            st.lease = None;
            st.next_call_ms = next_call_ms;
        }
        Ok(())
    }

    async fn state(&self) -> Result<DnsState, StoreError> {
        Ok(self.call().dns.clone())
    }

    async fn services(&self, meshes: &[String]) -> Result<Vec<ServiceRow>, StoreError> {
        Ok(self.call().services.iter().filter(|r| meshes.contains(&r.key.mesh)).cloned().collect())
    }

    async fn generators(&self) -> Result<Vec<HostnameGenerator>, StoreError> {
        Ok(self.call().generators.clone())
    }

    async fn has_endpoints(&self, key: &ServiceKey) -> Result<bool, StoreError> {
        Ok(self.call().with_endpoints.contains(key))
    }

    async fn ledger(&self) -> Result<Vec<Ledgered>, StoreError> {
        Ok(self.call().ledger.values().cloned().collect())
    }

    async fn write_ledger(&self, entries: &[Ledgered], removed: &[Record]) -> Result<(), StoreError> {
        let mut st = self.call();
        for r in removed {
            st.ledger.remove(&(r.zone.clone(), r.name.clone()));
        }
        for e in entries {
            if let Some((zone, name)) = e.id() {
                st.ledger.insert((zone.clone(), name.to_owned()), e.clone());
            }
        }
        Ok(())
    }

    async fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        Ok(self.call().conflicts.clone())
    }

    async fn set_conflicts(&self, conflicts: &[Conflict]) -> Result<(), StoreError> {
        self.call().conflicts = conflicts.to_vec();
        Ok(())
    }

    async fn collect(
        &self,
        key: &ServiceKey,
        vip: Ipv4Addr,
        seen_last_change: UnixSeconds,
        _now: UnixSeconds,
        _quarantined_until: UnixSeconds,
    ) -> Result<bool, StoreError> {
        let mut st = self.call();
        if st.with_endpoints.contains(key) {
            return Ok(false);
        }
        let Some(row) = st.services.iter_mut().find(|r| &r.key == key && r.vip == Some(vip)) else { return Ok(false) };
        if row.last_endpoint_change != seen_last_change {
            return Ok(false);
        }
        row.vip = None;
        st.collected.push(key.clone());
        Ok(true)
    }

    async fn finish(&self, record: &RunRecord) -> Result<(), StoreError> {
        let mut st = self.call();
        st.dns.applied_generation = record.applied_generation;
        st.dns.retry_pending = record.retry_pending;
        st.dns.zone_counts = record.zone_counts.clone();
        st.dns.last_full_audit = record.last_full_audit;
        st.runs.push(record.clone());
        Ok(())
    }
}
