//! One dns-sync run: read desired and owned, plan, batch, apply at the
//! configured rate, record what happened. Straight-line, as external-dns's
//! `RunOnce`.
//!
//! A run holds the sync lease (a conditional item in the table) so that
//! concurrent invocations never both talk to Route53; the lease also carries
//! the moment the next Route53 call may go, so the rate holds from one
//! invocation to the next (invariant 3). The lease is short and renewed while
//! the run works; a run that cannot renew it is cancelled at its next await,
//! so it stops writing before anyone else may start (fencing by deadline).
//!
//! The ownership ledger is written ahead of Route53: before a batch goes, each
//! name it touches is marked as an *intent* listing the records the zone may
//! hold there afterwards; after the answer the intents are settled. A run that
//! dies in between leaves intents, and the next run settles them against the
//! zone in bulk (one lookup per name, or one listing per zone when there are
//! many): a record is adopted only when an intent of this ledger names its
//! exact value, never on value equality alone (invariant 4).

mod apply;
mod store;
#[cfg(test)]
mod tests;
mod zones;

use self::apply::Applied;
use self::zones::Audit;

use std::collections::{BTreeMap, BTreeSet};

pub use self::store::{Conflict, DnsState, DnsStore, LeaseHolder, LeaseTake, Ledgered, RunRecord, ServiceRow};
use super::Record;
use super::batch::BatchLimits;
use super::desired::{Collision, NameSettings, NamedService, desired};
use super::provider::{DnsProvider, Limited, ProviderError, ZoneInfo};
use super::rate::RateLimiter;
use crate::config::HostedZoneId;
use crate::error::StoreError;
use crate::vip::UnixSeconds;

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The desired state changed (the table's stream): sync only if it did.
    Changed,
    /// The schedule: retry what failed, audit drift, collect garbage.
    Schedule,
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub names: NameSettings,
    pub max_rps: f64,
    pub grace: UnixSeconds,
    pub quarantine: UnixSeconds,
    /// How often the audit lists whole zones even when the counts agree.
    pub full_audit_interval: UnixSeconds,
    pub limits: BatchLimits,
    /// How long a taken or renewed lease lasts; renewed every third of it.
    pub lease: std::time::Duration,
}

impl SyncSettings {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            names: NameSettings {
                domain: s.dns_domain.clone(),
                default_zone: s.hosted_zone_id.clone(),
                ttl: u32::try_from(s.record_ttl.as_secs()).unwrap_or(u32::MAX),
                short_names_mesh: s.short_names_mesh.clone(),
            },
            max_rps: s.route53_max_rps,
            grace: s.service_deletion_grace.as_secs(),
            quarantine: s.vip_quarantine.as_secs(),
            full_audit_interval: s.dns_full_audit_interval.as_secs(),
            limits: BatchLimits::default(),
            lease: LEASE,
        }
    }
}

/// Counts of one run: the structured log line and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub planned: u64,
    pub applied: u64,
    pub conflicts: u64,
    pub failed: u64,
    pub collected: u64,
    pub calls: u64,
    pub throttles: u64,
    pub repaired: u64,
    /// Records whose unfinished change was settled by finding it in the zone.
    pub adopted: u64,
    /// Hosted zones this run could not use (missing, denied, unanswering).
    pub zones_failed: u64,
    /// Why nothing was done, when nothing was.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("hosted zone {zone}: {reason}")]
    Zone { zone: HostedZoneId, reason: String },
    #[error("Route53: {0}")]
    Provider(#[from] ProviderError),
    #[error("the sync lease was lost ({0}); the run stopped writing, the next run finishes its work")]
    LeaseLost(String),
}

/// How long a taken or renewed lease lasts: a few seconds beyond one
/// renewal period, so a dead run's lease frees soon after it died.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// The runner, with the zones it has checked in this execution environment.
#[derive(Debug)]
pub struct Syncer<P, S> {
    provider: P,
    store: S,
    settings: SyncSettings,
    checked_zones: tokio::sync::Mutex<BTreeMap<HostedZoneId, ZoneInfo>>,
}

impl<P: DnsProvider, S: DnsStore> Syncer<P, S> {
    pub fn new(provider: P, store: S, settings: SyncSettings) -> Self {
        Self { provider, store, settings, checked_zones: tokio::sync::Mutex::new(BTreeMap::new()) }
    }

