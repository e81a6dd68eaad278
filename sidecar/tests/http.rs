//! HTTP outbounds with real sockets on loopback: real HTTP/1.1 and HTTP/2
//! clients (hyper) through a VIP to HTTP backends. Each request is balanced
//! on its own; a backend answering 503 is retried elsewhere, then ejected; a
//! slow one times out; a POST is not retried; `Upgrade` and `CONNECT` are
//! carried; the sidecar's own answers say so.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loopmesh_shared::model::Protocol;
use loopmesh_sidecar::listeners::Listeners;
use loopmesh_sidecar::proxy::{ProxySettings, Route};
use loopmesh_sidecar::view::{Endpoint, Outbound, View};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a test backend does with each request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Ok,
    Unavailable,
    Slow(Duration),
}

/// A backend (HTTP/1.1 and h2c) answering with its name; counts requests
/// by method. It accepts `Upgrade` and `CONNECT`, then echoes bytes.
struct Backend {
    addr: SocketAddr,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Backend {
    fn hits(&self, method: &str) -> usize {
        self.hits.lock().unwrap().get(method).copied().unwrap_or(0)
    }
}

async fn backend(name: &'static str, behaviour: Behaviour) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let h = h.clone();
                    async move {
                        *h.lock().unwrap().entry(req.method().to_string()).or_default() += 1;
                        if req.method() == hyper::Method::CONNECT || req.headers().contains_key("upgrade") {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let mut io = TokioIo::new(on.await.unwrap());
                                let mut buf = [0u8; 1024];
                                while let Ok(n @ 1..) = io.read(&mut buf).await {
                                    io.write_all(&buf[..n]).await.unwrap();
                                }
                            });
                            let status = if req.method() == hyper::Method::CONNECT {
                                StatusCode::OK
                            } else {
                                StatusCode::SWITCHING_PROTOCOLS
                            };
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = status;
                            if status == StatusCode::SWITCHING_PROTOCOLS {
                                r.headers_mut().insert("upgrade", "echo".parse().unwrap());
                                r.headers_mut().insert("connection", "upgrade".parse().unwrap());
                            }
                            return Ok::<_, Infallible>(r);
                        }
                        let _ = req.into_body().collect().await;
                        match behaviour {
                            Behaviour::Ok => {}
                            Behaviour::Slow(d) => tokio::time::sleep(d).await,
                            Behaviour::Unavailable => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                return Ok(r);
                            }
                        }
                        Ok(Response::new(Full::new(Bytes::from(name))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    Backend { addr, hits }
}

/// A VIP of its own per test and a free port on it.
fn vip(n: u8) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1, 210, n);
    let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    SocketAddr::from((ip, port))
}

fn outbound(service: &str, at: SocketAddr, protocol: Protocol, backends: &[&Backend]) -> Outbound {
    let SocketAddr::V4(v4) = at else { unreachable!() };
    Outbound {
        service: service.into(),
        kind: None,
        vip: *v4.ip(),
        port: at.port(),
        endpoints: backends
            .iter()
            .map(|b| Endpoint { address: b.addr.to_string(), zone: None, identity: None })
            .collect(),
        tls: None,
        protocol,
    }
}

/// Listeners serving `outbounds` under the policies in `yaml` (Kong's form).
fn serve_with(outbounds: Vec<Outbound>, yaml: &str) -> Arc<Listeners> {
    let settings = ProxySettings { connect_timeout: Duration::from_millis(500), ..ProxySettings::default() };
    let l = Arc::new(Listeners::new(settings, None, Duration::from_secs(1)));
    let mut policies = loopmesh_shared::model::OutboundPolicies::default();
    for (parsed, _) in loopmesh_shared::model::parse_documents_with_text(yaml) {
        policies.add(parsed.unwrap_or_else(|e| panic!("the policy validates: {e}")));
    }
    l.apply(View { generation: 1, outbounds, mtls: None, policies }).unwrap();
    l
}

/// Listeners serving one `protocol` outbound at `at` over `backends`.
fn serve(at: SocketAddr, protocol: Protocol, backends: &[&Backend]) -> (Arc<Listeners>, Arc<Route>) {
    let l = serve_with(vec![outbound("api", at, protocol, backends)], "");
    let route = l.outbounds().into_iter().find(|r| r.listen == at).unwrap();
    (l, route)
}

/// One HTTP/1.1 keep-alive connection to `at`.
async fn h1(at: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(at).await.unwrap())).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    sender.ready().await.unwrap();
    let req = Request::builder().method(method).uri("/x").header("host", "api").body(Empty::new()).unwrap();
    let r = sender.send_request(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (parts.status, parts.headers, body)
}

