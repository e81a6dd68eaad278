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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::Ipv4Addr;

use super::batch::{BatchLimits, batches};
use super::desired::{Collision, NameSettings, NamedService, desired};
use super::plan::{Policy, plan};
use super::provider::{DnsProvider, Limited, ProviderError, RecordSet, ZoneInfo};
use super::rate::RateLimiter;
use super::{Change, Record};
use crate::config::HostedZoneId;
use crate::dns_name;
use crate::error::StoreError;
use crate::model::{HostnameGenerator, Labels};
use crate::vip::{ServiceKey, UnixSeconds};

/// What the table holds for dns-sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsState {
    pub generation: u64,
    pub applied_generation: u64,
    /// A previous run left changes unapplied: run even if nothing new happened.
    pub retry_pending: bool,
    pub meshes: Vec<String>,
    /// Record counts per zone at the last audit: the cheap drift check.
    pub zone_counts: BTreeMap<String, u64>,
    pub last_full_audit: UnixSeconds,
}

/// A service as the table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub key: ServiceKey,
    pub vip: Option<Ipv4Addr>,
    pub labels: Labels,
    pub assigned_at: UnixSeconds,
    pub last_endpoint_change: UnixSeconds,
    /// An applied resource declares it: it lives until the resource is deleted.
    pub declared: bool,
}

/// A name loopmesh could not publish, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub zone: HostedZoneId,
    pub name: String,
    pub reason: String,
    /// A record loopmesh did not create holds the name: later runs look
    /// before they write, instead of sending a CREATE Route53 refuses.
    pub foreign: bool,
}

/// The reason of a name held by a record loopmesh did not create.
const FOREIGN: &str = "a record loopmesh did not create holds this name; it is left untouched";

/// The end of a run, written back to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    pub applied_generation: u64,
    pub retry_pending: bool,
    pub zone_counts: BTreeMap<String, u64>,
    pub last_full_audit: UnixSeconds,
    pub report: Report,
}

/// What the ledger knows of one (zone, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ledgered {
    /// loopmesh created this record and the zone holds it.
    Owned(Record),
    /// A change to this name was sent and its outcome is unknown: the zone
    /// holds one of these records of ours, or none of them (same zone and
    /// name, at most two: the old and the new).
    Intent(Vec<Record>),
}

impl Ledgered {
    pub fn id(&self) -> Option<(&HostedZoneId, &str)> {
        match self {
            Self::Owned(r) => Some(r.id()),
            Self::Intent(rs) => rs.first().map(Record::id),
        }
    }
}

/// Who holds the sync lease, when a run could not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub until: UnixSeconds,
}

/// The answer to taking the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTake {
    /// Taken; no Route53 call may go before this epoch millisecond.
    Taken {
        next_call_ms: u64,
    },
    Held(LeaseHolder),
}

