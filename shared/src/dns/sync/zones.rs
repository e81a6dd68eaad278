//! The zones a run writes to, as Route53 holds them: each zone checked once
//! per execution environment, intents of a dead run settled, drift audited.

use std::collections::{BTreeMap, BTreeSet};

use super::{Conflict, DnsStore, Ledgered, Report, SyncError, Syncer};
use crate::config::HostedZoneId;
use crate::dns::Record;
use crate::dns::provider::{DnsProvider, Limited, ProviderError, RecordSet, ZoneInfo};
use crate::dns_name;

/// What a scheduled audit of the usable zones updates.
pub(super) struct Audit<'a> {
    /// List every zone, even those whose record count did not move.
    pub full: bool,
    pub zone_counts: &'a mut BTreeMap<String, u64>,
    pub conflicts: &'a mut Vec<Conflict>,
    pub report: &'a mut Report,
}

impl<P: DnsProvider, S: DnsStore> Syncer<P, S> {
    /// Checks each zone the run touches. A zone that is missing, denied or
    /// unanswering is reported and waits; every other zone goes on (its names
    /// do not depend on this one). Returns the usable zones and the wanted
    /// records in them; a wanted record outside its zone's domain is a conflict.
    pub(super) async fn usable_zones(
        &self,
        zones: &BTreeSet<HostedZoneId>,
        wanted: Vec<Record>,
        route53: &Limited<'_, P>,
        conflicts: &mut Vec<Conflict>,
        report: &mut Report,
    ) -> (BTreeSet<HostedZoneId>, Vec<Record>) {
        let mut usable = BTreeMap::new();
        for zone in zones {
            match self.zone(zone, route53).await {
                Ok(info) => {
                    usable.insert(zone.clone(), info);
                }
                Err(e) => self.zone_failed(zone, &e, conflicts, report),
            }
        }
        let mut records = Vec::with_capacity(wanted.len());
        for r in wanted {
            let Some(info) = usable.get(&r.zone) else { continue };
            if dns_name::is_within(&r.name, &info.name) {
                records.push(r);
            } else {
                conflicts.push(Conflict {
                    zone: r.zone.clone(),
                    reason: format!("{} is not inside the zone's domain {}", r.name, info.name),
                    name: r.name,
                    foreign: false,
                });
            }
        }
        (usable.into_keys().collect(), records)
    }

    /// Audits each usable zone; a zone that fails its audit is reported and
    /// leaves the usable set for this run.
    pub(super) async fn audit_zones(
        &self,
        usable: &mut BTreeSet<HostedZoneId>,
        owned: &mut Vec<Record>,
        audit: Audit<'_>,
        route53: &Limited<'_, P>,
    ) {
        for zone in usable.clone() {
            match self.audit(&zone, owned, audit.zone_counts, audit.full, route53).await {
                Ok(repaired) => audit.report.repaired += repaired,
                Err(e) => {
                    self.zone_failed(&zone, &e, audit.conflicts, audit.report);
                    usable.remove(&zone);
                }
            }
        }
    }

