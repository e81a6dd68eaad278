//! HTTP-aware outbounds: a service whose inbounds say `kuma.io/protocol`
//! `http`, `http2` or `grpc` is served by an HTTP proxy (hyper) instead of
//! the byte pump, so that each request, not each connection, picks its
//! endpoint. One gRPC channel or one keep-alive pool then spreads over every
//! task of the service, and an endpoint answering 5xx is retried elsewhere
//! and ejected.
//!
//! - The client may speak HTTP/1.1 or HTTP/2 (h2c); an `http` outbound speaks
//!   HTTP/1.1 to its endpoints, `http2` and `grpc` HTTP/2.
//! - Each request picks the less loaded of two random endpoints by
//!   outstanding requests, in the task's own zone first ([`crate::balance`]).
//! - [`policy`]: timeouts, retries; [`pool`]: upstream connections;
//!   [`body`]: replayable request bodies; [`stats`]: `/metrics`.
//! - A response the sidecar makes itself says so: a `x-loopmesh-reason`
//!   header, and for gRPC a `grpc-status` (UNAVAILABLE, DEADLINE_EXCEEDED).
//! - `Upgrade` and `CONNECT` requests get a connection of their own, carried
//!   as bytes once the endpoint agrees.

pub mod body;
pub mod frame;
pub mod h1;
pub mod h2;
pub mod hpack;
pub mod policy;
pub mod pool;
pub mod route;
pub mod stats;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loopmesh_shared::model::Protocol;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::balance::{Balancer, EndpointState, Outcome, Outstanding};
use crate::proxy::{Io, ProxySettings, Route};
use crate::pump::Activity;
use body::{Captured, OnEnd, ReqBody, RespBody, Upstream};
use policy::{Failure, Policy};
use pool::{Pool, Sender};
use stats::{HttpStats, LocalReason};

/// The header on every response the sidecar makes itself.
pub const REASON_HEADER: &str = "x-loopmesh-reason";

/// An HTTP outbound's state, shared by its connections.
#[derive(Debug)]
pub struct HttpOutbound {
    pub protocol: Protocol,
    pub policy: ArcSwap<Policy>,
    pub pool: Arc<Pool>,
    pub stats: Arc<HttpStats>,
    /// Requests being retried now (MeshCircuitBreaker maxRetries).
    retrying: std::sync::atomic::AtomicU64,
    /// Every outbound of the sidecar, for MeshHTTPRoute's backendRefs.
    pub directory: Arc<Directory>,
}

impl HttpOutbound {
    pub fn new(protocol: Protocol, directory: Arc<Directory>) -> Self {
        let policy = Policy::defaults(protocol);
        let pool = Pool::new(protocol != Protocol::Http, policy.idle_timeout);
        Self {
            protocol,
            policy: ArcSwap::from_pointee(policy),
            pool: Arc::new(pool),
            stats: Arc::default(),
            retrying: std::sync::atomic::AtomicU64::new(0),
            directory,
        }
    }

    fn h2(&self) -> bool {
        self.protocol != Protocol::Http
    }
}

/// The sidecar's outbounds by service name: where a MeshHTTPRoute's
/// backendRef sends a request.
#[derive(Debug, Default)]
pub struct Directory(ArcSwap<std::collections::HashMap<String, Vec<Arc<Route>>>>);

impl Directory {
    pub fn replace(&self, routes: &[Arc<Route>]) {
        let mut by_name: std::collections::HashMap<String, Vec<Arc<Route>>> = std::collections::HashMap::new();
        for r in routes {
            by_name.entry(r.service.clone()).or_default().push(r.clone());
        }
        self.0.store(Arc::new(by_name));
    }

    /// The outbound a backendRef names (of its kind, when the view says kinds).
    pub fn find(&self, d: &loopmesh_shared::model::policy::Destination) -> Option<Arc<Route>> {
        use loopmesh_shared::model::policy::Destination;
        let name = match d {
            Destination::Mesh => return None,
            Destination::MeshService { name }
            | Destination::MeshExternalService { name }
            | Destination::MeshMultiZoneService { name } => name,
        };
        let all = self.0.load();
        all.get(name)?.iter().find(|r| d.selects(&r.service, r.kind.as_deref())).cloned()
    }
}

