//! Listeners with real sockets on loopback: VIP listeners, echo endpoints,
//! fair sharing, zone preference, a dead endpoint, no endpoint at all, views
//! that add and remove VIPs, inbounds, and descriptor accounting.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loopmesh_sidecar::listeners::{InboundSpec, Listeners};
use loopmesh_sidecar::proxy::{ProxySettings, Route};
use loopmesh_sidecar::view::{Endpoint, Outbound, View};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server counting its connections; dropping the handle stops accepting.
async fn echo() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, count, task)
}

/// A VIP of its own per test (tests run in parallel) and a free port on it.
fn vip(n: u8) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1, 200, n);
    let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    SocketAddr::from((ip, port))
}

fn outbound(service: &str, at: SocketAddr, endpoints: &[(SocketAddr, Option<&str>)]) -> Outbound {
    let SocketAddr::V4(at) = at else { unreachable!() };
    Outbound {
        service: service.into(),
        kind: None,
        vip: *at.ip(),
        port: at.port(),
        endpoints: endpoints
            .iter()
            .map(|(a, z)| Endpoint { address: a.to_string(), zone: z.map(str::to_owned), identity: None })
            .collect(),
        tls: None,
        protocol: Default::default(),
    }
}

fn view(outbounds: Vec<Outbound>) -> View {
    View { generation: 1, outbounds, mtls: None, policies: Default::default() }
}

fn listeners(zone: Option<&str>, drain: Duration) -> Arc<Listeners> {
    let settings = ProxySettings { connect_timeout: Duration::from_millis(500), ..ProxySettings::default() };
    Arc::new(Listeners::new(settings, zone.map(str::to_owned), drain))
}

fn route(l: &Listeners, at: SocketAddr) -> Arc<Route> {
    l.outbounds().into_iter().find(|r| r.listen == at).unwrap()
}

async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

/// Reads until EOF or reset; true when the peer closed without sending.
async fn closed_without_data(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_vip_listener_carries_traffic_and_shares_it_fairly() {
    let (a, ca, _ta) = echo().await;
    let (b, cb, _tb) = echo().await;
    let (c, cc, _tc) = echo().await;
    let at = vip(1);
    let l = listeners(None, Duration::from_secs(1));
    l.apply(view(vec![outbound("redis", at, &[(a, None), (b, None), (c, None)])])).unwrap();
    for i in 0..300u32 {
        let msg = i.to_be_bytes();
        assert_eq!(round_trip(at, &msg).await, msg);
    }
    let counts = [ca.load(Ordering::Relaxed), cb.load(Ordering::Relaxed), cc.load(Ordering::Relaxed)];
    assert_eq!(counts.iter().sum::<usize>(), 300);
    // Sequential connections leave every endpoint at zero open, so P2C is a
    // uniform pick: each share is 100 +- a wide margin.
    assert!(counts.iter().all(|n| (60..=140).contains(n)), "unfair shares {counts:?}");
    let r = route(&l, at);
    assert_eq!(r.stats.total.load(Ordering::Relaxed), 300);
    assert_eq!(r.stats.bytes_sent.load(Ordering::Relaxed), 1200);
    assert_eq!(r.stats.bytes_received.load(Ordering::Relaxed), 1200);
}

#[tokio::test]
async fn the_own_zone_wins_while_it_has_a_healthy_endpoint() {
    let (near, c_near, near_task) = echo().await;
    let (far, c_far, _t) = echo().await;
    let at = vip(2);
    let l = listeners(Some("us-east-1a"), Duration::from_secs(1));
    l.apply(view(vec![outbound("api", at, &[(near, Some("us-east-1a")), (far, Some("us-east-1b"))])])).unwrap();
    for _ in 0..50 {
        round_trip(at, b"x").await;
    }
    assert_eq!((c_near.load(Ordering::Relaxed), c_far.load(Ordering::Relaxed)), (50, 0));
    // The near endpoint dies: connections retry on the far one, none is lost.
    near_task.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        assert_eq!(round_trip(at, b"y").await, b"y");
    }
    assert_eq!(c_far.load(Ordering::Relaxed), 20);
    let r = route(&l, at);
    assert_eq!(r.stats.ejections.load(Ordering::Relaxed), 1, "three failures eject the dead endpoint once");
    assert_eq!(r.stats.connect_failures.load(Ordering::Relaxed), 3, "after the ejection it is never tried");
}

