//! The table's key layout. One table, partition key `pk`, sort key `sk`.
//!
//! Everything a sidecar reads sits under its mesh's partition (`MESH#<mesh>`),
//! so an IAM condition on `dynamodb:LeadingKeys` limits a task role to its own
//! mesh. The documented layout with the invariant each item proves is in
//! `docs/table.md`.

use std::net::Ipv4Addr;

use crate::vip::ServiceKind;

pub const PK: &str = "pk";
pub const SK: &str = "sk";

/// The partition of one mesh.
pub fn mesh_pk(mesh: &str) -> String {
    format!("MESH#{mesh}")
}

/// A service's item: its VIP (current and previous) and its state.
pub fn service_sk(kind: ServiceKind, name: &str) -> String {
    format!("SVC#{}#{name}", kind.code())
}

/// An address's lease: who holds it, or until when it is quarantined.
pub fn lease_sk(addr: Ipv4Addr) -> String {
    format!("VIP#{addr}")
}

/// Attribute names, in one place so adapters and docs agree.
pub mod attr {
    pub const VIP: &str = "vip";
    pub const PREVIOUS_VIP: &str = "previous_vip";
    pub const OWNER: &str = "owner";
    pub const QUARANTINED_UNTIL: &str = "quarantined_until";
    pub const ASSIGNED_AT: &str = "assigned_at";
    pub const KIND: &str = "kind";
    pub const NAME: &str = "name";
    pub const MESH: &str = "mesh";
}
