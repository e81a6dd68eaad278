//! HTTP/2 to an endpoint on the `h2` crate, without hyper's client.
//!
//! hyper's HTTP/2 client spawns two tasks for every request (one waits
//! for the response, one pipes the body) and hands the response back over
//! a channel. Here the request's task opens the stream and waits for the
//! response itself; a body already in hand goes out at once, and only a
//! body still arriving gets a task to pipe it. One task per connection
//! still drives the connection, as HTTP/2 needs.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::http::request::Parts;
use hyper::{Request, Response};

use super::body::ReqBody;
use crate::proxy::Io;

/// hyper's defaults: windows that let one stream move a few MiB per
/// round trip (h2's own are 64 KiB).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// An HTTP/2 connection's handle, shared by every request on it.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

/// Why an attempt failed: `refused` when the endpoint did not process the
/// stream (REFUSED_STREAM, or above the last stream a GOAWAY kept, RFC 9113
/// section 6.8), so that it may be sent again anywhere.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Error {
    pub refused: bool,
    error: h2::Error,
}

impl From<h2::Error> for Error {
    fn from(error: h2::Error) -> Self {
        let refused = error.reason() == Some(Reason::REFUSED_STREAM) || (error.is_go_away() && error.is_remote());
        Self { refused, error }
    }
}

impl Conn {
    /// Handshakes over `io`; the connection is driven by a task of its own
    /// until it closes, holding `open` until then.
    pub async fn handshake(io: Box<dyn Io>, open: Box<dyn Send + Sync>) -> Result<Self, h2::Error> {
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection to an endpoint ended");
            }
            flag.store(true, Ordering::Relaxed);
            drop(open);
        });
        Ok(Self { send, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until the connection can open another stream; false when it
    /// closed or is going away (a GOAWAY came), and the pool then passes it by.
    pub async fn ready(&mut self) -> bool {
        let ready = std::future::poll_fn(|cx| self.send.poll_ready(cx)).await.is_ok();
        if !ready {
            self.closed.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Sends a request (its URI absolute) and waits for the response head.
    /// The stream opens and a body in hand goes before the first poll.
    pub fn send(mut self, head: Parts, body: ReqBody) -> impl Future<Output = Result<Response<Body>, Error>> + Send {
        let end = body.is_end_stream();
        let opened = self.send.send_request(Request::from_parts(head, ()), end);
        if opened.is_err() {
            // Going away, or gone: no more streams on it.
            self.closed.store(true, Ordering::Relaxed);
        }
        let opened = opened.and_then(|(response, stream)| {
            if !end {
                if body.is_buffered() {
                    send_buffered(body, stream)?;
                } else {
                    tokio::spawn(pipe(body, stream));
                }
            }
            Ok(response)
        });
        async move {
            let response = opened?.await?;
            Ok(response.map(|recv| Body { recv, data_done: false }))
        }
    }
}

/// Sends a body that is all in hand: h2 holds what the stream's window
/// does not take yet (64 KiB at most, [`super::body::REPLAY_LIMIT`]).
fn send_buffered(mut body: ReqBody, mut stream: SendStream<Bytes>) -> Result<(), h2::Error> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => stream.send_data(data, false)?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return stream.send_trailers(trailers);
                    }
                }
            },
            // Buffered bodies neither fail nor wait.
            Poll::Ready(Some(Err(_))) | Poll::Pending => {
                stream.send_reset(Reason::INTERNAL_ERROR);
                return Ok(());
            }
            Poll::Ready(None) => return stream.send_data(Bytes::new(), true),
        }
    }
}

/// Pipes a body still arriving from the client, as the endpoint's window
/// allows; a client that fails resets the stream.
async fn pipe(mut body: ReqBody, mut stream: SendStream<Bytes>) {
    loop {
        let frame = match body.frame().await {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "the client's request body failed");
                stream.send_reset(Reason::CANCEL);
                return;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                return;
            }
        };
        if data.is_empty() {
            continue;
        }
        // Waits for some window before sending, so that at most one chunk
        // waits in h2's buffer.
        stream.reserve_capacity(data.len());
        while stream.capacity() == 0 {
            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                // The stream was reset or the connection closed.
                _ => return,
            }
        }
        if stream.send_data(data, false).is_err() {
            return;
        }
    }
}

/// A response body, handing the endpoint more window as the client takes it.
pub struct Body {
    recv: RecvStream,
    data_done: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("data_done", &self.data_done).finish_non_exhaustive()
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
