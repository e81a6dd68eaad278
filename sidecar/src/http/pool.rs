//! Connections to an HTTP outbound's endpoints, kept open between requests.
//!
//! HTTP/1.1: a connection carries one request at a time, driven by the
//! request's task ([`super::h1`]); after its response ends it waits in the
//! endpoint's idle list (newest first) for the next.
//! HTTP/2: one connection per endpoint carries every request at once
//! ([`super::h2`]).
//! Idle connections older than the idle timeout are closed when met.

use fnv::FnvHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::http::request::Parts;
use hyper::{Request, Response};
use tokio::time::Instant;

use super::body::{ReqBody, Upstream};
use super::policy::Failure;
use super::{h1, h2};
use crate::proxy::Io;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// An HTTP/1.1 connection waiting, and since when.
type Idle = (h1::Conn, Instant);

#[derive(Debug)]
pub struct Pool {
    h2: bool,
    idle_timeout: Duration,
    h1_idle: Mutex<HashMap<String, Vec<Idle>>>,
    h2_conns: Mutex<HashMap<String, h2::Conn>>,
    /// Per endpoint, held while an HTTP/2 connection to it is being opened.
    h2_opening: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Upstream connections open now, and made in all.
    pub open: Arc<AtomicU64>,
    pub opened: AtomicU64,
    /// Requests that found a connection waiting.
    pub reused: AtomicU64,
}

/// A connection lent to one request.
#[derive(Debug)]
pub enum Sender {
    H1(h1::Conn),
    H2(h2::Conn),
}

impl Sender {
    /// Waits until the connection can take a request; false when it closed.
    pub async fn ready(&mut self) -> bool {
        match self {
            // `take` checked an idle one; a new one is ready.
            Self::H1(_) => true,
            Self::H2(c) => c.ready().await,
        }
    }

    /// Sends the request; its response once the head has arrived. An
    /// HTTP/1.1 connection travels in the response body, back to the pool
    /// when it ends. `head` is copied when `keep` (a retry may need it),
    /// else taken; HTTP/1.1 writes it where it is. Not an `async fn`: the
    /// future is the one protocol's, not room for both.
    pub fn send<'a>(
        self,
        head: &'a mut Parts,
        keep: bool,
        body: ReqBody,
    ) -> impl Future<Output = Result<Response<Upstream>, (Failure, String)>> + Send + 'a {
        use futures::future::{Either, FutureExt as _};
        match self {
            Self::H1(conn) => Either::Left(
                conn.send(head, body)
                    .map(|sent| sent.map(|r| r.map(Upstream::H1)).map_err(|e| (Failure::Reset, e.to_string()))),
            ),
            Self::H2(conn) => {
                let parts = if keep { copy(head) } else { std::mem::replace(head, Request::new(()).into_parts().0) };
                Either::Right(conn.send(parts, body).map(|sent| {
                    sent.map(|r| r.map(Upstream::H2))
                        .map_err(|e| (if e.refused { Failure::Refused } else { Failure::Reset }, e.to_string()))
                }))
            }
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }
}

/// The request head again, for one more attempt.
fn copy(parts: &Parts) -> Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = parts.method.clone();
    p.uri = parts.uri.clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p
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
            h2_opening: Mutex::default(),
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
            while let Some((mut conn, since)) = list.pop() {
                if now.duration_since(since) < self.idle_timeout && conn.is_usable() {
                    found = Some(Sender::H1(conn));
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
    pub async fn open(&self, endpoint: &str, io: Box<dyn Io>) -> Result<Sender, h2::Error> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        // Counted open until the connection closes (or its handshake fails).
        let open = Open::new(&self.open);
        if self.h2 {
            let conn = h2::Conn::handshake(io, Box::new(open)).await?;
            let mut conns = self.h2_conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.insert(endpoint.to_owned(), conn.clone());
            Ok(Sender::H2(conn))
        } else {
            Ok(Sender::H1(h1::Conn::new(io, Box::new(open))))
        }
    }

    /// For HTTP/2, the lock to hold while opening a connection to `endpoint`.
    pub fn opening(&self, endpoint: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if !self.h2 {
            return None;
        }
        let mut locks = self.h2_opening.lock().unwrap_or_else(PoisonError::into_inner);
        Some(locks.entry(endpoint.to_owned()).or_default().clone())
    }

    /// Gives back an HTTP/1.1 connection whose response ended.
    pub fn give_back(&self, endpoint: &str, sender: h1::Conn) {
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
            list.retain_mut(|(c, since)| now.duration_since(*since) < self.idle_timeout && c.is_usable());
            keep(endpoint) && !list.is_empty()
        });
        drop(idle);
        let mut conns = self.h2_conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|endpoint, s| keep(endpoint) && !s.is_closed());
        drop(conns);
        let mut locks = self.h2_opening.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|endpoint, lock| keep(endpoint) || Arc::strong_count(lock) > 1);
    }

    /// Idle HTTP/1.1 connections waiting now.
    pub fn idle(&self) -> usize {
        self.h1_idle.lock().unwrap_or_else(PoisonError::into_inner).values().map(Vec::len).sum()
    }
}
