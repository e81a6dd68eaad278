//! HTTP/1.1 to an endpoint, driven by the request's own task.
//!
//! hyper's client gives each connection a task of its own and passes the
//! request, the response and every body chunk between it and the request's
//! task over channels; that hand-off and a second parse into a growing
//! header map were 40 % of a proxied request's instructions. A proxy has the
//! request in hand, so here the request's task writes it, parses the
//! response head with httparse, and the response body reads straight from
//! the socket as the client's side takes it.
//!
//! Framing follows RFC 9112 section 6: a response to HEAD, and a 1xx, 204
//! or 304, has no body; `transfer-encoding: chunked` is decoded (another
//! coding runs to the close); else `content-length`; else the body runs to
//! the connection's close. A connection is reused only when its response
//! ended within its framing, the whole request was sent, and the endpoint
//! did not say `close`.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, Version};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::ReqBody;
use crate::proxy::Io;

/// The most header fields a response head (or a trailer section) may
/// carry: hyper's limit too.
const MAX_HEADERS: usize = 100;
/// The longest response head, chunk-size line or trailer section.
const MAX_HEAD: usize = 64 * 1024;
/// Room made before a read; it doubles while reads fill it, up to
/// [`MAX_READ`], for large bodies.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the endpoint closed the connection before its response ended")]
    Closed,
    #[error("the connection to the endpoint failed: {0}")]
    Io(#[from] io::Error),
    #[error("the endpoint's response is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
    #[error("the client's request body failed: {0}")]
    Request(hyper::Error),
}

/// One HTTP/1.1 connection to an endpoint, idle or lent to one request.
pub struct Conn {
    io: Box<dyn Io>,
    /// Bytes read and not yet taken.
    buf: BytesMut,
    read_size: usize,
    /// Bytes to write (request head, framing, body), and how many went.
    out: Vec<u8>,
    written: usize,
    /// Dropped with the connection: its place in the pool's open count.
    _open: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

impl Conn {
    /// `open` is held until the connection closes.
    pub fn new(io: Box<dyn Io>, open: Box<dyn Send + Sync>) -> Self {
        Self { io, buf: BytesMut::new(), read_size: FIRST_READ, out: Vec::new(), written: 0, _open: open }
    }

    /// Whether an idle connection can take a request: the endpoint has not
    /// closed it nor sent anything unasked. Costs no system call when the
    /// last read drained the socket (tokio then knows it is not readable).
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_pending()
    }

