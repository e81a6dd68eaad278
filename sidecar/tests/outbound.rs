//! Outbound listeners with real sockets on loopback: a VIP listener, echo
//! endpoints, fair sharing, a dead endpoint, no endpoint at all.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use loopmesh_sidecar::balance::Balancer;
use loopmesh_sidecar::proxy::{OutboundStats, ProxySettings, serve};
use loopmesh_sidecar::view::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server counting its connections.
async fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, count)
}

/// A VIP listener on 127.1.0.7 in front of `endpoints`.
async fn vip(endpoints: Vec<Endpoint>) -> (SocketAddr, Arc<OutboundStats>, Arc<Balancer>) {
    let listener = TcpListener::bind("127.1.0.7:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let balancer = Arc::new(Balancer::new(&endpoints, None));
    let stats = Arc::new(OutboundStats::default());
    tokio::spawn(serve(listener, balancer.clone(), stats.clone(), ProxySettings::default(), std::future::pending()));
    (addr, stats, balancer)
}

async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

fn ep(address: SocketAddr) -> Endpoint {
    Endpoint { address, zone: None }
}

#[tokio::test]
async fn a_vip_listener_carries_traffic_and_shares_it_fairly() {
    let (a, ca) = echo().await;
    let (b, cb) = echo().await;
    let (c, cc) = echo().await;
    let (vip, stats, _) = vip(vec![ep(a), ep(b), ep(c)]).await;
    assert_eq!(vip.ip().to_string(), "127.1.0.7");
    for i in 0..300 {
        assert_eq!(round_trip(vip, format!("ping {i}").as_bytes()).await, format!("ping {i}").as_bytes());
    }
    let counts = [ca.load(Ordering::Relaxed), cb.load(Ordering::Relaxed), cc.load(Ordering::Relaxed)];
    assert_eq!(counts.iter().sum::<usize>(), 300);
    assert!(counts.iter().all(|c| *c >= 60), "{counts:?}");
    assert_eq!(stats.total.load(Ordering::Relaxed), 300);
    assert!(stats.bytes_out.load(Ordering::Relaxed) >= 300 * 6);
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_ejected() {
    let (alive, count) = echo().await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap() // dropped: connections are refused
    };
    let (vip, stats, balancer) = vip(vec![ep(dead), ep(alive), ep(alive), ep(alive)]).await;
    for _ in 0..40 {
        assert_eq!(round_trip(vip, b"x").await, b"x");
    }
    assert_eq!(count.load(Ordering::Relaxed), 40, "every connection reached a live endpoint");
    assert!(stats.connect_failures.load(Ordering::Relaxed) >= 3);
    assert_eq!(balancer.ejections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn no_endpoint_closes_at_once_and_counts() {
    let (vip, stats, _) = vip(vec![]).await;
    let mut s = TcpStream::connect(vip).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).await.unwrap(), 0, "closed without a byte");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(stats.no_endpoint.load(Ordering::Relaxed), 1);
}
