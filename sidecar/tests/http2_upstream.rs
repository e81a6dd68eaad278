//! The HTTP/2 leg to an endpoint (`loopmesh_sidecar::http::h2`) with real
//! sockets: an h2c backend that echoes each request body frame as it comes,
//! a real hyper HTTP/2 client through an `http2` VIP. A body still arriving
//! is piped while the response streams back (a bidirectional call), a
//! large upload passes the endpoint's flow control, and trailers pass both
//! ways.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

mod support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loopmesh_shared::model::Protocol;
use loopmesh_sidecar::listeners::Listeners;
use loopmesh_tests::process::eventually;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Frames = Result<Frame<Bytes>, Infallible>;
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body whose frames a test sends as it goes.
fn channel(room: usize) -> (mpsc::Sender<Frames>, Body) {
    let (tx, rx) = mpsc::channel(room);
    let frames = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, StreamBody::new(frames).boxed_unsync())
}

/// An h2c backend echoing each request body frame as it arrives, then the
/// request's trailers with `x-echo-bytes` added.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (tx, body) = channel(4);
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut total = 0usize;
                        let mut trailers = HeaderMap::new();
                        while let Some(Ok(frame)) = body.frame().await {
                            match frame.into_data() {
                                Ok(data) => {
                                    total += data.len();
                                    if tx.send(Ok(Frame::data(data))).await.is_err() {
                                        return;
                                    }
                                }
                                Err(f) => trailers = f.into_trailers().unwrap_or_default(),
                            }
                        }
                        trailers.insert("x-echo-bytes", total.to_string().parse().unwrap());
                        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    });
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

/// How a rude h2c backend treats the streams it is sent.
#[derive(Clone, Copy)]
enum Rude {
    /// Answers this many on a connection, then sends GOAWAY and closes it
    /// once they are done (a server rotating its connections).
    GoAwayAfter(usize),
    /// Refuses every n-th stream unread (RST_STREAM REFUSED_STREAM), as a
    /// server at its stream limit does.
    RefuseEvery(usize),
    /// Takes every stream and never answers.
    Silent,
}

