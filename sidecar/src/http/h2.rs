//! HTTP/2 to an endpoint (RFC 9113, the client's side), built for a proxy.
//!
//! One task per connection owns the socket: it reads every frame that has
//! arrived, files it under the stream it belongs to, and writes what the
//! streams queued, under one lock taken once per batch. A request's own
//! task opens its stream, queues its head and a body in hand, and waits for
//! the response there; only a body still arriving gets a task to pipe it.
//! Headers are encoded without a dynamic table ([`super::hpack`]), and a
//! DATA frame's payload is handed on as the slice of the read buffer it
//! arrived in.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use fnv::FnvHashMap as HashMap;
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::response;
use hyper::{Method, Response};

mod driver;

use super::body::ReqBody;
use super::frame::{self, Reason};
use super::hpack::{self, Name};
use crate::proxy::Io;

/// hyper's defaults: windows that let one stream move a few MiB per
/// round trip (RFC 9113's own are 64 KiB).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// The most a response's header block may take, CONTINUATIONs included:
/// more is a flood, and ends the connection.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The most a decoded header list may take (hyper's server default is
/// 16 KiB; gRPC's is 8 KiB): more fails the stream.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// Streams at once until the endpoint's SETTINGS say (RFC 9113 advises at
/// least 100).
const INITIAL_MAX_STREAMS: usize = 100;

/// Why an attempt failed: `refused` when the endpoint did not process the
/// stream (REFUSED_STREAM, or above the last stream a GOAWAY kept, RFC 9113
/// section 6.8), so that it may be sent again anywhere.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}")]
pub struct Error {
    pub refused: bool,
    what: String,
}

impl Error {
    fn new(refused: bool, what: impl Into<String>) -> Self {
        Self { refused, what: what.into() }
    }

    fn reset(reason: Reason) -> Self {
        Self::new(reason == Reason::REFUSED_STREAM, format!("the endpoint reset the stream: {reason}"))
    }
}

/// An HTTP/2 connection's handle, shared by every request on it.
pub struct Conn {
    shared: Arc<Shared>,
}

impl Clone for Conn {
    fn clone(&self) -> Self {
        self.shared.lock().handles += 1;
        Self { shared: self.shared.clone() }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        if state.handles == 0 {
            state.wake_driver();
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// No more streams: read without the lock by the pool.
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    /// Frames queued for the socket.
    out: Vec<u8>,
    driver: Option<Waker>,
    streams: HashMap<u32, Stream>,
    next_id: u32,
    /// Streams counted against the endpoint's MAX_CONCURRENT_STREAMS.
    active: usize,
    max_active: usize,
    waiting_for_slot: Vec<Waker>,
    /// What this side may still send on the connection.
    send_window: i64,
    /// The endpoint's INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE.
    initial_window: i64,
    max_frame: usize,
    /// What the endpoint may still send on the connection, and what was
    /// taken since the last WINDOW_UPDATE.
    recv_window: i64,
    recv_taken: u32,
    /// Streams with data waiting for window.
    blocked: Vec<u32>,
    /// Set when no more streams may open: a GOAWAY came, ids ran out, or the
    /// connection ended (then `ended` says why).
    going_away: bool,
    ended: Option<Error>,
    /// `Conn` handles alive: with none and no stream, the connection closes.
    handles: usize,
    /// The header block being encoded.
    scratch: Vec<u8>,
}

#[derive(Default)]
struct Stream {
    head: Option<response::Parts>,
    head_seen: bool,
    /// The request was a HEAD: its response's content-length has no body.
    head_request: bool,
    /// What the response's content-length says is still to come (RFC 9113,
    /// section 8.1.1: DATA that disagrees makes the response malformed).
    body_left: Option<u64>,
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    remote_end: bool,
    error: Option<Error>,
    /// The response's reader (the request's task, then the body's).
    reader: Option<Waker>,
    recv_window: i64,
    recv_taken: u32,
    send_window: i64,
    /// Body data waiting for window, then trailers or the end.
    pending: VecDeque<Bytes>,
    pending_trailers: Option<HeaderMap>,
    pending_end: bool,
    local_end: bool,
    /// The body's pipe, waiting for `pending` to drain.
    writer: Option<Waker>,
    /// Counted in `active` (until both sides end, or a reset).
    counted: bool,
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Resets a stream from this side, failing its reader and its pipe.
    fn fail_stream(&mut self, id: u32, reason: Reason, error: Error) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.error.is_none() {
            frame::rst_stream(id, reason, &mut self.out);
            s.error = Some(error);
        }
        s.local_end = true;
        s.pending.clear();
        wake(&mut s.reader);
        wake(&mut s.writer);
        self.free_slot(id);
        self.wake_driver();
    }

    fn free_slot(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id)
            && s.counted
            && (s.error.is_some() || (s.local_end && s.remote_end))
        {
            s.counted = false;
            self.active -= 1;
            for w in self.waiting_for_slot.drain(..) {
                w.wake();
            }
        }
    }

