//! The task that owns an HTTP/2 connection's socket: it reads every frame
//! that has arrived and files it under its stream, and writes what the
//! streams queued.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::AsyncWrite;

use super::{Error, MAX_HEADER_BLOCK, MAX_HEADER_LIST, Shared, State, is_connection_specific, park, wake};
use crate::http::frame::{self, Head, Reason};
use crate::http::hpack::{self, Name};
use crate::proxy::Io;

/// The task that owns the connection's socket.
pub(super) struct Driver {
    io: Box<dyn Io>,
    shared: Arc<Shared>,
    read: BytesMut,
    /// Bytes taken from `State::out`, being written.
    writing: Vec<u8>,
    written: usize,
    decoder: hpack::Decoder,
    /// A header block waiting for its CONTINUATION frames: its stream,
    /// whether it ends the stream, and the block so far.
    continuing: Option<(u32, bool, BytesMut)>,
    /// A GOAWAY is queued (or the socket failed): write what is left, then stop.
    closing: bool,
    _open: Box<dyn Send + Sync>,
}

/// The header table the endpoint's encoder may use (RFC 9113's default).
const HEADER_TABLE: usize = 4096;

/// A connection error (RFC 9113, section 5.4.1): GOAWAY, then close.
struct ConnError(Reason, &'static str);

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // Reads a bounded number of times per poll, to let other tasks run.
        let mut reading = true;
        for _ in 0..16 {
            if this.closing {
                break;
            }
            if this.read.capacity() - this.read.len() < 16 * 1024 {
                this.read.reserve(64 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.read) {
                Poll::Pending => {
                    reading = false;
                    break;
                }
                Poll::Ready(Ok(0)) => {
                    this.fail(Error::new(false, "the endpoint closed the connection"));
                    break;
                }
                Poll::Ready(Ok(_)) => {
                    if let Err(ConnError(reason, what)) = this.frames() {
                        tracing::debug!(%reason, what, "HTTP/2 connection error");
                        let mut state = this.shared.lock();
                        frame::goaway(0, reason, &mut state.out);
                        state.end(Error::new(false, format!("HTTP/2 connection error: {what}")), &this.shared.closed);
                        this.closing = true;
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.fail(Error::new(false, format!("reading from the endpoint failed: {e}")));
                    break;
                }
            }
        }
        let wrote = this.write(cx);
        match wrote {
            Poll::Ready(Err(e)) => {
                this.fail(Error::new(false, format!("writing to the endpoint failed: {e}")));
                return Poll::Ready(());
            }
            Poll::Ready(Ok(())) if this.closing => {
                let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                return Poll::Ready(());
            }
            _ => {}
        }
        let mut state = this.shared.lock();
        if (wrote.is_ready() && !state.out.is_empty()) || (reading && !this.closing) {
            // More was queued while writing, or more may be read: come back at once.
            cx.waker().wake_by_ref();
        } else if state.handles == 0 && state.streams.is_empty() && !this.closing {
            frame::goaway(0, Reason::NO_ERROR, &mut state.out);
            state.end(Error::new(true, "the connection closed"), &this.shared.closed);
            this.closing = true;
            cx.waker().wake_by_ref();
        } else {
            park(&mut state.driver, cx);
        }
        Poll::Pending
    }
}

impl Driver {
    pub(super) fn new(io: Box<dyn Io>, shared: Arc<Shared>, open: Box<dyn Send + Sync>) -> Self {
        Self {
            io,
            shared,
            read: BytesMut::with_capacity(64 * 1024),
            writing: Vec::new(),
            written: 0,
            decoder: hpack::Decoder::new(HEADER_TABLE),
            continuing: None,
            closing: false,
            _open: open,
        }
    }

    fn fail(&mut self, error: Error) {
        self.closing = true;
        self.shared.lock().end(error, &self.shared.closed);
    }

    /// Writes what the streams queued; Ready(Ok) when all of it went.
    fn write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.written == self.writing.len() {
                self.writing.clear();
                self.written = 0;
                let mut state = self.shared.lock();
                if state.out.is_empty() {
                    drop(state);
                    return Pin::new(&mut self.io).poll_flush(cx);
                }
                std::mem::swap(&mut self.writing, &mut state.out);
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.writing[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Handles every whole frame read so far, under one lock.
    fn frames(&mut self) -> Result<(), ConnError> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        while self.read.len() >= Head::LEN {
            let head = Head::parse(self.read[..Head::LEN].try_into().unwrap_or(&[0; 9]));
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(ConnError(Reason::FRAME_SIZE_ERROR, "a frame is larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            if self.read.len() < Head::LEN + head.len {
                break;
            }
            self.read.advance(Head::LEN);
            let payload = self.read.split_to(head.len).freeze();
            self.frame(&mut state, head, payload)?;
        }
        Ok(())
    }

    fn frame(&mut self, state: &mut State, head: Head, payload: Bytes) -> Result<(), ConnError> {
        if self.continuing.is_some() && head.kind != frame::CONTINUATION {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "a header block was interrupted"));
        }
        match head.kind {
            frame::DATA => self.data(state, head, payload),
            frame::HEADERS => {
                let Some((start, end)) = frame::unpad(head.flags, &payload) else {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "HEADERS padding is longer than the frame"));
                };
                let start = start + if head.flags & frame::PRIORITY_FLAG != 0 { 5 } else { 0 };
                if start > end || head.stream == 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "a HEADERS frame is malformed"));
                }
                let block = payload.slice(start..end);
                let end_stream = head.flags & frame::END_STREAM != 0;
                if head.flags & frame::END_HEADERS != 0 {
                    return self.header_block(state, head.stream, end_stream, block);
                }
                self.continuing = Some((head.stream, end_stream, BytesMut::from(&block[..])));
                Ok(())
            }
            frame::CONTINUATION => {
                let Some((stream, end_stream, mut block)) = self.continuing.take() else {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                if head.stream != stream {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "CONTINUATION on another stream"));
                }
                block.extend_from_slice(&payload);
                if block.len() > MAX_HEADER_BLOCK {
                    return Err(ConnError(Reason::ENHANCE_YOUR_CALM, "a header block is larger than 256 KiB"));
                }
                if head.flags & frame::END_HEADERS != 0 {
                    return self.header_block(state, stream, end_stream, block.freeze());
                }
                self.continuing = Some((stream, end_stream, block));
                Ok(())
            }
            frame::PRIORITY => Ok(()),
            frame::RST_STREAM => {
                if head.stream == 0 || payload.len() != 4 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "an RST_STREAM frame is malformed"));
                }
                let reason = Reason(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
                if let Some(s) = state.streams.get_mut(&head.stream) {
                    // NO_ERROR after a whole response: the endpoint wants no more of the body.
                    if !(reason == Reason::NO_ERROR && s.remote_end) {
                        s.error = Some(Error::reset(reason));
                    }
                    s.local_end = true;
                    s.pending.clear();
                    wake(&mut s.reader);
                    wake(&mut s.writer);
                    state.free_slot(head.stream);
                }
                Ok(())
            }
            frame::SETTINGS => self.settings(state, head, &payload),
            frame::PUSH_PROMISE => Err(ConnError(Reason::PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")),
            frame::PING => {
                if head.stream != 0 || payload.len() != 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "a PING frame is malformed"));
                }
                if head.flags & frame::ACK == 0 {
                    frame::ping_ack(&payload, &mut state.out);
                    state.wake_driver();
                }
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 || payload.len() < 8 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "a GOAWAY frame is malformed"));
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                let reason = Reason(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
                if reason != Reason::NO_ERROR {
                    tracing::debug!(%reason, "an endpoint sent GOAWAY");
                }
                state.going_away = true;
                self.shared.closed.store(true, Ordering::Relaxed);
                let refused =
                    Error::new(true, format!("the endpoint is going away (GOAWAY {reason}) before this stream"));
                for (id, s) in &mut state.streams {
                    if *id > last && s.error.is_none() {
                        s.error = Some(refused.clone());
                        wake(&mut s.reader);
                        wake(&mut s.writer);
                    }
                }
                let ids: Vec<u32> = state.streams.keys().copied().filter(|id| *id > last).collect();
                for id in ids {
                    state.free_slot(id);
                }
                for w in state.waiting_for_slot.drain(..) {
                    w.wake();
                }
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "a WINDOW_UPDATE frame is malformed"));
                }
                let increment =
                    i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
                if head.stream == 0 {
                    if increment == 0 {
                        return Err(ConnError(Reason::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
                    }
                    state.send_window += increment;
                    if state.send_window > frame::MAX_WINDOW {
                        return Err(ConnError(Reason::FLOW_CONTROL_ERROR, "the connection window passed 2^31 - 1"));
                    }
                    let blocked = std::mem::take(&mut state.blocked);
                    for id in blocked {
                        state.flush_stream(id);
                    }
                } else if let Some(s) = state.streams.get_mut(&head.stream) {
                    s.send_window += increment;
                    if increment == 0 || s.send_window > frame::MAX_WINDOW {
                        Self::reset(state, head.stream, Reason::FLOW_CONTROL_ERROR);
                    } else if state.blocked.contains(&head.stream) {
                        state.blocked.retain(|b| *b != head.stream);
                        state.flush_stream(head.stream);
                    }
                }
                state.wake_driver();
                Ok(())
            }
            // Unknown frame types are ignored (RFC 9113, section 5.5).
            _ => Ok(()),
        }
    }

    fn data(&mut self, state: &mut State, head: Head, payload: Bytes) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let Some((start, end)) = frame::unpad(head.flags, &payload) else {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA padding is longer than the frame"));
        };
        let len = payload.len() as i64;
        state.recv_window -= len;
        if state.recv_window < 0 {
            return Err(ConnError(Reason::FLOW_CONTROL_ERROR, "the endpoint sent past the connection window"));
        }
        let Some(s) = state.streams.get_mut(&head.stream) else {
            // A stream this side reset or forgot: its window comes back at once.
            state.release_connection(len as u32);
            return Ok(());
        };
        s.recv_window -= len;
        let ends = head.flags & frame::END_STREAM != 0;
        let body_ok = match &mut s.body_left {
            Some(left) if (end - start) as u64 > *left => false,
            Some(left) => {
                *left -= (end - start) as u64;
                !ends || *left == 0
            }
            None => true,
        };
        if s.recv_window < 0 || !s.head_seen || s.remote_end || s.error.is_some() || !body_ok {
            let reason = if s.recv_window < 0 { Reason::FLOW_CONTROL_ERROR } else { Reason::PROTOCOL_ERROR };
            let failed = s.error.is_some();
            if !failed {
                Self::reset(state, head.stream, reason);
            }
            state.release_connection(len as u32);
            return Ok(());
        }
        // Padding is flow-controlled but never read: its window comes back now.
        let unread = len as usize - (end - start);
        if end > start {
            s.data.push_back(payload.slice(start..end));
        }
        s.remote_end |= ends;
        wake(&mut s.reader);
        if unread > 0 {
            state.release(head.stream, unread);
        }
        if ends {
            state.free_slot(head.stream);
        }
        Ok(())
    }

    /// Resets a stream the endpoint broke (a stream error).
    fn reset(state: &mut State, id: u32, reason: Reason) {
        state.fail_stream(id, reason, Error::new(false, format!("the endpoint broke HTTP/2 on the stream: {reason}")));
    }

    fn settings(&mut self, state: &mut State, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if !payload.len().is_multiple_of(6) || (head.flags & frame::ACK != 0 && !payload.is_empty()) {
            return Err(ConnError(Reason::FRAME_SIZE_ERROR, "a SETTINGS frame's length is wrong"));
        }
        if head.flags & frame::ACK != 0 {
            return Ok(());
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::MAX_CONCURRENT_STREAMS => {
                    state.max_active = value as usize;
                    for w in state.waiting_for_slot.drain(..) {
                        w.wake();
                    }
                }
                frame::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31 - 1",
                        ));
                    }
                    let delta = i64::from(value) - state.initial_window;
                    state.initial_window = i64::from(value);
                    for s in state.streams.values_mut() {
                        s.send_window += delta;
                    }
                    let ids: Vec<u32> = state.streams.keys().copied().collect();
                    for id in ids {
                        state.flush_stream(id);
                    }
                }
                frame::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=16_777_215).contains(&value) {
                        return Err(ConnError(Reason::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    state.max_frame = value as usize;
                }
                // The encoder keeps no table; push is off; the rest is advice.
                _ => {}
            }
        }
        frame::settings_ack(&mut state.out);
        state.wake_driver();
        Ok(())
    }

    /// A whole header block: the response head, an interim response, or trailers.
    fn header_block(&mut self, state: &mut State, id: u32, end_stream: bool, block: Bytes) -> Result<(), ConnError> {
        let mut status = None;
        let mut pseudo_ok = true;
        let mut malformed = false;
        let mut size = 0;
        let mut headers = HeaderMap::new();
        let decoded = self.decoder.decode(block, |name, value| {
            size += name.as_str().len() + value.len() + 32;
            // Past the limit the block is still decoded (the table must
            // follow it) but nothing more is kept: a small block that names
            // a large entry many times would otherwise grow the map.
            if size > MAX_HEADER_LIST {
                malformed = true;
                return;
            }
            match name {
                Name::Status if status.is_none() && pseudo_ok => status = Some(value),
                Name::Header(name) => {
                    pseudo_ok = false;
                    match HeaderValue::from_maybe_shared(value) {
                        Ok(v) if !is_connection_specific(&name, &v) => {
                            headers.append(name, v);
                        }
                        _ => malformed = true,
                    }
                }
                _ => malformed = true,
            }
        });
        if let Err(e) = decoded {
            tracing::debug!(error = %e, "an endpoint's header block cannot be decoded");
            return Err(ConnError(Reason::COMPRESSION_ERROR, "a header block cannot be decoded"));
        }
        if id.is_multiple_of(2) || id >= state.next_id {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "HEADERS on a stream this side did not open"));
        }
        let Some(s) = state.streams.get_mut(&id) else { return Ok(()) };
        if s.error.is_some() {
            return Ok(());
        }
        if s.head_seen {
            // Trailers: they end the stream, and carry no pseudo-header.
            if malformed || status.is_some() || !end_stream || s.remote_end || s.body_left.is_some_and(|n| n > 0) {
                Self::reset(state, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
            s.trailers = Some(headers);
        } else {
            let code = status.and_then(|s| StatusCode::from_bytes(&s).ok());
            let Some(code) = code.filter(|_| !malformed) else {
                Self::reset(state, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            };
            if code == StatusCode::SWITCHING_PROTOCOLS {
                // HTTP/2 has no 101 (RFC 9113, section 8.6).
                Self::reset(state, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
            if code.is_informational() {
                // 100 Continue, 103 Early Hints: the final head follows.
                if end_stream {
                    Self::reset(state, id, Reason::PROTOCOL_ERROR);
                }
                return Ok(());
            }
            // A HEAD's, a 204's or a 304's content-length describes a body
            // that is not sent.
            let no_body = s.head_request || code == StatusCode::NO_CONTENT || code == StatusCode::NOT_MODIFIED;
            let length = headers.get(header::CONTENT_LENGTH).filter(|_| !no_body);
            match length.map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok())) {
                Some(None) => {
                    Self::reset(state, id, Reason::PROTOCOL_ERROR);
                    return Ok(());
                }
                Some(Some(n)) if end_stream && n > 0 => {
                    Self::reset(state, id, Reason::PROTOCOL_ERROR);
                    return Ok(());
                }
                Some(Some(n)) => s.body_left = Some(n),
                None => {}
            }
            let (mut parts, ()) = Response::new(()).into_parts();
            parts.status = code;
            parts.version = hyper::Version::HTTP_2;
            parts.headers = headers;
            s.head = Some(parts);
            s.head_seen = true;
        }
        if end_stream {
            s.remote_end = true;
        }
        wake(&mut s.reader);
        if end_stream {
            state.free_slot(id);
        }
        Ok(())
    }
}