/// What the requests of one client connection share.
#[derive(Debug)]
struct Ctx {
    route: Arc<Route>,
    http: Arc<HttpOutbound>,
    settings: ProxySettings,
    client: Option<String>,
    /// Requests whose response has not ended, and the last time one did:
    /// the connection is idle when none is in flight.
    in_flight: AtomicUsize,
    activity: Activity,
}

/// Serves one client connection of an HTTP outbound until it closes or
/// stays idle (no request in flight) for the idle timeout.
pub async fn serve(client: TcpStream, route: Arc<Route>, http: Arc<HttpOutbound>, settings: ProxySettings) {
    let client_addr = settings.access_log.then(|| client.peer_addr().map(|a| a.to_string()).unwrap_or_default());
    route.stats.active.fetch_add(1, Ordering::Relaxed);
    let idle_timeout = http.policy.load().idle_timeout;
    let ctx = Arc::new(Ctx {
        route: route.clone(),
        http,
        settings,
        client: client_addr,
        in_flight: AtomicUsize::new(0),
        activity: Activity::new(),
    });
    let service = {
        let ctx = ctx.clone();
        // The request goes straight into `handle`'s future (an `async`
        // wrapper would hold it once more).
        hyper::service::service_fn(move |req| {
            use futures::FutureExt as _;
            handle(req, ctx.clone()).map(Ok::<_, Infallible>)
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().writev(false);
    builder.http2().max_concurrent_streams(1024);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(client), service);
    let mut conn = std::pin::pin!(conn);
    // Idle: no request in flight for the idle timeout; or requests in
    // flight whose bodies moved nothing for the stream idle timeout (one
    // watch per connection, not a timer per request).
    let stream_idle = ctx.http.policy.load().stream_idle_timeout;
    let idle = async {
        loop {
            let busy = ctx.in_flight.load(Ordering::Relaxed) > 0;
            let limit = if busy { stream_idle } else { Some(idle_timeout) };
            let deadline = limit.map(|l| ctx.activity.idle_deadline(l));
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return busy;
            }
            let next = deadline.unwrap_or_else(|| Instant::now() + idle_timeout);
            tokio::time::sleep_until(next.max(Instant::now() + Duration::from_secs(1))).await;
        }
    };
    let stalled = tokio::select! {
        biased;
        _ = conn.as_mut() => None,
        busy = idle => Some(busy),
    };
    match stalled {
        None => {}
        // Requests stalled past the stream idle timeout: the connection ends with them.
        Some(true) => {
            route.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            ctx.http.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        Some(false) => {
            route.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    route.stats.active.fetch_sub(1, Ordering::Relaxed);
}

/// Counts a request in flight on its connection until dropped.
struct InFlight(Arc<Ctx>);

impl InFlight {
    fn new(ctx: &Arc<Ctx>) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::Relaxed);
        ctx.http.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        ctx.activity.touch();
        Self(ctx.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.http.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the access log says of a request.
struct Line {
    /// Method and path, kept only when the access log is on.
    request: Option<(Method, String)>,
    started: Instant,
}

impl Line {
    fn new(head: &Parts, access_log: bool) -> Self {
        let request = access_log.then(|| {
            let path = head.uri.path_and_query().map_or_else(|| head.uri.to_string(), |p| p.as_str().to_owned());
            (head.method.clone(), path)
        });
        Self { request, started: Instant::now() }
    }

    fn log(&self, ctx: &Ctx, endpoint: &str, status: u16, attempts: usize, end: &str) {
        let Some((method, path)) = &self.request else { return };
        tracing::info!(
            target: "access",
            service = %ctx.route.service,
            listen = %ctx.route.listen,
            client = %ctx.client.as_deref().unwrap_or_default(),
            endpoint,
            method = %method,
            path = %path,
            status,
            attempts,
            duration_ms = self.started.elapsed().as_millis() as u64,
            end,
        );
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn is_upgrade(head: &Parts) -> bool {
    head.method == Method::CONNECT || (head.version == Version::HTTP_11 && head.headers.contains_key(header::UPGRADE))
}

/// The most attempts a request remembers, to send each retry elsewhere.
const REMEMBERED: usize = 8;

/// How many times a request an HTTP/2 endpoint did not process (it refused
/// the stream, or the stream was past the last one a GOAWAY kept) is sent
/// again at once, on another connection. Not a retry: it counts neither
/// against MeshRetry's attempts nor MeshCircuitBreaker's `maxRetries`, nor
/// toward the endpoint's ejection. An endpoint that rotates its connections
/// (nginx's `keepalive_requests`) refuses the streams in flight each time,
/// which Envoy turns into 503s once `maxRetries` are in flight.
const RESENDS: u32 = 5;

/// Not an `async fn`, which would hold the request twice (its argument and
/// its local): hyper copies each HTTP/2 stream's future into a task, so
/// every byte of it costs on every request.
fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> impl Future<Output = Response<RespBody<Done>>> + Send {
    let (mut parts, body) = req.into_parts();
    async move {
        let stats = &ctx.http.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight::new(&ctx);
        let line = Line::new(&parts, ctx.settings.access_log);
        let grpc = is_grpc(&parts.headers);
        let policy = ctx.http.policy.load_full();
        // MeshCircuitBreaker maxRequests: past it, the circuit is open.
        if stats.in_flight.load(Ordering::Relaxed) > u64::from(policy.limits.max_requests) {
            return local(&ctx, &line, LocalReason::Overflow, grpc, 0);
        }
        if is_upgrade(&parts) {
            // Boxed, as is opening a connection below: rare paths with large
            // futures would otherwise grow every request's future.
            let req = Request::from_parts(std::mem::replace(&mut parts, empty_parts()), body);
            return Box::pin(upgrade(req, ctx.clone(), line, in_flight)).await;
        }
        let deadline = policy.request_timeout.map(|t| line.started + t);
        // One timer for the request, however many steps wait on it.
        let mut timer = std::pin::pin!(deadline.map(tokio::time::sleep_until));
        let timed_out = |attempts| {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            local(&ctx, &line, LocalReason::Timeout, grpc, attempts)
        };
        // MeshHTTPRoute: the rule this request falls under picks its service.
        let rule = policy.routes.find(&parts);
        let target = match rule.and_then(route::Rule::backend) {
            None => ctx.route.clone(),
            Some(d) => match ctx.http.directory.find(d) {
                Some(r) => r,
                None => return local(&ctx, &line, LocalReason::NoHealthyEndpoint, grpc, 0),
            },
        };
        if let Some(rule) = rule {
            route::modify(&mut parts.headers, &rule.request_headers);
        }
        let response_headers = rule.map(|r| r.response_headers.clone()).unwrap_or_default();
        prepare(&mut parts, ctx.http.h2());
        let mut captured = match until(timer.as_mut(), Captured::read(body)).await {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::debug!(service = %ctx.route.service, error = %e, "the client's request body failed");
                return local(&ctx, &line, LocalReason::Reset, grpc, 0);
            }
            None => return timed_out(0),
        };
        // The head is copied for each HTTP/2 attempt only when a retry could
        // use it; otherwise the first attempt that is sent takes it. HTTP/1.1
        // writes it from here.
        let keep_head =
            captured.replayable() && (ctx.http.h2() || policy.retry.may_resend(&parts.method, grpc, ctx.http.h2()));
        let mut head_taken = false;
        let mut resends = 0;
        let method = parts.method.clone();
        let balancer = target.balancer.load_full();
        let mut tried = [usize::MAX; REMEMBERED];
        let mut attempts = 0usize;
        let mut retries = 0u32;
        let mut retrying = None;
        loop {
            let now = Instant::now();
            let remembered = attempts.min(REMEMBERED);
            // Another endpoint than those tried, if any is healthy; else any.
            let Some(i) = balancer.pick(&tried[..remembered], now).or_else(|| balancer.pick(&[], now)) else {
                return local(&ctx, &line, LocalReason::NoHealthyEndpoint, grpc, attempts);
            };
            tried[attempts % REMEMBERED] = i;
            attempts += 1;
            let failure = match until(timer.as_mut(), sender(&ctx, &target, &balancer, i, &policy)).await {
                None => return timed_out(attempts),
                Some(Err(Refusal::Overflow)) => return local(&ctx, &line, LocalReason::Overflow, grpc, attempts),
                Some(Err(Refusal::Failed)) => Failure::Connect,
                Some(Ok(sender)) => {
                    // Unreachable: nothing retries a request whose head went.
                    if head_taken {
                        return local(&ctx, &line, LocalReason::Reset, grpc, attempts);
                    }
                    head_taken = sender.is_h2() && !keep_head;
                    let send = sender.send(&mut parts, keep_head, captured.attempt());
                    let outstanding = Outstanding::new(balancer.endpoints()[i].clone());
                    // A per-try timeout gets a timer of its own only when it is
                    // the sooner (Kong's defaults: 16 s per try, 15 s in all).
                    let per_try = policy.retry.per_try_timeout.map(|t| Instant::now() + t);
                    let mut own = std::pin::pin!(
                        per_try.filter(|p| deadline.is_none_or(|d| *p < d)).map(tokio::time::sleep_until)
                    );
                    // One await for both timers: each await of the send future
                    // would take its room in every request's future.
                    let timer = if own.is_some() { own.as_mut() } else { timer.as_mut() };
                    let sent = until(timer, send).await;
                    let failure = match sent {
                        Some(Ok(mut response)) => {
                            let status = response.status().as_u16();
                            let grpc_status = grpc.then(|| grpc_status(response.headers())).flatten();
                            let outcome = if status >= 500 { Outcome::ServerError(status) } else { Outcome::Success };
                            record(&ctx, &balancer, i, outcome);
                            let failure = Failure::Status(status, grpc_status);
                            let failed = status >= 500 || grpc_status.is_some_and(|g| g != 0);
                            if !(failed && may_retry(&policy, &method, grpc, failure, retries, &captured)) {
                                route::modify(response.headers_mut(), &response_headers);
                                return respond(&ctx, response, outstanding, line, attempts, in_flight);
                            }
                            // The failed answer is dropped with its connection.
                            failure
                        }
                        Some(Err((failure, error))) => {
                            // A stream the endpoint did not process says
                            // nothing of its health (see `RESENDS`).
                            if failure != Failure::Refused {
                                record(&ctx, &balancer, i, Outcome::LocalFailure);
                            }
                            tracing::debug!(service = %ctx.route.service, endpoint = %outstanding.address, %error, "request failed");
                            failure
                        }
                        None => {
                            record(&ctx, &balancer, i, Outcome::LocalFailure);
                            Failure::PerTryTimeout
                        }
                    };
                    drop(outstanding);
                    failure
                }
            };
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return timed_out(attempts);
            }
            if failure == Failure::Refused && resends < RESENDS && !head_taken && captured.replayable() {
                resends += 1;
                stats.resends.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let retry = may_retry(&policy, &method, grpc, failure, retries, &captured);
            // MeshCircuitBreaker maxRetries: retries in flight at once, per outbound.
            if retry && retrying.is_none() {
                retrying = Retrying::start(&ctx.http, policy.limits.max_retries);
            }
            if !retry || retrying.is_none() {
                if failure == Failure::PerTryTimeout {
                    return timed_out(attempts);
                }
                let reason = if failure == Failure::Connect { LocalReason::ConnectFailure } else { LocalReason::Reset };
                return local(&ctx, &line, reason, grpc, attempts);
            }
            retries += 1;
            stats.retries.fetch_add(1, Ordering::Relaxed);
            if until(timer.as_mut(), tokio::time::sleep(policy.retry.backoff(retries))).await.is_none() {
                return timed_out(attempts);
            }
        }
    }
}

/// A request head with nothing in it (allocates nothing).
fn empty_parts() -> Parts {
    Request::new(()).into_parts().0
}

/// A request being retried, counted against MeshCircuitBreaker's maxRetries.
struct Retrying(Arc<HttpOutbound>);

impl Retrying {
    fn start(http: &Arc<HttpOutbound>, max: u32) -> Option<Self> {
        let now = http.retrying.fetch_add(1, Ordering::Relaxed);
        if now >= u64::from(max) {
            http.retrying.fetch_sub(1, Ordering::Relaxed);
            http.stats.retries_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(http.clone()))
    }
}

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Feeds an attempt's outcome to outlier detection, and says an ejection.
fn record(ctx: &Ctx, balancer: &Balancer, i: usize, outcome: Outcome) {
    if !balancer.record(i, outcome, Instant::now()) {
        return;
    }
    let endpoint = &balancer.endpoints()[i].address;
    match outcome {
        Outcome::ServerError(_) => {
            ctx.http.stats.ejections_5xx.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service = %ctx.route.service, endpoint, "endpoint ejected after consecutive 5xx answers");
        }
        _ => {
            ctx.route.stats.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service = %ctx.route.service, endpoint, "endpoint ejected after consecutive local failures (connect, reset, timeout)");
        }
    }
}

fn may_retry(
    policy: &Policy,
    method: &Method,
    grpc: bool,
    failure: Failure,
    retries: u32,
    captured: &Captured,
) -> bool {
    retries < policy.retry.num_retries
        && policy.retry.allows(method, grpc, failure)
        && (failure == Failure::Connect || captured.replayable())
}

/// Runs `f` until `timer` fires (never, when there is none); `None` when
/// it fired first. A struct, not an `async fn`, so that `f` is held once:
/// an `async fn` keeps its argument and its pinned copy, which doubled the
/// room every request's future needs.
fn until<F: Future>(timer: Pin<&mut Option<Sleep>>, f: F) -> Until<'_, F> {
    Until { timer, f }
}

pin_project_lite::pin_project! {
    struct Until<'t, F> {
        timer: Pin<&'t mut Option<Sleep>>,
        #[pin]
        f: F,
    }
}

impl<F: Future> Future for Until<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.f.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// Why no connection was lent.
enum Refusal {
    /// No connection could be made (counted toward the endpoint's ejection).
    Failed,
    /// MeshCircuitBreaker's maxConnections are all open and busy.
    Overflow,
}

/// A connection to endpoint `i` of `target`: one waiting in the pool, or a
/// new one (connect failures count toward its ejection).
async fn sender(ctx: &Ctx, target: &Route, balancer: &Balancer, i: usize, policy: &Policy) -> Result<Sender, Refusal> {
    let endpoint = &balancer.endpoints()[i];
    let pool = &ctx.http.pool;
    while let Some(mut s) = pool.take(&endpoint.address) {
        if s.ready().await {
            return Ok(s);
        }
    }
    // HTTP/2: one connection per endpoint. Requests that find none wait for
    // the one being opened (else each would open its own, as every request
    // in flight does when an endpoint's connection goes away).
    let _opening = match pool.opening(&endpoint.address) {
        Some(lock) => {
            let guard = lock.lock_owned().await;
            if let Some(mut s) = pool.take(&endpoint.address)
                && s.ready().await
            {
                return Ok(s);
            }
            Some(guard)
        }
        None => None,
    };
    if pool.open.load(Ordering::Relaxed) >= u64::from(policy.limits.max_connections) {
        return Err(Refusal::Overflow);
    }
    let connect_timeout = policy.connect_timeout.unwrap_or(ctx.settings.connect_timeout);
    let opened = match Box::pin(open_io(target, endpoint, connect_timeout)).await {
        Some(io) => Box::pin(pool.open(&endpoint.address, io)).await.map_err(|e| {
            tracing::debug!(service = %target.service, endpoint = %endpoint.address, error = %e, "HTTP handshake failed");
        }),
        None => Err(()),
    };
    match opened {
        // The answer, not the connect, counts as a success (a peer sidecar
        // accepts even when its application is gone).
        Ok(mut s) => {
            if !s.ready().await {
                return Err(Refusal::Failed);
            }
            Ok(s)
        }
        Err(()) => {
            target.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            record(ctx, balancer, i, Outcome::LocalFailure);
            Err(Refusal::Failed)
        }
    }
}

/// A connection to `endpoint` of `route`, secured as the TCP path secures one.
async fn open_io(route: &Route, endpoint: &EndpointState, connect_timeout: Duration) -> Option<Box<dyn Io>> {
    let tcp = match tokio::time::timeout(connect_timeout, crate::proxy::connect(&endpoint.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(listen = %route.listen, endpoint = %endpoint.address, error = %e, "connect failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(listen = %route.listen, endpoint = %endpoint.address, "connect timeout");
            return None;
        }
    };
    let active = route.mtls.as_ref().and_then(|m| m.active().map(|a| (m.clone(), a)));
    let stream =
        crate::proxy::secure(route, endpoint, tcp, active.as_ref().map(|(m, a)| (m.as_ref(), a.as_ref()))).await?;
    Some(stream.boxed())
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1).
/// `connection` first: [`strip_hop_by_hop`] reads the names it lists.
pub(super) static HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are here: most messages carry
    // none but `connection`, and a lookup per absent name costs a hash.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut te = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
        te |= name == header::TE;
    }
    let [connection, ..] = present;
    if connection {
        // The names `connection` lists are this hop's too; those it usually
        // lists (keep-alive, close, upgrade) are removed below or are none.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !["keep-alive", "close", "upgrade", ""].iter().any(|k| n.eq_ignore_ascii_case(k)))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
    // `te` may only say `trailers` past this hop (gRPC sends it).
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Makes a client's request one the endpoint's protocol can carry: HTTP/2
/// needs the absolute URI (its `:authority` from `Host`), HTTP/1.1 the
/// origin form with `Host`.
fn prepare(parts: &mut Parts, h2: bool) {
    strip_hop_by_hop(&mut parts.headers);
    if h2 {
        parts.version = Version::HTTP_2;
        // A request that came over HTTP/2 has its scheme and authority already.
        if parts.uri.scheme().is_some() && parts.uri.authority().is_some() {
            parts.headers.remove(header::HOST);
            return;
        }
        let authority = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost")
            .to_owned();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if let Ok(uri) = Uri::builder().scheme("http").authority(authority).path_and_query(path).build() {
            parts.uri = uri;
        }
        parts.headers.remove(header::HOST);
    } else {
        parts.version = Version::HTTP_11;
        // The origin form HTTP/1.1 clients send is kept as it is.
        let Some(authority) = parts.uri.authority().map(|a| a.as_str().to_owned()) else { return };
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&authority)
        {
            parts.headers.insert(header::HOST, v);
        }
        if let Some(p) = parts.uri.path_and_query().and_then(|p| p.as_str().parse().ok()) {
            parts.uri = p;
        }
    }
}

/// What ends with an endpoint's response body: its outstanding count, the
/// latency, the access log line and, for HTTP/1.1, the connection's return
/// to the pool.
struct Done {
    ctx: Arc<Ctx>,
    endpoint: Outstanding,
    line: Line,
    status: u16,
    attempts: usize,
    _in_flight: InFlight,
}

impl OnEnd for Done {
    fn moved(&self) {
        self.ctx.activity.touch();
    }

    fn ended(&mut self, complete: bool, conn: Option<h1::Conn>) {
        self.ctx.http.stats.observe(self.line.started.elapsed());
        if let Some(conn) = conn {
            self.ctx.http.pool.give_back(&self.endpoint.address, conn);
        }
        let end = if complete { "complete" } else { "cut" };
        self.line.log(&self.ctx, &self.endpoint.address, self.status, self.attempts, end);
    }
}

fn respond(
    ctx: &Arc<Ctx>,
    response: Response<Upstream>,
    endpoint: Outstanding,
    line: Line,
    attempts: usize,
    in_flight: InFlight,
) -> Response<RespBody<Done>> {
    let status = response.status().as_u16();
    ctx.http.stats.status(status);
    // No hop-by-hop fields to strip: HTTP/1.1 ones stayed in the parse
    // (`h1`), and HTTP/2 has none.
    let (parts, body) = response.into_parts();
    let done = Done { ctx: ctx.clone(), endpoint, line, status, attempts, _in_flight: in_flight };
    Response::from_parts(parts, RespBody::upstream(body, done))
}

/// A response the sidecar makes itself: 503 (504 for a timeout) naming the
/// reason, or for a gRPC call gRPC's UNAVAILABLE (DEADLINE_EXCEEDED).
fn local(ctx: &Ctx, line: &Line, reason: LocalReason, grpc: bool, attempts: usize) -> Response<RespBody<Done>> {
    let stats = &ctx.http.stats;
    stats.local(reason);
    let timeout = reason == LocalReason::Timeout;
    let text = match reason {
        LocalReason::NoHealthyEndpoint => "no healthy endpoint",
        LocalReason::ConnectFailure => "no endpoint could be reached",
        LocalReason::Reset => "the endpoint closed the request without an answer",
        LocalReason::Timeout => "the request timed out",
        LocalReason::Overflow => "too many requests in flight",
    };
    let mut response = if grpc {
        let code = if timeout { "4" } else { "14" };
        let mut r = Response::new(RespBody::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static(code));
        if let Ok(v) = HeaderValue::from_str(&format!("loopmesh: {text}")) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(RespBody::local(Bytes::from(format!("loopmesh: {text}\n"))));
        *r.status_mut() = if timeout { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::SERVICE_UNAVAILABLE };
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    response.headers_mut().insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    response.headers_mut().insert(header::SERVER, HeaderValue::from_static("loopmesh"));
    let status = response.status().as_u16();
    stats.status(status);
    stats.observe(line.started.elapsed());
    line.log(ctx, "-", status, attempts, reason.as_str());
    response
}

/// An `Upgrade` or `CONNECT` request: its own HTTP/1.1 connection to an
/// endpoint, carried as bytes both ways once the endpoint agrees.
async fn upgrade(
    mut req: Request<Incoming>,
    ctx: Arc<Ctx>,
    line: Line,
    in_flight: InFlight,
) -> Response<RespBody<Done>> {
    let stats = &ctx.http.stats;
    let client_side = hyper::upgrade::on(&mut req);
    let balancer = ctx.route.balancer.load_full();
    let mut tried = [usize::MAX; crate::proxy::CONNECT_ATTEMPTS];
    let mut attempts = 0;
    let (i, io) = loop {
        let next = (attempts < tried.len()).then(|| balancer.pick(&tried[..attempts], Instant::now())).flatten();
        let Some(i) = next else {
            let reason = if attempts == 0 { LocalReason::NoHealthyEndpoint } else { LocalReason::ConnectFailure };
            return local(&ctx, &line, reason, false, attempts);
        };
        tried[attempts] = i;
        attempts += 1;
        let policy = ctx.http.policy.load();
        let timeout = policy.connect_timeout.unwrap_or(ctx.settings.connect_timeout);
        match open_io(&ctx.route, &balancer.endpoints()[i], timeout).await {
            Some(io) => break (i, io),
            None => {
                ctx.route.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                record(&ctx, &balancer, i, Outcome::LocalFailure);
            }
        }
    };
    let endpoint = balancer.endpoints()[i].clone();
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(_) => return local(&ctx, &line, LocalReason::ConnectFailure, false, attempts),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let connect = req.method() == Method::CONNECT;
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    if !connect && let Some(p) = parts.uri.path_and_query().and_then(|p| p.as_str().parse().ok()) {
        parts.uri = p;
    }
    let endpoint = Outstanding::new(endpoint);
    let Ok(mut response) = sender.send_request(Request::from_parts(parts, ReqBody::stream(body))).await else {
        return local(&ctx, &line, LocalReason::Reset, false, attempts);
    };
    let agreed = response.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && response.status().is_success());
    if agreed {
        stats.upgrades.fetch_add(1, Ordering::Relaxed);
        let upstream_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = tokio::join!(client_side, upstream_side) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
            }
        });
    }
    let status = response.status().as_u16();
    stats.status(status);
    let (parts, body) = response.into_parts();
    let done = Done { ctx: ctx.clone(), endpoint, line, status, attempts, _in_flight: in_flight };
    Response::from_parts(parts, RespBody::upstream(Upstream::Hyper(body), done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_on_their_hop() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Trace-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn te_trailers_passes_and_a_message_without_hop_headers_is_untouched() {
        let mut h = headers(&[("te", "trailers"), ("content-type", "application/grpc"), ("upgrade", "h2c")]);
        strip_hop_by_hop(&mut h);
        let left: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(left, [("te", &b"trailers"[..]), ("content-type", b"application/grpc")]);
        let mut plain = headers(&[("content-length", "3"), ("server", "nginx")]);
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);
    }
}
