//! dns-sync under faults, against moto server through the Route53 limit
//! proxy: a run that dies between Route53 and the ledger, a dead run's
//! lease, a lease taken away mid-run, and records another stack owns.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loopmesh_shared::aws::route53::{Route53, client_config};
use loopmesh_shared::config::{HostedZoneId, Settings};
use loopmesh_shared::dns::Record;
use loopmesh_shared::dns::sync::{
    Conflict, DnsState, DnsStore, LeaseTake, Ledgered, RunRecord, ServiceRow, SyncError, SyncSettings, Syncer, Trigger,
};
use loopmesh_shared::error::{StoreError, StoreErrorKind};
use loopmesh_shared::model::HostnameGenerator;
use loopmesh_shared::store::dynamo::DynamoDnsStore;
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::{ServiceKey, UnixSeconds};
use loopmesh_tests::dns::{a_records, by_hand, seed_services, zone_settings};
use loopmesh_tests::route53_proxy::{Limits, Route53Proxy};
use loopmesh_tests::{attr_s, dynamo_client, endpoint, fresh_table, query_prefix, sdk_config};

const NOW: u64 = 1_800_000_000;

/// The table as dns-sync sees it, with a process that can die: the Nth
/// ledger write fails, and a dead process releases nothing.
struct Dying {
    inner: DynamoDnsStore,
    die_at_ledger_write: usize,
    ledger_writes: AtomicUsize,
}

impl Dying {
    fn dead(&self) -> bool {
        self.ledger_writes.load(Ordering::SeqCst) >= self.die_at_ledger_write
    }
}

impl DnsStore for Dying {
    async fn acquire_lease(&self, h: &str, now: UnixSeconds, until: UnixSeconds) -> Result<LeaseTake, StoreError> {
        self.inner.acquire_lease(h, now, until).await
    }
    async fn renew_lease(&self, h: &str, until: UnixSeconds) -> Result<bool, StoreError> {
        self.inner.renew_lease(h, until).await
    }
    async fn release_lease(&self, h: &str, next: u64) -> Result<(), StoreError> {
        if self.dead() { Ok(()) } else { self.inner.release_lease(h, next).await }
    }
    async fn state(&self) -> Result<DnsState, StoreError> {
        self.inner.state().await
    }
    async fn services(&self, meshes: &[String]) -> Result<Vec<ServiceRow>, StoreError> {
        self.inner.services(meshes).await
    }
    async fn generators(&self) -> Result<Vec<HostnameGenerator>, StoreError> {
        self.inner.generators().await
    }
    async fn has_endpoints(&self, key: &ServiceKey) -> Result<bool, StoreError> {
        self.inner.has_endpoints(key).await
    }
    async fn ledger(&self) -> Result<Vec<Ledgered>, StoreError> {
        self.inner.ledger().await
    }
    async fn write_ledger(&self, entries: &[Ledgered], removed: &[Record]) -> Result<(), StoreError> {
        if self.ledger_writes.fetch_add(1, Ordering::SeqCst) + 1 >= self.die_at_ledger_write {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "the process died"));
        }
        self.inner.write_ledger(entries, removed).await
    }
    async fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        self.inner.conflicts().await
    }
    async fn set_conflicts(&self, conflicts: &[Conflict]) -> Result<(), StoreError> {
        self.inner.set_conflicts(conflicts).await
    }
    async fn collect(
        &self,
        key: &ServiceKey,
        vip: Ipv4Addr,
        seen: UnixSeconds,
        now: UnixSeconds,
        until: UnixSeconds,
    ) -> Result<bool, StoreError> {
        self.inner.collect(key, vip, seen, now, until).await
    }
    async fn finish(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.inner.finish(record).await
    }
}

async fn route53(url: &str) -> Route53 {
    let conf = client_config(&sdk_config().await).to_builder().endpoint_url(url).build();
    Route53::new(aws_sdk_route53::Client::from_conf(conf))
}

async fn store(settings: &Settings) -> DynamoDnsStore {
    DynamoDnsStore::new(dynamo_client().await, &settings.table_name)
}

async fn bed(name: &str) -> (aws_sdk_dynamodb::Client, String, HostedZoneId, String, Settings) {
    let client = dynamo_client().await;
    let table = fresh_table(&client, name).await;
    let domain = format!("{name}.mesh.local");
    let (zone, settings) = zone_settings(&table, &domain).await;
    (client, table, zone, domain, settings)
}

