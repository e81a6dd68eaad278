//! The allocation algorithm over any [`VipLedger`].

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Claim, LEASE_READ_BATCH, ServiceKey, UnixSeconds, VipLedger, VipPool};
use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("pool {pool} for {kind} VIPs in mesh {mesh:?} is exhausted: every address is held or in quarantine")]
    PoolExhausted { mesh: String, kind: super::ServiceKind, pool: Ipv4Net },
    #[error("allocating a VIP for {key}: {source}")]
    Store { key: String, source: StoreError },
}

impl AllocError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::PoolExhausted { .. } => false,
            Self::Store { source, .. } => source.is_retryable(),
        }
    }
}

/// A service's VIP, and whether this call gave it (so DNS must learn of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub vip: Ipv4Addr,
    pub new: bool,
}

/// The VIP of `key`: the one it holds, else its previous one if free, else the
/// first free address in its identity-derived order.
///
/// Cost in ledger requests: 1 when the service has a VIP; 2 when its first
/// candidate is free; otherwise 2 plus one lease read per 100 candidates
/// scanned and one claim per race lost. Nothing is written on exhaustion.
pub async fn allocate<L: VipLedger>(
    ledger: &L,
    pool: &VipPool,
    key: &ServiceKey,
    now: UnixSeconds,
) -> Result<Allocation, AllocError> {
    let assignment =
        ledger.assignment(key).await.map_err(|source| AllocError::Store { key: key.to_string(), source })?;
    allocate_from(ledger, pool, key, assignment, now).await
}

/// [`allocate`] for a caller that has already read the service's assignment
/// (several services in one batch read).
pub async fn allocate_from<L: VipLedger>(
    ledger: &L,
    pool: &VipPool,
    key: &ServiceKey,
    assignment: super::Assignment,
    now: UnixSeconds,
) -> Result<Allocation, AllocError> {
    let store = |source| AllocError::Store { key: key.to_string(), source };
    if let Some(vip) = assignment.current {
        return Ok(Allocation { vip, new: false });
    }
    let previous = assignment.previous.filter(|p| pool.contains(*p));
    let mut order = previous.into_iter().chain(pool.candidates(key).filter(move |c| Some(*c) != previous));

    // Optimistic first claim: in a sparse pool it wins without reading leases.
    let Some(first) = order.next() else {
        return Err(exhausted(key, pool));
    };
    match ledger.claim(key, first, now).await.map_err(store)? {
        Claim::Won => return Ok(Allocation { vip: first, new: true }),
        Claim::AlreadyAssigned => return current(ledger, key).await,
        Claim::Taken => {}
    }

    let owner = key.owner_id();
    let mut window = Vec::with_capacity(LEASE_READ_BATCH);
    loop {
        window.clear();
        window.extend(order.by_ref().take(LEASE_READ_BATCH));
        if window.is_empty() {
            return Err(exhausted(key, pool));
        }
        let leases = ledger.leases(&key.mesh, &window).await.map_err(store)?;
        for &addr in &window {
            let free = leases.iter().find(|l| l.addr == addr).is_none_or(|l| l.is_free_for(&owner, now));
            if !free {
                continue;
            }
            match ledger.claim(key, addr, now).await.map_err(store)? {
                Claim::Won => return Ok(Allocation { vip: addr, new: true }),
                Claim::AlreadyAssigned => return current(ledger, key).await,
                Claim::Taken => {}
            }
        }
    }
}

/// Puts `key`'s VIP in quarantine until `quarantined_until`; false if it held none.
pub async fn release<L: VipLedger>(
    ledger: &L,
    key: &ServiceKey,
    quarantined_until: UnixSeconds,
) -> Result<bool, AllocError> {
    let store = |source| AllocError::Store { key: key.to_string(), source };
    let Some(vip) = ledger.assignment(key).await.map_err(store)?.current else {
        return Ok(false);
    };
    ledger.release(key, vip, quarantined_until).await.map_err(store)
}

async fn current<L: VipLedger>(ledger: &L, key: &ServiceKey) -> Result<Allocation, AllocError> {
    let store = |source| AllocError::Store { key: key.to_string(), source };
    let vip = ledger.assignment(key).await.map_err(store)?.current.ok_or_else(|| {
        store(StoreError::conflict("the service's VIP was released while it was being allocated; retry"))
    })?;
    Ok(Allocation { vip, new: false })
}

