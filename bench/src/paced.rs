//! An open-loop HTTP client for latency at a set rate: each request leaves
//! when it is due, whether or not earlier ones have come back, and its
//! latency counts from when it was due (no coordinated omission).
//!
//! The client must cost far less CPU per request than the proxies it
//! measures: the machine has two cores, shared by the client, the backend
//! and the proxy, and a heavy client measures its own queue. So:
//! - one thread sleeps until each request is due and hands it to its
//!   connection (tokio's timer ticks in milliseconds, which fired requests
//!   in bursts and put the direct p50 at 1.3 ms);
//! - the connections run on one more thread and speak from fixed bytes:
//!   HTTP/1.1 one request at a time per connection; HTTP/2 (h2c) as many
//!   streams as are due, each a constant HEADERS frame, the answers read
//!   frame by frame. A hyper client cost about as much CPU per request as
//!   the proxy under test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const CONNECTIONS: usize = 8;

/// Latency p50 and p99 in us of `rate` requests per second for `secs`
/// over 8 connections to `target` (`h2`: HTTP/2 prior knowledge).
pub async fn paced(target: SocketAddr, h2: bool, rate: f64, secs: f64) -> (f64, f64) {
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(target, h2, rate, secs))
    });
    tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap()
}

async fn run(target: SocketAddr, h2: bool, rate: f64, secs: f64) -> (f64, f64) {
    let mut due = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = TcpStream::connect(target).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (tx, rx) = unbounded_channel::<Instant>();
        due.push(tx);
        tasks.push(if h2 {
            tokio::spawn(h2_connection(stream, rx, target))
        } else {
            tokio::spawn(h1_connection(stream, rx))
        });
    }
    // Request k is due at start + k / rate, on connection k % 8.
    let pacer = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now() + Duration::from_millis(20);
        for k in 0..(rate * secs) as u32 {
            let at = start + interval * k;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            due[k as usize % CONNECTIONS].send(at).unwrap();
        }
    });
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    pacer.join().unwrap();
    all.sort_by(f64::total_cmp);
    (all[all.len() / 2], all[all.len() * 99 / 100])
}

fn us_since(at: Instant) -> f64 {
    at.elapsed().as_secs_f64() * 1e6
}

/// One keep-alive GET at a time: written from fixed bytes, read until its
/// response is whole (by content-length, or the last chunk).
async fn h1_connection(mut stream: TcpStream, mut due: UnboundedReceiver<Instant>) -> Vec<f64> {
    let mut samples = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    while let Some(at) = due.recv().await {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").await.unwrap();
        let mut filled = 0;
        loop {
            let n = stream.read(&mut buf[filled..]).await.unwrap();
            assert!(n > 0, "the target closed the connection");
            filled += n;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head_len) = head.parse(&buf[..filled]).unwrap() else { continue };
            assert_eq!(head.code, Some(200));
            let length = head.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
            let whole = match length {
                Some(h) => filled - head_len >= std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap(),
                None => buf[..filled].ends_with(b"0\r\n\r\n"),
            };
            if whole {
                break;
            }
        }
        samples.push(us_since(at));
    }
    samples
}

// HTTP/2 frame types and flags (RFC 9113, section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Streams opened as they fall due; each answer read frame by frame and
/// checked for `:status 200` as HPACK's static entry 8, which every server
/// here sends for it. Any other head (another status, or 200 spelled
/// another way) fails the run loudly rather than count: a decoder cost the
/// client more CPU than the proxy it measured.
async fn h2_connection(mut stream: TcpStream, mut due: UnboundedReceiver<Instant>, authority: SocketAddr) -> Vec<f64> {
    // GET http://{authority}/ : static entries 2, 6 and 4, and
    // :authority as a literal with the name of static entry 1.
    let authority = authority.to_string();
    let mut block = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    // The connection's receive window, opened once for the whole run.
    frame(&mut out, WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes());
    stream.write_all(&out).await.unwrap();
    out.clear();
    let mut samples = Vec::new();
    // Streams awaiting their answer: when each was due, and whether its head came.
    let mut open: HashMap<u32, (Instant, bool)> = HashMap::new();
    let (mut next_id, mut received, mut done) = (1u32, 0usize, false);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut waiting = std::collections::VecDeque::new();
    // Until the server's SETTINGS say otherwise (RFC 9113 suggests at least 100).
    let mut max_streams = 100;
    while !(done && open.is_empty() && waiting.is_empty()) {
        tokio::select! {
            at = due.recv(), if !done => match at {
                Some(at) => waiting.push_back(at),
                None => done = true,
            },
            n = stream.read_buf(&mut buf) => {
                assert!(n.unwrap() > 0, "the target closed the connection");
                let mut at = 0;
                while buf.len() - at >= 9 {
                    let head = &buf[at..at + 9];
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    if buf.len() - at - 9 < len {
                        break;
                    }
                    let (kind, flags) = (head[3], head[4]);
                    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let payload = &buf[at + 9..at + 9 + len];
                    match kind {
                        HEADERS => {
                            // The first HEADERS frame has :status; a later one is trailers.
                            let skip = usize::from(flags & PADDED != 0) + if flags & PRIORITY != 0 { 5 } else { 0 };
                            if let Some((_, headed @ false)) = open.get_mut(&id) {
                                assert_eq!(payload.get(skip), Some(&0x88), "stream {id}: not a 200: {payload:02x?}");
                                *headed = true;
                            }
                        }
                        DATA => received += len,
                        SETTINGS if flags & ACK == 0 => {
                            for setting in payload.chunks_exact(6) {
                                if setting[..2] == [0, 3] {
                                    max_streams = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]) as usize;
                                }
                            }
                            frame(&mut out, SETTINGS, ACK, 0, &[]);
                        }
                        PING if flags & ACK == 0 => frame(&mut out, PING, ACK, 0, payload),
                        RST_STREAM | GOAWAY => panic!("the target ended stream {id} (frame type {kind}): {payload:02x?}"),
                        _ => {}
                    }
                    if matches!(kind, HEADERS | DATA)
                        && flags & END_STREAM != 0
                        && let Some((at, _)) = open.remove(&id)
                    {
                        samples.push(us_since(at));
                    }
                    at += 9 + len;
                }
                buf.drain(..at);
                if received > 1 << 29 {
                    frame(&mut out, WINDOW_UPDATE, 0, 0, &(received as u32).to_be_bytes());
                    received = 0;
                }
            }
        }
        // Past the server's stream limit, due requests wait here (their
        // latency still counts from when they were due).
        while open.len() < max_streams
            && let Some(at) = waiting.pop_front()
        {
            frame(&mut out, HEADERS, END_STREAM | END_HEADERS, next_id, &block);
            open.insert(next_id, (at, false));
            next_id += 2;
        }
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap();
            out.clear();
        }
    }
    samples
}
