//! Changes to Route53 with the ledger written ahead, and how each refused
//! change is judged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Conflict, DnsStore, Ledgered, Report, SyncError, Syncer};
use crate::config::HostedZoneId;
use crate::dns::batch::batches;
use crate::dns::plan::{Policy, plan};
use crate::dns::provider::{DnsProvider, Limited, ProviderError, Refusal, RefusalReason};
use crate::dns::{Change, Record};

/// The reason of a name held by a record loopmesh did not create.
const FOREIGN: &str = "a record loopmesh did not create holds this name; it is left untouched";

impl<P: DnsProvider, S: DnsStore> Syncer<P, S> {
    /// Plans the usable zones' changes against what this ledger owns there,
    /// looks before writing where a foreign record held a name, and applies
    /// the changes in batches. Records in a failed zone are neither created
    /// nor deleted this run.
    pub(super) async fn apply_plan(
        &self,
        owned: &[Record],
        wanted: Vec<Record>,
        usable: &BTreeSet<HostedZoneId>,
        route53: &Limited<'_, P>,
        conflicts: &mut Vec<Conflict>,
        report: &mut Report,
    ) -> Result<Applied, SyncError> {
        let owned: Vec<Record> = owned.iter().filter(|r| usable.contains(&r.zone)).cloned().collect();
        let changes = plan(&owned, &wanted, Policy::Sync);
        let changes = self.look_before_writing(changes, route53, conflicts).await?;
        report.planned += changes.len() as u64;
        let mut applied = Applied::default();
        for batch in batches(&changes, self.settings.limits) {
            self.apply(batch, &mut applied, route53).await?;
        }
        report.applied += applied.done.len() as u64;
        report.failed += applied.failed.len() as u64;
        conflicts.append(&mut applied.conflicts);
        Ok(applied)
    }

    /// A CREATE for a name a foreign record held at the last run is sent only
    /// if a read shows the name free now: an idle mesh with a conflict makes
    /// one read a run, never a write Route53 refuses.
    pub(super) async fn look_before_writing(
        &self,
        changes: Vec<Change>,
        route53: &Limited<'_, P>,
        conflicts: &mut Vec<Conflict>,
    ) -> Result<Vec<Change>, SyncError> {
        if !changes.iter().any(|c| matches!(c, Change::Create(_))) {
            return Ok(changes);
        }
        let held: BTreeSet<(HostedZoneId, String)> =
            self.store.conflicts().await?.into_iter().filter(|c| c.foreign).map(|c| (c.zone, c.name)).collect();
        if held.is_empty() {
            return Ok(changes);
        }
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            let rec = change.record();
            if matches!(change, Change::Create(_)) && held.contains(&(rec.zone.clone(), rec.name.clone())) {
                let start = Some((format!("{}.", rec.name), "A".to_owned()));
                let (sets, _) = route53.list_page(&rec.zone, start, Some(1)).await?;
                if sets.first().is_some_and(|set| set.name == rec.name && set.kind == "A") {
                    conflicts.push(foreign(rec));
                    continue;
                }
            }
            out.push(change);
        }
        Ok(out)
    }

    /// Applies one batch with the ledger written ahead: intents first, then
    /// Route53, then the settled entries. A refused batch (all or nothing)
    /// is narrowed iteratively: changes Route53 names are judged alone and
    /// the rest go again; with none named, the batch is halved. Each bad
    /// change costs at most one extra call when named, and a logarithmic
    /// number when not; nothing recurses.
    pub(super) async fn apply(
        &self,
        batch: Vec<Change>,
        out: &mut Applied,
        route53: &Limited<'_, P>,
    ) -> Result<(), SyncError> {
        let zone = batch[0].record().zone.clone();
        let intents = intents(&batch);
        self.store.write_ledger(&intents, &[]).await?;
        let mut outcome = Applied::default();
        let mut queue: VecDeque<Vec<Change>> = VecDeque::from([batch.clone()]);
        while let Some(part) = queue.pop_front() {
            match route53.change(&zone, &part).await {
                Ok(()) => outcome.done.extend(part),
                Err(ProviderError::InvalidChangeBatch(refusals)) => {
                    let (named, rest): (Vec<Change>, Vec<Change>) =
                        part.iter().cloned().partition(|c| refusals.iter().any(|r| names(r, c.record())));
                    if named.is_empty() && part.len() > 1 {
                        let mid = split_point(&part);
                        queue.push_front(part[mid..].to_vec());
                        queue.push_front(part[..mid].to_vec());
                        continue;
                    }
                    for c in if named.is_empty() { &part } else { &named } {
                        judge(c, &refusals, &mut outcome);
                    }
                    if !named.is_empty() && !rest.is_empty() {
                        queue.push_front(rest);
                    }
                }
                Err(e) => {
                    tracing::warn!(zone = %zone, changes = part.len(), error = %e, "change batch failed; retried next run");
                    // A call that may have been applied keeps its intents for the next run to settle.
                    if e.is_uncertain() {
                        outcome.uncertain.extend(part.iter().map(|c| c.record().clone()));
                    }
                    outcome.failed.extend(part);
                }
            }
        }
        let (settled, removed) = settled(&batch, &outcome);
        self.store.write_ledger(&settled, &removed).await?;
        out.done.extend(outcome.done);
        out.failed.extend(outcome.failed);
        out.conflicts.extend(outcome.conflicts);
        Ok(())
    }
}

