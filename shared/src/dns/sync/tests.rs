//! The run over in-memory ports, with paused time: leases, fencing, zone
//! isolation, refusals and the write-ahead ledger, each in milliseconds.
//! The same behaviours run against moto server in `tests/tests/dns_sync.rs`
//! and `tests/tests/faults.rs`.

use std::net::Ipv4Addr;

use super::*;
use crate::dns::memory::{MemoryDnsStore, MemoryRoute53};
use crate::dns::provider::ProviderError;
use crate::error::{StoreError, StoreErrorKind};

const NOW: UnixSeconds = 1_700_000_000;
const ZONE: &str = "ZMESH";

fn zone() -> HostedZoneId {
    HostedZoneId::parse(ZONE).unwrap()
}

fn settings() -> SyncSettings {
    SyncSettings {
        names: NameSettings {
            domain: "mesh.local".into(),
            default_zone: Some(zone()),
            ttl: 60,
            short_names_mesh: "default".into(),
        },
        max_rps: 1_000.0,
        grace: 3_600,
        quarantine: 600,
        full_audit_interval: 86_400,
        limits: BatchLimits::default(),
        lease: LEASE,
    }
}

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, n)
}

/// A mesh with services a, b and c, and an empty zone for mesh.local.
fn mesh() -> Syncer<MemoryRoute53, MemoryDnsStore> {
    let store = MemoryDnsStore::default();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        store.add_service(name, vip(i as u8 + 1), NOW);
    }
    Syncer::new(MemoryRoute53::with_zone(ZONE, "mesh.local"), store, settings())
}

fn owned(name: &str, value: Ipv4Addr) -> Record {
    Record { zone: zone(), name: name.into(), value, ttl: 60 }
}

#[tokio::test(start_paused = true)]
async fn publishes_each_name_once_and_an_idle_mesh_costs_no_route53_call() {
    let sync = mesh();
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.planned, report.applied, report.failed), (3, 3, 0));
    let records = sync.provider.records(ZONE);
    assert_eq!(records.get("b.mesh.local"), Some(&vip(2)));
    assert_eq!(records.len(), 3);
    // One GetHostedZone, one batch.
    assert_eq!(report.calls, 2);
    assert_eq!(sync.store.ledger_entries().len(), 3);
    assert!(sync.store.ledger_entries().iter().all(|e| matches!(e, Ledgered::Owned(_))));

    let idle = sync.run(Trigger::Changed, NOW + 1).await.unwrap();
    assert_eq!(idle.skipped.as_deref(), Some("nothing changed"));
    assert_eq!(sync.provider.calls().change, 1);
    assert!(sync.store.lease().is_none(), "the lease is released after each run");
}

