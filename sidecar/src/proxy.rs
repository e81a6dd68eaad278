//! One accept loop per listener (an outbound VIP:port or an inbound). Each
//! connection is a task of the sidecar's tracker; its errors stay there and
//! never stop the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{Balancer, EndpointState, Outstanding, Target};
use crate::pump::{Activity, Flow, Peer, carry};
use crate::tls::{Active, ExternalOrigin, Mtls, MtlsStats};
use loopmesh_shared::model::{Labels, MtlsMode};
use loopmesh_shared::mtls::permission::{Decision, decide};

/// Connect attempts per connection, each on another endpoint.
pub const CONNECT_ATTEMPTS: usize = 3;
/// The most a MeshRetry's `tcp.maxConnectAttempt` is followed to.
const MAX_CONNECT_ATTEMPTS: usize = 16;

/// What the mesh's policies say of a TCP outbound's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPolicy {
    /// MeshTimeout `connectionTimeout` (else `--connect-timeout`).
    pub connect_timeout: Option<Duration>,
    /// MeshTimeout `idleTimeout` (else `--idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// MeshRetry `tcp.maxConnectAttempt`.
    pub connect_attempts: usize,
}

impl Default for TcpPolicy {
    fn default() -> Self {
        Self { connect_timeout: None, idle_timeout: None, connect_attempts: CONNECT_ATTEMPTS }
    }
}

/// Counters of one listener, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub total: AtomicU64,
    pub active: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Connections closed at once because no endpoint was healthy.
    pub no_endpoint: AtomicU64,
    pub ejections: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Connections the endpoint's side ended with an error.
    pub upstream_failures: AtomicU64,
    /// Connections the client's side ended with an error.
    pub client_aborts: AtomicU64,
    /// client -> endpoint
    pub bytes_sent: AtomicU64,
    /// endpoint -> client
    pub bytes_received: AtomicU64,
    /// Milliseconds since the process started, of the last no-endpoint log line.
    last_no_endpoint_log: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub access_log: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(2), idle_timeout: Duration::from_secs(3600), access_log: false }
    }
}

/// A listener's live state: what its accept loop and connections share with
/// the reconfiguration and the admin endpoint.
#[derive(Debug)]
pub struct Route {
    pub service: String,
    /// The view's kind code of an outbound's service (`svc`, `ms`, `mes`, `mzs`).
    pub kind: Option<String>,
    pub listen: SocketAddr,
    /// Replaced whole when the view's endpoints change; connections keep
    /// the balancer they started with.
    pub balancer: ArcSwap<Balancer>,
    pub stats: Stats,
    /// Stops accepting.
    pub stop: CancellationToken,
    /// Ends the connections still open (a drain that ran out of time).
    pub kill: CancellationToken,
    /// The mesh's mTLS, shared by every listener.
    pub mtls: Option<Arc<Mtls>>,
    /// An inbound: peers connect here (mTLS is accepted, not originated).
    pub inbound: bool,
    /// An inbound's tags, which MeshTrafficPermissions select it by.
    pub inbound_tags: Labels,
    /// TLS to originate to the endpoints (a MeshExternalService's `spec.tls`).
    pub external: ArcSwapOption<ExternalOrigin>,
    /// An `http`, `http2` or `grpc` outbound: requests are balanced one by one.
    pub http: ArcSwapOption<crate::http::HttpOutbound>,
    pub tcp: ArcSwap<TcpPolicy>,
}

impl Route {
    pub fn new(service: String, listen: SocketAddr, balancer: Balancer) -> Self {
        Self {
            service,
            kind: None,
            listen,
            balancer: ArcSwap::from_pointee(balancer),
            stats: Stats::default(),
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
            mtls: None,
            inbound: false,
            inbound_tags: Labels::new(),
            external: ArcSwapOption::empty(),
            http: ArcSwapOption::empty(),
            tcp: ArcSwap::from_pointee(TcpPolicy::default()),
        }
    }

    /// The route under the mesh's mTLS: originating it, or accepting it
    /// for an inbound with these tags.
    pub fn with_mtls(mut self, mtls: Arc<Mtls>, inbound: Option<Labels>) -> Self {
        self.mtls = Some(mtls);
        self.inbound = inbound.is_some();
        self.inbound_tags = inbound.unwrap_or_default();
        self
    }
}

/// One side of a connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// A byte stream of any kind: what the HTTP path's pooled connections run on.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

impl Stream {
    pub(crate) fn boxed(self) -> Box<dyn Io> {
        match self {
            Self::Plain(s) => Box::new(s),
            Self::Tls(s) => s,
        }
    }
}