#[tokio::test]
async fn without_a_healthy_endpoint_a_connection_closes_at_once() {
    let at = vip(3);
    let l = listeners(None, Duration::from_secs(1));
    l.apply(view(vec![outbound("nothing", at, &[])])).unwrap();
    for _ in 0..5 {
        assert!(closed_without_data(TcpStream::connect(at).await.unwrap()).await);
    }
    // An endpoint that refuses: three attempts on the one endpoint are not
    // made; one attempt, then the close.
    let dead = vip(4);
    let l2 = listeners(None, Duration::from_secs(1));
    let at2 = vip(5);
    l2.apply(view(vec![outbound("dead", at2, &[(dead, None)])])).unwrap();
    assert!(closed_without_data(TcpStream::connect(at2).await.unwrap()).await);
    assert_eq!(route(&l, at).stats.no_endpoint.load(Ordering::Relaxed), 5);
    let r2 = route(&l2, at2);
    assert_eq!(r2.stats.connect_failures.load(Ordering::Relaxed), 1);
    assert_eq!(r2.stats.no_endpoint.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn views_add_and_remove_vips_without_touching_the_others() {
    let (e, _c, _t) = echo().await;
    let (kept, removed, added) = (vip(6), vip(7), vip(8));
    let l = listeners(None, Duration::from_millis(400));
    l.apply(view(vec![outbound("kept", kept, &[(e, None)]), outbound("removed", removed, &[(e, None)])])).unwrap();
    let mut on_kept = TcpStream::connect(kept).await.unwrap();
    let mut on_removed = TcpStream::connect(removed).await.unwrap();
    on_kept.write_all(b"a").await.unwrap();
    on_removed.write_all(b"b").await.unwrap();
    let mut one = [0u8; 1];
    on_kept.read_exact(&mut one).await.unwrap();
    on_removed.read_exact(&mut one).await.unwrap();

    let applied =
        l.apply(view(vec![outbound("kept", kept, &[(e, None)]), outbound("added", added, &[(e, None)])])).unwrap();
    assert_eq!((applied.added, applied.removed, applied.updated, applied.listening), (1, 1, 0, 2));
    // The added VIP accepts at once; the removed one refuses new connections.
    assert_eq!(round_trip(added, b"new").await, b"new");
    assert!(TcpStream::connect(removed).await.is_err(), "a removed VIP stops accepting at once");
    // Open connections drain: the removed VIP's still works until the drain timeout.
    on_removed.write_all(b"c").await.unwrap();
    on_removed.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"c");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(closed_without_data(on_removed).await, "cut after the drain timeout");
    // The untouched VIP's connection lives on.
    on_kept.write_all(b"d").await.unwrap();
    on_kept.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"d");
}

#[tokio::test]
async fn endpoint_changes_apply_to_new_connections_only() {
    let (old, c_old, _t1) = echo().await;
    let (new, c_new, _t2) = echo().await;
    let at = vip(9);
    let l = listeners(None, Duration::from_secs(1));
    l.apply(view(vec![outbound("svc", at, &[(old, None)])])).unwrap();
    let mut open = TcpStream::connect(at).await.unwrap();
    open.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();
    let applied = l.apply(view(vec![outbound("svc", at, &[(new, None)])])).unwrap();
    assert_eq!(applied.updated, 1);
    assert_eq!(round_trip(at, b"2").await, b"2");
    open.write_all(b"3").await.unwrap();
    open.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"3", "the open connection stays on the old endpoint");
    assert_eq!((c_old.load(Ordering::Relaxed), c_new.load(Ordering::Relaxed)), (1, 1));
}