    /// One run: take the lease, do the work while renewing it, release it.
    pub async fn run(&self, trigger: Trigger, now: UnixSeconds) -> Result<Report, SyncError> {
        let holder = format!("{:016x}", fastrand::u64(..));
        let lease_s = self.settings.lease.as_secs().max(1);
        let next_call_ms = match self.store.acquire_lease(&holder, now, now + lease_s).await? {
            LeaseTake::Taken { next_call_ms } => next_call_ms,
            LeaseTake::Held(held) => return Ok(self.skipped(trigger, &held).await),
        };
        let wait = next_call_ms.saturating_sub(epoch_ms());
        let limiter = RateLimiter::new(
            self.settings.max_rps,
            Some(tokio::time::Instant::now() + std::time::Duration::from_millis(wait)),
        );
        let route53 = Limited::new(&self.provider, &limiter);
        // The work is dropped at its next await if the lease cannot be kept:
        // it never writes past the moment another run may take over.
        let result = tokio::select! {
            biased;
            lost = self.keep_lease(&holder, now) => Err(SyncError::LeaseLost(lost)),
            r = self.run_locked(trigger, now, &route53) => r,
        };
        let next = limiter
            .next_slot()
            .await
            .map_or(0, |at| epoch_ms() + at.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64);
        let released = self.store.release_lease(&holder, next).await;
        let mut report = match (result, released) {
            (Ok(report), Ok(())) => report,
            (Ok(_), Err(e)) => return Err(e.into()),
            // The cause matters more than the release: the lease expires anyway.
            (Err(e), released) => {
                if let Err(r) = released {
                    tracing::warn!(error = %r, "could not release the sync lease after a failed run; it expires by itself");
                }
                return Err(e);
            }
        };
        let stats = route53.stats();
        report.calls = stats.calls;
        report.throttles = stats.throttles;
        Ok(report)
    }

    /// What a run that found the lease held says: who holds it, until when,
    /// and what stays pending. It claims nothing about the holder's work.
    async fn skipped(&self, trigger: Trigger, held: &LeaseHolder) -> Report {
        let pending = match self.store.state().await {
            Ok(st) if st.generation != st.applied_generation || st.retry_pending => format!(
                "changes up to generation {} are pending (applied: {}); the holder or the next run applies them",
                st.generation, st.applied_generation
            ),
            Ok(_) => "nothing is pending".to_owned(),
            Err(_) => "the pending changes could not be read".to_owned(),
        };
        let why = format!(
            "dns-sync run {} holds the lease until {} (epoch seconds); this {} run did nothing; {pending}",
            held.holder,
            held.until,
            match trigger {
                Trigger::Changed => "change",
                Trigger::Schedule => "scheduled",
            }
        );
        Report { skipped: Some(why), ..Report::default() }
    }

