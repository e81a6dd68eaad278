//! dns-sync against moto server through the Route53 limit proxy: calls are
//! counted and the rate is checked in every one-second window.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::Ipv4Addr;

use loopmesh_shared::config::{HostedZoneId, Settings};
use loopmesh_shared::dns::sync::Trigger;
use loopmesh_shared::store::dynamo::DynamoVipLedger;
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::{AllocError, ServiceKey, ServiceKind, VipLedger, VipPool, allocate};
use loopmesh_tests::dns::{a_records, bump_dns, by_hand, private_zone, seed_services, syncer, zone_settings};
use loopmesh_tests::ecs::settings;
use loopmesh_tests::route53_proxy::{Limits, Route53Proxy};
use loopmesh_tests::{attr_s, dynamo_client, endpoint, fresh_table, query_prefix, unique};

const NOW: u64 = 1_800_000_000;

struct Bed {
    client: aws_sdk_dynamodb::Client,
    table: String,
    zone: HostedZoneId,
    domain: String,
    settings: Settings,
}

async fn bed(name: &str) -> Bed {
    let client = dynamo_client().await;
    let table = fresh_table(&client, name).await;
    // Each test its own domain, so zones of parallel tests never mix.
    let domain = format!("{}.mesh.local", name.replace('_', "-"));
    let (zone, settings) = zone_settings(&table, &domain).await;
    Bed { client, table, zone, domain, settings }
}

impl Bed {
    fn name(&self, i: u32) -> String {
        format!("svc-{i:05}.{}", self.domain)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_new_services_converge_in_one_get_and_five_changes() {
    let bed = bed("cold5000").await;
    let vips = seed_services(&bed.client, &bed.table, "default", 5_000, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = syncer(&bed.settings, &proxy.url).await;
    let report = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.planned, report.applied, report.failed, report.conflicts), (5_000, 5_000, 0, 0));
    assert_eq!(proxy.count("GetHostedZone"), 1);
    assert_eq!(proxy.count("ChangeResourceRecordSets"), 5);
    assert_eq!(proxy.count("ListResourceRecordSets"), 0);
    assert_eq!(proxy.calls().len(), 6, "no throttled retries either");
    assert!(proxy.max_in_one_second() <= 5, "{} calls in one second", proxy.max_in_one_second());
    let records = a_records(&bed.zone).await;
    assert_eq!(records.len(), 5_000);
    assert_eq!(records[&bed.name(4_321)], [vips["svc-04321"].to_string()]);

    // An idle tick: nothing changed, nothing sent.
    proxy.clear();
    let idle = sync.run(Trigger::Changed, NOW + 10).await.unwrap();
    assert_eq!(idle.calls, 0);
    assert!(proxy.calls().is_empty());
}

#[tokio::test]
async fn a_foreign_record_stays_untouched_and_is_reported_while_the_rest_apply() {
    let bed = bed("foreign").await;
    seed_services(&bed.client, &bed.table, "default", 1_000, NOW).await;
    by_hand(&bed.zone, "CREATE", &bed.name(500), "10.9.9.9", 300).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let report = syncer(&bed.settings, &proxy.url).await.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.applied, report.conflicts, report.failed), (999, 1, 0));
    let records = a_records(&bed.zone).await;
    assert_eq!(records.len(), 1_000);
    assert_eq!(records[&bed.name(500)], ["10.9.9.9"]);
    let conflicts = query_prefix(&bed.client, &bed.table, keys::STATUS_PK, "CONFLICT#").await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(attr_s(&conflicts[0], "name"), bed.name(500));
    assert!(attr_s(&conflicts[0], "reason").contains("did not create"));
    assert!(proxy.max_in_one_second() <= 5);
    // The foreign record is never in the ledger, so no later run deletes it.
    let owned = query_prefix(&bed.client, &bed.table, keys::DNS_PK, "REC#").await;
    assert_eq!(owned.len(), 999);
}