/// The table, as dns-sync uses it.
pub trait DnsStore: Send + Sync {
    /// Takes the sync lease until `until`, unless another holder's lease is
    /// still valid at `now`.
    fn acquire_lease(
        &self,
        holder: &str,
        now: UnixSeconds,
        until: UnixSeconds,
    ) -> impl Future<Output = Result<LeaseTake, StoreError>> + Send;
    /// Extends `holder`'s lease to `until`; `false` when it is not (or no
    /// longer) the holder.
    fn renew_lease(&self, holder: &str, until: UnixSeconds) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn release_lease(&self, holder: &str, next_call_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn state(&self) -> impl Future<Output = Result<DnsState, StoreError>> + Send;
    fn services(&self, meshes: &[String]) -> impl Future<Output = Result<Vec<ServiceRow>, StoreError>> + Send;
    fn generators(&self) -> impl Future<Output = Result<Vec<HostnameGenerator>, StoreError>> + Send;
    fn has_endpoints(&self, key: &ServiceKey) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The ownership ledger: every record loopmesh created, and the intents
    /// of changes whose outcome is not known yet.
    fn ledger(&self) -> impl Future<Output = Result<Vec<Ledgered>, StoreError>> + Send;
    /// Writes these entries (one per zone and name) and removes the names in `removed`.
    fn write_ledger(
        &self,
        entries: &[Ledgered],
        removed: &[Record],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The conflicts the last run recorded.
    fn conflicts(&self) -> impl Future<Output = Result<Vec<Conflict>, StoreError>> + Send;
    /// Replaces the recorded conflicts with these.
    fn set_conflicts(&self, conflicts: &[Conflict]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Releases a collected service's VIP into quarantine, unless an endpoint
    /// arrived since `seen_last_change`.
    fn collect(
        &self,
        key: &ServiceKey,
        vip: Ipv4Addr,
        seen_last_change: UnixSeconds,
        now: UnixSeconds,
        quarantined_until: UnixSeconds,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn finish(&self, record: &RunRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
}

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

    /// One pass over the desired state: read, settle, plan, apply, collect, finish.
    async fn round(
        &self,
        trigger: Trigger,
        now: UnixSeconds,
        state: &DnsState,
        route53: &Limited<'_, P>,
        report: &mut Report,
    ) -> Result<(), SyncError> {
        let rows = self.store.services(&state.meshes).await?;
        let generators = self.store.generators().await?;
        let collecting = if trigger == Trigger::Schedule { self.collectable(&rows, now).await? } else { Vec::new() };
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
        conflicts.extend(want.errors.iter().map(|(key, reason)| {
            Conflict {
                zone: self
                    .settings
                    .names
                    .default_zone
                    .clone()
                    .unwrap_or_else(|| HostedZoneId::parse("NONE").unwrap_or_else(|_| unreachable!())),
                name: key.to_string(),
                reason: reason.clone(),
                foreign: false,
            }
        }));

        let ledger = self.store.ledger().await?;
        let zones: BTreeSet<HostedZoneId> = want
            .records
            .iter()
            .map(|r| r.zone.clone())
            .chain(ledger.iter().filter_map(|e| e.id().map(|(z, _)| z.clone())))
            .collect();
        // A zone that is missing, denied or unanswering is reported and waits;
        // every other zone goes on (its names do not depend on this one).
        let mut records = Vec::new();
        let mut healthy = BTreeSet::new();
        for zone in &zones {
            let info = match self.zone(zone, route53).await {
                Ok(info) => info,
                Err(e) => {
                    self.zone_failed(zone, &e, &mut conflicts, report);
                    continue;
                }
            };
            healthy.insert(zone.clone());
            for r in want.records.iter().filter(|r| &r.zone == zone) {
                if dns_name::is_within(&r.name, &info.name) {
                    records.push(r.clone());
                } else {
                    conflicts.push(Conflict {
                        zone: zone.clone(),
                        name: r.name.clone(),
                        reason: format!("{} is not inside the zone's domain {}", r.name, info.name),
                        foreign: false,
                    });
                }
            }
        }
        let mut owned = self.settle(ledger, &healthy, route53, report).await?;
        let mut zone_counts = state.zone_counts.clone();
        let mut last_full_audit = state.last_full_audit;
        if trigger == Trigger::Schedule {
            let full = now >= state.last_full_audit.saturating_add(self.settings.full_audit_interval);
            for zone in healthy.clone() {
                match self.audit(&zone, &mut owned, &mut zone_counts, full, route53).await {
                    Ok(repaired) => report.repaired += repaired,
                    Err(e) => {
                        self.zone_failed(&zone, &e, &mut conflicts, report);
                        healthy.remove(&zone);
                    }
                }
            }
            if full {
                last_full_audit = now;
            }
        }

        // Records in a failed zone are neither created nor deleted this run.
        let plannable: Vec<Record> = owned.iter().filter(|r| healthy.contains(&r.zone)).cloned().collect();
        records.retain(|r| healthy.contains(&r.zone));
        let changes = plan(&plannable, &records, Policy::Sync);
        let changes = self.look_before_writing(changes, route53, &mut conflicts).await?;
        report.planned += changes.len() as u64;
        let mut applied = Applied::default();
        for batch in batches(&changes, self.settings.limits) {
            self.apply(batch, &mut applied, route53).await?;
        }
        report.applied += applied.done.len() as u64;
        report.failed += applied.failed.len() as u64;
        let created: Vec<Record> = applied.done.iter().filter_map(created).cloned().collect();
        let deleted: Vec<Record> = applied.done.iter().filter_map(deleted).cloned().collect();
        conflicts.extend(applied.conflicts);
        report.conflicts = conflicts.len() as u64;
        self.store.set_conflicts(&conflicts).await?;

        for row in &collecting {
            // Records first, then the VIP: only once every record of it is gone.
            let all_gone = !owned.iter().chain(&created).any(|r| Some(r.value) == row.vip && !deleted.contains(r));
            if let (Some(vip), true) = (row.vip, all_gone)
                && self
                    .store
                    .collect(&row.key, vip, row.last_endpoint_change, now, now + self.settings.quarantine)
                    .await?
            {
                report.collected += 1;
                tracing::info!(service = %row.key, %vip, "collected after the deletion grace; VIP in quarantine");
            }
        }
        for zone in &zones {
            let delta = created.iter().filter(|r| &r.zone == zone).count() as i64
                - deleted.iter().filter(|r| &r.zone == zone).count() as i64;
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

    /// A CREATE for a name a foreign record held at the last run is sent only
    /// if a read shows the name free now: an idle mesh with a conflict makes
    /// one read a run, never a write Route53 refuses.
    async fn look_before_writing(
        &self,
        changes: Vec<Change>,
        route53: &Limited<'_, P>,
        conflicts: &mut Vec<Conflict>,
    ) -> Result<Vec<Change>, SyncError> {
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

    /// Settles the intents a dead run left: each name is looked up in its
    /// zone (one call per name, or one listing of the zone when that is
    /// cheaper), and becomes owned when the zone holds one of the intent's
    /// records exactly, or leaves the ledger otherwise. Returns every owned record.
    async fn settle(
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

    /// Applies one batch with the ledger written ahead: intents first, then
    /// Route53, then the settled entries. A refused batch (all or nothing)
    /// is narrowed iteratively: changes Route53 names are judged alone and
    /// the rest go again; with none named, the batch is halved. Each bad
    /// change costs at most one extra call when named, and a logarithmic
    /// number when not; nothing recurses.
    async fn apply(&self, batch: Vec<Change>, out: &mut Applied, route53: &Limited<'_, P>) -> Result<(), SyncError> {
        let zone = batch[0].record().zone.clone();
        let intents = intents(&batch);
        self.store.write_ledger(&intents, &[]).await?;
        let mut outcome = Applied::default();
        let mut queue: VecDeque<Vec<Change>> = VecDeque::from([batch.clone()]);
        while let Some(part) = queue.pop_front() {
            match route53.change(&zone, &part).await {
                Ok(()) => outcome.done.extend(part),
                Err(ProviderError::InvalidChangeBatch(messages)) => {
                    let (named, rest): (Vec<Change>, Vec<Change>) =
                        part.iter().cloned().partition(|c| messages.iter().any(|m| mentions(m, c.record())));
                    if named.is_empty() && part.len() > 1 {
                        let mid = split_point(&part);
                        queue.push_front(part[mid..].to_vec());
                        queue.push_front(part[..mid].to_vec());
                        continue;
                    }
                    for c in if named.is_empty() { &part } else { &named } {
                        judge(c, &messages, &mut outcome);
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

/// One refused change, from Route53's message alone: "not found" on a
/// DELETE is done; "already exists" on a CREATE is a record this ledger has
/// no claim on (a CREATE is only planned for a name the ledger does not
/// hold), so it is a conflict left untouched; anything else is retried next run.
fn judge(change: &Change, messages: &[String], out: &mut Applied) {
    let rec = change.record();
    let text = messages.iter().find(|m| mentions(m, rec)).or(messages.first()).cloned().unwrap_or_default();
    match change {
        Change::Delete(_) if text.contains("not found") => out.done.push(change.clone()),
        Change::Create(_) if text.contains("already exists") => out.conflicts.push(foreign(rec)),
        _ => {
            tracing::warn!(change = %change, reason = %crate::excerpt::cut(&text, crate::excerpt::RULE_CHARS), "Route53 refused a change; retried next run");
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

#[derive(Debug, Default)]
struct Applied {
    done: Vec<Change>,
    failed: Vec<Change>,
    conflicts: Vec<Conflict>,
    /// Records whose call may have been applied although it failed (a timeout).
    uncertain: Vec<Record>,
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

fn collision(c: &Collision) -> Conflict {
    Conflict {
        foreign: false,
        zone: c.zone.clone(),
        name: c.name.clone(),
        reason: format!("{} and {} both render this name; the older, {}, keeps it", c.kept, c.refused, c.kept),
    }
}

/// Whether a Route53 error message names this record (`name='x.mesh.local.'`).
fn mentions(message: &str, rec: &Record) -> bool {
    message.to_ascii_lowercase().contains(&format!("name='{}.'", rec.name))
}

/// A split point between two names, so a DELETE+CREATE pair stays together.
fn split_point(batch: &[Change]) -> usize {
    let mid = batch.len() / 2;
    (mid..batch.len())
        .chain((1..mid).rev())
        .find(|&i| batch[i - 1].record().id() != batch[i].record().id())
        .unwrap_or(mid)
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
