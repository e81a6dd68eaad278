//! The sidecar's listeners and how a new view reaches them without a
//! restart: a new VIP:port is bound at once; a removed one stops accepting at
//! once while its open connections drain (until they close or the drain
//! timeout); changed endpoints apply to new connections only. No refresh
//! touches an open connection of a VIP that stays.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::task::TaskTracker;

use crate::balance::Balancer;
use crate::http::Directory;
use crate::proxy::{ProxySettings, Route, serve};
use crate::tls::ExternalOrigin;
use crate::view::{Endpoint, View};

/// Pending connections a listener queues before `accept`.
const BACKLOG: u32 = 1024;

/// One inbound of the Dataplane: peers connect to `listen`, the application
/// is at `forward`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundSpec {
    pub service: String,
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    /// The inbound's tags (`kuma.io/service` among them), which
    /// MeshTrafficPermissions select inbounds by.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: loopmesh_shared::model::Labels,
}

/// What one applied view changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
    /// Listeners that could not be bound; retried on every refresh tick.
    pub failed: usize,
    pub listening: usize,
}

type Key = (Ipv4Addr, u16);

#[derive(Debug)]
pub struct Listeners {
    settings: ProxySettings,
    /// Listen on the view's VIPs (`--bind-outbounds`).
    bind_vips: bool,
    /// The Dataplane's explicit outbounds (the pre-2.11 form), served from
    /// the view's endpoints of their service.
    static_outbounds: Vec<loopmesh_shared::model::StaticOutbound>,
    /// `None`: no zone preference.
    zone: Option<String>,
    drain_timeout: Duration,
    tracker: TaskTracker,
    outbounds: Mutex<BTreeMap<Key, Arc<Route>>>,
    inbounds: Mutex<Vec<(InboundSpec, Arc<Route>)>>,
    view: ArcSwap<View>,
    /// The first view is applied (for `/ready`).
    pub applied: AtomicBool,
    pub draining: AtomicBool,
    pub bind_errors: AtomicU64,
    /// VIP listeners of the current view that are not bound (for `/ready`).
    pub unbound: AtomicU64,
    pub view_changes: AtomicU64,
    /// The mesh's mTLS, which every route consults per connection.
    pub mtls: Arc<crate::tls::Mtls>,
    /// Every outbound by service, for MeshHTTPRoute's backendRefs.
    directory: Arc<Directory>,
}

/// A listening socket on exactly `addr`, never a wildcard. `TCP_NODELAY`
/// here is inherited by every accepted socket on Linux, which saves a call
/// per connection.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Makes `route` an HTTP outbound of `protocol`, or a TCP one; true when
/// that changed. Open connections keep what they started with.
fn set_protocol(route: &Route, protocol: loopmesh_shared::model::Protocol, directory: &Arc<Directory>) -> bool {
    let current = route.http.load().as_ref().map(|h| h.protocol).unwrap_or_default();
    if current == protocol {
        return false;
    }
    let http = (!protocol.is_tcp()).then(|| Arc::new(crate::http::HttpOutbound::new(protocol, directory.clone())));
    route.http.store(http);
    true
}

/// Gives `route` what the policies resolved for it; true when that changed.
fn apply_policy(route: &Route, resolved: &crate::http::policy::Resolved) -> bool {
    let mut changed = false;
    let tcp = crate::proxy::TcpPolicy {
        connect_timeout: resolved.policy.connect_timeout,
        idle_timeout: resolved.idle_timeout,
        connect_attempts: resolved.connect_attempts.map_or(crate::proxy::CONNECT_ATTEMPTS, |n| n as usize),
    };
    if **route.tcp.load() != tcp {
        route.tcp.store(Arc::new(tcp));
        changed = true;
    }
    if let Some(http) = route.http.load_full()
        && **http.policy.load() != resolved.policy
    {
        http.policy.store(Arc::new(resolved.policy.clone()));
        changed = true;
    }
    changed
}

impl Listeners {
    pub fn new(settings: ProxySettings, zone: Option<String>, drain_timeout: Duration) -> Self {
        Self::with_outbounds(settings, zone, drain_timeout, true, Vec::new())
    }

