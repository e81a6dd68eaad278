//! Packing changes into Route53 change batches, after external-dns's
//! `batchChangeSet`, on our own change type with the limits as parameters.
//!
//! Changes to one name stay in one batch (a DELETE+CREATE pair must not be
//! split, or a failure between them would leave the name without a record);
//! batches are filled in the planner's order, which is deterministic.

use super::Change;

/// Route53's limits on one ChangeResourceRecordSets request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// ResourceRecord elements (an UPSERT would count twice; loopmesh sends none).
    pub max_records: usize,
    /// Characters of record values.
    pub max_value_chars: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self { max_records: 1_000, max_value_chars: 32_000 }
    }
}

/// Groups `changes` (already sorted by zone and name) into batches of one zone each.
pub fn batches(changes: &[Change], limits: BatchLimits) -> Vec<Vec<Change>> {
    let mut out: Vec<Vec<Change>> = Vec::new();
    let mut current: Vec<Change> = Vec::new();
    let (mut records, mut chars) = (0, 0);
    for group in changes.chunk_by(|a, b| a.record().id() == b.record().id()) {
        let g_records = group.len();
        let g_chars: usize = group.iter().map(|c| c.record().value.to_string().len()).sum();
        let other_zone = current.first().is_some_and(|c| c.record().zone != group[0].record().zone);
        let full = records + g_records > limits.max_records || chars + g_chars > limits.max_value_chars;
        if !current.is_empty() && (other_zone || full) {
            out.push(std::mem::take(&mut current));
            records = 0;
            chars = 0;
        }
        current.extend_from_slice(group);
        records += g_records;
        chars += g_chars;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostedZoneId;
    use crate::dns::Record;
    use crate::dns::plan::{Policy, plan};

    fn rec(zone: &str, i: u32) -> Record {
        Record {
            zone: HostedZoneId::parse(zone).unwrap(),
            name: format!("s{i:05}.mesh.local"),
            value: std::net::Ipv4Addr::from(0x7f01_0000 + i),
            ttl: 60,
        }
    }

    #[test]
    fn five_thousand_creates_make_five_batches() {
        let desired: Vec<_> = (0..5_000).map(|i| rec("Z1", i)).collect();
        let b = batches(&plan(&[], &desired, Policy::Sync), BatchLimits::default());
        assert_eq!(b.len(), 5);
        assert!(b.iter().all(|b| b.len() == 1_000));
    }

    #[test]
    fn a_replaced_name_never_splits_across_batches() {
        let owned: Vec<_> = (0..3).map(|i| rec("Z1", i)).collect();
        let mut desired = owned.clone();
        for r in &mut desired {
            r.value = std::net::Ipv4Addr::new(127, 9, 9, 9);
        }
        let changes = plan(&owned, &desired, Policy::Sync);
        let b = batches(&changes, BatchLimits { max_records: 3, max_value_chars: 1_000 });
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
    }

    #[test]
    fn value_characters_and_zones_split_batches() {
        let desired: Vec<_> = (0..10).map(|i| rec("Z1", i)).chain((0..2).map(|i| rec("Z2", i))).collect();
        let changes = plan(&[], &desired, Policy::Sync);
        // Each value is "127.1.0.N": 9 characters.
        let b = batches(&changes, BatchLimits { max_records: 1_000, max_value_chars: 40 });
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2, 2]);
        assert!(b[3].iter().all(|c| c.record().zone.as_str() == "Z2"));
    }
}