#[tokio::test]
async fn a_run_that_dies_between_route53_and_the_ledger_is_settled_in_bulk_by_the_next() {
    let (client, table, zone, _, settings) = bed("died").await;
    seed_services(&client, &table, "default", 600, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;

    // The batch reaches Route53; the process dies before the ledger is settled
    // (write 1 is the intents, write 2 the settlement), holding the lease.
    let dying = Dying { inner: store(&settings).await, die_at_ledger_write: 2, ledger_writes: AtomicUsize::new(0) };
    let sync = Syncer::new(route53(&proxy.url).await, dying, SyncSettings::from_settings(&settings));
    assert!(sync.run(Trigger::Changed, NOW).await.is_err());
    assert_eq!(a_records(&zone).await.len(), 600, "Route53 has the records");
    let ledger = query_prefix(&client, &table, keys::DNS_PK, "REC#").await;
    assert_eq!(ledger.len(), 600);
    assert!(ledger.iter().all(|i| i.contains_key(keys::attr::INTENT)), "only intents: the outcome was never written");

    // Inside the dead run's lease: a run says who holds it and claims nothing.
    let next = Syncer::new(route53(&proxy.url).await, store(&settings).await, SyncSettings::from_settings(&settings));
    let skipped = next.run(Trigger::Schedule, NOW + 5).await.unwrap();
    let why = skipped.skipped.unwrap();
    assert!(why.contains("holds the lease until") && why.contains("pending"), "{why}");
    assert!(!why.contains("applies this change too"), "{why}");

    // After it: the intents are settled with one listing of the zone, not a
    // call per record, and nothing is sent again.
    proxy.clear();
    let report = next.run(Trigger::Changed, NOW + 31).await.unwrap();
    assert_eq!((report.adopted, report.planned, report.conflicts, report.failed), (600, 0, 0, 0), "{report:?}");
    assert_eq!(proxy.count("ChangeResourceRecordSets"), 0);
    assert!(proxy.count("ListResourceRecordSets") <= 3, "{} listings", proxy.count("ListResourceRecordSets"));
    let ledger = query_prefix(&client, &table, keys::DNS_PK, "REC#").await;
    assert_eq!(ledger.len(), 600);
    assert!(ledger.iter().all(|i| !i.contains_key(keys::attr::INTENT)), "every intent settled");
    // Nothing is left for a later run, and no lease is held.
    proxy.clear();
    let idle = next.run(Trigger::Changed, NOW + 40).await.unwrap();
    assert_eq!((idle.planned, idle.calls), (0, 0), "{idle:?}");
    let lease = query_prefix(&client, &table, keys::DNS_PK, "LEASE").await;
    assert!(lease.iter().all(|i| !i.contains_key(keys::attr::HOLDER)), "no lease held");
}

#[tokio::test]
async fn an_intent_whose_change_never_reached_route53_is_created_next_run() {
    let (client, table, zone, _, settings) = bed("neversent").await;
    seed_services(&client, &table, "default", 5, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    // A run died right after writing its intents, before its batch went:
    // the ledger names records (other values) the zone never got.
    let names: Vec<Ledgered> = (0..5)
        .map(|i| {
            Ledgered::Intent(vec![Record {
                zone: zone.clone(),
                name: format!("svc-{i:05}.neversent.mesh.local"),
                value: Ipv4Addr::new(127, 9, 9, i),
                ttl: 60,
            }])
        })
        .collect();
    store(&settings).await.write_ledger(&names, &[]).await.unwrap();
    let sync = Syncer::new(route53(&proxy.url).await, store(&settings).await, SyncSettings::from_settings(&settings));
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.adopted, report.applied, report.failed), (0, 5, 0), "{report:?}");
    assert_eq!(a_records(&zone).await.len(), 5);
    let ledger = query_prefix(&client, &table, keys::DNS_PK, "REC#").await;
    assert!(ledger.iter().all(|i| !i.contains_key(keys::attr::INTENT)));
}

