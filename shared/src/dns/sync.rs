//! One dns-sync run: read desired and owned, plan, batch, apply at the
//! configured rate, record what happened. Straight-line, as external-dns's
//! `RunOnce`.
//!
//! A run holds the sync lease (a conditional item in the table) so that
//! concurrent invocations never both talk to Route53; the lease also carries
//! the moment the next Route53 call may go, so the rate holds from one
//! invocation to the next (invariant 3).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;

use super::batch::{BatchLimits, batches};
use super::desired::{Collision, NameSettings, NamedService, desired};
use super::plan::{Policy, plan};
use super::provider::{DnsProvider, Limited, ProviderError, ZoneInfo};
use super::rate::RateLimiter;
use super::{Change, Record};
use crate::config::HostedZoneId;
use crate::dns_name;
use crate::model::{HostnameGenerator, Labels};
use crate::store::StoreError;
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
}

/// The end of a run, written back to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    pub applied_generation: u64,
    pub retry_pending: bool,
    pub zone_counts: BTreeMap<String, u64>,
    pub last_full_audit: UnixSeconds,
    pub report: Report,
}

/// The table, as dns-sync uses it.
pub trait DnsStore: Send + Sync {
    /// Takes the sync lease; `None` when another run holds it. Returns the
    /// epoch milliseconds before which no Route53 call may go.
    fn acquire_lease(
        &self,
        holder: &str,
        now: UnixSeconds,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
    fn release_lease(&self, holder: &str, next_call_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn state(&self) -> impl Future<Output = Result<DnsState, StoreError>> + Send;
    fn services(&self, meshes: &[String]) -> impl Future<Output = Result<Vec<ServiceRow>, StoreError>> + Send;
    fn generators(&self) -> impl Future<Output = Result<Vec<HostnameGenerator>, StoreError>> + Send;
    fn has_endpoints(&self, key: &ServiceKey) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The ownership ledger: every record loopmesh created.
    fn owned(&self) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send;
    fn update_owned(
        &self,
        created: &[Record],
        deleted: &[Record],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
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
}

impl SyncSettings {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            names: NameSettings {
                domain: s.dns_domain.clone(),
                default_zone: s.hosted_zone_id.clone(),
                ttl: u32::try_from(s.record_ttl.as_secs()).unwrap_or(u32::MAX),
            },
            max_rps: s.route53_max_rps,
            grace: s.service_deletion_grace.as_secs(),
            quarantine: s.vip_quarantine.as_secs(),
            full_audit_interval: s.dns_full_audit_interval.as_secs(),
            limits: BatchLimits::default(),
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
    /// Why nothing was done, when nothing was.
    pub skipped: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("hosted zone {zone}: {reason}")]
    Zone { zone: HostedZoneId, reason: String },
    #[error("Route53: {0}")]
    Provider(#[from] ProviderError),
}

/// How long a run may hold the lease: beyond a Lambda's longest run.
pub const LEASE_SECONDS: UnixSeconds = 15 * 60;

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

    pub async fn run(&self, trigger: Trigger, now: UnixSeconds) -> Result<Report, SyncError> {
        let holder = format!("{:016x}", fastrand::u64(..));
        let Some(next_call_ms) = self.store.acquire_lease(&holder, now).await? else {
            return Ok(Report {
                skipped: Some("another dns-sync run holds the lease; it applies this change too"),
                ..Report::default()
            });
        };
        let wait = next_call_ms.saturating_sub(epoch_ms());
        let limiter = RateLimiter::new(
            self.settings.max_rps,
            Some(tokio::time::Instant::now() + std::time::Duration::from_millis(wait)),
        );
        let route53 = Limited::new(&self.provider, &limiter);
        let result = self.run_locked(trigger, now, &route53).await;
        let next = limiter
            .next_slot()
            .await
            .map_or(0, |at| epoch_ms() + at.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64);
        self.store.release_lease(&holder, next).await?;
        let mut report = result?;
        let stats = route53.stats();
        report.calls = stats.calls;
        report.throttles = stats.throttles;
        Ok(report)
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
                    report.skipped = Some("nothing changed");
                }
                return Ok(report);
            }
            let rows = self.store.services(&state.meshes).await?;
            let generators = self.store.generators().await?;
            let mut collecting = Vec::new();
            if trigger == Trigger::Schedule {
                for row in rows.iter().filter(|r| r.vip.is_some() && !r.declared) {
                    let idle_since = row.last_endpoint_change.max(row.assigned_at);
                    if idle_since.saturating_add(self.settings.grace) <= now
                        && !self.store.has_endpoints(&row.key).await?
                    {
                        collecting.push(row.clone());
                    }
                }
            }
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
                }
            }));

            let mut owned = self.store.owned().await?;
            let zones: BTreeSet<HostedZoneId> = want.records.iter().chain(&owned).map(|r| r.zone.clone()).collect();
            let mut records = Vec::new();
            for zone in &zones {
                let info = self.zone(zone, route53).await?;
                for r in want.records.iter().filter(|r| &r.zone == zone) {
                    if dns_name::is_within(&r.name, &info.name) {
                        records.push(r.clone());
                    } else {
                        conflicts.push(Conflict {
                            zone: zone.clone(),
                            name: r.name.clone(),
                            reason: format!("{} is not inside the zone's domain {}", r.name, info.name),
                        });
                    }
                }
            }
            let mut zone_counts = state.zone_counts.clone();
            let mut last_full_audit = state.last_full_audit;
            if trigger == Trigger::Schedule {
                let full = now >= state.last_full_audit.saturating_add(self.settings.full_audit_interval);
                report.repaired += self.audit(&zones, &mut owned, &mut zone_counts, full, route53).await?;
                if full {
                    last_full_audit = now;
                }
            }

            let changes = plan(&owned, &records, Policy::Sync);
            report.planned += changes.len() as u64;
            let mut applied = Applied::default();
            for batch in batches(&changes, self.settings.limits) {
                self.apply(&batch, &mut applied, route53).await;
            }
            report.applied += applied.done.len() as u64;
            report.failed += applied.failed.len() as u64;
            let created: Vec<Record> = applied.done.iter().filter_map(created).cloned().collect();
            let deleted: Vec<Record> = applied.done.iter().filter_map(deleted).cloned().collect();
            self.store.update_owned(&created, &deleted).await?;
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
            let retry_pending = !applied.failed.is_empty();
            self.store
                .finish(&RunRecord {
                    applied_generation: state.generation,
                    retry_pending,
                    zone_counts,
                    last_full_audit,
                    report: report.clone(),
                })
                .await?;
            let after = self.store.state().await?;
            if after.generation == state.generation {
                return Ok(report);
            }
        }
        Ok(report)
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

    /// Compares owned records with the zones: one GetHostedZone per zone, and
    /// a listing only when the count moved or a full audit is due. Owned
    /// records deleted by hand leave `owned` (so they are created again);
    /// edited ones are replaced by what the zone holds (so they are restored).
    async fn audit(
        &self,
        zones: &BTreeSet<HostedZoneId>,
        owned: &mut Vec<Record>,
        zone_counts: &mut BTreeMap<String, u64>,
        full: bool,
        route53: &Limited<'_, P>,
    ) -> Result<u64, SyncError> {
        let mut repaired = 0;
        for zone in zones {
            let count = route53.get_zone(zone).await?.record_count;
            if !full && zone_counts.get(zone.as_str()) == Some(&count) {
                continue;
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
        }
        Ok(repaired)
    }

    /// Applies one batch; on InvalidChangeBatch, the changes Route53 names are
    /// judged one by one and the rest go again, so one bad change never blocks
    /// the others (batches are all-or-nothing).
    async fn apply(&self, batch: &[Change], out: &mut Applied, route53: &Limited<'_, P>) {
        let zone = batch[0].record().zone.clone();
        match route53.change(&zone, batch).await {
            Ok(()) => out.done.extend_from_slice(batch),
            Err(ProviderError::InvalidChangeBatch(messages)) => {
                let named: Vec<usize> =
                    (0..batch.len()).filter(|i| messages.iter().any(|m| mentions(m, batch[*i].record()))).collect();
                if batch.len() == 1 || named.is_empty() {
                    if batch.len() == 1 {
                        self.judge(&batch[0], &messages, out, route53).await;
                    } else {
                        let mid = split_point(batch);
                        Box::pin(self.apply(&batch[..mid], out, route53)).await;
                        Box::pin(self.apply(&batch[mid..], out, route53)).await;
                    }
                    return;
                }
                let mut rest = Vec::new();
                for (i, c) in batch.iter().enumerate() {
                    if named.contains(&i) {
                        Box::pin(self.judge(c, &messages, out, route53)).await;
                    } else {
                        rest.push(c.clone());
                    }
                }
                if !rest.is_empty() {
                    Box::pin(self.apply(&rest, out, route53)).await;
                }
            }
            Err(e) => {
                tracing::warn!(zone = %zone, changes = batch.len(), error = %e, "change batch failed; retried next run");
                out.failed.extend_from_slice(batch);
            }
        }
    }

    /// One refused change: "already exists" with our exact value and "not
    /// found" on a DELETE count as done; an existing foreign record is a
    /// conflict that is left untouched; anything else is retried next run.
    async fn judge(&self, change: &Change, messages: &[String], out: &mut Applied, route53: &Limited<'_, P>) {
        let rec = change.record();
        let text = messages.iter().find(|m| mentions(m, rec)).or(messages.first()).cloned().unwrap_or_default();
        match change {
            Change::Delete(_) if text.contains("not found") => out.done.push(change.clone()),
            Change::Create(_) if text.contains("already exists") => {
                let start = Some((format!("{}.", rec.name), "A".to_owned()));
                match route53.list_page(&rec.zone, start, Some(1)).await {
                    Ok((sets, _)) if sets.first().is_some_and(|s| s.name == rec.name && s.is(rec)) => {
                        out.done.push(change.clone())
                    }
                    Ok(_) => out.conflicts.push(Conflict {
                        zone: rec.zone.clone(),
                        name: rec.name.clone(),
                        reason: "a record loopmesh did not create holds this name; it is left untouched".into(),
                    }),
                    Err(_) => out.failed.push(change.clone()),
                }
            }
            _ => {
                tracing::warn!(change = %change, reason = %text, "Route53 refused a change; retried next run");
                out.failed.push(change.clone());
            }
        }
    }
}