#[tokio::test(start_paused = true)]
async fn a_run_that_finds_the_lease_held_names_the_holder_and_what_stays_pending() {
    let sync = mesh();
    sync.store.hold_lease("0123456789abcdef", NOW + 20);
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    let why = report.skipped.unwrap();
    assert!(why.contains("0123456789abcdef") && why.contains("pending"), "{why}");
    assert_eq!(sync.provider.calls().change, 0);
    // Once the holder's lease has run out, the next run does the work.
    let report = sync.run(Trigger::Changed, NOW + 21).await.unwrap();
    assert_eq!(report.applied, 3);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_lease_is_taken_stops_at_its_next_await_and_the_next_run_finishes() {
    let sync = mesh();
    sync.provider.hang_changes(true);
    sync.store.take_lease_away();
    let started = tokio::time::Instant::now();
    let err = sync.run(Trigger::Changed, NOW).await.unwrap_err();
    assert!(matches!(err, SyncError::LeaseLost(_)), "{err}");
    // The first renewal, a third of the lease in, found it taken.
    assert_eq!(started.elapsed(), LEASE / 3);
    // The batch's intents were written ahead and stay for the next run.
    assert!(sync.store.ledger_entries().iter().all(|e| matches!(e, Ledgered::Intent(_))));
    assert_eq!(sync.store.ledger_entries().len(), 3);
    assert!(sync.provider.records(ZONE).is_empty());

    sync.provider.hang_changes(false);
    let report = sync.run(Trigger::Changed, NOW + LEASE.as_secs() + 11).await.unwrap();
    // The intents settle as absent (the hung batch never applied), then the plan creates all three.
    assert_eq!((report.adopted, report.applied), (0, 3));
    assert_eq!(sync.provider.records(ZONE).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn renewals_that_keep_failing_drop_the_run_before_its_lease_runs_out() {
    let sync = mesh();
    sync.provider.hang_changes(true);
    sync.store.fail_renewals(Some(StoreError::new(StoreErrorKind::Unavailable, "no answer")));
    let started = tokio::time::Instant::now();
    let err = sync.run(Trigger::Changed, NOW).await.unwrap_err();
    assert!(err.to_string().contains("could not renew"), "{err}");
    // Renewals at 10 s and 20 s failed; at 20 s a third of the lease was left.
    assert_eq!(started.elapsed(), LEASE * 2 / 3);
    assert!(started.elapsed() < LEASE);
}

#[tokio::test(start_paused = true)]
async fn a_change_applied_whose_answer_was_lost_is_adopted_not_sent_again() {
    let sync = mesh();
    sync.provider.lose_answers(1);
    let first = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!(first.failed, 3);
    assert!(sync.store.ledger_entries().iter().all(|e| matches!(e, Ledgered::Intent(_))));
    assert!(sync.store.runs()[0].retry_pending);

    let second = sync.run(Trigger::Schedule, NOW + 300).await.unwrap();
    assert_eq!((second.adopted, second.planned), (3, 0));
    assert_eq!(sync.provider.calls().change, 1, "nothing is sent twice");
    assert!(sync.store.ledger_entries().iter().all(|e| matches!(e, Ledgered::Owned(_))));
}

#[tokio::test(start_paused = true)]
async fn a_foreign_record_is_a_conflict_narrowed_out_of_its_batch_and_later_only_looked_at() {
    let sync = mesh();
    sync.provider.put(ZONE, "b.mesh.local", vip(99));
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.applied, report.conflicts), (2, 1));
    // The refused batch names b, which is judged from that refusal alone;
    // a and c go again: two batches, no call per record.
    assert_eq!(sync.provider.calls().change, 2);
    assert_eq!(sync.provider.records(ZONE).get("b.mesh.local"), Some(&vip(99)), "never touched");
    let conflicts = sync.store.recorded_conflicts();
    assert!(conflicts[0].foreign && conflicts[0].name == "b.mesh.local");

    // The next runs read the name instead of sending a CREATE Route53 refuses.
    sync.store.add_service("d", vip(4), NOW + 10);
    let report = sync.run(Trigger::Changed, NOW + 10).await.unwrap();
    assert_eq!((report.applied, report.conflicts), (1, 1));
    assert_eq!(sync.provider.calls().change, 3, "one batch: d alone");
    assert_eq!(sync.provider.calls().list, 1);

    // Once the name is free, it is taken.
    sync.provider.remove(ZONE, "b.mesh.local");
    sync.store.add_service("e", vip(5), NOW + 20);
    let report = sync.run(Trigger::Changed, NOW + 20).await.unwrap();
    assert_eq!((report.applied, report.conflicts), (2, 0));
    assert_eq!(sync.provider.records(ZONE).get("b.mesh.local"), Some(&vip(2)));
}

#[tokio::test(start_paused = true)]
async fn a_zone_that_cannot_be_used_waits_while_the_others_converge() {
    let sync = mesh();
    // An earlier run owns a record in a zone that is now denied.
    sync.provider.add_zone("ZOTHER", "other.local", true);
    let other =
        Record { zone: HostedZoneId::parse("ZOTHER").unwrap(), name: "x.other.local".into(), value: vip(7), ttl: 60 };
    sync.store.put_ledger(Ledgered::Owned(other.clone()));
    sync.provider.break_zone(
        "ZOTHER",
        ProviderError::Other { message: "AccessDenied: not authorized on ZOTHER".into(), retryable: false },
    );
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.applied, report.zones_failed), (3, 1));
    let conflict = sync.store.recorded_conflicts().into_iter().find(|c| c.zone.as_str() == "ZOTHER").unwrap();
    assert!(conflict.reason.contains("AccessDenied"), "{}", conflict.reason);
    // Its records are neither deleted nor forgotten, and a later run retries it.
    assert!(sync.store.ledger_entries().contains(&Ledgered::Owned(other)));
    assert!(sync.store.runs()[0].retry_pending);
}

#[tokio::test(start_paused = true)]
async fn a_record_deleted_by_hand_is_restored_by_the_scheduled_audit() {
    let sync = mesh();
    sync.run(Trigger::Changed, NOW).await.unwrap();
    sync.provider.remove(ZONE, "a.mesh.local");
    let report = sync.run(Trigger::Schedule, NOW + 300).await.unwrap();
    assert_eq!((report.repaired, report.applied), (1, 1));
    assert_eq!(sync.provider.records(ZONE).get("a.mesh.local"), Some(&vip(1)));
}

#[tokio::test(start_paused = true)]
async fn an_unused_service_loses_its_records_then_its_vip_after_the_grace() {
    let sync = mesh();
    sync.run(Trigger::Changed, NOW).await.unwrap();
    sync.store.remove_endpoints("c", NOW + 10);
    // Within the grace nothing is collected.
    let report = sync.run(Trigger::Schedule, NOW + 20).await.unwrap();
    assert_eq!(report.collected, 0);
    let later = NOW + 10 + settings().grace;
    let report = sync.run(Trigger::Schedule, later).await.unwrap();
    assert_eq!(report.collected, 1);
    assert!(!sync.provider.records(ZONE).contains_key("c.mesh.local"));
    assert_eq!(sync.store.collected().len(), 1);
    assert!(!sync.store.ledger_entries().contains(&Ledgered::Owned(owned("c.mesh.local", vip(3)))));
}