    /// Settles the intents a dead run left: each name is looked up in its
    /// zone (one call per name, or one listing of the zone when that is
    /// cheaper), and becomes owned when the zone holds one of the intent's
    /// records exactly, or leaves the ledger otherwise. Returns every owned record.
    pub(super) async fn settle(
        &self,
        ledger: Vec<Ledgered>,
        healthy: &BTreeSet<HostedZoneId>,
        route53: &Limited<'_, P>,
        report: &mut Report,
    ) -> Result<Vec<Record>, SyncError> {
        let mut owned = Vec::with_capacity(ledger.len());
        let mut intents: BTreeMap<HostedZoneId, Vec<Vec<Record>>> = BTreeMap::new();
        for entry in ledger {
            match entry {
                Ledgered::Owned(r) => owned.push(r),
                // An intent in a zone that failed this run waits for a run that can read it.
                Ledgered::Intent(rs) if rs.first().is_some_and(|r| healthy.contains(&r.zone)) => {
                    intents.entry(rs[0].zone.clone()).or_default().push(rs)
                }
                Ledgered::Intent(_) => {}
            }
        }
        for (zone, names) in intents {
            let count = self.zone(&zone, route53).await?.record_count;
            // A listing returns 300 record sets a page.
            let listing_calls = count.div_ceil(300).max(1);
            let present: Vec<RecordSet> = if names.len() as u64 > listing_calls {
                route53.list_all(&zone).await?
            } else {
                let mut found = Vec::new();
                for rs in &names {
                    let start = Some((format!("{}.", rs[0].name), "A".to_owned()));
                    found.extend(route53.list_page(&zone, start, Some(1)).await?.0);
                }
                found
            };
            let (mut adopted, mut gone) = (Vec::new(), Vec::new());
            for rs in names {
                let here = present.iter().find(|set| set.kind == "A" && set.name == rs[0].name);
                match here.and_then(|set| rs.iter().find(|r| set.is(r))) {
                    Some(r) => adopted.push(Ledgered::Owned(r.clone())),
                    None => gone.push(rs[0].clone()),
                }
            }
            report.adopted += adopted.len() as u64;
            tracing::info!(zone = %zone, adopted = adopted.len(), absent = gone.len(), "settled the intents of an unfinished run");
            self.store.write_ledger(&adopted, &gone).await?;
            owned.extend(adopted.into_iter().filter_map(|e| match e {
                Ledgered::Owned(r) => Some(r),
                Ledgered::Intent(_) => None,
            }));
        }
        Ok(owned)
    }

    /// GetHostedZone once per zone per execution environment; refuses a zone
    /// that is missing, public, or does not hold the configured domain.
    async fn zone(&self, zone: &HostedZoneId, route53: &Limited<'_, P>) -> Result<ZoneInfo, SyncError> {
        if let Some(info) = self.checked_zones.lock().await.get(zone) {
            return Ok(info.clone());
        }
        let info = route53.get_zone(zone).await.map_err(|e| match e {
            ProviderError::NoSuchZone(_) => SyncError::Zone { zone: zone.clone(), reason: "does not exist".into() },
            other => SyncError::Provider(other),
        })?;
        if !info.private {
            return Err(SyncError::Zone {
                zone: zone.clone(),
                reason: format!(
                    "{} is a public zone; loopmesh publishes loopback VIPs only in private zones",
                    info.name
                ),
            });
        }
        if self.settings.names.default_zone.as_ref() == Some(zone)
            && !dns_name::is_within(&self.settings.names.domain, &info.name)
        {
            return Err(SyncError::Zone {
                zone: zone.clone(),
                reason: format!(
                    "its domain {} does not contain KUMA_DNS_SERVER_DOMAIN={}",
                    info.name, self.settings.names.domain
                ),
            });
        }
        self.checked_zones.lock().await.insert(zone.clone(), info.clone());
        Ok(info)
    }

    /// Compares owned records with one zone: one GetHostedZone, and a listing
    /// only when the count moved or a full audit is due. Owned records
    /// deleted by hand leave `owned` (so they are created again); edited ones
    /// are replaced by what the zone holds (so they are restored).
    async fn audit(
        &self,
        zone: &HostedZoneId,
        owned: &mut Vec<Record>,
        zone_counts: &mut BTreeMap<String, u64>,
        full: bool,
        route53: &Limited<'_, P>,
    ) -> Result<u64, SyncError> {
        let mut repaired = 0;
        let count = route53.get_zone(zone).await?.record_count;
        if !full && zone_counts.get(zone.as_str()) == Some(&count) {
            return Ok(0);
        }
        let actual = route53.list_all(zone).await?;
        zone_counts.insert(zone.as_str().to_owned(), count);
        let mut view = Vec::with_capacity(owned.len());
        for rec in owned.drain(..) {
            if &rec.zone != zone {
                view.push(rec);
                continue;
            }
            match actual.iter().find(|set| set.kind == "A" && set.name == rec.name) {
                Some(set) if set.is(&rec) => view.push(rec),
                Some(set) => {
                    // Edited by hand: the plan deletes what is there, exactly, and creates ours.
                    repaired += 1;
                    if let Some(value) = set.values.first().and_then(|v| v.parse().ok()) {
                        view.push(Record { value, ttl: set.ttl.unwrap_or(rec.ttl), ..rec });
                    }
                }
                // Deleted by hand: out of the owned view, so the plan creates it again.
                None => repaired += 1,
            }
        }
        *owned = view;
        Ok(repaired)
    }
}