    /// Sends `head` and `body`, and reads the response's head; its body
    /// reads from this connection as it is polled. Should the endpoint
    /// answer before the request body has all gone, the rest is not sent
    /// and the connection is not reused.
    /// (Not an `async fn`, which would hold its arguments twice.)
    pub fn send<'a>(
        mut self,
        head: &'a Parts,
        body: ReqBody,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'a {
        let framing = RequestFraming::of(&body);
        encode_head(&mut self.out, head, framing);
        let mut request = Some(Outgoing { body, framing, ended: false });
        async move {
            let mut write_error = None;
            let parsed = std::future::poll_fn(|cx| {
                if let Some(outgoing) = &mut request {
                    match self.poll_request(cx, outgoing) {
                        Poll::Ready(Ok(())) => request = None,
                        Poll::Ready(Err(Error::Request(e))) => return Poll::Ready(Err(Error::Request(e))),
                        // The endpoint may have answered and closed: read what it said.
                        Poll::Ready(Err(e)) => {
                            write_error = Some(e);
                            request = None;
                        }
                        Poll::Pending => {}
                    }
                }
                self.poll_head(cx, &head.method)
            })
            .await;
            let (response, framing, keep_alive) = match parsed {
                Ok(p) => p,
                Err(e) => return Err(write_error.unwrap_or(e)),
            };
            let reuse = keep_alive && request.is_none() && write_error.is_none();
            Ok(response.map(|()| Body { conn: Some(self), framing, reuse }))
        }
    }

    /// Writes what is gathered in `out`, gathering more of the body while
    /// it is ready; done when the whole request has gone.
    fn poll_request(&mut self, cx: &mut Context<'_>, outgoing: &mut Outgoing) -> Poll<Result<(), Error>> {
        loop {
            while !outgoing.ended && self.out.len() - self.written < WRITE_BATCH {
                match Pin::new(&mut outgoing.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(frame) => outgoing.ended = encode_frame(&mut self.out, frame, outgoing.framing)?,
                }
            }
            if self.written == self.out.len() {
                self.out.clear();
                self.written = 0;
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                return if outgoing.ended { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.written += n;
        }
    }

    /// Reads until a final response head has arrived (skipping 1xx ones).
    fn poll_head(&mut self, cx: &mut Context<'_>, method: &Method) -> Poll<Result<Head, Error>> {
        loop {
            if let Some(parsed) = self.parse_head(method)? {
                return Poll::Ready(Ok(parsed));
            }
            if self.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Malformed("the response head is over 64 KiB")));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }

    /// Reads once into `buf`; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// The final response head at the front of `buf`, once it is whole.
    fn parse_head(&mut self, method: &Method) -> Result<Option<Head>, Error> {
        loop {
            // Left uninitialised: filling 100 empty fields (and their
            // spans) before each parse cost a tenth of a request.
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.buf,
                &mut fields,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("over 100 header fields")),
                Err(_) => return Err(Error::Malformed("the status line or a header field cannot be parsed")),
            };
            let code = parsed.code.unwrap_or_default();
            // Interim answers (100 Continue, 103 Early Hints) are this hop's.
            if (100..200).contains(&code) && code != 101 {
                self.buf.advance(len);
                continue;
            }
            let status =
                StatusCode::from_u16(code).map_err(|_| Error::Malformed("the status code is not 100 to 999"))?;
            let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
            let hops = Hops::read(parsed.headers)?;
            // Where each field this hop passes on lies in the head, so that
            // the values can share its bytes instead of each being copied.
            let base = self.buf.as_ptr() as usize;
            let spans: SmallVec<[[usize; 4]; 24]> = parsed
                .headers
                .iter()
                .filter(|f| !hops.drops(f.name.as_bytes()))
                .map(|f| {
                    let (name, value) = (f.name.as_ptr() as usize - base, f.value.as_ptr() as usize - base);
                    [name, name + f.name.len(), value, value + f.value.len()]
                })
                .collect();
            let framing = hops.framing(method, status);
            let keep_alive = hops.keep_alive(version) && !matches!(framing, Framing::Close);
            drop(hops);
            let head = self.buf.split_to(len).freeze();
            let mut headers = HeaderMap::with_capacity(spans.len());
            for &[n0, n1, v0, v1] in &spans {
                let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| Error::Malformed("a header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                    .map_err(|_| Error::Malformed("a header value"))?;
                headers.append(name, value);
            }
            let mut response = Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            return Ok(Some((response, framing, keep_alive)));
        }
    }
}

/// What a response head's hop-by-hop fields (RFC 9110 7.6.1) and length
/// say. They are read from the raw fields and never forwarded: the
/// client's side frames the response its own way.
#[derive(Debug, Default)]
struct Hops<'h> {
    /// `transfer-encoding` was sent; its last coding is `chunked`.
    chunked: Option<bool>,
    length: Option<u64>,
    close: bool,
    keep_alive: bool,
    /// Other names `connection` lists: this hop's too.
    listed: SmallVec<[&'h [u8]; 2]>,
}

impl<'h> Hops<'h> {
    fn read(fields: &[httparse::Header<'h>]) -> Result<Self, Error> {
        let mut hops = Self::default();
        for f in fields {
            let name = f.name.as_bytes();
            if name.eq_ignore_ascii_case(b"connection") {
                for token in f.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        hops.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        hops.keep_alive = true;
                    } else if !token.is_empty() {
                        hops.listed.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = f.value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii);
                hops.chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(f.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(Error::Malformed("content-length is not a number"))?;
                if hops.length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("two different content-length values"));
                }
                hops.length = Some(n);
            }
        }
        Ok(hops)
    }

    /// Whether a field stays on this hop. `content-length` does when
    /// `transfer-encoding` overrides it (RFC 9112 6.3).
    fn drops(&self, name: &[u8]) -> bool {
        const HOP_BY_HOP: [&[u8]; 6] =
            [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"];
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || (self.chunked.is_some() && name.eq_ignore_ascii_case(b"content-length"))
            || self.listed.iter().any(|l| name.eq_ignore_ascii_case(l))
    }

    /// RFC 9112 section 6.3, in its order.
    fn framing(&self, method: &Method, status: StatusCode) -> Framing {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Framing::Length(0);
        }
        match (self.chunked, self.length) {
            (Some(true), _) => Framing::Chunked(Chunk::Size),
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    }

    /// Whether the endpoint keeps the connection open after this response.
    fn keep_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 { self.keep_alive } else { !self.close }
    }
}

/// A final response head: the response, its body's framing, and whether
/// the endpoint keeps the connection open after it.
type Head = (Response<()>, Framing, bool);

