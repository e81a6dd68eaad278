//! view-notify against moto server and real UDP sockets: a stream batch of
//! change items wakes every sidecar of the mesh once, and reads the mesh's
//! sidecars at most once a minute.

use std::time::Duration;

use loopmesh_shared::registration::Registry;
use loopmesh_shared::store::dynamo::{DynamoMeshView, DynamoRegistry};
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::ServiceKind;
use loopmesh_tests::ecs::one_endpoint;
use loopmesh_tests::{attr_s, dynamo_client, fresh_table, query_prefix};
use view_notify::{Notifier, changed_meshes};

#[tokio::test]
async fn a_batch_of_changes_wakes_each_sidecar_of_the_mesh_once() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "notify").await;
    let mesh = "prod";
    client
        .put_item()
        .table_name(&table)
        .item("pk", aws_sdk_dynamodb::types::AttributeValue::S(keys::mesh_pk(mesh)))
        .item("sk", aws_sdk_dynamodb::types::AttributeValue::S(keys::service_sk(ServiceKind::Service, "redis")))
        .item("vip", aws_sdk_dynamodb::types::AttributeValue::S("127.1.0.9".into()))
        .send()
        .await
        .unwrap();
    let registry = DynamoRegistry::new(client.clone(), &table);
    // Three tasks; the second twice (two inbounds would share its address).
    let first = tokio::net::UdpSocket::bind("127.0.0.91:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let mut sockets = vec![first];
    for (i, ip) in ["127.0.0.92", "127.0.0.93"].iter().enumerate() {
        sockets.push(tokio::net::UdpSocket::bind((*ip, port)).await.unwrap());
        registry.register(&one_endpoint(mesh, "redis", &format!("t{i}"), ip)).await.unwrap();
    }
    registry.register(&one_endpoint(mesh, "redis", "t9", "127.0.0.91")).await.unwrap();
    let changes = query_prefix(&client, &table, &keys::mesh_pk(mesh), keys::CHANGE_PREFIX).await;
    assert_eq!(changes.len(), 3, "one change item per registration");
    let records: Vec<serde_json::Value> = changes
        .iter()
        .map(|item| {
            serde_json::json!({"eventName": "INSERT", "eventSource": "aws:dynamodb",
                "dynamodb": {"Keys": {"pk": {"S": keys::mesh_pk(mesh)}, "sk": {"S": attr_s(item, "sk")}}}})
        })
        .collect();
    let batch = serde_json::json!({ "Records": records });
    let newest = changes.iter().map(|i| attr_s(i, "sk")).max().unwrap();

    let reader = DynamoMeshView::new(client.clone(), &table);
    let notifier = Notifier::new(reader.clone(), port).await.unwrap();
    let sent = notifier.notify(&changed_meshes(&batch).unwrap()).await.unwrap();
    assert_eq!((sent.meshes, sent.wakeups, sent.failed), (1, 3, 0));
    for socket in &sockets {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("loopmesh-wake 1 {mesh} {newest}"));
        let again = tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await;
        assert!(again.is_err(), "one wake-up per sidecar per batch");
    }

    // The next batch within a minute reuses the addresses: no read.
    let reads = reader.usage().requests();
    notifier.notify(&changed_meshes(&batch).unwrap()).await.unwrap();
    assert_eq!(reader.usage().requests(), reads);
}