/// One refused change, from Route53's typed refusal: a DELETE of a record
/// that is not there is done; a CREATE of one that already exists is a record
/// this ledger has no claim on (a CREATE is only planned for a name the ledger
/// does not hold), so it is a conflict left untouched; anything else is
/// retried next run.
fn judge(change: &Change, refusals: &[Refusal], out: &mut Applied) {
    let rec = change.record();
    let refusal = refusals.iter().find(|r| names(r, rec)).or(refusals.first());
    match (change, refusal.map(|r| r.reason)) {
        (Change::Delete(_), Some(RefusalReason::NotFound)) => out.done.push(change.clone()),
        (Change::Create(_), Some(RefusalReason::AlreadyExists)) => out.conflicts.push(foreign(rec)),
        _ => {
            let text = refusal.map_or("", |r| r.message.as_str());
            tracing::warn!(change = %change, reason = %crate::excerpt::cut(text, crate::excerpt::RULE_CHARS), "Route53 refused a change; retried next run");
            out.failed.push(change.clone());
        }
    }
}

/// The intents written before a batch: per name, the records the zone may
/// hold once the batch's outcome is known (the one deleted, the one created).
fn intents(batch: &[Change]) -> Vec<Ledgered> {
    let mut by_name: BTreeMap<(&HostedZoneId, &str), Vec<Record>> = BTreeMap::new();
    for c in batch {
        by_name.entry(c.record().id()).or_default().push(c.record().clone());
    }
    by_name.into_values().map(Ledgered::Intent).collect()
}

/// The ledger after a batch, per name: owned by the created record if its
/// CREATE was done; gone if only its DELETE was done, or nothing of it was
/// and it had no owned record before; back to the old record if nothing
/// was done. Names whose call may have been applied keep their intent.
fn settled(batch: &[Change], outcome: &Applied) -> (Vec<Ledgered>, Vec<Record>) {
    let mut by_name: BTreeMap<(&HostedZoneId, &str), Vec<&Change>> = BTreeMap::new();
    for c in batch {
        by_name.entry(c.record().id()).or_default().push(c);
    }
    let done_set: std::collections::HashSet<&Change> = outcome.done.iter().collect();
    let uncertain: BTreeSet<(&HostedZoneId, &str)> = outcome.uncertain.iter().map(Record::id).collect();
    let (mut entries, mut removed) = (Vec::new(), Vec::new());
    for changes in by_name.into_values() {
        let rec = changes[0].record();
        if uncertain.contains(&rec.id()) {
            continue;
        }
        let done = |c: &&Change| done_set.contains(*c);
        let create = changes.iter().find_map(|c| created(c));
        let delete = changes.iter().find_map(|c| deleted(c));
        match (create, delete) {
            (Some(new), _) if changes.iter().filter(|c| matches!(c, Change::Create(_))).any(done) => {
                entries.push(Ledgered::Owned(new.clone()));
            }
            (_, Some(old)) if !changes.iter().filter(|c| matches!(c, Change::Delete(_))).any(done) => {
                entries.push(Ledgered::Owned(old.clone()));
            }
            _ => removed.push(rec.clone()),
        }
    }
    (entries, removed)
}

/// What became of a run's changes.
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) done: Vec<Change>,
    pub(super) failed: Vec<Change>,
    pub(super) conflicts: Vec<Conflict>,
    /// Records whose call may have been applied although it failed (a timeout).
    pub(super) uncertain: Vec<Record>,
}

impl Applied {
    /// The records whose CREATE Route53 applied.
    pub(super) fn created(&self) -> impl Iterator<Item = &Record> {
        self.done.iter().filter_map(created)
    }

    /// The records whose DELETE Route53 applied (or that were already gone).
    pub(super) fn deleted(&self) -> impl Iterator<Item = &Record> {
        self.done.iter().filter_map(deleted)
    }
}

fn created(c: &Change) -> Option<&Record> {
    match c {
        Change::Create(r) => Some(r),
        Change::Delete(_) => None,
    }
}

fn deleted(c: &Change) -> Option<&Record> {
    match c {
        Change::Delete(r) => Some(r),
        Change::Create(_) => None,
    }
}

fn foreign(rec: &Record) -> Conflict {
    Conflict { zone: rec.zone.clone(), name: rec.name.clone(), reason: FOREIGN.into(), foreign: true }
}

/// Whether a refusal names this record.
fn names(refusal: &Refusal, rec: &Record) -> bool {
    refusal.name.as_deref() == Some(rec.name.as_str())
}

/// A split point between two names, so a DELETE+CREATE pair stays together.
fn split_point(batch: &[Change]) -> usize {
    let mid = batch.len() / 2;
    (mid..batch.len())
        .chain((1..mid).rev())
        .find(|&i| batch[i - 1].record().id() != batch[i].record().id())
        .unwrap_or(mid)
}
