//! The HTTP/1.1 leg to an endpoint (`loopmesh_sidecar::http::h1`) with real
//! sockets: a backend that writes its answers byte by byte as a test says
//! (chunked with trailers and split lines, to the close, 4 MiB, HEAD, 204,
//! 100 Continue, `connection: close`, garbage), real hyper clients through
//! the VIP, and the connections the backend saw counted.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loopmesh_shared::model::Protocol;
use loopmesh_sidecar::listeners::Listeners;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Connections the backend accepted.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// Reads one request (head and body, by content-length or chunked); its
/// method, path and body. `None` when the client closed.
async fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if r.read_until(b'\n', &mut head).await.ok()? == 0 {
            return None;
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(&head).unwrap();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.ok()?;
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    r.read_line(&mut line).await.ok()?;
                    if line == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).await.ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).await.ok()?;
    }
    Some((req.method.unwrap().to_owned(), req.path.unwrap().to_owned(), body))
}

fn big_body() -> Vec<u8> {
    (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// Writes `parts` one write each, a little apart, so that the sidecar
/// reads them in as many pieces.
async fn dribble(w: &mut BufReader<TcpStream>, parts: &[&[u8]]) {
    for p in parts {
        w.get_mut().write_all(p).await.unwrap();
        w.get_mut().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                while let Some((method, path, body)) = read_request(&mut s).await {
                    match path.as_str() {
                        "/plain" => dribble(&mut s, &[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain"]).await,
                        "/chunked" => {
                            dribble(
                                &mut s,
                                &[
                                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n",
                                    b"x-test: split head\r\n\r\n5",
                                    b"\r\nhello\r",
                                    b"\n6;ext=1\r\n world\r\n0\r\n",
                                    b"x-sum: 42\r\n\r\n",
                                ],
                            )
                            .await;
                        }
                        "/close" => {
                            dribble(&mut s, &[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the close"]).await;
                            return;
                        }
                        "/close-header" => {
                            dribble(&mut s, &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye"])
                                .await;
                            return;
                        }
                        "/big" => {
                            let body = big_body();
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                            s.get_mut().write_all(head.as_bytes()).await.unwrap();
                            for piece in body.chunks(100_000) {
                                s.get_mut().write_all(piece).await.unwrap();
                            }
                        }
                        "/head" => {
                            assert_eq!(method, "HEAD");
                            dribble(&mut s, &[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"]).await;
                        }
                        "/hops" => {
                            dribble(
                                &mut s,
                                &[b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nx-kept: yes\r\ncontent-length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
                            )
                            .await;
                        }
                        "/no-content" => dribble(&mut s, &[b"HTTP/1.1 204 No Content\r\n\r\n"]).await,
                        "/continue" => {
                            dribble(
                                &mut s,
                                &[b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
                            )
                            .await;
                        }
                        "/echo" => {
                            let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
                            let text = format!("{} {sum}", body.len());
                            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                            s.get_mut().write_all(answer.as_bytes()).await.unwrap();
                        }
                        "/answer-then-close" => {
                            dribble(&mut s, &[b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce"]).await;
                            return;
                        }
                        _ => {
                            dribble(&mut s, &[b"NOT HTTP AT ALL\r\n\r\n"]).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Backend { addr, connections }
}

/// An `http` outbound at a VIP of its own over `b`.
fn serve(n: u8, b: &Backend) -> (Arc<Listeners>, SocketAddr) {
    support::serve(Ipv4Addr::new(127, 1, 211, n), b.addr, Protocol::Http)
}

async fn client(at: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(at).await.unwrap());
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn call(
    s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
    s.ready().await.unwrap();
    let req = Request::builder().method(method).uri(path).header("host", "api").body(Full::default()).unwrap();
    let r = s.send_request(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

#[tokio::test]
async fn every_framing_of_a_response_arrives_intact_and_the_connection_is_reused_when_it_may_be() {
    let b = backend().await;
    let (_l, at) = serve(1, &b);
    let mut c = client(at).await;
    let (status, headers, body) = call(&mut c, "GET", "/chunked").await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"hello world"[..]));
    assert_eq!(headers["x-test"], "split head");
    assert_eq!(call(&mut c, "GET", "/plain").await.2, b"plain");
    let (status, headers, body) = call(&mut c, "HEAD", "/head").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers["content-length"], "100", "HEAD keeps the length it would have");
    assert_eq!(call(&mut c, "GET", "/no-content").await.0, StatusCode::NO_CONTENT);
    let (status, _, body) = call(&mut c, "GET", "/continue").await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]), "the interim 100 stays on its hop");
    let (status, _, body) = call(&mut c, "GET", "/big").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == big_body(), "4 MiB arrive byte for byte ({} bytes came)", body.len());
    assert_eq!(b.connections.load(Ordering::SeqCst), 1, "one upstream connection carried all six");

    // A body that runs to the close, and one whose endpoint says close:
    // intact, and their connections are not reused.
    assert_eq!(call(&mut c, "GET", "/close").await.2, b"until the close");
    assert_eq!(call(&mut c, "GET", "/close-header").await.2, b"bye");
    assert_eq!(call(&mut c, "GET", "/plain").await.2, b"plain");
    assert_eq!(b.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hop_by_hop_fields_of_a_response_stay_on_their_hop() {
    let b = backend().await;
    let (_l, at) = serve(6, &b);
    let mut c = client(at).await;
    let (status, headers, body) = call(&mut c, "GET", "/hops").await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(headers["x-kept"], "yes");
    for name in ["x-hop", "keep-alive"] {
        assert!(!headers.contains_key(name), "{name} is the endpoint's hop only: {headers:?}");
    }
    assert_ne!(
        headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"99"[..]),
        "transfer-encoding overrides a content-length"
    );
    // Its connection said keep-alive: the next request reuses it.
    assert_eq!(call(&mut c, "GET", "/plain").await.2, b"plain");
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn trailers_of_a_chunked_response_reach_an_http2_client() {
    let b = backend().await;
    let (_l, at) = serve(2, &b);
    let io = TokioIo::new(TcpStream::connect(at).await.unwrap());
    let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri(format!("http://{at}/chunked")).body(Empty::<Bytes>::new()).unwrap();
    let collected = s.send_request(req).await.unwrap().into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().and_then(|t| t.get("x-sum")).unwrap(), "42");
    assert_eq!(collected.to_bytes(), "hello world");
}

#[tokio::test]
async fn a_streamed_request_body_of_a_mebibyte_arrives_whole() {
    let b = backend().await;
    let (_l, at) = serve(3, &b);
    let io = TokioIo::new(TcpStream::connect(at).await.unwrap());
    let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    // No length known up front: the client sends it chunked, past what a
    // retry keeps, so the sidecar streams it on.
    let pieces: Vec<Result<Frame<Bytes>, std::io::Error>> =
        (0..64u8).map(|i| Ok(Frame::data(Bytes::from(vec![i; 16 * 1024])))).collect();
    let body = StreamBody::new(futures::stream::iter(pieces));
    let req = Request::builder().method("POST").uri("/echo").header("host", "api").body(body).unwrap();
    let r = s.send_request(req).await.unwrap();
    let text = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let sum: u64 = (0..64u64).map(|i| i * 16 * 1024).sum();
    assert_eq!(text, format!("{} {sum}", 64 * 16 * 1024));
}

#[tokio::test]
async fn a_pooled_connection_the_endpoint_closed_is_not_used_again() {
    let b = backend().await;
    let (_l, at) = serve(4, &b);
    let mut c = client(at).await;
    for _ in 0..3 {
        // The endpoint answers with a length and no `close`, then closes
        // while the connection waits in the pool.
        assert_eq!(call(&mut c, "GET", "/answer-then-close").await.2, b"once");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.connections.load(Ordering::SeqCst), 3, "a new connection each time, and no failed request");
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_503_that_says_why() {
    let b = backend().await;
    let (l, at) = serve(5, &b);
    let mut c = client(at).await;
    let (status, headers, _) = call(&mut c, "POST", "/garbage").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[loopmesh_sidecar::http::REASON_HEADER], "upstream_reset");
    // The sidecar goes on serving.
    assert_eq!(call(&mut c, "GET", "/plain").await.2, b"plain");
    drop(l);
}
