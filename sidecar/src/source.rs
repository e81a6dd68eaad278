//! Where the view comes from, and the loop that keeps it fresh.
//!
//! From the table: the first refresh reads the whole mesh into a [`Replica`];
//! every later one reads only the change items written since (one small
//! Query while nothing happens) and, when there are new ones, the items they
//! name and the VIEW item (generation, VIP port). See `docs/view.md`. From a
//! file: the file is read again when its size or modification time
//! changes. Either way a failed read or a view that does not validate keeps
//! the last good view serving, counts an error, and retries: with backoff for
//! the table (it spares DynamoDB during an outage), at the normal interval for
//! a file (a fixed file is picked up on the next tick).
//!
//! Every fetch is bounded by [`fetch_timeout`] and raced against `stop`: a
//! table that accepts connections and never answers costs one timed-out
//! refresh per tick, ages the view, and never holds up SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use std::collections::{BTreeMap, BTreeSet};

use loopmesh_shared::model::{CaKind, Mesh, MeshTrafficPermission, Resource};
use loopmesh_shared::mtls::issuer::StoredRoot;
use loopmesh_shared::store::dynamo::{DynamoMeshView, MeshItem};
use loopmesh_shared::store::keys::{self, CHANGE_RETENTION_S};
use loopmesh_shared::view::{BackendView, EndpointEntry, MeshMtls, ServiceEntry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::listeners::Listeners;
use crate::view::{View, build};
use crate::wake::{self, Wakes};

/// Whether the VIP port disagreement was logged (once per process).
static PORT_WARNED: AtomicBool = AtomicBool::new(false);

/// The longest wait between attempts while the source keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum Source {
    File(PathBuf),
    Table { reader: DynamoMeshView, mesh: String, vip_port: u16, replica: Option<Box<Replica>> },
}

impl Source {
    pub fn table(reader: DynamoMeshView, mesh: String, vip_port: u16) -> Self {
        Self::Table { reader, mesh, vip_port, replica: None }
    }

    /// Keeps the replica a view was built from, once that view is applied.
    fn keep(&mut self, next: Option<Box<Replica>>) {
        if let (Some(next), Self::Table { replica, .. }) = (next, self) {
            *replica = Some(next);
        }
    }
}

/// How far before the newest change item already applied each check reads
/// again: a writer stamps its change item before its transaction commits, so
/// an item may become visible after a later-stamped one (a slow commit, an
/// eventually consistent read, clocks a little apart). Items already applied
/// in the window are recognised by key and skipped.
pub const OVERLAP_MS: u64 = 15_000;

/// The mesh as this sidecar holds it, kept current by change items.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    mesh: String,
    services: BTreeMap<String, ServiceEntry>,
    endpoints: BTreeMap<String, EndpointEntry>,
    /// The mesh's Mesh resource (mTLS settings) and its backends' roots.
    resource: Option<Mesh>,
    roots: BTreeMap<String, StoredRoot>,
    permissions: BTreeMap<String, MeshTrafficPermission>,
    /// Outbound policies by sort key.
    policies: BTreeMap<String, Resource>,
    generation: u64,
    port: u16,
    /// The newest change item applied (its writer's clock, epoch ms).
    cursor_ms: u64,
    /// Change items applied within the overlap window, by sort key.
    applied: BTreeMap<String, u64>,
    /// When this sidecar last read the change items (its own clock): a view
    /// older than half the items' retention is read whole again.
    checked_ms: u64,
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The table's VIP port is the one names were published for; a sidecar
/// whose environment says otherwise follows the table.
fn follow_table_port(table_port: Option<u16>, env_port: u16) -> u16 {
    match table_port {
        Some(p) if p != env_port => {
            if !PORT_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    table = p,
                    environment = env_port,
                    "KUMA_DNS_SERVER_SERVICE_VIP_PORT differs from the table's; following the table"
                );
            }
            p
        }
        Some(p) => p,
        None => env_port,
    }
}

impl Replica {
    /// The whole mesh. Change items from a little before the read began are
    /// read at the next check, so a change committed during the read is not lost.
    async fn read(reader: &DynamoMeshView, mesh: &str, env_port: u16) -> Result<Self, String> {
        let started = epoch_ms();
        let (generation, table_port) = reader.generation(mesh).await.map_err(|e| e.to_string())?;
        let (services, endpoints) = reader.read_keyed(mesh).await.map_err(|e| e.to_string())?;
        let security = reader.security(mesh).await.map_err(|e| e.to_string())?;
        Ok(Self {
            mesh: mesh.to_owned(),
            services: services.into_iter().collect(),
            endpoints: endpoints.into_iter().collect(),
            resource: security.resource.map(|(_, m)| m),
            roots: security.roots.into_iter().collect(),
            permissions: security.permissions.into_iter().collect(),
            policies: security.policies.into_iter().collect(),
            generation,
            port: follow_table_port(table_port, env_port),
            cursor_ms: started.saturating_sub(OVERLAP_MS),
            applied: BTreeMap::new(),
            checked_ms: started,
        })
    }