#[tokio::test]
async fn throttling_on_every_other_call_still_converges() {
    let bed = bed("throttled").await;
    seed_services(&bed.client, &bed.table, "default", 50, NOW).await;
    let limits =
        Limits { throttle_every_other: true, prior_change: std::time::Duration::from_millis(300), ..Limits::default() };
    let proxy = Route53Proxy::start(&endpoint(), limits).await;
    let report = syncer(&bed.settings, &proxy.url).await.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.applied, report.failed), (50, 0));
    assert!(report.throttles >= 1, "{report:?}");
    assert_eq!(a_records(&bed.zone).await.len(), 50);
    assert!(proxy.max_in_one_second() <= 5);
}

#[tokio::test]
async fn the_audit_restores_records_deleted_or_edited_by_hand() {
    let bed = bed("audit").await;
    let vips = seed_services(&bed.client, &bed.table, "default", 10, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = syncer(&bed.settings, &proxy.url).await;
    sync.run(Trigger::Schedule, NOW).await.unwrap();
    by_hand(&bed.zone, "DELETE", &bed.name(3), &vips["svc-00003"].to_string(), 60).await;
    by_hand(&bed.zone, "DELETE", &bed.name(4), &vips["svc-00004"].to_string(), 60).await;
    by_hand(&bed.zone, "CREATE", &bed.name(4), "10.1.1.1", 60).await;
    // A tick right after: the counts moved (one record fewer), so the zone is listed.
    let report = sync.run(Trigger::Schedule, NOW + 60).await.unwrap();
    assert_eq!(report.repaired, 2, "{report:?}");
    let records = a_records(&bed.zone).await;
    assert!(records.contains_key(&bed.name(3)), "{report:?} {records:?}");
    assert_eq!(records[&bed.name(3)], [vips["svc-00003"].to_string()]);
    assert_eq!(records[&bed.name(4)], [vips["svc-00004"].to_string()]);
    // A quiet audit only asks for the count: one GetHostedZone.
    proxy.clear();
    let quiet = sync.run(Trigger::Schedule, NOW + 120).await.unwrap();
    assert_eq!((quiet.repaired, quiet.planned), (0, 0));
    assert_eq!(proxy.count("GetHostedZone"), 1);
    assert_eq!(proxy.count("ListResourceRecordSets"), 0);
}

#[tokio::test]
async fn a_changed_vip_goes_out_as_delete_and_create_in_one_batch() {
    let bed = bed("revip").await;
    seed_services(&bed.client, &bed.table, "default", 3, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = syncer(&bed.settings, &proxy.url).await;
    sync.run(Trigger::Changed, NOW).await.unwrap();
    bed.client
        .update_item()
        .table_name(&bed.table)
        .key(keys::PK, aws_sdk_dynamodb::types::AttributeValue::S(keys::mesh_pk("default")))
        .key(keys::SK, aws_sdk_dynamodb::types::AttributeValue::S(keys::service_sk(ServiceKind::Service, "svc-00001")))
        .update_expression("SET vip = :v")
        .expression_attribute_values(":v", aws_sdk_dynamodb::types::AttributeValue::S("127.1.99.99".into()))
        .send()
        .await
        .unwrap();
    bump_dns(&bed.client, &bed.table, "default").await;
    proxy.clear();
    let report = sync.run(Trigger::Changed, NOW + 10).await.unwrap();
    assert_eq!((report.planned, report.applied), (2, 2), "one DELETE and one CREATE");
    assert_eq!(proxy.count("ChangeResourceRecordSets"), 1);
    assert_eq!(a_records(&bed.zone).await[&bed.name(1)], ["127.1.99.99"]);
}

#[tokio::test]
async fn garbage_collection_after_the_grace_and_the_quarantine_holds() {
    let bed = bed("gc").await;
    let two_hours_ago = NOW - 7_200;
    let vips = seed_services(&bed.client, &bed.table, "default", 3, two_hours_ago).await;
    // svc-00002 still has a task: it stays.
    bed.client
        .put_item()
        .table_name(&bed.table)
        .item(keys::PK, aws_sdk_dynamodb::types::AttributeValue::S(keys::mesh_pk("default")))
        .item(keys::SK, aws_sdk_dynamodb::types::AttributeValue::S(keys::endpoint_sk("svc-00002", "t1", 15000)))
        .send()
        .await
        .unwrap();
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = syncer(&bed.settings, &proxy.url).await;
    sync.run(Trigger::Changed, two_hours_ago).await.unwrap();
    assert_eq!(a_records(&bed.zone).await.len(), 3);
    // Inside the grace nothing goes.
    let early = sync.run(Trigger::Schedule, two_hours_ago + 1_800).await.unwrap();
    assert_eq!(early.collected, 0);
    let report = sync.run(Trigger::Schedule, NOW).await.unwrap();
    assert_eq!(report.collected, 2, "{report:?}");
    let records = a_records(&bed.zone).await;
    assert_eq!(records.keys().cloned().collect::<Vec<_>>(), [bed.name(2)]);

    // The VIPs rest in quarantine (2 x 60 s TTL + 10 s refresh) before another service may take them.
    let ledger = DynamoVipLedger::new(bed.client.clone(), &bed.table);
    let gone = ledger.assignment(&ServiceKey::new("default", ServiceKind::Service, "svc-00000")).await.unwrap();
    assert_eq!((gone.current, gone.previous), (None, Some(vips["svc-00000"])));
    let pool = VipPool::new("127.1.0.0/30".parse().unwrap()).unwrap();
    let newcomer = ServiceKey::new("default", ServiceKind::Service, "newcomer");
    assert!(matches!(allocate(&ledger, &pool, &newcomer, NOW + 129).await, Err(AllocError::PoolExhausted { .. })));
    let got = allocate(&ledger, &pool, &newcomer, NOW + 130).await.unwrap().vip;
    assert!([Ipv4Addr::new(127, 1, 0, 1), Ipv4Addr::new(127, 1, 0, 2)].contains(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_back_to_back_invocations_never_exceed_the_rate() {
    let bed = bed("concurrent").await;
    seed_services(&bed.client, &bed.table, "default", 3_000, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let a = syncer(&bed.settings, &proxy.url).await;
    let b = syncer(&bed.settings, &proxy.url).await;
    let (ra, rb) = tokio::join!(a.run(Trigger::Schedule, NOW), b.run(Trigger::Schedule, NOW));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.skipped.is_some() || rb.skipped.is_some(), "one of them finds the lease held: {ra:?} {rb:?}");
    // Back to back: each new execution environment waits for the previous one's last slot.
    for i in 0..3 {
        syncer(&bed.settings, &proxy.url).await.run(Trigger::Schedule, NOW + 1 + i).await.unwrap();
    }
    assert_eq!(a_records(&bed.zone).await.len(), 3_000);
    let throttled = proxy.calls().iter().filter(|c| c.refused.is_some()).count();
    assert_eq!(throttled, 0);
    assert!(proxy.max_in_one_second() <= 5, "{}", proxy.max_in_one_second());
}

#[tokio::test]
async fn zones_that_cannot_hold_the_names_are_refused_by_name() {
    let bed = bed("zones").await;
    seed_services(&bed.client, &bed.table, "default", 1, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let other = private_zone(&format!("other-{}.example", unique())).await;
    let missing = HostedZoneId::parse("Z0000000000000MISSING").unwrap();
    for (zone, want) in
        [(other.clone(), "does not contain KUMA_DNS_SERVER_DOMAIN"), (missing.clone(), "does not exist")]
    {
        let s = settings(
            &bed.table,
            &[
                ("KUMA_DNS_SERVER_DOMAIN", &bed.domain),
                ("KMESH_RUNTIME_AWS_ROUTE53_ENABLED", "true"),
                ("KMESH_RUNTIME_AWS_ROUTE53_HOSTED_ZONE_ID", zone.as_str()),
            ],
        );
        // Reported by name and retried; it no longer stops the run.
        let report = syncer(&s, &proxy.url).await.run(Trigger::Changed, NOW).await.unwrap();
        assert_eq!(report.zones_failed, 1, "{report:?}");
        let conflicts = query_prefix(&bed.client, &bed.table, keys::STATUS_PK, "CONFLICT#").await;
        let reason = conflicts.iter().map(|c| attr_s(c, "reason")).find(|r| r.contains(want)).unwrap_or_default();
        assert!(reason.contains(zone.as_str()), "{conflicts:?}");
    }
}

#[tokio::test]
async fn two_meshes_sharing_a_zone_never_take_each_others_names() {
    let bed = bed("twomeshes").await;
    // dev registers first; in a first-come scheme it would take the short names.
    seed_services(&bed.client, &bed.table, "dev", 2, NOW - 100).await;
    seed_services(&bed.client, &bed.table, "default", 2, NOW).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let report = syncer(&bed.settings, &proxy.url).await.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.applied, report.conflicts), (4, 0), "{report:?}");
    let names: Vec<String> = a_records(&bed.zone).await.into_keys().collect();
    let d = &bed.domain;
    assert_eq!(
        names,
        [
            format!("svc-00000.dev.{d}"),
            format!("svc-00000.{d}"),
            format!("svc-00001.dev.{d}"),
            format!("svc-00001.{d}")
        ]
    );
}

#[tokio::test]
async fn a_name_held_by_a_foreign_record_is_looked_at_not_written_until_it_is_free() {
    let bed = bed("lookfirst").await;
    let vips = seed_services(&bed.client, &bed.table, "default", 3, NOW).await;
    by_hand(&bed.zone, "CREATE", &bed.name(1), "10.9.9.9", 300).await;
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = syncer(&bed.settings, &proxy.url).await;
    let first = sync.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((first.applied, first.conflicts), (2, 1), "{first:?}");
    // An idle scheduled run: one read for the held name, no refused write.
    proxy.clear();
    let idle = sync.run(Trigger::Schedule, NOW + 300).await.unwrap();
    assert_eq!((idle.conflicts, idle.failed), (1, 0), "{idle:?}");
    assert_eq!(proxy.count("ChangeResourceRecordSets"), 0, "no write Route53 would refuse");
    assert!(proxy.count("ListResourceRecordSets") >= 1);
    // The owner deletes its record: the next run takes the free name.
    by_hand(&bed.zone, "DELETE", &bed.name(1), "10.9.9.9", 300).await;
    let freed = sync.run(Trigger::Schedule, NOW + 600).await.unwrap();
    assert_eq!((freed.applied, freed.conflicts), (1, 0), "{freed:?}");
    assert_eq!(a_records(&bed.zone).await[&bed.name(1)], [vips["svc-00001"].to_string()]);
}

#[tokio::test]
async fn a_zone_that_fails_delays_only_its_own_records() {
    let bed = bed("isolated").await;
    seed_services(&bed.client, &bed.table, "default", 3, NOW).await;
    // A HostnameGenerator publishing into a zone that does not exist, for MeshServices.
    let generator = "type: HostnameGenerator\nname: broken\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ .DisplayName }}.svc.isolated.mesh.local\"\n  extension:\n    type: Route53\n    config:\n      hostedZoneId: Z0000000000000MISSING\n";
    let meshservice =
        "type: MeshService\nname: kv\nmesh: default\nspec:\n  ports:\n  - port: 15050\n    appProtocol: tcp\n";
    let resources = loopmesh_shared::store::dynamo::DynamoResources::new(bed.client.clone(), &bed.table);
    let ledger = DynamoVipLedger::new(bed.client.clone(), &bed.table);
    for text in [generator, meshservice] {
        let docs = loopmesh_shared::model::parse_documents_with_text(text);
        let (resource, doc) = (docs[0].0.as_ref().unwrap(), &docs[0].1);
        resources.apply(&ledger, &bed.settings.pools, resource, doc, NOW).await.unwrap();
    }
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let report = syncer(&bed.settings, &proxy.url).await.run(Trigger::Changed, NOW).await.unwrap();
    assert_eq!((report.zones_failed, report.applied), (1, 3), "{report:?}");
    assert_eq!(a_records(&bed.zone).await.len(), 3, "the healthy zone converged");
    let conflicts = query_prefix(&bed.client, &bed.table, keys::STATUS_PK, "CONFLICT#").await;
    assert!(conflicts.iter().any(|c| attr_s(c, "zone") == "Z0000000000000MISSING"), "{conflicts:?}");
}
