//! An in-memory [`VipLedger`] for unit tests: the same conditions as the
//! DynamoDB adapter, under one lock.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Assignment, Claim, Lease, ServiceKey, UnixSeconds, VipLedger};
use crate::error::StoreError;

#[derive(Debug, Default)]
pub struct MemoryLedger {
    // A std mutex: every critical section is short and never awaits.
    state: Mutex<State>,
    requests: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    assignments: HashMap<ServiceKey, Assignment>,
    leases: HashMap<(String, Ipv4Addr), Lease>,
}

impl MemoryLedger {
    /// Ledger calls so far, as DynamoDB would count requests.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn lease_count(&self) -> usize {
        self.lock().leases.len()
    }

    /// Plants a lease in mesh `default`, as another service would hold it.
    pub fn insert_lease(&self, addr: Ipv4Addr, owner: &str, quarantined_until: Option<UnixSeconds>) {
        self.lock().leases.insert(("default".into(), addr), Lease { addr, owner: owner.into(), quarantined_until });
    }

    pub fn remove_lease(&self, addr: Ipv4Addr) {
        self.lock().leases.remove(&("default".into(), addr));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

impl VipLedger for MemoryLedger {
    async fn assignment(&self, key: &ServiceKey) -> Result<Assignment, StoreError> {
        self.count();
        Ok(self.lock().assignments.get(key).copied().unwrap_or_default())
    }

    async fn assignments(&self, keys: &[ServiceKey]) -> Result<Vec<Assignment>, StoreError> {
        self.count();
        let s = self.lock();
        Ok(keys.iter().map(|k| s.assignments.get(k).copied().unwrap_or_default()).collect())
    }

    async fn leases(&self, mesh: &str, addrs: &[Ipv4Addr]) -> Result<Vec<Lease>, StoreError> {
        self.count();
        let s = self.lock();
        Ok(addrs.iter().filter_map(|a| s.leases.get(&(mesh.to_owned(), *a)).cloned()).collect())
    }

    async fn claim(&self, key: &ServiceKey, addr: Ipv4Addr, now: UnixSeconds) -> Result<Claim, StoreError> {
        self.count();
        let mut s = self.lock();
        let owner = key.owner_id();
        if s.leases.get(&(key.mesh.clone(), addr)).is_some_and(|l| !l.is_free_for(&owner, now)) {
            return Ok(Claim::Taken);
        }
        if s.assignments.get(key).is_some_and(|a| a.current.is_some()) {
            return Ok(Claim::AlreadyAssigned);
        }
        s.leases.insert((key.mesh.clone(), addr), Lease { addr, owner, quarantined_until: None });
        s.assignments.entry(key.clone()).or_default().current = Some(addr);
        Ok(Claim::Won)
    }

    async fn release(
        &self,
        key: &ServiceKey,
        addr: Ipv4Addr,
        quarantined_until: UnixSeconds,
    ) -> Result<bool, StoreError> {
        self.count();
        let mut s = self.lock();
        let owner = key.owner_id();
        match s.leases.get_mut(&(key.mesh.clone(), addr)) {
            Some(l) if l.owner == owner && l.quarantined_until.is_none() => {
                l.quarantined_until = Some(quarantined_until)
            }
            _ => return Ok(false),
        }
        let a = s.assignments.entry(key.clone()).or_default();
        a.previous = a.current.take();
        Ok(true)
    }
}