/// How long a peer may take to send its first byte or finish a handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// PERMISSIVE: a peer silent this long speaks a server-first protocol in plain text.
const PERMISSIVE_PEEK: Duration = Duration::from_secs(1);

/// An inbound connection under mTLS: the client's handshake, or plain text
/// when the mode allows it. `None`: refused (counted, logged at debug).
async fn accept_inbound(client: TcpStream, active: &Active, stats: &MtlsStats, route: &Route) -> Option<Stream> {
    let listen = route.listen;
    let permissive = active.mode == MtlsMode::Permissive;
    let mut first = [0u8; 1];
    let wait = if permissive { PERMISSIVE_PEEK } else { HANDSHAKE_TIMEOUT };
    let tls = match tokio::time::timeout(wait, client.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        Ok(_) => return None,
        Err(_) => false,
    };
    if !tls {
        if permissive {
            MtlsStats::count(&stats.plain_accepted);
            return Some(Stream::Plain(client));
        }
        MtlsStats::count(&stats.plain_refused);
        tracing::debug!(%listen, "plain-text connection refused: the mesh's mTLS is STRICT");
        return None;
    }
    let Some(server) = active.server() else {
        MtlsStats::count(&stats.no_certificate);
        return None;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsAcceptor::from(server).accept(client)).await {
        Ok(Ok(stream)) => match active.peer_service(stream.get_ref().1.peer_certificates()) {
            Some(peer) => {
                MtlsStats::count(&stats.inbound_handshakes);
                let decision = decide(active.permissions(), &route.inbound_tags, &peer);
                match &decision {
                    Decision::Allow { .. } => {}
                    // Logged at counts 1, 2, 4, 8, ... per source.
                    Decision::ShadowDeny { policy } => {
                        let count = stats.denied(&peer, true);
                        if count.is_power_of_two() {
                            tracing::info!(%listen, service = %route.service, source = %peer, policy, count, "would be denied (AllowWithShadowDeny): allowed");
                        }
                    }
                    Decision::Deny { policy } => {
                        let count = stats.denied(&peer, false);
                        if count.is_power_of_two() {
                            tracing::warn!(%listen, service = %route.service, source = %peer, policy, count, "connection denied by MeshTrafficPermission");
                        }
                    }
                    Decision::NoPolicy => {
                        let count = stats.denied(&peer, false);
                        if count.is_power_of_two() {
                            tracing::warn!(%listen, service = %route.service, source = %peer, count, "connection denied: no MeshTrafficPermission allows it");
                        }
                    }
                }
                decision.allows().then(|| Stream::Tls(Box::new(stream.into())))
            }
            None => {
                MtlsStats::count(&stats.inbound_refused);
                tracing::debug!(%listen, mesh = %active.mesh, "client certificate names no service of this mesh");
                None
            }
        },
        Ok(Err(e)) => {
            MtlsStats::count(&stats.inbound_refused);
            tracing::debug!(%listen, error = %e, "inbound mTLS handshake refused");
            None
        }
        Err(_) => {
            MtlsStats::count(&stats.inbound_refused);
            None
        }
    }
}

/// An outbound connection to a mesh endpoint under mTLS: the handshake
/// that proves the peer is `service`.
async fn originate(upstream: TcpStream, active: &Active, stats: &MtlsStats, service: &str) -> Result<Stream, String> {
    let Some(config) = active.client(service) else {
        MtlsStats::count(&stats.no_certificate);
        return Err("no certificate yet".to_owned());
    };
    let peer = upstream.peer_addr().map_err(|e| e.to_string())?;
    let connect = tokio_rustls::TlsConnector::from(config).connect(crate::tls::server_name(peer), upstream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(stream)) => {
            MtlsStats::count(&stats.outbound_handshakes);
            if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                MtlsStats::count(&stats.outbound_resumed);
            }
            Ok(Stream::Tls(Box::new(stream.into())))
        }
        Ok(Err(e)) => {
            MtlsStats::count(&stats.outbound_refused);
            Err(format!("mTLS to {peer}: {e}"))
        }
        Err(_) => {
            MtlsStats::count(&stats.outbound_refused);
            Err(format!("mTLS to {peer}: no handshake in {HANDSHAKE_TIMEOUT:?}"))
        }
    }
}

/// Accepts on `listener` until the route is stopped; connections run on
/// `tracker` so a drain can wait for them.
pub async fn serve(listener: TcpListener, route: Arc<Route>, settings: ProxySettings, tracker: TaskTracker) {
    let stop = route.stop.clone();
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors or the like: say so and keep accepting.
                tracing::warn!(listen = %route.listen, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        route.stats.total.fetch_add(1, Ordering::Relaxed);
        let route = route.clone();
        tracker.spawn(async move {
            // Biased: no random branch order on every wake-up of a connection.
            tokio::select! {
                biased;
                () = connection(client, &route, settings) => {}
                () = route.kill.cancelled() => {}
            }
        });
    }
}