    /// Renews the lease every third of its length; returns only when it can
    /// no longer be kept: another holder took it, or renewals failed until
    /// too little of it was left to be sure of it.
    async fn keep_lease(&self, holder: &str, now: UnixSeconds) -> String {
        let lease = self.settings.lease.max(std::time::Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let mut valid_until = started + lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let at = now + started.elapsed().as_secs();
            match self.store.renew_lease(holder, at + lease.as_secs()).await {
                Ok(true) => valid_until = tokio::time::Instant::now() + lease,
                Ok(false) => return format!("run {holder}'s lease was taken by another run"),
                Err(e) if tokio::time::Instant::now() + lease / 3 >= valid_until => {
                    return format!("run {holder} could not renew its lease: {e}");
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the sync lease; trying again"),
            }
        }
    }

    async fn run_locked(
        &self,
        trigger: Trigger,
        now: UnixSeconds,
        route53: &Limited<'_, P>,
    ) -> Result<Report, SyncError> {
        let mut report = Report::default();
        // A change that lands during a run is picked up by another round.
        for _ in 0..3 {
            let state = self.store.state().await?;
            let pending = state.generation != state.applied_generation || state.retry_pending;
            if trigger == Trigger::Changed && !pending {
                if report == Report::default() {
                    report.skipped = Some("nothing changed".into());
                }
                return Ok(report);
            }
            self.round(trigger, now, &state, route53, &mut report).await?;
            let after = self.store.state().await?;
            if after.generation == state.generation {
                return Ok(report);
            }
        }
        Ok(report)
    }

    /// One pass, straight through: what the mesh wants, which zones can be
    /// used, what this ledger owns in them, the plan applied, unused services
    /// collected, and the run recorded.
    async fn round(
        &self,
        trigger: Trigger,
        now: UnixSeconds,
        state: &DnsState,
        route53: &Limited<'_, P>,
        report: &mut Report,
    ) -> Result<(), SyncError> {
        let rows = self.store.services(&state.meshes).await?;
        let collecting = if trigger == Trigger::Schedule { self.collectable(&rows, now).await? } else { Vec::new() };
        let (wanted, mut conflicts) = self.wanted(&rows, &collecting).await?;

        let ledger = self.store.ledger().await?;
        let zones: BTreeSet<HostedZoneId> = wanted
            .iter()
            .map(|r| r.zone.clone())
            .chain(ledger.iter().filter_map(|e| e.id().map(|(z, _)| z.clone())))
            .collect();
        let (mut usable, wanted) = self.usable_zones(&zones, wanted, route53, &mut conflicts, report).await;
        let mut owned = self.settle(ledger, &usable, route53, report).await?;
        let mut zone_counts = state.zone_counts.clone();
        let mut last_full_audit = state.last_full_audit;
        if trigger == Trigger::Schedule {
            let full = now >= state.last_full_audit.saturating_add(self.settings.full_audit_interval);
            let audit = Audit { full, zone_counts: &mut zone_counts, conflicts: &mut conflicts, report: &mut *report };
            self.audit_zones(&mut usable, &mut owned, audit, route53).await;
            if full {
                last_full_audit = now;
            }
        }

        let applied = self.apply_plan(&owned, wanted, &usable, route53, &mut conflicts, report).await?;
        report.conflicts = conflicts.len() as u64;
        self.store.set_conflicts(&conflicts).await?;
        self.collect(&collecting, &owned, &applied, now, report).await?;

        for zone in &zones {
            let delta = applied.created().filter(|r| &r.zone == zone).count() as i64
                - applied.deleted().filter(|r| &r.zone == zone).count() as i64;
            if let Some(c) = zone_counts.get_mut(zone.as_str()) {
                *c = c.saturating_add_signed(delta);
            }
        }
        self.store
            .finish(&RunRecord {
                applied_generation: state.generation,
                retry_pending: !applied.failed.is_empty() || report.zones_failed > 0,
                zone_counts,
                last_full_audit,
                report: report.clone(),
            })
            .await?;
        Ok(())
    }

    /// The records the mesh wants (services being collected left out), and
    /// the names it cannot have: collisions, and names no template could make.
    async fn wanted(
        &self,
        rows: &[ServiceRow],
        collecting: &[ServiceRow],
    ) -> Result<(Vec<Record>, Vec<Conflict>), SyncError> {
        let generators = self.store.generators().await?;
        let live: Vec<NamedService> = rows
            .iter()
            .filter(|r| !collecting.iter().any(|c| c.key == r.key))
            .filter_map(|r| {
                Some(NamedService {
                    key: r.key.clone(),
                    vip: r.vip?,
                    labels: r.labels.clone(),
                    assigned_at: r.assigned_at,
                })
            })
            .collect();
        let want = desired(&live, &generators, &self.settings.names);
        let mut conflicts: Vec<Conflict> = want.collisions.iter().map(collision).collect();
        // A name that could not be made belongs to no zone: status shows it under the default one.
        let zone = self.settings.names.default_zone.clone().or_else(|| HostedZoneId::parse("NONE").ok());
        if let Some(zone) = zone {
            conflicts.extend(want.errors.iter().map(|(key, reason)| Conflict {
                zone: zone.clone(),
                name: key.to_string(),
                reason: reason.clone(),
                foreign: false,
            }));
        }
        Ok((want.records, conflicts))
    }

    /// Releases the VIP of each collectable service once every record of it
    /// is gone: records first, then the VIP.
    async fn collect(
        &self,
        collecting: &[ServiceRow],
        owned: &[Record],
        applied: &Applied,
        now: UnixSeconds,
        report: &mut Report,
    ) -> Result<(), SyncError> {
        let deleted: Vec<&Record> = applied.deleted().collect();
        for row in collecting {
            let Some(vip) = row.vip else { continue };
            let all_gone = !owned.iter().chain(applied.created()).any(|r| r.value == vip && !deleted.contains(&r));
            if all_gone
                && self
                    .store
                    .collect(&row.key, vip, row.last_endpoint_change, now, now + self.settings.quarantine)
                    .await?
            {
                report.collected += 1;
                tracing::info!(service = %row.key, %vip, "collected after the deletion grace; VIP in quarantine");
            }
        }
        Ok(())
    }

    /// Records a zone this run could not use: a conflict naming the zone and
    /// why, a count in the report, a log line. The run goes on without it.
    fn zone_failed(&self, zone: &HostedZoneId, e: &SyncError, conflicts: &mut Vec<Conflict>, report: &mut Report) {
        tracing::error!(zone = %zone, error = %e, "hosted zone unusable this run; its records wait, the other zones go on");
        report.zones_failed += 1;
        conflicts.push(Conflict {
            zone: zone.clone(),
            name: String::new(),
            reason: format!("the hosted zone cannot be used ({e}); its records wait for the next run"),
            foreign: false,
        });
    }

    /// Services whose deletion grace has passed with no endpoint.
    async fn collectable(&self, rows: &[ServiceRow], now: UnixSeconds) -> Result<Vec<ServiceRow>, SyncError> {
        let mut out = Vec::new();
        for row in rows.iter().filter(|r| r.vip.is_some() && !r.declared) {
            let idle_since = row.last_endpoint_change.max(row.assigned_at);
            if idle_since.saturating_add(self.settings.grace) <= now && !self.store.has_endpoints(&row.key).await? {
                out.push(row.clone());
            }
        }
        Ok(out)
    }
}

fn collision(c: &Collision) -> Conflict {
    Conflict {
        foreign: false,
        zone: c.zone.clone(),
        name: c.name.clone(),
        reason: format!("{} and {} both render this name; the older, {}, keeps it", c.kept, c.refused, c.kept),
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