fn within_ten_percent(counts: &BTreeMap<String, usize>, each: usize) {
    assert_eq!(counts.len(), 3, "every backend served: {counts:?}");
    for (name, n) in counts {
        assert!(n.abs_diff(each) * 10 <= each, "{name} got {n}, not {each} within 10 %: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_spreads_its_requests_over_every_backend() {
    let (a, b, c) =
        (backend("a", Behaviour::Ok).await, backend("b", Behaviour::Ok).await, backend("c", Behaviour::Ok).await);
    let at = vip(1);
    let (_l, route) = serve(at, Protocol::Http, &[&a, &b, &c]);
    let mut client = h1(at).await;
    let mut counts = BTreeMap::new();
    for _ in 0..3000 {
        let (status, _, body) = get(&mut client, "GET").await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(body).or_insert(0) += 1;
    }
    within_ten_percent(&counts, 1000);
    assert_eq!(route.stats.total.load(Ordering::Relaxed), 1, "one client connection");
    let http = route.http.load_full().unwrap();
    assert!(http.pool.opened.load(Ordering::Relaxed) <= 6, "upstream connections are pooled");
    assert_eq!(http.stats.by_class[1].load(Ordering::Relaxed), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_spreads_its_requests_over_every_backend() {
    let (a, b, c) =
        (backend("a", Behaviour::Ok).await, backend("b", Behaviour::Ok).await, backend("c", Behaviour::Ok).await);
    let at = vip(2);
    let (_l, _route) = serve(at, Protocol::Http2, &[&a, &b, &c]);
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(at).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (mut sender, counts) = (sender.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..300 {
                sender.ready().await.unwrap();
                let req = Request::builder().uri(format!("http://{at}/x")).body(Empty::<Bytes>::new()).unwrap();
                let r = sender.send_request(req).await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let body = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
                *counts.lock().unwrap().entry(body).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    within_ten_percent(&counts.lock().unwrap(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_503_is_retried_elsewhere_then_ejected() {
    let (a, b, bad) = (
        backend("a", Behaviour::Ok).await,
        backend("b", Behaviour::Ok).await,
        backend("bad", Behaviour::Unavailable).await,
    );
    let at = vip(3);
    let (l, route) = serve(at, Protocol::Http, &[&a, &b, &bad]);
    let mut client = h1(at).await;
    for _ in 0..300 {
        let (status, _, body) = get(&mut client, "GET").await;
        assert_eq!(status, StatusCode::OK, "a 503 is retried on another backend");
        assert_ne!(body, "bad");
    }
    let http = route.http.load_full().unwrap();
    assert!(http.stats.retries.load(Ordering::Relaxed) >= 5);
    assert_eq!(http.stats.ejections_5xx.load(Ordering::Relaxed), 1, "ejected once, for 5 s");
    assert!(bad.hits("GET") <= 10, "after its ejection the bad backend rests: {} requests", bad.hits("GET"));
    let admin = loopmesh_sidecar::admin::Admin { listeners: l.clone(), status: Arc::default() };
    let metrics = admin.metrics();
    let labels = format!("service=\"api\",listener=\"{at}\",protocol=\"http\"");
    assert!(metrics.contains(&format!("loopmesh_http_ejections_total{{{labels},reason=\"5xx\"}} 1")), "{metrics}");
    assert!(metrics.contains(&format!("loopmesh_http_requests_total{{{labels},class=\"2xx\"}} 300")), "{metrics}");
    assert!(metrics.contains(&format!("loopmesh_http_request_duration_seconds_count{{{labels}}} 300")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried() {
    let bad = backend("bad", Behaviour::Unavailable).await;
    let good = backend("good", Behaviour::Ok).await;
    let at = vip(4);
    let (_l, route) = serve(at, Protocol::Http, &[&bad, &good]);
    let mut client = h1(at).await;
    let mut unavailable = 0;
    for _ in 0..40 {
        let (status, headers, _) = get(&mut client, "POST").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(!headers.contains_key("x-loopmesh-reason"), "the backend's own 503, passed on");
            unavailable += 1;
        }
    }
    assert_eq!(unavailable, bad.hits("POST"), "every POST the bad backend got came back as its 503");
    assert!(unavailable > 0);
    assert_eq!(good.hits("POST") + bad.hits("POST"), 40, "each POST was sent once");
    assert_eq!(route.http.load_full().unwrap().stats.retries.load(Ordering::Relaxed), 0);
}

const TIMEOUT: &str = "type: MeshTimeout\nname: fast\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: api\n    default:\n      http:\n        requestTimeout: 300ms\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_times_out_with_a_504_that_says_why() {
    let slow = backend("slow", Behaviour::Slow(Duration::from_secs(3))).await;
    let at = vip(5);
    let l = serve_with(vec![outbound("api", at, Protocol::Http, &[&slow])], TIMEOUT);
    let route = l.outbounds().pop().unwrap();
    let http = route.http.load_full().unwrap();
    assert_eq!(http.policy.load().request_timeout, Some(Duration::from_millis(300)), "the MeshTimeout applies");
    let mut client = h1(at).await;
    let (status, headers, body) = get(&mut client, "GET").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-loopmesh-reason"], "timeout");
    assert!(body.contains("loopmesh"));
    assert_eq!(http.stats.timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_is_a_503_naming_loopmesh_and_for_grpc_unavailable() {
    let at = vip(6);
    let (_l, _route) = serve(at, Protocol::Grpc, &[]);
    let mut client = h1(at).await;
    let (status, headers, _) = get(&mut client, "GET").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-loopmesh-reason"], "no_healthy_endpoint");
    assert_eq!(headers["server"], "loopmesh");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(at).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{at}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = h2.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "gRPC answers in its own status");
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["x-loopmesh-reason"], "no_healthy_endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_connect_are_carried_as_bytes() {
    let echo = backend("echo", Behaviour::Ok).await;
    let at = vip(7);
    let (_l, route) = serve(at, Protocol::Http, &[&echo]);
    for head in [
        "GET /ws HTTP/1.1\r\nHost: api\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(at).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 101") || answer.starts_with("HTTP/1.1 200"), "{answer}");
        s.write_all(b"ping through the tunnel").await.unwrap();
        let mut echoed = vec![0u8; 23];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(&echoed, b"ping through the tunnel");
    }
    assert_eq!(route.http.load_full().unwrap().stats.upgrades.load(Ordering::Relaxed), 2);
    assert_eq!(echo.hits("CONNECT"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_outbound_stays_on_the_byte_path() {
    let a = backend("a", Behaviour::Ok).await;
    let at = vip(8);
    let (_l, route) = serve(at, Protocol::Tcp, &[&a]);
    assert!(route.http.load().is_none());
    let mut client = h1(at).await;
    for _ in 0..5 {
        assert_eq!(get(&mut client, "GET").await.2, "a");
    }
    assert_eq!(route.stats.total.load(Ordering::Relaxed), 1, "one connection, carried whole");
    assert_eq!(a.hits("GET"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_retry_naming_post_retries_it() {
    let bad = backend("bad", Behaviour::Unavailable).await;
    let good = backend("good", Behaviour::Ok).await;
    let at = vip(9);
    let policy = "type: MeshRetry\nname: post\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      http:\n        numRetries: 3\n        retryOn: [5xx, HttpMethodPost]\n";
    let l = serve_with(vec![outbound("api", at, Protocol::Http, &[&bad, &good])], policy);
    let mut client = h1(at).await;
    for _ in 0..20 {
        assert_eq!(get(&mut client, "POST").await.0, StatusCode::OK, "the policy lets a POST be retried");
    }
    let route = l.outbounds().pop().unwrap();
    assert!(route.http.load_full().unwrap().stats.retries.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_route_sends_a_tenth_to_the_canary_and_sets_headers() {
    let (stable, canary) = (backend("stable", Behaviour::Ok).await, backend("canary", Behaviour::Ok).await);
    let (at, canary_at) = (vip(10), vip(11));
    let route = "type: MeshHTTPRoute\nname: canary\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: api\n    rules:\n    - matches:\n      - path:\n          type: PathPrefix\n          value: /\n      default:\n        filters:\n        - type: ResponseHeaderModifier\n          responseHeaderModifier:\n            set:\n            - name: x-route\n              value: canary-split\n        backendRefs:\n        - kind: MeshService\n          name: api\n          weight: 90\n        - kind: MeshService\n          name: api-canary\n          weight: 10\n";
    let _l = serve_with(
        vec![
            outbound("api", at, Protocol::Http, &[&stable]),
            outbound("api-canary", canary_at, Protocol::Http, &[&canary]),
        ],
        route,
    );
    let mut client = h1(at).await;
    let mut to_canary = 0;
    for _ in 0..10_000 {
        let (status, headers, body) = get(&mut client, "GET").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-route"], "canary-split");
        to_canary += usize::from(body == "canary");
    }
    assert!((800..=1200).contains(&to_canary), "{to_canary} of 10,000 went to the canary, not 10 % within 2 points");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancing_strategy_and_a_circuit_breaker_apply() {
    let (a, b, bad) = (
        backend("a", Behaviour::Ok).await,
        backend("b", Behaviour::Ok).await,
        backend("bad", Behaviour::Unavailable).await,
    );
    let at = vip(12);
    let policies = "type: MeshLoadBalancingStrategy\nname: rr\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      loadBalancer:\n        type: RoundRobin\n---\ntype: MeshCircuitBreaker\nname: no-ejection\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      outlierDetection:\n        disabled: true\n";
    let l = serve_with(vec![outbound("api", at, Protocol::Http, &[&a, &b, &bad])], policies);
    let mut client = h1(at).await;
    for _ in 0..60 {
        assert_eq!(get(&mut client, "GET").await.0, StatusCode::OK);
    }
    let route = l.outbounds().pop().unwrap();
    let balancing = &route.balancer.load().balancing;
    assert_eq!(
        balancing.algorithm,
        loopmesh_sidecar::balance::Algorithm::RoundRobin,
        "the strategy reached the balancer"
    );
    assert!(balancing.outlier.disabled, "the circuit breaker reached the balancer");
    let http = route.http.load_full().unwrap();
    assert_eq!(http.stats.ejections_5xx.load(Ordering::Relaxed), 0, "outlier detection is disabled");
    // Round robin: the bad backend keeps its turn (one in three first attempts).
    assert!(bad.hits("GET") >= 15, "round robin kept sending to the bad backend: {}", bad.hits("GET"));
}