#[derive(Debug, Default)]
struct Applied {
    done: Vec<Change>,
    failed: Vec<Change>,
    conflicts: Vec<Conflict>,
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

fn collision(c: &Collision) -> Conflict {
    Conflict {
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

/// What started an invocation, from its payload: a DynamoDB stream batch (the
/// desired state changed), an EventBridge "Scheduled Event", or an
/// EventBridge Scheduler input `{"trigger": "schedule"}` / `{"trigger": "changed"}`.
pub fn trigger_of(payload: &serde_json::Value) -> Result<Trigger, String> {
    if let Some(records) = payload.get("Records").and_then(|r| r.as_array()) {
        return match records.first().and_then(|r| r.get("eventSource")).and_then(|s| s.as_str()) {
            Some("aws:dynamodb") | None => Ok(Trigger::Changed),
            Some(other) => Err(format!("Records[0].eventSource: {other:?} is not aws:dynamodb")),
        };
    }
    if let Some(kind) = payload.get("detail-type").and_then(|d| d.as_str()) {
        return match kind {
            "Scheduled Event" => Ok(Trigger::Schedule),
            other => Err(format!("detail-type: {other:?} is not \"Scheduled Event\"")),
        };
    }
    match payload.get("trigger").and_then(|t| t.as_str()) {
        Some("schedule") => Ok(Trigger::Schedule),
        Some("changed") => Ok(Trigger::Changed),
        Some(other) => Err(format!("trigger: {other:?} is not \"schedule\" or \"changed\"")),
        None => Err("expected a DynamoDB stream batch (Records), an EventBridge Scheduled Event (detail-type), or {\"trigger\": \"schedule\"}".into()),
    }
}

impl Report {
    /// The run as CloudWatch Embedded Metric Format: one JSON line that is
    /// both a log entry and a set of metrics.
    pub fn emf(&self, timestamp_ms: u64) -> serde_json::Value {
        let metrics = [
            ("Planned", self.planned),
            ("Applied", self.applied),
            ("Conflicts", self.conflicts),
            ("Failed", self.failed),
            ("Collected", self.collected),
            ("Repaired", self.repaired),
            ("Route53Calls", self.calls),
            ("Throttles", self.throttles),
        ];
        let mut doc = serde_json::json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": "loopmesh",
                    "Dimensions": [["Function"]],
                    "Metrics": metrics.iter().map(|(n, _)| serde_json::json!({"Name": n, "Unit": "Count"})).collect::<Vec<_>>(),
                }],
            },
            "Function": "dns-sync",
        });
        for (name, value) in metrics {
            doc[name] = value.into();
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_from_payloads() {
        let stream = serde_json::json!({"Records": [{"eventSource": "aws:dynamodb", "eventName": "MODIFY"}]});
        assert_eq!(trigger_of(&stream), Ok(Trigger::Changed));
        let scheduled = serde_json::json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
        assert_eq!(trigger_of(&scheduled), Ok(Trigger::Schedule));
        assert_eq!(trigger_of(&serde_json::json!({"trigger": "schedule"})), Ok(Trigger::Schedule));
        assert!(trigger_of(&serde_json::json!({"hello": 1})).unwrap_err().contains("Scheduled Event"));
        assert!(
            trigger_of(&serde_json::json!({"Records": [{"eventSource": "aws:sqs"}]}))
                .unwrap_err()
                .starts_with("Records[0].eventSource")
        );
    }

    #[test]
    fn emf_has_every_count() {
        let r = Report { planned: 3, applied: 2, calls: 4, ..Report::default() };
        let doc = r.emf(1);
        assert_eq!(doc["Applied"], 2);
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().len(), 8);
    }
}