    /// Fails every stream and refuses new ones: the connection is over.
    fn end(&mut self, error: Error, shared_closed: &AtomicBool) {
        shared_closed.store(true, Ordering::Relaxed);
        self.going_away = true;
        if self.ended.is_none() {
            self.ended = Some(error.clone());
        }
        for s in self.streams.values_mut() {
            if s.error.is_none() && !(s.remote_end && s.local_end) {
                s.error = Some(error.clone());
            }
            wake(&mut s.reader);
            wake(&mut s.writer);
        }
        for w in self.waiting_for_slot.drain(..) {
            w.wake();
        }
    }

    /// Moves a stream's pending body into DATA frames as the windows allow.
    fn flush_stream(&mut self, id: u32) {
        let max_frame = self.max_frame;
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.local_end || s.error.is_some() {
            s.pending.clear();
            return;
        }
        while let Some(chunk) = s.pending.front_mut() {
            let room = s.send_window.min(self.send_window);
            if room <= 0 {
                if !self.blocked.contains(&id) {
                    self.blocked.push(id);
                }
                return;
            }
            let n = chunk.len().min(room as usize).min(max_frame);
            let part = chunk.split_to(n);
            if chunk.is_empty() {
                s.pending.pop_front();
            }
            let end = s.pending.is_empty() && s.pending_end && s.pending_trailers.is_none();
            frame::data(id, &part, end, &mut self.out);
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            s.local_end |= end;
        }
        wake(&mut s.writer);
        if s.pending_end && !s.local_end {
            s.local_end = true;
            match s.pending_trailers.take() {
                Some(trailers) => {
                    self.scratch.clear();
                    for (name, value) in &trailers {
                        hpack::encode_header(name, value, &mut self.scratch);
                    }
                    frame::headers(id, &self.scratch, true, max_frame, &mut self.out);
                }
                None => frame::data(id, &[], true, &mut self.out),
            }
        }
        self.free_slot(id);
    }

    /// Opens a stream for `head`, its HEADERS queued.
    fn open(&mut self, head: &Parts, end: bool) -> Result<u32, Error> {
        if let Some(e) = &self.ended {
            return Err(Error::new(true, format!("the connection ended: {e}")));
        }
        if self.going_away {
            return Err(Error::new(true, "the endpoint is going away (GOAWAY)"));
        }
        let id = self.next_id;
        if id > frame::MAX_WINDOW as u32 {
            self.going_away = true;
            return Err(Error::new(true, "the connection ran out of stream ids"));
        }
        self.next_id += 2;
        self.scratch.clear();
        encode_head(head, &mut self.scratch);
        frame::headers(id, &self.scratch, end, self.max_frame, &mut self.out);
        self.active += 1;
        self.streams.insert(
            id,
            Stream {
                recv_window: i64::from(STREAM_WINDOW),
                send_window: self.initial_window,
                local_end: end,
                head_request: head.method == Method::HEAD,
                counted: true,
                ..Stream::default()
            },
        );
        self.wake_driver();
        Ok(id)
    }