    /// Listeners that bind the view's VIPs only if `bind_vips`, and always
    /// the explicit `static_outbounds`.
    pub fn with_outbounds(
        settings: ProxySettings,
        zone: Option<String>,
        drain_timeout: Duration,
        bind_vips: bool,
        static_outbounds: Vec<loopmesh_shared::model::StaticOutbound>,
    ) -> Self {
        Self {
            settings,
            bind_vips,
            static_outbounds,
            zone,
            drain_timeout,
            tracker: TaskTracker::new(),
            outbounds: Mutex::default(),
            inbounds: Mutex::default(),
            view: ArcSwap::from_pointee(View::default()),
            applied: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            bind_errors: AtomicU64::new(0),
            unbound: AtomicU64::new(0),
            view_changes: AtomicU64::new(0),
            mtls: Arc::default(),
            directory: Arc::default(),
        }
    }

    /// Binds every inbound; an inbound that cannot listen is an error the
    /// caller reports before anything is served.
    pub fn start_inbounds(&self, specs: &[InboundSpec]) -> Result<(), String> {
        let mut inbounds = self.inbounds.lock().unwrap_or_else(PoisonError::into_inner);
        for spec in specs {
            let listener = bind(spec.listen)
                .map_err(|e| format!("inbound {} of {}: cannot listen: {e}", spec.listen, spec.service))?;
            let endpoint = Endpoint { address: spec.forward.to_string(), zone: None, identity: None };
            let route = Route::new(spec.service.clone(), spec.listen, Balancer::new(&[endpoint], None));
            let mut tags = spec.tags.clone();
            tags.entry(loopmesh_shared::model::SERVICE_TAG.to_owned()).or_insert_with(|| spec.service.clone());
            let route = Arc::new(route.with_mtls(self.mtls.clone(), Some(tags)));
            tokio::spawn(serve(listener, route.clone(), self.settings, self.tracker.clone()));
            tracing::info!(service = %spec.service, listen = %spec.listen, forward = %spec.forward, "inbound listening");
            inbounds.push((spec.clone(), route));
        }
        Ok(())
    }

