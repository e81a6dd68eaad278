//! Address pools: which addresses of a CIDR may be VIPs, and in which order a
//! service tries them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ServiceKey;

/// The application's own loopback address is never a VIP, even when a pool
/// spans 127.0.0.0/8.
const APP_LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// A CIDR without its network and broadcast addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipPool {
    net: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool {0} is smaller than /30 and has no usable address")]
pub struct PoolTooSmall(pub Ipv4Net);

impl VipPool {
    pub fn new(net: Ipv4Net) -> Result<Self, PoolTooSmall> {
        if net.prefix_len() > 30 {
            return Err(PoolTooSmall(net));
        }
        Ok(Self { net: net.trunc() })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// Addresses between network and broadcast (the app loopback counted in).
    pub fn size(&self) -> u32 {
        // prefix_len <= 30, so the host part has at least 2 bits and this never overflows.
        (1u32 << (32 - u32::from(self.net.prefix_len()))) - 2
    }

    /// Whether `addr` is an address this pool hands out.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.net.contains(&addr) && addr != self.net.network() && addr != self.net.broadcast() && addr != APP_LOOPBACK
    }

    /// Every usable address once, starting at one derived from the identity, so
    /// a service that comes back first tries the VIP it had before.
    pub fn candidates(&self, key: &ServiceKey) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let size = self.size();
        let start = (identity_hash(key) % u64::from(size)) as u32;
        let base = u32::from(self.net.network()) + 1;
        (0..size).map(move |i| Ipv4Addr::from(base + (start + i) % size)).filter(|a| *a != APP_LOOPBACK)
    }
}

/// FNV-1a over the identity: stable across processes and releases, which
/// `std`'s hasher does not promise.
fn identity_hash(key: &ServiceKey) -> u64 {
    let mut h = fnv::FnvHasher::default();
    for part in [key.mesh.as_bytes(), key.kind.code().as_bytes(), key.name.as_bytes()] {
        std::hash::Hasher::write(&mut h, part);
        std::hash::Hasher::write_u8(&mut h, 0);
    }
    std::hash::Hasher::finish(&h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::ServiceKind;
    use std::collections::HashSet;

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", ServiceKind::Service, name)
    }

    #[test]
    fn candidates_cover_the_pool_once_without_network_broadcast_or_app_loopback() {
        let pool = VipPool::new("127.1.0.0/29".parse().unwrap()).unwrap();
        let all: Vec<_> = pool.candidates(&key("redis")).collect();
        let set: HashSet<_> = all.iter().copied().collect();
        assert_eq!(all.len(), 6);
        assert_eq!(set.len(), 6);
        assert!(!set.contains(&Ipv4Addr::new(127, 1, 0, 0)));
        assert!(!set.contains(&Ipv4Addr::new(127, 1, 0, 7)));
        // 127.0.0.0/30 has .1 and .2 between network and broadcast; .1 is the app's.
        let wide = VipPool::new("127.0.0.0/30".parse().unwrap()).unwrap();
        assert_eq!(wide.candidates(&key("x")).collect::<Vec<_>>(), [Ipv4Addr::new(127, 0, 0, 2)]);
    }

    #[test]
    fn first_candidate_is_stable_per_identity_and_spreads() {
        let pool = VipPool::new("127.1.0.0/16".parse().unwrap()).unwrap();
        let first = |n: &str| pool.candidates(&key(n)).next().unwrap();
        assert_eq!(first("redis"), first("redis"));
        let distinct: HashSet<_> = (0..100).map(|i| first(&format!("svc-{i}"))).collect();
        assert!(distinct.len() > 95, "{}", distinct.len());
    }

    #[test]
    fn rejects_tiny_pools() {
        assert!(VipPool::new("127.1.0.0/31".parse().unwrap()).is_err());
        assert_eq!(VipPool::new("127.1.0.9/29".parse().unwrap()).unwrap().net().to_string(), "127.1.0.8/29");
    }
}