    /// Gives back window for `n` bytes the reader took.
    fn release(&mut self, id: u32, n: usize) {
        let n = n as u32;
        if let Some(s) = self.streams.get_mut(&id)
            && !s.remote_end
        {
            s.recv_taken += n;
            if s.recv_taken >= STREAM_WINDOW / 2 {
                frame::window_update(id, s.recv_taken, &mut self.out);
                s.recv_window += i64::from(s.recv_taken);
                s.recv_taken = 0;
                self.wake_driver();
            }
        }
        self.release_connection(n);
    }

    fn release_connection(&mut self, n: u32) {
        self.recv_taken += n;
        if self.recv_taken >= CONNECTION_WINDOW / 2 {
            frame::window_update(0, self.recv_taken, &mut self.out);
            self.recv_window += i64::from(self.recv_taken);
            self.recv_taken = 0;
            self.wake_driver();
        }
    }

    /// The reader left: the stream is forgotten, and reset if still open.
    fn cancel(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else { return };
        if s.error.is_none() && !(s.local_end && s.remote_end) {
            frame::rst_stream(id, Reason::CANCEL, &mut self.out);
            self.wake_driver();
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.error.get_or_insert_with(|| Error::new(false, "cancelled"));
            // Data it held gives its connection window back.
            let held: usize = s.data.drain(..).map(|d| d.len()).sum();
            wake(&mut s.writer);
            self.free_slot(id);
            self.release_connection(held as u32);
        }
        self.streams.remove(&id);
        self.blocked.retain(|b| *b != id);
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// Sets `slot` to `cx`'s waker unless it already wakes the same task.
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The request's pseudo-headers from its (absolute) URI, then its headers
/// less those HTTP/2 forbids (RFC 9113, section 8.2.2).
fn encode_head(head: &Parts, out: &mut Vec<u8>) {
    hpack::encode(&Name::Method, head.method.as_str().as_bytes(), out);
    let authority = head.uri.authority().map(|a| a.as_str().as_bytes());
    if head.method != Method::CONNECT {
        hpack::encode(&Name::Scheme, head.uri.scheme_str().unwrap_or("http").as_bytes(), out);
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        hpack::encode(&Name::Path, if path.is_empty() { b"/" } else { path.as_bytes() }, out);
    }
    if let Some(authority) = authority {
        hpack::encode(&Name::Authority, authority, out);
    }
    for (name, value) in &head.headers {
        if is_connection_specific(name, value) || (authority.is_some() && name == header::HOST) {
            continue;
        }
        hpack::encode_header(name, value, out);
    }
}

fn is_connection_specific(name: &header::HeaderName, value: &HeaderValue) -> bool {
    super::HOP_BY_HOP.contains(name) || (name == header::TE && value != "trailers")
}

impl Conn {
    /// Starts a connection over `io`: the preface and this side's settings
    /// are queued, and a task of its own drives the connection until it
    /// closes, holding `open` until then.
    pub async fn handshake(io: Box<dyn Io>, open: Box<dyn Send + Sync>) -> Result<Self, Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        out.extend_from_slice(frame::PREFACE);
        frame::settings(
            &[(frame::ENABLE_PUSH, 0), (frame::INITIAL_WINDOW_SIZE, STREAM_WINDOW), (0x6, MAX_HEADER_LIST as u32)],
            &mut out,
        );
        frame::window_update(0, CONNECTION_WINDOW - 65_535, &mut out);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out,
                driver: None,
                streams: HashMap::default(),
                next_id: 1,
                active: 0,
                max_active: INITIAL_MAX_STREAMS,
                waiting_for_slot: Vec::new(),
                send_window: 65_535,
                initial_window: 65_535,
                max_frame: frame::DEFAULT_MAX_FRAME,
                recv_window: i64::from(CONNECTION_WINDOW),
                recv_taken: 0,
                blocked: Vec::new(),
                going_away: false,
                ended: None,
                handles: 1,
                scratch: Vec::new(),
            }),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(driver::Driver::new(io, shared.clone(), open));
        Ok(Self { shared })
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Waits until the connection can open another stream; false when it
    /// closed or is going away (a GOAWAY came), and the pool then passes it by.
    pub async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.going_away {
                return Poll::Ready(false);
            }
            if state.active < state.max_active {
                return Poll::Ready(true);
            }
            if !state.waiting_for_slot.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting_for_slot.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Sends a request (its URI absolute) and waits for the response head.
    /// The stream opens and a body in hand is queued before the first poll.
    pub fn send(self, head: Parts, body: ReqBody) -> impl Future<Output = Result<Response<Body>, Error>> + Send {
        let end = body.is_end_stream();
        let opened = {
            let mut state = self.shared.lock();
            let opened = state.open(&head, end);
            if let Ok(id) = opened
                && !end
            {
                if body.is_buffered() {
                    queue_buffered(&mut state, id, body);
                } else {
                    tokio::spawn(pipe(body, self.shared.clone(), id));
                }
            }
            if opened.is_err() {
                self.shared.closed.store(true, Ordering::Relaxed);
            }
            opened
        };
        let shared = self.shared.clone();
        drop(self);
        async move {
            let id = opened?;
            Responding { shared: Some(shared), id }.await
        }
    }
}

