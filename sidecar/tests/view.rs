//! The sidecar's view code against moto server through the DynamoDB limit
//! proxy: what a change costs a sidecar in read units, and a sidecar that is
//! throttled keeping its view and catching up with deltas, not a full read.

use loopmesh_shared::registration::Registry;
use loopmesh_shared::store::dynamo::{DynamoMeshView, DynamoRegistry};
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::ServiceKind;
use loopmesh_sidecar::source::ViewClient;
use loopmesh_sidecar::view::View;
use loopmesh_tests::dynamo_proxy::{DynamoProxy, Limits};
use loopmesh_tests::ecs::one_endpoint;

const MESH: &str = "default";

/// A service and its endpoints as registration leaves them, written
/// straight to the table: no change items, as in a mesh at rest.
async fn service(client: &aws_sdk_dynamodb::Client, table: &str, s: usize) {
    use aws_sdk_dynamodb::types::AttributeValue::{N, S};
    let name = format!("svc-{s}");
    let put = |sk: String| client.put_item().table_name(table).item("pk", S(keys::mesh_pk(MESH))).item("sk", S(sk));
    put(keys::service_sk(ServiceKind::Service, &name))
        .item("name", S(name.clone()))
        .item("mesh", S(MESH.into()))
        .item("vip", S(format!("127.1.0.{}", s + 1)))
        .item("assigned_at", N("1".into()))
        .send()
        .await
        .expect("put service");
    for t in 0..10 {
        put(keys::endpoint_sk(&name, &format!("t{s}x{t}"), 15000))
            .item("service", S(name.clone()))
            .item("address", S(format!("10.0.{s}.{t}")))
            .item("port", N("15000".into()))
            .item("service_port", N("5050".into()))
            .send()
            .await
            .expect("put endpoint");
    }
}

fn addresses(view: &View, service: &str) -> Vec<String> {
    view.outbounds
        .iter()
        .filter(|o| o.service == service)
        .flat_map(|o| o.endpoints.iter().map(|e| e.address.clone()))
        .collect()
}

/// A mesh of 60 services with 10 endpoints each, and a view client through the proxy.
async fn mesh() -> (DynamoProxy, String, DynamoRegistry, ViewClient) {
    let direct = loopmesh_tests::dynamo_client().await;
    let table = loopmesh_tests::fresh_table(&direct, "view").await;
    let registry = DynamoRegistry::new(direct.clone(), &table);
    for s in 0..60 {
        service(&direct, &table, s).await;
    }
    let proxy = DynamoProxy::start(&loopmesh_tests::endpoint(), Limits::default()).await;
    let config = loopmesh_tests::sdk_config_at(&proxy.url).await;
    let reader = DynamoMeshView::new(aws_sdk_dynamodb::Client::new(&config), &table);
    (proxy, table, registry, ViewClient::new(reader, MESH.into(), 8080))
}

#[tokio::test]
async fn a_change_costs_a_sidecar_a_few_read_units_not_a_read_of_the_mesh() {
    let (proxy, _table, registry, mut client) = mesh().await;
    let first = client.check().await.unwrap().expect("the first check reads the mesh");
    assert_eq!(addresses(&first, "svc-3").len(), 10);
    let whole = proxy.total().read_units;
    // The view reports its own reads (moto reports flat units; DynamoDB the real ones).
    let (reads, units) = client.usage();
    assert_eq!(reads, proxy.total().calls);
    assert!(units > 0.0);

    proxy.reset();
    assert!(client.check().await.unwrap().is_none());
    assert_eq!(proxy.total().read_units, 0.5);
    assert_eq!(proxy.usage("Query").calls, 1);

    registry.register(&one_endpoint(MESH, "svc-3", "new1", "10.9.0.1")).await.unwrap();
    proxy.reset();
    let view = client.check().await.unwrap().expect("the new endpoint is a new view");
    assert!(addresses(&view, "svc-3").contains(&"10.9.0.1:15000".to_owned()));
    let cost = proxy.total().read_units;
    assert!(cost <= 2.0, "one new endpoint cost {cost} read units");
    assert!(cost * 4.0 < whole, "a change ({cost}) must cost far less than the mesh ({whole})");

    // A stop removes exactly that endpoint.
    let seen = registry.task("arn:aws:ecs:us-east-1:123456789012:task/c/new1").await.unwrap().expect("task item");
    registry.deregister("arn:aws:ecs:us-east-1:123456789012:task/c/new1", &seen, 2, 1_800_000_010).await.unwrap();
    let view = client.check().await.unwrap().expect("the stop is a new view");
    assert!(!addresses(&view, "svc-3").contains(&"10.9.0.1:15000".to_owned()));
    assert_eq!(addresses(&view, "svc-3").len(), 10);
}

#[tokio::test]
async fn a_throttled_sidecar_keeps_its_view_and_catches_up_with_the_changes_alone() {
    let (proxy, _table, registry, mut client) = mesh().await;
    client.check().await.unwrap().expect("first read");
    client.check().await.unwrap();

    proxy.throttle_all(true);
    registry.register(&one_endpoint(MESH, "svc-7", "new2", "10.9.0.2")).await.unwrap();
    let err = client.check().await.unwrap_err();
    assert!(err.contains("ProvisionedThroughputExceeded") || err.contains("throttl"), "{err}");
    assert!(proxy.total().throttled > 0);

    proxy.throttle_all(false);
    proxy.reset();
    let view = client.check().await.unwrap().expect("the change arrives after the throttling");
    assert!(addresses(&view, "svc-7").contains(&"10.9.0.2:15000".to_owned()));
    assert!(proxy.total().read_units <= 2.5, "caught up with deltas, not the mesh: {}", proxy.total().read_units);
}