#[tokio::test]
async fn a_record_another_stack_created_with_our_exact_value_is_never_adopted_or_deleted() {
    let (client, table, zone, domain, settings) = bed("twostacks").await;
    let vips = seed_services(&client, &table, "default", 100, NOW - 7_200).await;
    // Another stack sharing the zone already publishes 5 of these names,
    // with exactly the values this one wants.
    for i in (0..100).step_by(20) {
        by_hand(&zone, "CREATE", &format!("svc-{i:05}.{domain}"), &vips[&format!("svc-{i:05}")].to_string(), 60).await;
    }
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = Syncer::new(route53(&proxy.url).await, store(&settings).await, SyncSettings::from_settings(&settings));
    let report = sync.run(Trigger::Changed, NOW - 7_200).await.unwrap();
    assert_eq!((report.applied, report.conflicts, report.adopted, report.failed), (95, 5, 0, 0), "{report:?}");
    // Each foreign record costs one more call, never one per split level.
    assert!(proxy.count("ChangeResourceRecordSets") <= 6, "{} calls", proxy.count("ChangeResourceRecordSets"));
    let conflicts = query_prefix(&client, &table, keys::STATUS_PK, "CONFLICT#").await;
    assert_eq!(conflicts.len(), 5);
    assert!(attr_s(&conflicts[0], "reason").contains("did not create"));
    assert_eq!(query_prefix(&client, &table, keys::DNS_PK, "REC#").await.len(), 95);

    // Garbage collection after the grace deletes only this stack's records.
    let gc = sync.run(Trigger::Schedule, NOW).await.unwrap();
    assert_eq!(gc.collected, 100, "{gc:?}");
    let left = a_records(&zone).await;
    assert_eq!(left.len(), 5, "the other stack's records stay: {left:?}");
    assert_eq!(left[&format!("svc-00020.{domain}")], [vips["svc-00020"].to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_loses_its_lease_stops_writing() {
    let (client, table, zone, _, settings) = bed("fenced").await;
    seed_services(&client, &table, "default", 3_000, NOW).await;
    // Each change must wait 1.5 s after the previous one: the run takes seconds.
    let limits = Limits { prior_change: Duration::from_millis(1_500), ..Limits::default() };
    let proxy = Route53Proxy::start(&endpoint(), limits).await;
    let mut s = SyncSettings::from_settings(&settings);
    s.lease = Duration::from_secs(1);
    s.limits.max_records = 500;
    let sync = Syncer::new(route53(&proxy.url).await, store(&settings).await, s);
    let thief = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        client
            .update_item()
            .table_name(&table)
            .key(keys::PK, aws_sdk_dynamodb::types::AttributeValue::S(keys::DNS_PK.into()))
            .key(keys::SK, aws_sdk_dynamodb::types::AttributeValue::S(keys::DNS_LEASE_SK.into()))
            .update_expression("SET holder = :h")
            .expression_attribute_values(":h", aws_sdk_dynamodb::types::AttributeValue::S("thief".into()))
            .send()
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(sync.run(Trigger::Changed, NOW), thief);
    let err = result.unwrap_err();
    assert!(matches!(err, SyncError::LeaseLost(_)), "{err}");
    let at_loss = a_records(&zone).await.len();
    assert!(at_loss < 3_000, "stopped before the end: {at_loss}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a_records(&zone).await.len(), at_loss, "nothing was written after the lease was lost");
}

#[tokio::test]
async fn a_route53_that_hangs_is_reported_within_the_timeouts_and_frees_the_lease() {
    let (client, table, _zone, _, settings) = bed("r53hang").await;
    seed_services(&client, &table, "default", 3, NOW).await;
    let silent = loopmesh_tests::process::Forwarder::start(&endpoint()).await;
    silent.hang();
    // Short timeouts, as the real ones (10 s an attempt, 30 s a call) but quicker.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_millis(800))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .load()
        .await;
    let sync = loopmesh_tests::dns::syncer_with(&settings, &sdk, &silent.url);
    let started = tokio::time::Instant::now();
    // The zone is reported as unusable (it timed out) and retried next run.
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "the run ended: {:?}", started.elapsed());
    assert_eq!((report.zones_failed, report.applied), (1, 0), "{report:?}");
    let conflicts = query_prefix(&client, &table, keys::STATUS_PK, "CONFLICT#").await;
    let reason = conflicts.iter().map(|c| attr_s(c, "reason")).collect::<Vec<_>>().join(" | ").to_lowercase();
    assert!(reason.contains("timeout") || reason.contains("timed out"), "{reason}");
    let state = store(&settings).await.state().await.unwrap();
    assert!(state.retry_pending, "the next run tries again");
    let lease = query_prefix(&client, &table, keys::DNS_PK, "LEASE").await;
    assert!(lease.iter().all(|i| !i.contains_key(keys::attr::HOLDER)), "the lease is free for the next run");
}