/// Queues a body that is all in hand; what the windows do not take yet
/// waits in the stream (64 KiB at most, [`super::body::REPLAY_LIMIT`]).
fn queue_buffered(state: &mut State, id: u32, mut body: ReqBody) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunks = VecDeque::new();
    let trailers = loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        chunks.push_back(data);
                    }
                }
                Err(frame) => break frame.into_trailers().ok(),
            },
            Poll::Ready(None) => break None,
            // Buffered bodies neither fail nor wait.
            Poll::Ready(Some(Err(_))) | Poll::Pending => {
                state.fail_stream(id, Reason::INTERNAL_ERROR, Error::new(false, "the request body failed"));
                return;
            }
        }
    };
    if let Some(s) = state.streams.get_mut(&id) {
        s.pending = chunks;
        s.pending_trailers = trailers;
        s.pending_end = true;
        state.flush_stream(id);
        state.wake_driver();
    }
}

/// Pipes a body still arriving from the client, as the endpoint's window
/// allows: the next chunk is read once the last one has gone.
async fn pipe(mut body: ReqBody, shared: Arc<Shared>, id: u32) {
    loop {
        let frame = body.frame().await;
        // The lock is held in a block of its own: never across an await.
        let ended = {
            let mut state = shared.lock();
            let Some(s) = state.streams.get_mut(&id).filter(|s| s.error.is_none()) else { return };
            match frame {
                None => s.pending_end = true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => s.pending.push_back(data),
                    Err(frame) => {
                        s.pending_trailers = frame.into_trailers().ok();
                        s.pending_end = true;
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the client's request body failed");
                    state.fail_stream(id, Reason::CANCEL, Error::new(false, "the client's request body failed"));
                    return;
                }
            }
            let ended = s.pending_end;
            state.flush_stream(id);
            state.wake_driver();
            ended
        };
        if ended {
            return;
        }
        let drained = std::future::poll_fn(|cx| {
            let mut state = shared.lock();
            match state.streams.get_mut(&id) {
                Some(s) if s.error.is_none() && !s.pending.is_empty() => {
                    park(&mut s.writer, cx);
                    Poll::Pending
                }
                Some(s) => Poll::Ready(s.error.is_none()),
                None => Poll::Ready(false),
            }
        });
        if !drained.await {
            return;
        }
    }
}

/// Waits for a stream's response head.
struct Responding {
    shared: Option<Arc<Shared>>,
    id: u32,
}