/// A request body on its way.
struct Outgoing {
    body: ReqBody,
    framing: RequestFraming,
    ended: bool,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RequestFraming {
    /// `content-length`, when the length is known and there are no trailers.
    Length(u64),
    Chunked,
}

impl RequestFraming {
    fn of(body: &ReqBody) -> Self {
        match body.size_hint().exact() {
            Some(n) if !body.has_trailers() => Self::Length(n),
            _ => Self::Chunked,
        }
    }
}

fn encode_head(out: &mut Vec<u8>, head: &Parts, framing: RequestFraming) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &head.headers {
        // The framing is this hop's: written below from the body.
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Length(n) => {
            // An empty body gets a length only where one is expected.
            let expected = matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
            if n > 0 || had_length || expected {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one body frame (as a chunk, when chunked); true when the body ended.
fn encode_frame(
    out: &mut Vec<u8>,
    frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    framing: RequestFraming,
) -> Result<bool, Error> {
    let chunked = framing == RequestFraming::Chunked;
    let Some(frame) = frame else {
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        return Ok(true);
    };
    let frame = match frame.map_err(Error::Request)?.into_data() {
        Ok(data) => {
            if data.is_empty() {
                return Ok(false);
            }
            if chunked {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            return Ok(false);
        }
        Err(frame) => frame,
    };
    // Trailers end the body; a length-framed body cannot carry them.
    if chunked {
        out.extend_from_slice(b"0\r\n");
        if let Ok(trailers) = frame.into_trailers() {
            for (name, value) in &trailers {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(true)
}

/// How much of the connection a response body takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the endpoint closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A response body, read from its connection as it is polled.
pub struct Body {
    /// Taken when the body ends (to go back to the pool) or fails.
    conn: Option<Conn>,
    framing: Framing,
    reuse: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("framing", &self.framing).finish_non_exhaustive()
    }
}

impl Body {
    /// The connection, once the body has ended and it can carry another request.
    pub fn reusable(&mut self) -> Option<Conn> {
        let ended = matches!(self.framing, Framing::Done | Framing::Length(0));
        let clean = self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if ended && clean && self.reuse { self.conn.take() } else { None }
    }

    fn data(conn: &mut Conn, left: &mut u64) -> Frame<Bytes> {
        let n = conn.buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        *left -= n as u64;
        Frame::data(conn.buf.split_to(n).freeze())
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
        let Some(conn) = &mut self.conn else { return Poll::Ready(Ok(None)) };
        loop {
            match &mut self.framing {
                Framing::Done | Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Poll::Ready(Ok(None));
                }
                Framing::Length(left) => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(Error::Closed));
                    }
                    return Poll::Ready(Ok(Some(Self::data(conn, left))));
                }
                Framing::Close => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(Ok(None));
                    }
                    let all = conn.buf.split().freeze();
                    return Poll::Ready(Ok(Some(Frame::data(all))));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        conn.buf.advance(len);
                        self.framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) => ready!(Self::fill_more(conn, cx, "a chunk-size line"))?,
                    Err(_) => return Poll::Ready(Err(Error::Malformed("a chunk-size line"))),
                },
                Framing::Chunked(Chunk::Data(0)) => self.framing = Framing::Chunked(Chunk::DataEnd),
                Framing::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(Error::Closed));
                    }
                    return Poll::Ready(Ok(Some(Self::data(conn, left))));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        ready!(Self::fill_more(conn, cx, "a chunk's end"))?;
                    } else if &conn.buf[..2] == b"\r\n" {
                        conn.buf.advance(2);
                        self.framing = Framing::Chunked(Chunk::Size);
                    } else {
                        return Poll::Ready(Err(Error::Malformed("a chunk is longer than its size")));
                    }
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&conn.buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                if let (Ok(n), Ok(v)) =
                                    (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                                {
                                    trailers.append(n, v);
                                }
                            }
                            conn.buf.advance(len);
                            self.framing = Framing::Done;
                            if !trailers.is_empty() {
                                return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                            }
                        }
                        Ok(httparse::Status::Partial) => ready!(Self::fill_more(conn, cx, "the trailer section"))?,
                        Err(_) => return Poll::Ready(Err(Error::Malformed("the trailer section"))),
                    }
                }
            }
        }
    }

    /// Reads more for a framing line that is not whole yet.
    fn fill_more(conn: &mut Conn, cx: &mut Context<'_>, what: &'static str) -> Poll<Result<(), Error>> {
        if conn.buf.len() >= MAX_HEAD {
            return Poll::Ready(Err(Error::Malformed(what)));
        }
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(Error::Closed));
        }
        Poll::Ready(Ok(()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        match ready!(this.poll_next(cx)) {
            Ok(frame) => Poll::Ready(frame.map(Ok)),
            Err(e) => {
                // A connection that failed mid-body carries nothing more.
                this.conn = None;
                this.framing = Framing::Done;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
