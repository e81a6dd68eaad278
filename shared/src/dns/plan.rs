//! The planner: pure, no I/O. Owned records (what the ledger says loopmesh
//! created) and desired records in, changes out.
//!
//! | desired          | owned                    | change                        |
//! |------------------|--------------------------|-------------------------------|
//! | name present     | absent                   | CREATE                        |
//! | name present     | same value and TTL       | none                          |
//! | name present     | other value or TTL       | DELETE (exact old) + CREATE   |
//! | absent           | present                  | DELETE (exact old)            |
//!
//! Records loopmesh does not own never reach the planner (invariant 4): a
//! CREATE that meets one is turned into a conflict when it is applied.
//! [`Policy`] filters the result (drift repair, for instance, deletes nothing).

use std::collections::BTreeMap;

use super::{Change, Record};
use crate::config::HostedZoneId;

/// Which kinds of change a run may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Create, replace and delete.
    Sync,
    /// Create and replace, never delete.
    UpsertOnly,
}

/// The changes that turn `owned` into `desired`, deterministic in order.
pub fn plan(owned: &[Record], desired: &[Record], policy: Policy) -> Vec<Change> {
    let owned: BTreeMap<(&HostedZoneId, &str), &Record> = owned.iter().map(|r| (r.id(), r)).collect();
    let desired: BTreeMap<(&HostedZoneId, &str), &Record> = desired.iter().map(|r| (r.id(), r)).collect();
    let mut changes = Vec::new();
    for (id, want) in &desired {
        match owned.get(id) {
            None => changes.push(Change::Create((*want).clone())),
            Some(have) if have == want => {}
            Some(have) => {
                changes.push(Change::Delete((*have).clone()));
                changes.push(Change::Create((*want).clone()));
            }
        }
    }
    if policy == Policy::Sync {
        for (id, have) in &owned {
            if !desired.contains_key(id) {
                changes.push(Change::Delete((*have).clone()));
            }
        }
    }
    changes.sort_by(|a, b| {
        (a.record().id(), matches!(a, Change::Create(_))).cmp(&(b.record().id(), matches!(b, Change::Create(_))))
    });
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, last: u8) -> Record {
        Record {
            zone: HostedZoneId::parse("Z1").unwrap(),
            name: name.into(),
            value: std::net::Ipv4Addr::new(127, 1, 0, last),
            ttl: 60,
        }
    }

    #[test]
    fn one_test_per_row_of_the_table() {
        // desired present, owned absent: CREATE
        assert_eq!(plan(&[], &[rec("a.mesh.local", 1)], Policy::Sync), [Change::Create(rec("a.mesh.local", 1))]);
        // same value: nothing
        assert!(plan(&[rec("a.mesh.local", 1)], &[rec("a.mesh.local", 1)], Policy::Sync).is_empty());
        // other value: DELETE exact old, then CREATE
        assert_eq!(
            plan(&[rec("a.mesh.local", 1)], &[rec("a.mesh.local", 2)], Policy::Sync),
            [Change::Delete(rec("a.mesh.local", 1)), Change::Create(rec("a.mesh.local", 2))]
        );
        // other TTL is a change too
        let mut longer = rec("a.mesh.local", 1);
        longer.ttl = 300;
        assert_eq!(plan(&[rec("a.mesh.local", 1)], &[longer.clone()], Policy::Sync).len(), 2);
        // desired absent, owned present: DELETE exact
        assert_eq!(plan(&[rec("a.mesh.local", 1)], &[], Policy::Sync), [Change::Delete(rec("a.mesh.local", 1))]);
    }

    #[test]
    fn upsert_only_never_deletes_a_name() {
        assert!(plan(&[rec("a.mesh.local", 1)], &[], Policy::UpsertOnly).is_empty());
        assert_eq!(plan(&[rec("a.mesh.local", 1)], &[rec("a.mesh.local", 2)], Policy::UpsertOnly).len(), 2);
    }

    #[test]
    fn order_is_deterministic() {
        let owned = [rec("b", 1), rec("a", 1)];
        let desired = [rec("c", 1), rec("a", 2)];
        let p1 = plan(&owned, &desired, Policy::Sync);
        let p2 = plan(&[rec("a", 1), rec("b", 1)], &[rec("a", 2), rec("c", 1)], Policy::Sync);
        assert_eq!(p1, p2);
        assert_eq!(p1[0], Change::Delete(rec("a", 1)));
        assert_eq!(p1[1], Change::Create(rec("a", 2)));
    }
}