impl Future for Responding {
    type Output = Result<Response<Body>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(shared) = &self.shared else { return Poll::Pending };
        let mut state = shared.lock();
        let id = self.id;
        let Some(s) = state.streams.get_mut(&id) else {
            return Poll::Ready(Err(Error::new(false, "the stream is gone")));
        };
        if let Some(head) = s.head.take() {
            let end = s.remote_end && s.data.is_empty() && s.trailers.is_none();
            drop(state);
            let shared = self.shared.take();
            return Poll::Ready(Ok(Response::from_parts(head, Body { shared, id, end })));
        }
        if let Some(e) = s.error.clone() {
            state.cancel(id);
            drop(state);
            self.shared = None;
            return Poll::Ready(Err(e));
        }
        park(&mut s.reader, cx);
        Poll::Pending
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().cancel(self.id);
        }
    }
}

/// A response body, handing the endpoint more window as the client takes it.
pub struct Body {
    shared: Option<Arc<Shared>>,
    id: u32,
    end: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("id", &self.id).field("end", &self.end).finish_non_exhaustive()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().cancel(self.id);
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(shared) = &this.shared else { return Poll::Ready(None) };
        let mut state = shared.lock();
        let id = this.id;
        let Some(s) = state.streams.get_mut(&id) else {
            return Poll::Ready(Some(Err(Error::new(false, "the stream is gone"))));
        };
        let polled = if let Some(data) = s.data.pop_front() {
            this.end = s.remote_end && s.data.is_empty() && s.trailers.is_none();
            state.release(id, data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        } else if let Some(trailers) = s.trailers.take() {
            this.end = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        } else if let Some(e) = s.error.clone() {
            Some(Err(e))
        } else if s.remote_end {
            None
        } else {
            park(&mut s.reader, cx);
            return Poll::Pending;
        };
        // The end, or an error: the stream is done with.
        this.end = true;
        state.cancel(id);
        drop(state);
        this.shared = None;
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.end || self.shared.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf as _, BytesMut};
    use frame::Head;
    use futures::FutureExt as _;
    use hyper::Request;
    use hyper::header::HeaderName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    /// The endpoint's side of a connection, driven frame by frame.
    struct Peer {
        io: DuplexStream,
        buf: BytesMut,
    }

    impl Peer {
        async fn start() -> (Conn, Self) {
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let conn = Conn::handshake(Box::new(ours), Box::new(())).await.unwrap();
            let mut peer = Self { io: theirs, buf: BytesMut::new() };
            let mut preface = [0; 24];
            peer.io.read_exact(&mut preface).await.unwrap();
            assert_eq!(preface, frame::PREFACE);
            let (settings, _) = peer.next().await;
            assert_eq!((settings.kind, settings.flags), (frame::SETTINGS, 0));
            let (update, _) = peer.next().await;
            assert_eq!((update.kind, update.stream), (frame::WINDOW_UPDATE, 0));
            (conn, peer)
        }

        async fn next(&mut self) -> (Head, Bytes) {
            loop {
                if self.buf.len() >= Head::LEN {
                    let head = Head::parse(self.buf[..9].try_into().unwrap());
                    if self.buf.len() >= Head::LEN + head.len {
                        self.buf.advance(Head::LEN);
                        return (head, self.buf.split_to(head.len).freeze());
                    }
                }
                assert!(self.io.read_buf(&mut self.buf).await.unwrap() > 0, "the client closed the connection");
            }
        }

        /// The next frame that is not a SETTINGS or PING acknowledgement.
        async fn next_of_stream(&mut self) -> (Head, Bytes) {
            loop {
                let (head, payload) = self.next().await;
                if !matches!(head.kind, frame::SETTINGS | frame::PING) {
                    return (head, payload);
                }
            }
        }

        async fn send(&mut self, frames: &[u8]) {
            self.io.write_all(frames).await.unwrap();
        }