    /// Reads the change items since the cursor; `None` when none is new.
    /// Nothing in `self` changes until every read succeeded.
    async fn advance(&self, reader: &DynamoMeshView, mesh: &str, env_port: u16) -> Result<Option<Self>, String> {
        let checked_ms = epoch_ms();
        let since = self.cursor_ms.saturating_sub(OVERLAP_MS);
        let changes = reader.changes(mesh, since).await.map_err(|e| e.to_string())?;
        let fresh: Vec<_> = changes.into_iter().filter(|c| !self.applied.contains_key(&c.sk)).collect();
        if fresh.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> =
            fresh.iter().flat_map(|c| c.changed.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        let items = reader.items(mesh, &keys).await.map_err(|e| e.to_string())?;
        // The VIEW item (generation, VIP port) matters only when services
        // changed; an endpoint's change counts as one more generation.
        let (generation, table_port) = if keys.iter().any(|k| k.starts_with("SVC#")) {
            reader.generation(mesh).await.map_err(|e| e.to_string())?
        } else {
            (self.generation + fresh.len() as u64, Some(self.port))
        };
        let mut next = self.clone();
        for (sk, item) in items {
            next.services.remove(&sk);
            next.endpoints.remove(&sk);
            next.roots.remove(&sk);
            next.permissions.remove(&sk);
            next.policies.remove(&sk);
            if sk == keys::mesh_resource_sk(mesh) {
                next.resource = None;
            }
            match item {
                Some(MeshItem::Mesh(m)) => next.resource = Some(*m),
                Some(MeshItem::Root(r)) => {
                    next.roots.insert(sk, r);
                }
                Some(MeshItem::Permission(p)) => {
                    next.permissions.insert(sk, *p);
                }
                Some(MeshItem::Policy(p)) => {
                    next.policies.insert(sk, *p);
                }
                Some(MeshItem::Service(s)) => {
                    next.services.insert(sk, s);
                }
                Some(MeshItem::Endpoint(e)) => {
                    next.endpoints.insert(sk, e);
                }
                None => {}
            }
        }
        next.generation = generation;
        next.port = follow_table_port(table_port, env_port);
        next.cursor_ms = fresh.iter().map(|c| c.at_ms).fold(self.cursor_ms, u64::max);
        next.applied.extend(fresh.into_iter().map(|c| (c.sk, c.at_ms)));
        let keep_from = next.cursor_ms.saturating_sub(OVERLAP_MS);
        next.applied.retain(|_, at| *at >= keep_from);
        next.checked_ms = checked_ms;
        Ok(Some(next))
    }

    fn fetched(self) -> Fetched {
        let view = self.view();
        let marker = Marker::Generation(view.generation);
        Fetched::New(Box::new(view), marker, Some(Box::new(self)))
    }

    fn view(&self) -> View {
        let services: Vec<ServiceEntry> = self.services.values().cloned().collect();
        let endpoints: Vec<EndpointEntry> = self.endpoints.values().cloned().collect();
        let mut view = build(self.generation, &services, &endpoints, self.port);
        for p in self.policies.values() {
            view.policies.add(p.clone());
        }
        view.mtls = self.resource.as_ref().and_then(|m| m.mtls.as_ref()).map(|mtls| {
            let enabled = mtls.enabled();
            MeshMtls {
                mesh: self.mesh.clone(),
                backend: enabled.name.clone(),
                mode: enabled.mode,
                backends: mtls
                    .backends
                    .iter()
                    .map(|b| BackendView { name: b.name.clone(), builtin: b.kind == CaKind::Builtin })
                    .collect(),
                // Only the roots of backends the Mesh still lists are trusted.
                roots: self
                    .roots
                    .values()
                    .filter(|r| mtls.backends.iter().any(|b| b.name == r.backend))
                    .map(|r| (r.backend.clone(), r.certificate.clone()))
                    .collect(),
                permissions: self.permissions.values().cloned().collect(),
            }
        });
        view
    }
}

/// What `/metrics` reports of the view.
#[derive(Debug)]
pub struct ViewStatus {
    start: Instant,
    /// Milliseconds after `start` of the last successful check; `u64::MAX` before the first.
    last_ok_ms: AtomicU64,
    pub refresh_errors: AtomicU64,
    /// Refreshes that got no answer within the fetch timeout (also counted in `refresh_errors`).
    pub refresh_timeouts: AtomicU64,
    /// Consecutive failed refreshes; 0 while the view is current.
    pub failing: AtomicU64,
    pub rejected: AtomicU64,
    pub generation: AtomicU64,
    /// DynamoDB requests and read units (thousandths) the view has cost, as DynamoDB reports them.
    pub reads: AtomicU64,
    pub read_milli_units: AtomicU64,
    pub wakes: Arc<Wakes>,
}

impl Default for ViewStatus {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ok_ms: AtomicU64::new(u64::MAX),
            refresh_errors: AtomicU64::new(0),
            refresh_timeouts: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_milli_units: AtomicU64::new(0),
            wakes: Arc::default(),
        }
    }
}

