//! DNS: what records the mesh wants, how they differ from what loopmesh
//! created, and how the difference goes to Route53 within its limits.
//!
//! The roles follow external-dns: [`desired`] is the source, the ownership
//! ledger (records loopmesh created, kept in the table) is the registry,
//! [`plan`] computes changes, [`batch`] packs them, and [`sync`] applies them
//! through a [`provider::DnsProvider`] behind one [`rate::RateLimiter`].

pub mod batch;
pub mod desired;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod plan;
pub mod provider;
pub mod rate;
pub mod sync;

use std::fmt;
use std::net::Ipv4Addr;

use crate::config::HostedZoneId;

/// One A record loopmesh manages: a name in a zone pointing at a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Record {
    pub zone: HostedZoneId,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub value: Ipv4Addr,
    pub ttl: u32,
}

impl Record {
    /// The (zone, name) a record is identified by.
    pub fn id(&self) -> (&HostedZoneId, &str) {
        (&self.zone, &self.name)
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} A {} (ttl {}) in zone {}", self.name, self.value, self.ttl, self.zone)
    }
}

/// One change to one record. No UPSERT: a changed value is DELETE of the exact
/// old values plus CREATE, so a concurrent edit by someone else fails instead
/// of being overwritten.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    Delete(Record),
    Create(Record),
}

impl Change {
    pub fn record(&self) -> &Record {
        match self {
            Self::Delete(r) | Self::Create(r) => r,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delete(r) => write!(f, "DELETE {r}"),
            Self::Create(r) => write!(f, "CREATE {r}"),
        }
    }
}
