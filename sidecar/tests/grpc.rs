//! A gRPC outbound with a real gRPC implementation on both ends (grpcio
//! from PyPI, in the test venv): one client channel's unary calls spread
//! over three backends, and a server stream of 10,000 messages passes intact.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use loopmesh_shared::model::Protocol;
use loopmesh_sidecar::listeners::Listeners;
use loopmesh_sidecar::proxy::ProxySettings;
use loopmesh_sidecar::view::{Endpoint, Outbound, View};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The venv's Python (`scripts/test` makes it; `LOOPMESH_VENV` moves it).
fn python() -> PathBuf {
    let venv = std::env::var_os("LOOPMESH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    venv.join("bin/python")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_peer.py")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grpc_channel_spreads_its_calls_and_streams_pass_intact() {
    let ports = [free_port(), free_port(), free_port()];
    let mut servers = Command::new(python())
        .arg(script())
        .arg("serve")
        .args(ports.map(|p| p.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the test venv's python with grpcio (scripts/test installs it)");
    let mut ready = BufReader::new(servers.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), ready.next_line()).await.unwrap().unwrap();
    assert_eq!(line.as_deref(), Some("ready"));

    let ip = Ipv4Addr::new(127, 1, 211, 1);
    let vip_port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    let l = Arc::new(Listeners::new(ProxySettings::default(), None, Duration::from_secs(1)));
    let outbound = Outbound {
        service: "test".into(),
        kind: None,
        vip: ip,
        port: vip_port,
        endpoints: ports
            .iter()
            .map(|p| Endpoint { address: format!("127.0.0.1:{p}"), zone: None, identity: None })
            .collect(),
        tls: None,
        protocol: Protocol::Grpc,
    };
    l.apply(View { generation: 1, outbounds: vec![outbound], mtls: None, policies: Default::default() }).unwrap();

    let out = Command::new(python())
        .arg(script())
        .arg("call")
        .arg(SocketAddr::from((ip, vip_port)).to_string())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = report["counts"].as_object().unwrap();
    assert_eq!(counts.len(), 3, "every backend served: {report}");
    for (name, n) in counts {
        let n = n.as_u64().unwrap();
        assert!(n.abs_diff(1000) <= 100, "{name} got {n} calls, not 1,000 within 10 %: {report}");
    }
    assert_eq!(report["streamed"], 10_000);
    assert_eq!(report["in_order"], true);
    let route = l.outbounds().pop().unwrap();
    assert_eq!(route.stats.total.load(std::sync::atomic::Ordering::Relaxed), 1, "one client channel, one connection");
}