pub(crate) async fn connect(target: &Target) -> std::io::Result<TcpStream> {
    match target {
        Target::Socket(sa) => TcpStream::connect(sa).await,
        // Resolved on each connect, so a name's new addresses apply at once.
        Target::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
    }
}

async fn connection(client: TcpStream, route: &Arc<Route>, settings: ProxySettings) {
    let started = Instant::now();
    // On Linux the socket has it from the listener already.
    #[cfg(not(target_os = "linux"))]
    let _ = client.set_nodelay(true);
    let peer = settings.access_log.then(|| client.peer_addr().map(|a| a.to_string()).unwrap_or_default());
    if !route.inbound
        && let Some(http) = route.http.load_full()
    {
        return crate::http::serve(client, route.clone(), http, settings).await;
    }
    let active = route.mtls.as_ref().and_then(|m| m.active().map(|a| (m, a)));
    let client = match &active {
        Some((m, a)) if route.inbound => match accept_inbound(client, a, &m.stats, route).await {
            Some(s) => s,
            None => return,
        },
        _ => Stream::Plain(client),
    };
    let balancer = route.balancer.load_full();
    let stats = &route.stats;
    let policy = **route.tcp.load();
    let max_attempts = policy.connect_attempts.clamp(1, MAX_CONNECT_ATTEMPTS);
    let connect_timeout = policy.connect_timeout.unwrap_or(settings.connect_timeout);
    let idle_timeout = policy.idle_timeout.unwrap_or(settings.idle_timeout);
    // On the stack: no allocation per connection for the retry bookkeeping.
    let mut tried = [usize::MAX; MAX_CONNECT_ATTEMPTS];
    let mut attempts = 0;
    let (i, endpoint, upstream) = loop {
        let next = if attempts < max_attempts { balancer.pick(&tried[..attempts], Instant::now()) } else { None };
        let Some(i) = next else {
            stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
            log_no_endpoint(route, attempts);
            return; // dropping the client closes it at once
        };
        tried[attempts] = i;
        attempts += 1;
        let endpoint: &Arc<EndpointState> = &balancer.endpoints()[i];
        match tokio::time::timeout(connect_timeout, connect(&endpoint.target)).await {
            // A connect alone is no success: a peer sidecar accepts even
            // when its application is gone. What the connection carries decides.
            Ok(Ok(s)) => break (i, endpoint.clone(), s),
            failed => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                // Formatted only when debug logging is on: this is the connect path.
                match failed {
                    Ok(Err(e)) => {
                        tracing::debug!(listen = %route.listen, endpoint = %endpoint.address, error = %e, "connect failed")
                    }
                    _ => tracing::debug!(listen = %route.listen, endpoint = %endpoint.address, "connect timeout"),
                }
                if balancer.failed(i, Instant::now()) {
                    stats.ejections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(service = %route.service, endpoint = %endpoint.address, "endpoint ejected after consecutive connect failures");
                }
            }
        }
    };
    let Some(upstream) =
        secure(route, &endpoint, upstream, active.as_ref().map(|(m, a)| (m.as_ref(), a.as_ref()))).await
    else {
        return;
    };
    let outstanding = Outstanding::new(endpoint.clone());
    stats.active.fetch_add(1, Ordering::Relaxed);
    let activity = Activity::new();
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let flow = Flow { sent: &sent, received: &received, activity: &activity };
    let idle = async {
        loop {
            let deadline = activity.idle_deadline(idle_timeout);
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        biased;
        r = carry_any(client, upstream, &flow) => match r {
            Ok(()) => End::Closed,
            Err(e) => match crate::pump::failed_peer(&e) {
                Some(Peer::Upstream) => End::Upstream(e),
                Some(Peer::Client) => End::Client(e),
                None => End::Sidecar(e),
            },
        },
        () = idle => End::Idle,
    };
    let (sent, received) = (sent.into_inner(), received.into_inner());
    // Typed outcomes feed outlier detection: an upstream that failed before
    // sending a byte (a peer sidecar whose application is gone resets the
    // connection) counts toward its ejection; one that answered is a
    // success; a client leaving says nothing of the endpoint.
    match &end {
        End::Idle => {
            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
        }
        End::Client(_) => {
            stats.client_aborts.fetch_add(1, Ordering::Relaxed);
        }
        End::Upstream(_) => {
            stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        End::Closed | End::Sidecar(_) => {}
    }
    if !route.inbound {
        let outcome = match &end {
            End::Upstream(_) if received == 0 => Some(crate::balance::Outcome::LocalFailure),
            _ if received > 0 => Some(crate::balance::Outcome::Success),
            _ => None,
        };
        if let Some(outcome) = outcome
            && balancer.record(i, outcome, Instant::now())
        {
            stats.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service = %route.service, endpoint = %endpoint.address, "endpoint ejected after consecutive failures (connect, or reset before answering)");
        }
    }
    drop(balancer);
    stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
    stats.bytes_received.fetch_add(received, Ordering::Relaxed);
    drop(outstanding);
    stats.active.fetch_sub(1, Ordering::Relaxed);
    if settings.access_log {
        tracing::info!(
            target: "access",
            service = %route.service,
            listen = %route.listen,
            client = %peer.unwrap_or_default(),
            endpoint = %endpoint.address,
            sent,
            received,
            duration_ms = started.elapsed().as_millis() as u64,
            end = %end,
        );
    }
}

