//! Request bodies that can be sent again, and response bodies that report
//! when they end.
//!
//! A retry must send the same body. The body bytes the client has already
//! sent (for HTTP/1.1 with a known length up to [`REPLAY_LIMIT`], all of
//! them; otherwise what has arrived by the time the request is read, which
//! for a unary gRPC call is the whole call) are kept; a body that ended
//! within them can be replayed, one still arriving is streamed once.
//! Nothing waits for a streaming body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::BodyExt as _;
use hyper::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{h1, h2};

/// The most request body kept for a retry (Envoy keeps 1 MiB per
/// connection; a request that sends more is not retried once sent).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A request body as read so far.
#[derive(Debug)]
pub struct Captured {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    /// The rest of a body that did not end within what was kept.
    rest: Option<Incoming>,
    /// The body ended within what was kept.
    whole: bool,
}

impl Captured {
    /// Reads what the client has sent of `body` without waiting, or all of
    /// it when its length is known and small.
    pub async fn read(mut body: Incoming) -> Result<Self, hyper::Error> {
        let known_small = body.size_hint().exact().is_some_and(|n| n as usize <= REPLAY_LIMIT);
        let mut chunks = Vec::new();
        let mut trailers = None;
        let mut size = 0;
        let ended = loop {
            if body.is_end_stream() {
                break true;
            }
            if size > REPLAY_LIMIT {
                break false;
            }
            let frame = if known_small {
                body.frame().await
            } else {
                match body.frame().now_or_never() {
                    Some(f) => f,
                    None => break false,
                }
            };
            match frame {
                None => break true,
                Some(frame) => match frame?.into_data() {
                    Ok(data) => {
                        size += data.len();
                        chunks.push(data);
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        break true;
                    }
                },
            }
        };
        Ok(Self { chunks, trailers, rest: (!ended).then_some(body), whole: ended })
    }

    /// Whether the whole body is kept, so that it can be sent again.
    pub fn replayable(&self) -> bool {
        self.whole
    }

    /// The body for one attempt: a replay, or (once) the streaming rest.
    pub fn attempt(&mut self) -> ReqBody {
        ReqBody { chunks: self.chunks.clone(), next: 0, trailers: self.trailers.clone(), rest: self.rest.take() }
    }
}

/// The body an attempt sends upstream.
#[derive(Debug)]
pub struct ReqBody {
    /// Cloning `Bytes` shares them; an empty list allocates nothing.
    chunks: Vec<Bytes>,
    next: usize,
    trailers: Option<HeaderMap>,
    rest: Option<Incoming>,
}

impl ReqBody {
    pub fn stream(body: Incoming) -> Self {
        Self { chunks: Vec::new(), next: 0, trailers: None, rest: Some(body) }
    }

    /// A body all in hand, for tests of what sends it.
    #[cfg(test)]
    pub fn whole(chunks: Vec<Bytes>) -> Self {
        Self { chunks, next: 0, trailers: None, rest: None }
    }

    /// Whether the whole body is in hand (nothing still arriving).
    pub fn is_buffered(&self) -> bool {
        self.rest.is_none()
    }

    /// Whether kept trailers end the body (HTTP/1.1 can send them only chunked).
    pub fn has_trailers(&self) -> bool {
        self.trailers.is_some()
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(chunk) = this.chunks.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if let Some(rest) = &mut this.rest {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.chunks.len() && self.trailers.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let kept: u64 = self.chunks.iter().skip(self.next).map(|c| c.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(kept),
            Some(rest) => {
                let h = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(h.lower() + kept);
                if let Some(upper) = h.upper() {
                    hint.set_upper(upper + kept);
                }
                hint
            }
        }
    }
}

/// What happens when a response body ends: counted, logged, its
/// connection returned to the pool.
pub trait OnEnd: Send + Sync + 'static {
    /// A frame moved (for the stream idle timeout).
    fn moved(&self);
    /// `complete`: the body reached its end (else the client left or the
    /// endpoint failed mid-body). `conn`: its HTTP/1.1 connection, when it
    /// can carry another request.
    fn ended(&mut self, complete: bool, conn: Option<h1::Conn>);
}

/// An endpoint's response body: read by the request's own task ([`h1`]),
/// an HTTP/2 stream's ([`h2`]), or hyper's (an upgrade's answer).
#[derive(Debug)]
pub enum Upstream {
    Hyper(Incoming),
    H1(h1::Body),
    H2(h2::Body),
}

/// Errors of a response body, boxed as hyper takes them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::H1(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
        }
    }
}

/// A response to the client: the endpoint's body, or a local one. `E`
/// runs when it ends (held inline: no allocation per response).
pub struct RespBody<E: OnEnd> {
    inner: Inner,
    on_end: Option<E>,
    complete: bool,
}

enum Inner {
    Upstream(Upstream),
    Local(Option<Bytes>),
    /// A reply's headers carry everything (gRPC's trailers-only form).
    Empty,
}

impl<E: OnEnd> std::fmt::Debug for RespBody<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespBody").field("complete", &self.complete).finish_non_exhaustive()
    }
}

impl<E: OnEnd> RespBody<E> {
    pub fn upstream(body: Upstream, on_end: E) -> Self {
        let mut b = Self { inner: Inner::Upstream(body), on_end: Some(on_end), complete: false };
        b.check_end();
        b
    }

    pub fn local(text: Bytes) -> Self {
        Self { inner: Inner::Local(Some(text)), on_end: None, complete: true }
    }

    pub fn empty() -> Self {
        Self { inner: Inner::Empty, on_end: None, complete: true }
    }

    fn check_end(&mut self) {
        if let Inner::Upstream(b) = &self.inner
            && b.is_end_stream()
        {
            self.finish(true);
        }
    }

    fn finish(&mut self, complete: bool) {
        self.complete = complete;
        if let Some(mut on_end) = self.on_end.take() {
            let conn = match &mut self.inner {
                Inner::Upstream(Upstream::H1(b)) if complete => b.reusable(),
                _ => None,
            };
            on_end.ended(complete, conn);
        }
    }
}

impl<E: OnEnd> Drop for RespBody<E> {
    fn drop(&mut self) {
        self.finish(self.complete);
    }
}

impl<E: OnEnd + Unpin> Body for RespBody<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            Inner::Empty => Poll::Ready(None),
            Inner::Upstream(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => this.finish(true),
                    Poll::Ready(Some(Err(_))) => this.finish(false),
                    Poll::Ready(Some(Ok(_))) => {
                        if let Some(on_end) = &this.on_end {
                            on_end.moved();
                        }
                        this.check_end();
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(t) => t.is_none(),
            Inner::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(t) => SizeHint::with_exact(t.as_ref().map_or(0, |t| t.len() as u64)),
            Inner::Empty => SizeHint::with_exact(0),
        }
    }
}