#[tokio::test]
async fn a_view_that_fails_validation_is_rejected_whole() {
    let (e, _c, _t) = echo().await;
    let at = vip(10);
    let l = listeners(None, Duration::from_secs(1));
    l.apply(view(vec![outbound("svc", at, &[(e, None)])])).unwrap();
    let mut bad = view(vec![outbound("svc", at, &[(e, None)]), outbound("other", vip(11), &[])]);
    bad.outbounds[1].endpoints.push(Endpoint { address: "no-port".into(), zone: None, identity: None });
    assert!(l.apply(bad).unwrap_err().contains("endpoints[0].address"));
    assert_eq!(l.outbounds().len(), 1);
    assert_eq!(round_trip(at, b"still").await, b"still");
}

#[tokio::test]
async fn an_inbound_forwards_to_the_application() {
    let (app, count, _t) = echo().await;
    let listen = vip(12);
    let l = listeners(None, Duration::from_secs(1));
    l.start_inbounds(&[InboundSpec { service: "redis".into(), listen, forward: app, tags: Default::default() }])
        .unwrap();
    assert_eq!(round_trip(listen, b"PING").await, b"PING");
    assert_eq!(count.load(Ordering::Relaxed), 1);
    let (_, r) = &l.inbounds()[0];
    assert_eq!(r.stats.total.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_mesh_external_service_name_is_resolved_at_connect_time() {
    let (e, count, _t) = echo().await;
    let at = vip(13);
    let l = listeners(None, Duration::from_secs(1));
    let mut o = outbound("httpbin", at, &[]);
    o.endpoints.push(Endpoint { address: format!("localhost:{}", e.port()), zone: None, identity: None });
    l.apply(view(vec![o])).unwrap();
    assert_eq!(round_trip(at, b"GET").await, b"GET");
    assert_eq!(count.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (e, _c, _t) = echo().await;
    let at = vip(14);
    let settings = ProxySettings { idle_timeout: Duration::from_millis(300), ..ProxySettings::default() };
    let l = Arc::new(Listeners::new(settings, None, Duration::from_secs(1)));
    l.apply(view(vec![outbound("svc", at, &[(e, None)])])).unwrap();
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    assert!(closed_without_data(s).await);
    assert_eq!(route(&l, at).stats.idle_closed.load(Ordering::Relaxed), 1);
}

#[cfg(target_os = "linux")]
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// 10,000 connections, some reset mid-stream by the client and some by the
/// endpoint: afterwards the process holds as many descriptors and tasks as before.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_leak_no_descriptor() {
    // An endpoint that echoes, and resets every seventh connection after one byte.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((mut s, _)) = server.accept().await {
            n += 1;
            let reset = n.is_multiple_of(7);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(k) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..k]).await;
                }
                if reset {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let at = vip(15);
    let l = listeners(None, Duration::from_secs(1));
    l.apply(view(vec![outbound("svc", at, &[(e, None)])])).unwrap();
    round_trip(at, b"warm").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = open_descriptors();
    let workers: Vec<_> = (0..50)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..200u32 {
                    let mut s = TcpStream::connect(at).await.unwrap();
                    s.write_all(&i.to_be_bytes()).await.unwrap();
                    let mut back = [0u8; 4];
                    let _ = s.read_exact(&mut back).await;
                    if (w + i).is_multiple_of(5) {
                        // The client resets mid-stream.
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    } else {
                        let _ = s.shutdown().await;
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest).await;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let r = route(&l, at);
    for _ in 0..100 {
        if r.stats.active.load(Ordering::Relaxed) == 0 && l.open_connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.stats.total.load(Ordering::Relaxed), 10_001);
    assert_eq!(r.stats.active.load(Ordering::Relaxed), 0);
    assert_eq!(l.open_connections(), 0, "every connection task ended");
    let after = open_descriptors();
    assert!(after <= before + 2, "descriptors before {before}, after {after}");
}

#[tokio::test]
async fn a_vip_that_cannot_bind_is_not_ready_and_is_retried_without_a_new_view() {
    let (e, _, _task) = echo().await;
    let a = vip(40);
    // Something else holds the VIP's port.
    let squatter = std::net::TcpListener::bind(a).unwrap();
    let l = listeners(None, Duration::from_secs(1));
    let applied = l.apply(view(vec![outbound("redis", a, &[(e, None)])])).unwrap();
    assert_eq!((applied.added, applied.failed), (0, 1));
    let admin = loopmesh_sidecar::admin::Admin {
        listeners: l.clone(),
        status: Arc::new(loopmesh_sidecar::source::ViewStatus::default()),
    };
    assert!(!admin.ready(), "/ready is not 200 while a VIP cannot listen");
    assert!(admin.metrics().contains("loopmesh_outbound_listeners_unbound 1"));
    // The port frees; the next tick binds it, with the same view.
    drop(squatter);
    let retried = l.retry_unbound().expect("a retry");
    assert_eq!((retried.added, retried.failed), (1, 0));
    assert!(admin.ready());
    assert_eq!(round_trip(a, b"PING").await, b"PING");
    assert!(l.retry_unbound().is_none(), "nothing left to retry");
}

#[tokio::test]
async fn an_explicit_outbound_of_the_pre_2_11_form_serves_its_service() {
    let (e, count, _task) = echo().await;
    let a = vip(41);
    let explicit = std::net::TcpListener::bind("127.0.0.42:0").unwrap().local_addr().unwrap();
    let so = loopmesh_shared::model::StaticOutbound {
        address: explicit.ip(),
        port: explicit.port(),
        service: "redis".into(),
    };
    // Without --bind-outbounds: the explicit outbound listens, the VIP does not.
    let l =
        Arc::new(Listeners::with_outbounds(ProxySettings::default(), None, Duration::from_secs(1), false, vec![so]));
    let applied = l.apply(view(vec![outbound("redis", a, &[(e, None)])])).unwrap();
    assert_eq!((applied.added, applied.failed), (1, 0));
    assert_eq!(round_trip(explicit, b"PING").await, b"PING");
    assert_eq!(count.load(Ordering::Relaxed), 1, "it reached the redis endpoint");
    assert!(TcpStream::connect(a).await.is_err(), "no VIP listener without --bind-outbounds");
}

/// A peer sidecar whose application is gone: it accepts, then resets the
/// connection without a byte (what it read is unread: the kernel sends RST).
async fn accepts_then_resets() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                // Wait for the client's bytes, leave them unread, and close.
                let _ = s.readable().await;
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                drop(s);
            });
        }
    });
    a
}

