//! Connections to an HTTP outbound's endpoints, kept open between requests.
//!
//! HTTP/1.1: a connection carries one request at a time; after its response
//! ends it waits in the endpoint's idle list (newest first) for the next.
//! HTTP/2: one connection per endpoint carries every request at once.
//! Idle connections older than the idle timeout are closed when met.

use fnv::FnvHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use super::body::ReqBody;
use crate::proxy::Io;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// An HTTP/1.1 connection waiting, and since when.
type Idle = (http1::SendRequest<ReqBody>, Instant);

#[derive(Debug)]
pub struct Pool {
    h2: bool,
    idle_timeout: Duration,
    h1_idle: Mutex<HashMap<String, Vec<Idle>>>,
    h2_conns: Mutex<HashMap<String, http2::SendRequest<ReqBody>>>,
    /// Upstream connections open now, and made in all.
    pub open: Arc<AtomicU64>,
    pub opened: AtomicU64,
    /// Requests that found a connection waiting.
    pub reused: AtomicU64,
}

/// A connection lent to one request.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Sender {
    /// Waits until the connection can take a request; an error means it closed.
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Self::H1(s) => s.ready().await,
            Self::H2(s) => s.ready().await,
        }
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Self::H1(s) => s.send_request(req).await,
            Self::H2(s) => s.send_request(req).await,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }
}

/// One upstream connection in the pool's open count, while it lives.
struct Open(Arc<AtomicU64>);

impl Open {
    fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(h2: bool, idle_timeout: Duration) -> Self {
        Self {
            h2,
            idle_timeout,
            h1_idle: Mutex::default(),
            h2_conns: Mutex::default(),
            open: Arc::default(),
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// A connection to `endpoint` that was open already, if one is.
    pub fn take(&self, endpoint: &str) -> Option<Sender> {
        let found = if self.h2 {
            let conns = self.h2_conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.get(endpoint).filter(|s| !s.is_closed()).cloned().map(Sender::H2)
        } else {
            let mut idle = self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner);
            let list = idle.get_mut(endpoint)?;
            let now = Instant::now();
            let mut found = None;
            while let Some((sender, since)) = list.pop() {
                if !sender.is_closed() && now.duration_since(since) < self.idle_timeout {
                    found = Some(Sender::H1(sender));
                    break;
                }
            }
            found
        };
        if found.is_some() {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// A new connection over `io`, handshaken; an HTTP/2 one is shared from now on.
    pub async fn open(&self, endpoint: &str, io: Box<dyn Io>) -> Result<Sender, hyper::Error> {
        let io = TokioIo::new(io);
        self.opened.fetch_add(1, Ordering::Relaxed);
        // Counted open until the connection's task ends (or its handshake fails).
        let open = Open::new(&self.open);
        if self.h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
                drop(open);
            });
            let mut conns = self.h2_conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.insert(endpoint.to_owned(), sender.clone());
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new().writev(false).handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
                drop(open);
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Gives back an HTTP/1.1 connection whose response ended.
    pub fn give_back(&self, endpoint: &str, sender: Sender) {
        let Sender::H1(sender) = sender else { return };
        if sender.is_closed() {
            return;
        }
        let mut idle = self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner);
        // No allocation once the endpoint has a list.
        match idle.get_mut(endpoint) {
            Some(list) if list.len() >= MAX_IDLE_PER_ENDPOINT => {}
            Some(list) => list.push((sender, Instant::now())),
            None => {
                idle.insert(endpoint.to_owned(), vec![(sender, Instant::now())]);
            }
        }
    }

    /// Closes the idle connections of endpoints no longer in `keep`, and
    /// every idle one older than the idle timeout.
    pub fn prune(&self, keep: &dyn Fn(&str) -> bool) {
        let now = Instant::now();
        let mut idle = self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|endpoint, list| {
            list.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < self.idle_timeout);
            keep(endpoint) && !list.is_empty()
        });
        drop(idle);
        let mut conns = self.h2_conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|endpoint, s| keep(endpoint) && !s.is_closed());
    }

    /// Idle HTTP/1.1 connections waiting now.
    pub fn idle(&self) -> usize {
        self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner).values().map(Vec::len).sum()
    }
}