fn exhausted(key: &ServiceKey, pool: &VipPool) -> AllocError {
    AllocError::PoolExhausted { mesh: key.mesh.clone(), kind: key.kind, pool: pool.net() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::{MemoryLedger, ServiceKind};

    fn pool(cidr: &str) -> VipPool {
        VipPool::new(cidr.parse().unwrap()).unwrap()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", ServiceKind::Service, name)
    }

    #[tokio::test]
    async fn same_identity_same_vip() {
        let ledger = MemoryLedger::default();
        let p = pool("127.1.0.0/16");
        let a = allocate(&ledger, &p, &key("redis"), 0).await.unwrap().vip;
        assert!(p.contains(a));
        assert_eq!(allocate(&ledger, &p, &key("redis"), 0).await.unwrap().vip, a);
        assert_eq!(ledger.requests(), 3, "get+claim, then get");
    }

    #[tokio::test]
    async fn small_pool_exhausts_without_writing() {
        let ledger = MemoryLedger::default();
        let p = pool("127.1.0.0/29");
        let mut got = std::collections::HashSet::new();
        for i in 0..6 {
            got.insert(allocate(&ledger, &p, &key(&format!("s{i}")), 0).await.unwrap().vip);
        }
        assert_eq!(got.len(), 6);
        let before = ledger.lease_count();
        let err = allocate(&ledger, &p, &key("one-too-many"), 0).await.unwrap_err();
        assert_eq!(
            err,
            AllocError::PoolExhausted { mesh: "default".into(), kind: ServiceKind::Service, pool: p.net() }
        );
        assert_eq!(
            err.to_string(),
            "pool 127.1.0.0/29 for service VIPs in mesh \"default\" is exhausted: every address is held or in quarantine"
        );
        assert_eq!(ledger.lease_count(), before);
        assert_eq!(ledger.assignment(&key("one-too-many")).await.unwrap().current, None);
    }

    #[tokio::test]
    async fn quarantine_blocks_others_until_it_ends_and_the_owner_regains_its_vip() {
        let ledger = MemoryLedger::default();
        let p = pool("127.1.0.0/30"); // two usable addresses: 127.1.0.1 and .2
        let a = allocate(&ledger, &p, &key("a"), 0).await.unwrap().vip;
        let b = allocate(&ledger, &p, &key("b"), 0).await.unwrap().vip;
        assert_ne!(a, b);
        assert!(release(&ledger, &key("a"), 100).await.unwrap());
        assert!(matches!(allocate(&ledger, &p, &key("c"), 99).await, Err(AllocError::PoolExhausted { .. })));
        assert_eq!(allocate(&ledger, &p, &key("c"), 100).await.unwrap().vip, a);

        // b leaves and comes back inside its quarantine: it gets its VIP again.
        assert!(release(&ledger, &key("b"), 500).await.unwrap());
        assert_eq!(allocate(&ledger, &p, &key("b"), 200).await.unwrap().vip, b);
    }

    #[tokio::test]
    async fn returning_service_prefers_its_previous_vip_over_its_hash_slot() {
        let ledger = MemoryLedger::default();
        let p = pool("127.1.0.0/16");
        let first = p.candidates(&key("redis")).next().unwrap();
        ledger.insert_lease(first, "svc#squatter", None);
        let vip = allocate(&ledger, &p, &key("redis"), 0).await.unwrap().vip;
        assert_ne!(vip, first);
        release(&ledger, &key("redis"), 10).await.unwrap();
        ledger.remove_lease(first);
        assert_eq!(allocate(&ledger, &p, &key("redis"), 1000).await.unwrap().vip, vip);
    }

    #[tokio::test]
    async fn vip_outside_a_changed_pool_keeps_working() {
        let ledger = MemoryLedger::default();
        let old = allocate(&ledger, &pool("127.1.0.0/16"), &key("redis"), 0).await.unwrap().vip;
        let new_pool = pool("127.9.0.0/16");
        assert_eq!(allocate(&ledger, &new_pool, &key("redis"), 0).await.unwrap().vip, old);
        assert!(new_pool.contains(allocate(&ledger, &new_pool, &key("web"), 0).await.unwrap().vip));
    }
}
