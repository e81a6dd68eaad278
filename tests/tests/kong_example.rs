//! Kong's `kong-mesh-ecs` example, as a Kong Mesh user brings it: its
//! HostnameGenerators, MeshMultiZoneService and Exclusive Mesh applied
//! unchanged but for the zone ids, a `kv` task whose sidecar's inbound 15050
//! fronts the application on 5050, and a demo sidecar that reaches it as
//! `kv.svc.mesh.local:15050` and `kv.mzms.mesh.local:15050`.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use loopmesh_shared::dns::sync::Trigger;
use loopmesh_shared::model::parse_documents_with_text;
use loopmesh_shared::store::dynamo::{DynamoResources, DynamoVipLedger};
use loopmesh_shared::vip::unix_now;
use loopmesh_tests::dns::{a_records, private_zone, syncer, zone_settings};
use loopmesh_tests::ecs::{event, registrar, role, task_definition_on_port};
use loopmesh_tests::process::{admin_get, eventually, free_port, table_sidecar};
use loopmesh_tests::{dynamo_client, endpoint, fresh_table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kongs_example_resources_carry_traffic_for_kv_by_both_names() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "kong").await;
    let (zone, settings) = zone_settings(&table, "mesh.local").await;

    // The example's resources, with the placeholders for zone ids filled in.
    // The project's copy of shared/reference/hostname-generators.yaml.
    let reference = include_str!("../../shared/tests/fixtures/hostname-generators.yaml").to_owned();
    // The second region's zone of the MeshMultiZoneService's generator.
    let west = private_zone("mesh.local").await;
    let text = reference
        .replace("Z0123456789ABCDEFGHIJ", zone.as_str())
        .replace("Z0AAAAAAAAAAAAAAAAAAA", zone.as_str())
        .replace("Z0BBBBBBBBBBBBBBBBBBB", west.as_str());
    let resources = DynamoResources::new(client.clone(), &table);
    let ledger = DynamoVipLedger::new(client.clone(), &table);
    for (parsed, doc) in parse_documents_with_text(&text) {
        let resource = parsed.unwrap_or_else(|e| panic!("the example validates unchanged: {e}"));
        resources.apply(&ledger, &settings.pools, &resource, &doc, unix_now()).await.unwrap();
    }

    // The kv task: its sidecar's inbound (here, an HTTP server standing for
    // it, as the example's kv is) on 15050.
    let kv_at = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 61), 15050));
    let kv = TcpListener::bind(kv_at).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = kv.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nkv-1\n").await;
                    }
                }
            });
        }
    });
    let tags = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "kv")];
    let td = task_definition_on_port(Some(&role(&tags).await), "kv", "default", true, 15050, false).await;
    let outcome = registrar(&settings)
        .await
        .handle(&event("ecs-task-running.json", &td, "kv1", "127.0.0.61", 2), unix_now())
        .await
        .unwrap();
    assert!(matches!(outcome, loopmesh_shared::registration::Outcome::Registered { .. }), "{outcome:?}");
    syncer(&settings, &endpoint()).await.run(Trigger::Changed, unix_now()).await.unwrap();

    // Both names, and no kuma.io/service name in an Exclusive mesh.
    let records = a_records(&zone).await;
    assert!(!records.contains_key("kv.mesh.local"), "Exclusive: no kuma.io/service name: {records:?}");
    let vip = |name: &str| -> Ipv4Addr {
        records.get(name).unwrap_or_else(|| panic!("{name} in {records:?}"))[0].parse().unwrap()
    };
    let (svc, mzms) = (vip("kv.svc.mesh.local"), vip("kv.mzms.mesh.local"));
    assert_eq!(a_records(&west).await["kv.mzms.mesh.local"], [mzms.to_string()], "in both regions' zones");

    // A demo sidecar reads the table and carries both.
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let _sidecar = table_sidecar(&table, "default", admin, None, &[], &[]);
    eventually("/ready", WAIT, || admin_get(admin, "/ready").0 == 200).await;
    for at in [SocketAddr::from((svc, 15050)), SocketAddr::from((mzms, 15050))] {
        eventually("the listener", WAIT, || std::net::TcpStream::connect(at).is_ok()).await;
        let mut s = TcpStream::connect(at).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: kv\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while !answer.ends_with(b"kv-1\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "{at} closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{at} reaches the kv task");
    }
    // The MeshMultiZoneService's port says `appProtocol: http`: an HTTP outbound, as in Kong Mesh.
    let (_, config) = admin_get(admin, "/config");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let mzms_outbound = config["outbounds"].as_array().unwrap().iter().find(|o| o["vip"] == mzms.to_string()).unwrap();
    assert_eq!(mzms_outbound["protocol"], "http", "{mzms_outbound}");
}