impl ViewStatus {
    fn ok(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_ok_ms.store(ms, Ordering::Relaxed);
        self.failing.store(0, Ordering::Relaxed);
    }

    fn failed(&self) -> u32 {
        self.refresh_errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failing.fetch_add(1, Ordering::Relaxed) + 1;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Seconds since the view was last confirmed current; `None` before the first.
    pub fn age(&self) -> Option<f64> {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        (last != u64::MAX).then(|| self.start.elapsed().as_secs_f64() - Duration::from_millis(last).as_secs_f64())
    }
}

/// One fetch: [`Fetched::Unchanged`] when nothing changed since the marker seen.
enum Fetched {
    Unchanged,
    /// A view, its marker, and (from the table) the replica to keep once
    /// the view is applied.
    New(Box<View>, Marker, Option<Box<Replica>>),
}

/// What identifies the version of the view last applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Generation(u64),
    File(u64, Option<SystemTime>),
}

impl Source {
    async fn fetch(&mut self, seen: Option<&Marker>) -> Result<Fetched, String> {
        match self {
            Self::File(path) => {
                let path: &PathBuf = path;
                let meta = tokio::fs::metadata(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
                let marker = Marker::File(meta.len(), meta.modified().ok());
                if seen == Some(&marker) {
                    return Ok(Fetched::Unchanged);
                }
                let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
                let view: View = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Fetched::New(Box::new(view), marker, None))
            }
            Self::Table { reader, mesh, vip_port, replica } => {
                // A view not yet applied (none, or one rejected), or one so old
                // that change items may have expired, is read whole.
                let stale = |r: &Replica| epoch_ms().saturating_sub(r.checked_ms) > CHANGE_RETENTION_S * 1000 / 2;
                match replica.as_ref().filter(|r| seen.is_some() && !stale(r)) {
                    None => {
                        let fresh = Replica::read(reader, mesh, *vip_port).await?;
                        Ok(fresh.fetched())
                    }
                    Some(current) => match current.advance(reader, mesh, *vip_port).await? {
                        None => {
                            if let Some(r) = replica.as_mut() {
                                r.checked_ms = epoch_ms();
                            }
                            Ok(Fetched::Unchanged)
                        }
                        Some(next) => Ok(next.fetched()),
                    },
                }
            }
        }
    }
}

/// The sidecar's table view code without listeners: what a sidecar reads and
/// keeps, one check at a time. The benchmark's simulated fleet runs this.
#[derive(Debug)]
pub struct ViewClient {
    source: Source,
    seen: Option<Marker>,
}

impl ViewClient {
    pub fn new(reader: DynamoMeshView, mesh: String, vip_port: u16) -> Self {
        Self { source: Source::table(reader, mesh, vip_port), seen: None }
    }

    /// DynamoDB requests and read units spent so far, as DynamoDB reports them.
    pub fn usage(&self) -> (u64, f64) {
        match &self.source {
            Source::Table { reader, .. } => (reader.usage().requests(), reader.usage().read_units()),
            Source::File(_) => (0, 0.0),
        }
    }

    /// One refresh: the new view when something changed.
    pub async fn check(&mut self) -> Result<Option<View>, String> {
        match self.source.fetch(self.seen.as_ref()).await? {
            Fetched::Unchanged => Ok(None),
            Fetched::New(view, marker, next) => {
                self.seen = Some(marker);
                self.source.keep(next);
                Ok(Some(*view))
            }
        }
    }
}

/// How long one refresh may take: a few intervals, and never less than 5 s
/// (one DynamoDB call answers in milliseconds; a refresh reads at most a
/// handful of pages).
pub fn fetch_timeout(interval: Duration) -> Duration {
    interval.saturating_mul(3).max(Duration::from_secs(5))
}