/// The upstream side of a connection just made: mTLS to a mesh peer, TLS
/// to an external endpoint whose `spec.tls` asks for it, or plain. `None`:
/// it failed (said and counted).
pub(crate) async fn secure(
    route: &Route,
    endpoint: &EndpointState,
    upstream: TcpStream,
    active: Option<(&Mtls, &Active)>,
) -> Option<Stream> {
    let _ = upstream.set_nodelay(true);
    match (active, endpoint.identity.as_deref()) {
        (Some((m, a)), Some(service)) if !route.inbound => match originate(upstream, a, &m.stats, service).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(service = %route.service, endpoint = %endpoint.address, error = %e, "connection closed: no mTLS to the peer");
                None
            }
        },
        _ => match route.external.load_full() {
            None => Some(Stream::Plain(upstream)),
            Some(origin) => match originate_external(upstream, &origin, &endpoint.target).await {
                Ok(s) => Some(s),
                Err(e) => {
                    route.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(service = %route.service, endpoint = %endpoint.address, error = %e, "connection closed: TLS to the external endpoint failed");
                    None
                }
            },
        },
    }
}

/// How a carried connection ended.
enum End {
    Closed,
    Idle,
    /// The endpoint's side failed (reset, refused write).
    Upstream(std::io::Error),
    /// The client's side failed.
    Client(std::io::Error),
    /// The sidecar's own (no pipe, ...).
    Sidecar(std::io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Idle => f.write_str("idle timeout"),
            Self::Upstream(e) | Self::Client(e) | Self::Sidecar(e) => write!(f, "{e}"),
        }
    }
}

/// TLS to a MeshExternalService endpoint, verified as its `spec.tls` says.
async fn originate_external(upstream: TcpStream, origin: &ExternalOrigin, target: &Target) -> Result<Stream, String> {
    let peer = upstream.peer_addr().map_err(|e| e.to_string())?;
    let host = match target {
        Target::Name(host, _) => host.clone(),
        Target::Socket(sa) => sa.ip().to_string(),
    };
    let connect =
        tokio_rustls::TlsConnector::from(origin.config.clone()).connect(origin.server_name(&host, peer), upstream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream.into()))),
        Ok(Err(e)) => Err(format!("TLS to {host} ({peer}): {e}")),
        Err(_) => Err(format!("TLS to {host} ({peer}): no handshake in {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// Splices when both sides are plain TCP; copies through user space otherwise.
async fn carry_any(client: Stream, upstream: Stream, flow: &Flow<'_>) -> std::io::Result<()> {
    match (client, upstream) {
        (Stream::Plain(c), Stream::Plain(u)) => carry(&c, &u, flow).await,
        (Stream::Plain(c), Stream::Tls(u)) => crate::pump::carry_streams(c, u, flow).await,
        (Stream::Tls(c), Stream::Plain(u)) => crate::pump::carry_streams(c, u, flow).await,
        (Stream::Tls(c), Stream::Tls(u)) => crate::pump::carry_streams(c, u, flow).await,
    }
}

/// At most one line per listener every 10 seconds: a service with no
/// healthy endpoint must not flood the logs.
fn log_no_endpoint(route: &Route, attempts: usize) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX) + 10_000;
    let last = route.stats.last_no_endpoint_log.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && route.stats.last_no_endpoint_log.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(
            service = %route.service,
            listen = %route.listen,
            tried = attempts,
            closed_so_far = route.stats.no_endpoint.load(Ordering::Relaxed),
            "no healthy endpoint: connection closed"
        );
    }
}