        /// Sends a header block as one HEADERS frame.
        async fn headers(&mut self, stream: u32, block: &[u8], end: bool) {
            let mut out = Vec::new();
            frame::headers(stream, block, end, 16_384, &mut out);
            self.send(&out).await;
        }
    }

    /// A GET on a stream of its own, awaited in a task of its own.
    fn get(conn: &Conn) -> tokio::task::JoinHandle<Result<Response<Body>, Error>> {
        tokio::spawn(conn.clone().send(request("GET", "http://backend/"), ReqBody::whole(vec![])))
    }

    fn request(method: &str, uri: &str) -> Parts {
        let mut req = Request::builder().method(method).uri(uri).body(()).unwrap();
        req.headers_mut().insert("x-id", HeaderValue::from_static("7"));
        req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        req.into_parts().0
    }

    fn fields(block: Bytes) -> Vec<(String, String)> {
        let mut out = Vec::new();
        hpack::Decoder::new(4096)
            .decode(block, |n, v| {
                out.push((n.as_str().to_owned(), String::from_utf8(v.to_vec()).unwrap()));
            })
            .unwrap();
        out
    }

    fn block(fields: &[(Name, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            hpack::encode(name, value.as_bytes(), &mut out);
        }
        out
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_response_in_pieces_arrives_whole() {
        let (conn, mut peer) = Peer::start().await;
        let responding = tokio::spawn(conn.send(request("GET", "http://backend:8080/a?b=c"), ReqBody::whole(vec![])));
        let (head, payload) = peer.next_of_stream().await;
        assert_eq!((head.kind, head.flags, head.stream), (frame::HEADERS, frame::END_HEADERS | frame::END_STREAM, 1));
        assert_eq!(
            fields(payload),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/a?b=c"),
                (":authority", "backend:8080"),
                ("x-id", "7")
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned())),
            "connection-specific headers stay behind"
        );
        let mut out = Vec::new();
        // An interim 103, then RFC 7541 C.6's first response (Huffman, indexed)
        // split over a padded HEADERS and a CONTINUATION.
        let interim = block(&[(Name::Status, "103")]);
        frame::headers(1, &interim, false, 16_384, &mut out);
        let head_block = hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        );
        let mut padded = vec![3];
        padded.extend_from_slice(&head_block[..10]);
        padded.extend_from_slice(&[0, 0, 0]);
        Head { len: padded.len(), kind: frame::HEADERS, flags: frame::PADDED, stream: 1 }.write(&mut out);
        out.extend_from_slice(&padded);
        Head { len: head_block.len() - 10, kind: frame::CONTINUATION, flags: frame::END_HEADERS, stream: 1 }
            .write(&mut out);
        out.extend_from_slice(&head_block[10..]);
        Head { len: 8, kind: frame::DATA, flags: frame::PADDED, stream: 1 }.write(&mut out);
        out.extend_from_slice(&[2, b'h', b'e', b'l', b'l', b'o', 0, 0]);
        frame::headers(
            1,
            &block(&[(Name::Header(HeaderName::from_static("grpc-status")), "0")]),
            true,
            16_384,
            &mut out,
        );
        peer.send(&out).await;
        let response = responding.await.unwrap().unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()["location"], "https://www.example.com");
        let whole = response.into_body().collect().await.unwrap();
        assert_eq!(whole.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(whole.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_body_waits_for_the_endpoints_window_and_pings_are_answered() {
        let (conn, mut peer) = Peer::start().await;
        let mut out = Vec::new();
        frame::settings(&[(frame::INITIAL_WINDOW_SIZE, 10)], &mut out);
        Head { len: 8, kind: frame::PING, flags: 0, stream: 0 }.write(&mut out);
        out.extend_from_slice(b"12345678");
        peer.send(&out).await;
        let (ack, _) = peer.next().await;
        assert_eq!((ack.kind, ack.flags), (frame::SETTINGS, frame::ACK));
        let (pong, payload) = peer.next().await;
        assert_eq!((pong.kind, pong.flags, &payload[..]), (frame::PING, frame::ACK, &b"12345678"[..]));
        let body = ReqBody::whole(vec![Bytes::from_static(b"0123456789abcdefghij"), Bytes::from_static(b"KLMNO")]);
        let _responding = tokio::spawn(conn.send(request("POST", "http://backend/up"), body));
        let (head, _) = peer.next_of_stream().await;
        assert_eq!((head.kind, head.flags), (frame::HEADERS, frame::END_HEADERS));
        let mut got = Vec::new();
        loop {
            let (head, payload) = peer.next_of_stream().await;
            assert_eq!(head.kind, frame::DATA);
            assert!(payload.len() <= 10, "a DATA frame of {} bytes passed a window of 10", payload.len());
            got.extend_from_slice(&payload);
            if head.flags & frame::END_STREAM != 0 {
                break;
            }
            let mut update = Vec::new();
            frame::window_update(1, payload.len() as u32, &mut update);
            peer.send(&update).await;
        }
        assert_eq!(got, b"0123456789abcdefghijKLMNO");
    }

    #[tokio::test]
    async fn the_endpoint_gets_window_back_as_the_client_reads() {
        let (conn, mut peer) = Peer::start().await;
        let responding = get(&conn);
        peer.next_of_stream().await;
        peer.headers(1, &block(&[(Name::Status, "200")]), false).await;
        let mut body = responding.await.unwrap().unwrap().into_body();
        // The whole 2 MiB stream window, in 16 KiB frames.
        let chunk = vec![b'x'; 16_384];
        let mut out = Vec::new();
        for _ in 0..128 {
            frame::data(1, &chunk, false, &mut out);
        }
        peer.send(&out).await;
        let mut read = 0;
        while read < 1024 * 1024 {
            read += body.frame().await.unwrap().unwrap().into_data().unwrap().len();
        }
        let (update, payload) = peer.next_of_stream().await;
        assert_eq!((update.kind, update.stream), (frame::WINDOW_UPDATE, 1));
        assert_eq!(u32::from_be_bytes(payload[..].try_into().unwrap()) as usize, read);
        // One byte past what the window now allows resets the stream.
        let mut out = Vec::new();
        for _ in 0..64 {
            frame::data(1, &chunk, false, &mut out);
        }
        frame::data(1, b"!", false, &mut out);
        peer.send(&out).await;
        let (reset, payload) = peer.next_of_stream().await;
        assert_eq!((reset.kind, reset.stream, &payload[..]), (frame::RST_STREAM, 1, &[0, 0, 0, 3][..]));
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            failed |= frame.is_err();
        }
        assert!(failed, "the body ends with the stream's error");
    }

    #[tokio::test]
    async fn a_body_that_disagrees_with_its_content_length_fails() {
        let (conn, mut peer) = Peer::start().await;
        let length = Name::Header(header::CONTENT_LENGTH);
        let responding = get(&conn);
        peer.next_of_stream().await;
        peer.headers(1, &block(&[(Name::Status, "200"), (length.clone(), "10")]), false).await;
        let mut out = Vec::new();
        frame::data(1, b"short", true, &mut out);
        peer.send(&out).await;
        let body = responding.await.unwrap().unwrap().into_body();
        assert!(body.collect().await.is_err(), "5 bytes of 10 are not a whole body");
        let (reset, _) = peer.next_of_stream().await;
        assert_eq!((reset.kind, reset.stream), (frame::RST_STREAM, 1));
        // A HEAD's content-length announces a body that never comes.
        let head = tokio::spawn(conn.clone().send(request("HEAD", "http://backend/"), ReqBody::whole(vec![])));
        peer.next_of_stream().await;
        peer.headers(3, &block(&[(Name::Status, "200"), (length, "10")]), true).await;
        let response = head.await.unwrap().unwrap();
        assert!(response.into_body().collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn a_malformed_response_fails_its_stream_only() {
        let (conn, mut peer) = Peer::start().await;
        let first = get(&conn);
        peer.next_of_stream().await;
        // No :status.
        peer.headers(1, &block(&[(Name::Header(HeaderName::from_static("x-a")), "b")]), true).await;
        let error = first.await.unwrap().unwrap_err();
        assert!(!error.refused, "{error}");
        let (reset, payload) = peer.next_of_stream().await;
        assert_eq!((reset.kind, reset.stream, &payload[..]), (frame::RST_STREAM, 1, &[0, 0, 0, 1][..]));
        let second = get(&conn);
        let (head, _) = peer.next_of_stream().await;
        assert_eq!(head.stream, 3);
        peer.headers(3, &block(&[(Name::Status, "204")]), true).await;
        assert_eq!(second.await.unwrap().unwrap().status(), 204);
    }

    #[tokio::test]
    async fn an_hpack_bomb_fails_its_stream_only() {
        let (conn, mut peer) = Peer::start().await;
        let first = get(&conn);
        peer.next_of_stream().await;
        // A 4,000-byte field put in the table once, then named 100 times:
        // 400 KB of headers from a 4 KB block.
        let mut bomb = block(&[(Name::Status, "200")]);
        bomb.extend_from_slice(&[0x40, 5]);
        bomb.extend_from_slice(b"x-big");
        bomb.extend_from_slice(&[0x7f, 0xa1, 0x1e]);
        bomb.extend_from_slice(&[b'a'; 4000]);
        bomb.extend_from_slice(&[0xbe; 100]);
        peer.headers(1, &bomb, true).await;
        assert!(first.await.unwrap().is_err());
        let (reset, _) = peer.next_of_stream().await;
        assert_eq!((reset.kind, reset.stream), (frame::RST_STREAM, 1));
        // The table followed the block: the next response may use its entry.
        let second = get(&conn);
        peer.next_of_stream().await;
        let mut out = Vec::new();
        let mut head = block(&[(Name::Status, "200")]);
        head.push(0xbe);
        frame::headers(3, &head, true, 16_384, &mut out);
        peer.send(&out).await;
        let response = second.await.unwrap().unwrap();
        assert_eq!(response.headers()["x-big"].len(), 4000);
    }

    #[tokio::test]
    async fn a_header_flood_ends_the_connection() {
        let (conn, mut peer) = Peer::start().await;
        let responding = get(&conn);
        peer.next_of_stream().await;
        let mut out = Vec::new();
        Head { len: 0, kind: frame::HEADERS, flags: 0, stream: 1 }.write(&mut out);
        for _ in 0..17 {
            Head { len: 16_384, kind: frame::CONTINUATION, flags: 0, stream: 1 }.write(&mut out);
            out.extend_from_slice(&[0x40; 16_384]);
        }
        peer.send(&out).await;
        let (goaway, payload) = peer.next_of_stream().await;
        assert_eq!(goaway.kind, frame::GOAWAY);
        assert_eq!(payload[4..], Reason::ENHANCE_YOUR_CALM.0.to_be_bytes());
        assert!(responding.await.unwrap().is_err());
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn max_concurrent_streams_holds_the_next_request() {
        let (conn, mut peer) = Peer::start().await;
        let mut out = Vec::new();
        frame::settings(&[(frame::MAX_CONCURRENT_STREAMS, 1)], &mut out);
        peer.send(&out).await;
        let (ack, _) = peer.next().await;
        assert_eq!(ack.kind, frame::SETTINGS);
        let first = get(&conn);
        peer.next_of_stream().await;
        let mut second = conn.clone();
        assert_eq!(second.ready().now_or_never(), None, "a second stream would pass the endpoint's limit");
        peer.headers(1, &block(&[(Name::Status, "200")]), true).await;
        drop(first.await.unwrap().unwrap());
        assert!(second.ready().await);
    }
}