/// How often the view is checked: every `interval`, or every `safety` once
/// wake-ups have proven to arrive (see [`crate::wake`]).
#[derive(Debug, Clone)]
pub struct Cadence {
    pub interval: Duration,
    pub safety: Duration,
    pub wakes: Option<Arc<Wakes>>,
}

impl Cadence {
    pub fn polling(interval: Duration) -> Self {
        Self { interval, safety: interval, wakes: None }
    }

    fn period(&self) -> Duration {
        match &self.wakes {
            Some(w) if w.trusted() => self.safety.max(self.interval),
            _ => self.interval,
        }
    }
}

/// Waits for a wake-up; never returns without wake-ups configured.
async fn woken(wakes: Option<&Wakes>) {
    match wakes {
        Some(w) => w.notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Keeps `listeners` on the source's latest good view until `stop`.
pub async fn refresh(
    mut source: Source,
    listeners: Arc<Listeners>,
    status: Arc<ViewStatus>,
    cadence: Cadence,
    stop: CancellationToken,
) {
    let interval = cadence.interval;
    let mut seen: Option<Marker> = None;
    let timeout = fetch_timeout(interval);
    let mut woke = false;
    let mut last_wake_check: Option<Instant> = None;
    // Endpoints in the view: about how many sidecars share each wake-up.
    let mut members = 0usize;
    loop {
        let fetched = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            f = tokio::time::timeout(timeout, source.fetch(seen.as_ref())) => f.unwrap_or_else(|_| {
                status.refresh_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(format!("no answer in {timeout:?}"))
            }),
        };
        if let Source::Table { reader, .. } = &source {
            status.reads.store(reader.usage().requests(), Ordering::Relaxed);
            status.read_milli_units.store((reader.usage().read_units() * 1000.0) as u64, Ordering::Relaxed);
        }
        let failures = match fetched {
            Ok(Fetched::Unchanged) => {
                status.ok();
                if let Some(a) = listeners.retry_unbound() {
                    tracing::info!(added = a.added, failed = a.failed, "retried VIP listeners that could not bind");
                }
                0
            }
            Ok(Fetched::New(view, marker, next)) => {
                let generation = view.generation;
                let outbounds = view.outbounds.len();
                let endpoints: usize = view.outbounds.iter().map(|o| o.endpoints.len()).sum();
                members = endpoints;
                match listeners.apply(*view) {
                    Ok(a) => {
                        status.ok();
                        status.generation.store(generation, Ordering::Relaxed);
                        seen = Some(marker);
                        source.keep(next);
                        // A change the poll found before any wake-up announced it: the
                        // wake-ups are not arriving, so poll at the normal interval again.
                        if let Some(w) = cadence.wakes.as_deref().filter(|w| !woke && w.trusted()) {
                            w.distrust();
                            tracing::warn!(
                                "a change arrived with no wake-up; polling at the refresh interval until one arrives"
                            );
                        }
                        tracing::info!(
                            generation,
                            outbounds,
                            endpoints,
                            added = a.added,
                            removed = a.removed,
                            updated = a.updated,
                            failed = a.failed,
                            listening = a.listening,
                            "view applied"
                        );
                        0
                    }
                    Err(e) => {
                        // Rejected whole; the previous view keeps serving. The
                        // marker is not taken, so a fixed source is read again.
                        status.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(generation, error = %e, "view rejected; the previous view stays");
                        status.failed()
                    }
                }
            }
            Err(e) => {
                let failures = status.failed();
                // One line per failure streak length that is a power of two: a
                // long outage does not flood the log.
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, age_s = status.age().unwrap_or(-1.0), "view refresh failed; serving the last good view");
                }
                failures
            }
        };
        let wait = match (&source, failures) {
            // Jittered, so sidecars started together do not read together.
            (_, 0) | (Source::File(_), _) => cadence.period().mul_f64(0.8 + fastrand::f64() * 0.4),
            (Source::Table { .. }, n) => {
                let backoff = interval.saturating_mul(1 << n.min(8)).min(MAX_BACKOFF);
                backoff.mul_f64(0.5 + fastrand::f64() / 2.0)
            }
        };
        woke = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => false,
            () = woken(cadence.wakes.as_deref()) => true,
        };
        if woke {
            // Every sidecar of the mesh got the same wake-up: a random pause
            // over a window that grows with the mesh spreads their reads under
            // the partition's limit, and each checks at most once a window.
            let spread = wake::spread(members);
            let gap = last_wake_check.map_or(Duration::ZERO, |t| spread.max(wake::MIN_GAP).saturating_sub(t.elapsed()));
            let pause = gap.max(spread.mul_f64(fastrand::f64()));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            last_wake_check = Some(Instant::now());
        }
    }
}
