//! dns-sync fixtures: a private hosted zone in the emulator, services
//! written straight into the table, a syncer whose Route53 client goes
//! through the limit proxy, and the zone's records read around the proxy.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_route53::types::{HostedZoneConfig, Vpc, VpcRegion};
use loopmesh_shared::aws::route53::{Route53, client_config};
use loopmesh_shared::config::{HostedZoneId, Settings};
use loopmesh_shared::dns::sync::{SyncSettings, Syncer};
use loopmesh_shared::store::dynamo::DynamoDnsStore;
use loopmesh_shared::store::keys::{self, attr};
use loopmesh_shared::vip::{ServiceKind, UnixSeconds};

use super::{sdk_config, unique};

pub type LiveSyncer = Syncer<Route53, DynamoDnsStore>;

/// Route53 straight at the emulator, for setting up and reading zones.
pub async fn route53_direct() -> aws_sdk_route53::Client {
    aws_sdk_route53::Client::new(&sdk_config().await)
}

/// Creates a private hosted zone for `domain`; returns its id.
pub async fn private_zone(domain: &str) -> HostedZoneId {
    let out = route53_direct()
        .await
        .create_hosted_zone()
        .name(domain)
        .caller_reference(unique())
        .hosted_zone_config(HostedZoneConfig::builder().private_zone(true).build())
        .vpc(Vpc::builder().vpc_id("vpc-0123456789abcdef0").vpc_region(VpcRegion::UsEast1).build())
        .send()
        .await
        .expect("create hosted zone");
    HostedZoneId::parse(out.hosted_zone().expect("zone").id()).expect("zone id")
}

/// A syncer whose Route53 calls go to `route53_url` (the limit proxy).
pub async fn syncer(settings: &Settings, route53_url: &str) -> LiveSyncer {
    syncer_with(settings, &sdk_config().await, route53_url)
}

/// A syncer whose clients use `sdk` (another endpoint, other timeouts), with Route53 at `route53_url`.
pub fn syncer_with(settings: &Settings, sdk: &aws_config::SdkConfig, route53_url: &str) -> LiveSyncer {
    let conf = client_config(sdk).to_builder().endpoint_url(route53_url).build();
    Syncer::new(
        Route53::new(aws_sdk_route53::Client::from_conf(conf)),
        DynamoDnsStore::new(aws_sdk_dynamodb::Client::new(sdk), &settings.table_name),
        SyncSettings::from_settings(settings),
    )
}

/// Writes `count` services of `kind` with VIPs, as task-events leaves them,
/// and marks the DNS state changed. Names are `svc-00000`, ...
pub async fn seed_services(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    mesh: &str,
    count: u32,
    assigned_at: UnixSeconds,
) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    let mut requests = Vec::new();
    for i in 0..count {
        let name = format!("svc-{i:05}");
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + i);
        out.insert(name.clone(), vip);
        let item = std::collections::HashMap::from([
            (keys::PK.to_owned(), AttributeValue::S(keys::mesh_pk(mesh))),
            (keys::SK.to_owned(), AttributeValue::S(keys::service_sk(ServiceKind::Service, &name))),
            (attr::VIP.to_owned(), AttributeValue::S(vip.to_string())),
            (attr::ASSIGNED_AT.to_owned(), AttributeValue::N(assigned_at.to_string())),
            (attr::LAST_ENDPOINT_CHANGE.to_owned(), AttributeValue::N(assigned_at.to_string())),
        ]);
        requests.push(
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().expect("item"))
                .build(),
        );
        let lease = std::collections::HashMap::from([
            (keys::PK.to_owned(), AttributeValue::S(keys::mesh_pk(mesh))),
            (keys::SK.to_owned(), AttributeValue::S(keys::lease_sk(vip))),
            (attr::OWNER.to_owned(), AttributeValue::S(format!("svc#{name}"))),
        ]);
        requests.push(
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(lease)).build().expect("item"))
                .build(),
        );
    }
    for chunk in requests.chunks(25) {
        client.batch_write_item().request_items(table, chunk.to_vec()).send().await.expect("batch write");
    }
    bump_dns(client, table, mesh).await;
    out
}

/// Marks the desired DNS state changed, as task-events does for a new VIP.
pub async fn bump_dns(client: &aws_sdk_dynamodb::Client, table: &str, mesh: &str) {
    client
        .update_item()
        .table_name(table)
        .key(keys::PK, AttributeValue::S(keys::DNS_PK.into()))
        .key(keys::SK, AttributeValue::S(keys::DNS_STATE_SK.into()))
        .update_expression("ADD #g :one, #m :m")
        .expression_attribute_names("#g", attr::GENERATION)
        .expression_attribute_names("#m", attr::MESHES)
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":m", AttributeValue::Ss(vec![mesh.to_owned()]))
        .send()
        .await
        .expect("bump DNS state");
}

/// The zone's A records (name without trailing dot -> values), read directly.
pub async fn a_records(zone: &HostedZoneId) -> BTreeMap<String, Vec<String>> {
    let r53 = route53_direct().await;
    let mut out = BTreeMap::new();
    let mut start: Option<(String, aws_sdk_route53::types::RrType)> = None;
    loop {
        let mut req = r53.list_resource_record_sets().hosted_zone_id(zone.as_str());
        if let Some((n, t)) = start.take() {
            req = req.start_record_name(n).start_record_type(t);
        }
        let page = req.send().await.expect("list records");
        for s in page.resource_record_sets() {
            if s.r#type().as_str() == "A" {
                out.insert(
                    s.name().trim_end_matches('.').to_owned(),
                    s.resource_records().iter().map(|r| r.value().to_owned()).collect(),
                );
            }
        }
        match (page.is_truncated(), page.next_record_name(), page.next_record_type()) {
            (true, Some(n), Some(t)) => start = Some((n.to_owned(), t.clone())),
            _ => return out,
        }
    }
}

/// Changes one A record directly in the emulator, as an operator would by hand.
pub async fn by_hand(zone: &HostedZoneId, action: &str, name: &str, value: &str, ttl: i64) {
    use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
    let set = ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::A)
        .ttl(ttl)
        .resource_records(ResourceRecord::builder().value(value).build().expect("record"))
        .build()
        .expect("set");
    let change = Change::builder().action(ChangeAction::from(action)).resource_record_set(set).build().expect("change");
    route53_direct()
        .await
        .change_resource_record_sets()
        .hosted_zone_id(zone.as_str())
        .change_batch(ChangeBatch::builder().changes(change).build().expect("batch"))
        .send()
        .await
        .expect("change by hand");
}

/// A private zone for `domain` and settings that publish into it through `table`.
pub async fn zone_settings(table: &str, domain: &str) -> (HostedZoneId, Settings) {
    let zone = private_zone(domain).await;
    let settings = super::ecs::settings(
        table,
        &[
            ("KUMA_DNS_SERVER_DOMAIN", domain),
            ("KMESH_RUNTIME_AWS_ROUTE53_ENABLED", "true"),
            ("KMESH_RUNTIME_AWS_ROUTE53_HOSTED_ZONE_ID", zone.as_str()),
        ],
    );
    (zone, settings)
}