    /// Applies a view whole, or rejects it and keeps the current one.
    pub fn apply(&self, view: View) -> Result<Applied, String> {
        view.validate()?;
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: no new listeners".into());
        }
        // An explicit outbound serves its service's endpoints on its own
        // address (no endpoints yet: it closes connections at once, as a VIP does).
        let explicit: Vec<crate::view::Outbound> = self
            .static_outbounds
            .iter()
            .filter_map(|so| {
                let std::net::IpAddr::V4(ip) = so.address else { return None };
                // The `kuma.io/service` service of that name (a file view may leave the kind out).
                let svc = loopmesh_shared::vip::ServiceKind::Service.code();
                let of_service = view
                    .outbounds
                    .iter()
                    .find(|o| o.service == so.service && o.kind.as_deref().is_none_or(|k| k == svc));
                Some(crate::view::Outbound {
                    service: so.service.clone(),
                    kind: None,
                    vip: ip,
                    port: so.port,
                    endpoints: of_service.map(|o| o.endpoints.clone()).unwrap_or_default(),
                    tls: None,
                    protocol: of_service.map(|o| o.protocol).unwrap_or_default(),
                })
            })
            .collect();
        let vips = view.outbounds.iter().filter(|_| self.bind_vips);
        // TLS to external endpoints: a configuration that cannot be built
        // rejects the view whole, like any other invalid part.
        let mut origins = BTreeMap::new();
        for o in vips.clone() {
            if let Some(spec) = &o.tls {
                let origin = ExternalOrigin::new(spec)
                    .map_err(|e| format!("outbound {} ({}:{}): {e}", o.service, o.vip, o.port))?;
                origins.insert((o.vip, o.port), Arc::new(origin));
            }
        }
        let mut routes = self.outbounds.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: BTreeMap<Key, _> = vips.chain(&explicit).map(|o| ((o.vip, o.port), o)).collect();
        let mut applied = Applied::default();
        routes.retain(|key, route| {
            if wanted.contains_key(key) {
                return true;
            }
            self.retire(route);
            applied.removed += 1;
            false
        });
        // The sidecar's own inbounds are what policies' targetRefs select it by.
        let inbound_tags: Vec<loopmesh_shared::model::Labels> = self
            .inbounds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, r)| r.inbound_tags.clone())
            .collect();
        for (key, outbound) in &wanted {
            let resolved = crate::http::policy::resolve(
                outbound.protocol,
                &view.policies,
                &inbound_tags,
                &outbound.service,
                outbound.kind.as_deref(),
            );
            let zone = if resolved.ignore_zones { None } else { self.zone.clone() };
            if let Some(route) = routes.get(key) {
                let current = route.balancer.load();
                let same = current.endpoints().len() == outbound.endpoints.len()
                    && current
                        .endpoints()
                        .iter()
                        .zip(&outbound.endpoints)
                        .all(|(s, e)| s.address == e.address && s.zone == e.zone && s.identity == e.identity);
                let same_balancing = current.balancing == resolved.balancing && current.local_zone() == zone.as_deref();
                if !same || !same_balancing {
                    route.balancer.store(Arc::new(Balancer::carry_over(
                        &outbound.endpoints,
                        zone,
                        Some(&current),
                        resolved.balancing.clone(),
                    )));
                    applied.updated += 1;
                }
                let changed = set_protocol(route, outbound.protocol, &self.directory) | apply_policy(route, &resolved);
                if changed && same && same_balancing {
                    applied.updated += 1;
                }
                if let Some(http) = route.http.load_full() {
                    let keep: std::collections::HashSet<&str> =
                        outbound.endpoints.iter().map(|e| e.address.as_str()).collect();
                    http.pool.prune(&|e| keep.contains(e));
                }
                if route.external.load().as_ref().map(|o| &o.spec) != outbound.tls.as_ref() {
                    route.external.store(origins.get(key).cloned());
                    applied.updated += usize::from(same);
                }
                continue;
            }
            let listen = SocketAddr::from(*key);
            match bind(listen) {
                Ok(listener) => {
                    let balancer = Balancer::carry_over(&outbound.endpoints, zone, None, resolved.balancing.clone());
                    let mut route = Route::new(outbound.service.clone(), listen, balancer);
                    route.kind.clone_from(&outbound.kind);
                    route.external.store(origins.get(key).cloned());
                    set_protocol(&route, outbound.protocol, &self.directory);
                    apply_policy(&route, &resolved);
                    let route = Arc::new(route.with_mtls(self.mtls.clone(), None));
                    tokio::spawn(serve(listener, route.clone(), self.settings, self.tracker.clone()));
                    routes.insert(*key, route);
                    applied.added += 1;
                }
                Err(e) => {
                    self.bind_errors.fetch_add(1, Ordering::Relaxed);
                    applied.failed += 1;
                    tracing::error!(service = %outbound.service, %listen, error = %e, "cannot listen on the VIP");
                }
            }
        }
        self.directory.replace(&routes.values().cloned().collect::<Vec<_>>());
        applied.listening = routes.len();
        self.unbound.store(applied.failed as u64, Ordering::Relaxed);
        drop(routes);
        self.view.store(Arc::new(view));
        self.applied.store(true, Ordering::Relaxed);
        if applied != (Applied { listening: applied.listening, ..Applied::default() }) {
            self.view_changes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(applied)
    }

    /// Binds again the listeners of the current view that failed to bind
    /// (the address was busy, a port was privileged): called on every
    /// refresh tick, so a listener does not wait for the view to change.
    pub fn retry_unbound(&self) -> Option<Applied> {
        if self.unbound.load(Ordering::Relaxed) == 0 || self.draining.load(Ordering::Relaxed) {
            return None;
        }
        self.apply((*self.view()).clone()).ok()
    }

    /// Stops accepting now; ends what is still open after the drain timeout.
    fn retire(&self, route: &Arc<Route>) {
        route.stop.cancel();
        let (route, timeout) = (route.clone(), self.drain_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            route.kill.cancel();
        });
    }

    /// SIGTERM: stop every listener, wait for open connections up to the
    /// drain timeout, then end the rest. Returns the connections cut.
    pub async fn shutdown(&self) -> u64 {
        self.draining.store(true, Ordering::Relaxed);
        let routes: Vec<Arc<Route>> =
            self.outbounds().into_iter().chain(self.inbounds().into_iter().map(|(_, r)| r)).collect();
        for r in &routes {
            r.stop.cancel();
        }
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait()).await.is_ok() {
            return 0;
        }
        let cut: u64 = routes.iter().map(|r| r.stats.active.load(Ordering::Relaxed)).sum();
        for r in &routes {
            r.kill.cancel();
        }
        self.tracker.wait().await;
        cut
    }

    pub fn outbounds(&self) -> Vec<Arc<Route>> {
        self.outbounds.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub fn inbounds(&self) -> Vec<(InboundSpec, Arc<Route>)> {
        self.inbounds.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The view as last applied.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Connections open on every listener, for the drain log line.
    pub fn open_connections(&self) -> usize {
        self.tracker.len()
    }
}