/// An h2c backend on the `h2` crate's server; counts its connections.
async fn rude_backend(rude: Rude) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(s).await.unwrap();
                let mut seen = 0;
                let mut unanswered = Vec::new();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    seen += 1;
                    if let Rude::Silent = rude {
                        unanswered.push(respond);
                        continue;
                    }
                    if let Rude::RefuseEvery(n) = rude
                        && seen % n == 0
                    {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    send.send_data(Bytes::from_static(b"ok"), true).unwrap();
                    if let Rude::GoAwayAfter(n) = rude
                        && seen == n
                    {
                        conn.graceful_shutdown();
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// 100 GETs, 25 at a time, through `at`: every one answered 200 "ok".
async fn hundred_gets(at: SocketAddr) {
    let s = h2_client(at).await;
    for _ in 0..4 {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..25 {
            let mut s = s.clone();
            calls.spawn(async move {
                s.ready().await.unwrap();
                let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
                let req = Request::builder().uri(format!("http://{at}/")).body(body).unwrap();
                let r = s.send_request(req).await.unwrap();
                let status = r.status();
                (status, r.into_body().collect().await.unwrap().to_bytes())
            });
        }
        while let Some(done) = calls.join_next().await {
            let (status, body) = done.unwrap();
            assert_eq!((status, body.as_ref()), (hyper::StatusCode::OK, &b"ok"[..]), "no request fails");
        }
    }
}

/// An `http2` outbound at a VIP of its own over `backend`.
fn serve(n: u8, backend: SocketAddr) -> (Arc<Listeners>, SocketAddr) {
    support::serve(Ipv4Addr::new(127, 1, 212, n), backend, Protocol::Http2)
}

async fn h2_client(at: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let io = TokioIo::new(TcpStream::connect(at).await.unwrap());
    let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    s
}

#[tokio::test]
async fn a_bidirectional_call_gets_each_message_back_before_it_sends_the_next() {
    let backend = echo_backend().await;
    let (_l, at) = serve(1, backend);
    let mut s = h2_client(at).await;
    let (tx, body) = channel(1);
    let req = Request::builder().method("POST").uri(format!("http://{at}/echo")).body(body).unwrap();
    // The first message goes before the response can exist: the sidecar
    // must send the request on with its body still open.
    tx.send(Ok(Frame::data(Bytes::from_static(b"message 0")))).await.unwrap();
    let mut body = s.send_request(req).await.unwrap().into_body();
    for i in 0..50 {
        let echoed = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_data().unwrap(), format!("message {i}"), "message {i} came back before the next went");
        if i < 49 {
            tx.send(Ok(Frame::data(Bytes::from(format!("message {}", i + 1))))).await.unwrap();
        }
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client", "done".parse().unwrap());
    tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap();
    let trailers = rest.trailers().unwrap();
    assert_eq!(trailers["x-client"], "done", "the client's trailers reached the endpoint");
    let sent: usize = (0..50).map(|i| format!("message {i}").len()).sum();
    assert_eq!(trailers["x-echo-bytes"], sent.to_string().as_str());
}

#[tokio::test]
async fn an_upload_of_eight_mebibytes_passes_the_endpoints_flow_control() {
    let backend = echo_backend().await;
    let (_l, at) = serve(2, backend);
    let mut s = h2_client(at).await;
    let (tx, body) = channel(4);
    tokio::spawn(async move {
        for i in 0..128u8 {
            tx.send(Ok(Frame::data(Bytes::from(vec![i; 64 * 1024])))).await.unwrap();
        }
    });
    let req = Request::builder().method("POST").uri(format!("http://{at}/echo")).body(body).unwrap();
    let all = s.send_request(req).await.unwrap().into_body().collect().await.unwrap();
    assert_eq!(all.trailers().unwrap()["x-echo-bytes"], (128 * 64 * 1024).to_string().as_str());
    let bytes = all.to_bytes();
    assert_eq!(bytes.len(), 128 * 64 * 1024);
    assert!(bytes.chunks(64 * 1024).enumerate().all(|(i, c)| c.iter().all(|b| usize::from(*b) == i)), "in order");
}

#[tokio::test]
async fn an_endpoint_that_sends_goaway_gets_one_new_connection_and_no_request_fails() {
    let (backend, connections) = rude_backend(Rude::GoAwayAfter(10)).await;
    let (_l, at) = serve(3, backend);
    hundred_gets(at).await;
    // Each round of 25 finds its connection going away at the 10th stream;
    // the others wait for one new connection rather than opening 15.
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!((4..=8).contains(&opened), "one connection at a time per endpoint: {opened} opened for 4 rounds");
}

#[tokio::test]
async fn refused_streams_are_sent_again_without_counting_as_retries_or_failures() {
    let (backend, _) = rude_backend(Rude::RefuseEvery(4)).await;
    let (l, at) = serve(4, backend);
    hundred_gets(at).await;
    let route = l.outbounds().into_iter().find(|r| r.listen == at).unwrap();
    let stats = &route.http.load_full().unwrap().stats;
    assert!(stats.resends.load(std::sync::atomic::Ordering::Relaxed) >= 25, "a quarter of the streams went again");
    assert_eq!(stats.retries.load(std::sync::atomic::Ordering::Relaxed), 0, "not retries");
    assert_eq!(route.stats.ejections.load(std::sync::atomic::Ordering::Relaxed), 0, "the endpoint stays in");
}

#[tokio::test]
async fn requests_cut_off_by_their_client_leave_no_outstanding_count_behind() {
    // The count of requests outstanding at an endpoint is least-request
    // balancing's signal: one left behind by a request whose client left
    // while it waited makes the endpoint look busy for good.
    let (backend, _) = rude_backend(Rude::Silent).await;
    let (l, at) = serve(5, backend);
    // The h2 crate's client: its connection is one task, whose end closes the socket.
    let (mut s, conn) = h2::client::handshake(TcpStream::connect(at).await.unwrap()).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut waiting = Vec::new();
    for _ in 0..20 {
        s = s.ready().await.unwrap();
        let (response, _) =
            s.send_request(Request::builder().uri(format!("http://{at}/")).body(()).unwrap(), true).unwrap();
        waiting.push(response);
    }
    let route = l.outbounds().into_iter().find(|r| r.listen == at).unwrap();
    let outstanding = || route.balancer.load().endpoints()[0].active.load(std::sync::atomic::Ordering::Relaxed);
    eventually("every request counted waiting at the endpoint", Duration::from_secs(2), || outstanding() == 20).await;
    // The client goes away: its connection closes with the 20 in flight.
    conn.abort();
    eventually("no request counted at the endpoint after their client left", Duration::from_secs(2), || {
        outstanding() == 0
    })
    .await;
}
