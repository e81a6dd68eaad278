//! dns-sync against a naive syncer on the same Route53 limit proxy (5 req/s):
//! Route53 calls and wall time for 1,000- and 5,000-service cold starts, 100
//! changes, and one idle hour at the 10 s refresh.
//!
//! The naive model is what a first attempt does each tick: list the whole
//! zone, then UPSERT every desired record in as few batches as fit (an UPSERT
//! counts twice toward the 1,000-record limit), with the SDK's own retries.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
use loopmesh_shared::config::HostedZoneId;
use loopmesh_shared::dns::sync::Trigger;
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::ServiceKind;
use loopmesh_tests::dns::{bump_dns, seed_services, syncer, zone_settings};
use loopmesh_tests::route53_proxy::{Limits, Route53Proxy};
use loopmesh_tests::{endpoint, fresh_table, sdk_config};
use tokio::time::Instant;

const NOW: u64 = 1_800_000_000;
const TICKS_PER_HOUR: u64 = 360;
const SCHEDULES_PER_HOUR: u64 = 12;

#[derive(Clone, Copy, Default)]
struct Figures {
    calls: usize,
    throttled: usize,
    seconds: f64,
}

fn figures(proxy: &Route53Proxy, started: Instant) -> Figures {
    let calls = proxy.calls();
    Figures {
        calls: calls.len(),
        throttled: calls.iter().filter(|c| c.refused.is_some()).count(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// One naive tick: list everything, UPSERT everything.
async fn naive_tick(r53: &aws_sdk_route53::Client, zone: &HostedZoneId, domain: &str, vips: &[(String, String)]) {
    let mut start: Option<(String, RrType)> = None;
    loop {
        let mut req = r53.list_resource_record_sets().hosted_zone_id(zone.as_str());
        if let Some((n, t)) = start.take() {
            req = req.start_record_name(n).start_record_type(t);
        }
        let page = req.send().await.expect("naive list");
        match (page.is_truncated(), page.next_record_name(), page.next_record_type()) {
            (true, Some(n), Some(t)) => start = Some((n.to_owned(), t.clone())),
            _ => break,
        }
    }
    for chunk in vips.chunks(500) {
        let changes = chunk
            .iter()
            .map(|(name, vip)| {
                let set = ResourceRecordSet::builder()
                    .name(format!("{name}.{domain}."))
                    .r#type(RrType::A)
                    .ttl(60)
                    .resource_records(ResourceRecord::builder().value(vip).build().expect("record"))
                    .build()
                    .expect("set");
                Change::builder().action(ChangeAction::Upsert).resource_record_set(set).build().expect("change")
            })
            .collect();
        let batch = ChangeBatch::builder().set_changes(Some(changes)).build().expect("batch");
        r53.change_resource_record_sets()
            .hosted_zone_id(zone.as_str())
            .change_batch(batch)
            .send()
            .await
            .expect("naive upsert");
    }
}

struct Scenario {
    ours: Figures,
    naive: Figures,
}

async fn scenario(services: u32, changes: u32, idle_hour: bool) -> Scenario {
    let sdk = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = fresh_table(&dynamo, "bench-dns").await;
    let domain = format!("b{}.mesh.local", loopmesh_tests::unique().replace('-', ""));
    let (zone, s) = zone_settings(&table, &domain).await;
    let vips: Vec<(String, String)> = seed_services(&dynamo, &table, "default", services, NOW)
        .await
        .into_iter()
        .map(|(n, v)| (n, v.to_string()))
        .collect();
    let proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let sync = syncer(&s, &proxy.url).await;
    let started = Instant::now();
    sync.run(Trigger::Changed, NOW).await.expect("cold start");
    let mut ours = figures(&proxy, started);

    if changes > 0 {
        for (name, _) in vips.iter().take(changes as usize) {
            dynamo
                .update_item()
                .table_name(&table)
                .key(keys::PK, AttributeValue::S(keys::mesh_pk("default")))
                .key(keys::SK, AttributeValue::S(keys::service_sk(ServiceKind::Service, name)))
                .update_expression("SET vip = :v")
                .expression_attribute_values(
                    ":v",
                    AttributeValue::S(format!(
                        "127.9.{}.{}",
                        name.len(),
                        &name[4..].parse::<u32>().unwrap_or(0) % 250 + 1
                    )),
                )
                .send()
                .await
                .expect("change a VIP");
        }
        bump_dns(&dynamo, &table, "default").await;
        proxy.clear();
        let started = Instant::now();
        sync.run(Trigger::Changed, NOW + 10).await.expect("changes");
        ours = figures(&proxy, started);
    }
    if idle_hour {
        proxy.clear();
        let started = Instant::now();
        for tick in 0..TICKS_PER_HOUR {
            let trigger =
                if tick % (TICKS_PER_HOUR / SCHEDULES_PER_HOUR) == 0 { Trigger::Schedule } else { Trigger::Changed };
            sync.run(trigger, NOW + 100 + tick * 10).await.expect("idle tick");
        }
        ours = figures(&proxy, started);
    }

    // The naive syncer on a fresh proxy in front of the same zone.
    let naive_proxy = Route53Proxy::start(&endpoint(), Limits::default()).await;
    let naive_client = aws_sdk_route53::Client::from_conf(
        aws_sdk_route53::config::Builder::from(&sdk).endpoint_url(&naive_proxy.url).build(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    naive_tick(&naive_client, &zone, &domain, &vips).await;
    let mut naive = figures(&naive_proxy, started);
    if idle_hour {
        naive.calls *= TICKS_PER_HOUR as usize;
        naive.throttled *= TICKS_PER_HOUR as usize;
        naive.seconds *= TICKS_PER_HOUR as f64;
    }
    Scenario { ours, naive }
}

#[tokio::main]
async fn main() {
    println!("dns-sync vs a naive syncer, both through the Route53 limit proxy at 5 req/s");
    println!(
        "{:<34} {:>10} {:>10} {:>9} | {:>10} {:>10} {:>9} | {:>11}",
        "scenario", "calls", "throttled", "seconds", "naive", "throttled", "seconds", "calls ratio"
    );
    let rows = [
        ("cold start, 1,000 services", scenario(1_000, 0, false).await),
        ("cold start, 5,000 services", scenario(5_000, 0, false).await),
        ("100 changed VIPs of 1,000", scenario(1_000, 100, false).await),
        ("idle hour, 1,000 services", scenario(1_000, 0, true).await),
    ];
    for (name, s) in rows {
        let ratio = if s.ours.calls == 0 {
            "inf".to_owned()
        } else {
            format!("{:.1}x", s.naive.calls as f64 / s.ours.calls as f64)
        };
        println!(
            "{name:<34} {:>10} {:>10} {:>9.1} | {:>10} {:>10} {:>9.1} | {:>11}",
            s.ours.calls, s.ours.throttled, s.ours.seconds, s.naive.calls, s.naive.throttled, s.naive.seconds, ratio
        );
    }
    println!(
        "idle hour: {TICKS_PER_HOUR} ticks at the 10 s refresh, {SCHEDULES_PER_HOUR} of them scheduled audits; naive = {TICKS_PER_HOUR} x one measured naive tick"
    );
}