#[tokio::test]
async fn an_endpoint_that_resets_before_answering_is_ejected_and_a_leaving_client_is_not_its_fault() {
    let (good, _, _task) = echo().await;
    let gone = accepts_then_resets().await;
    let at = vip(40);
    let l = listeners(None, Duration::from_secs(1));
    l.apply(view(vec![outbound("api", at, &[(good, None), (gone, None)])])).unwrap();
    let r = route(&l, at);
    let mut answered = 0;
    for _ in 0..40 {
        let mut s = TcpStream::connect(at).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        if tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await.is_ok_and(|r| r.is_ok()) {
            answered += 1;
        }
    }
    assert!(r.stats.upstream_failures.load(Ordering::Relaxed) >= 3, "the resets are the endpoint's");
    assert_eq!(r.stats.ejections.load(Ordering::Relaxed), 1, "three in a row eject it");
    assert!(answered >= 40 - 4, "after its ejection every connection reaches the good endpoint: {answered} of 40");

    // A client that leaves mid-connection (reset) says nothing against the endpoint.
    let before = r.stats.upstream_failures.load(Ordering::Relaxed);
    for _ in 0..5 {
        let s = TcpStream::connect(at).await.unwrap();
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.stats.upstream_failures.load(Ordering::Relaxed), before);
}
