//! HTTP outbounds and Kong's outbound policies through the table: a
//! service whose inbounds say `kuma.io/protocol: http` is balanced request
//! by request by a real sidecar process reading the emulator's table, and a
//! MeshHTTPRoute applied while it runs reaches it through the change items.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use loopmesh_shared::registration::Registry;
use loopmesh_shared::store::dynamo::DynamoRegistry;
use loopmesh_tests::ecs::one_endpoint;
use loopmesh_tests::mtls::{apply_resource, service_with_vip};
use loopmesh_tests::process::{admin_get, eventually, free_port, table_sidecar};
use loopmesh_tests::{dynamo_client, fresh_table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// An HTTP/1.1 server at `address`:15000 answering every request with `name`.
async fn http_backend(address: Ipv4Addr, name: &'static str) {
    let l = TcpListener::bind((address, 15000)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                        let _ = s.write_all(answer.as_bytes()).await;
                    }
                }
            });
        }
    });
}

/// Sends `n` GETs on one keep-alive connection; counts the answers' bodies
/// and the values of `header`.
async fn keep_alive(at: SocketAddr, n: usize, header: &str) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut s = TcpStream::connect(at).await.unwrap();
    let (mut bodies, mut headers) = (BTreeMap::new(), BTreeMap::new());
    let mut pending = Vec::new();
    for _ in 0..n {
        s.write_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n").await.unwrap();
        // One response: headers, then content-length bytes.
        loop {
            if let Some(end) = pending.windows(4).position(|w: &[u8]| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if pending.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).to_string();
                    let value =
                        head.lines().find_map(|l| l.strip_prefix(&format!("{header}: "))).unwrap_or("-").to_owned();
                    *bodies.entry(body).or_insert(0) += 1;
                    *headers.entry(value).or_insert(0) += 1;
                    pending.drain(..end + 4 + len);
                    break;
                }
            }
            let mut buf = [0u8; 4096];
            let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(got > 0, "the sidecar closed the connection");
            pending.extend_from_slice(&buf[..got]);
        }
    }
    (bodies, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_service_is_balanced_per_request_and_routes_arrive_through_the_table() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "httppol").await;
    let vip = Ipv4Addr::new(127, 1, 220, 1);
    service_with_vip(&client, &table, "default", "api", &vip.to_string()).await;
    let registry = DynamoRegistry::new(client.clone(), &table);
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let address = Ipv4Addr::new(127, 0, 0, 91 + i as u8);
        http_backend(address, name).await;
        let mut reg = one_endpoint("default", "api", &format!("t{i}"), &address.to_string());
        reg.endpoints[0].protocol = "http".into();
        registry.register(&reg).await.unwrap();
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let _sidecar = table_sidecar(&table, "default", admin, None, &[], &[]);
    eventually("/ready", WAIT, || admin_get(admin, "/ready").0 == 200).await;
    let at = SocketAddr::from((vip, 8080));
    eventually("the VIP listens", WAIT, || std::net::TcpStream::connect(at).is_ok()).await;

    // One keep-alive connection, every backend.
    let (bodies, _) = keep_alive(at, 300, "x-route").await;
    assert_eq!(bodies.len(), 3, "one connection reached every task: {bodies:?}");
    for (name, n) in &bodies {
        assert!(n.abs_diff(100) <= 30, "{name} got {n} of 300: {bodies:?}");
    }

    // A MeshHTTPRoute applied now reaches the running sidecar.
    let route = "type: MeshHTTPRoute\nname: tag-responses\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: api\n    rules:\n    - matches:\n      - path:\n          type: PathPrefix\n          value: /\n      default:\n        filters:\n        - type: ResponseHeaderModifier\n          responseHeaderModifier:\n            set:\n            - name: x-route\n              value: tagged\n";
    apply_resource(&table, route).await;
    eventually("the route in /config", WAIT, || admin_get(admin, "/config").1.contains("tag-responses")).await;
    let (_, headers) = keep_alive(at, 20, "x-route").await;
    assert_eq!(headers.get("tagged"), Some(&20), "every response carries the route's header: {headers:?}");
    let (_, metrics) = admin_get(admin, "/metrics");
    assert!(metrics.contains("loopmesh_http_requests_total{service=\"api\""), "{metrics}");
}
