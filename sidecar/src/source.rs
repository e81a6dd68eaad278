//! Where the view comes from, and the loop that keeps it fresh.
//!
//! From the table: every refresh reads the mesh's view generation (one small
//! item) and reads the mesh's services and endpoints only when it moved. From
//! a file: the file is read again when its size or modification time
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

use loopmesh_shared::store::dynamo::DynamoMeshView;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::listeners::Listeners;
use crate::view::{View, build};

/// Whether the VIP port disagreement was logged (once per process).
static PORT_WARNED: AtomicBool = AtomicBool::new(false);

/// The longest wait between attempts while the source keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum Source {
    File(PathBuf),
    Table { reader: DynamoMeshView, mesh: String, vip_port: u16 },
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
    New(View, Marker),
}

/// What identifies the version of the view last applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Generation(u64),
    File(u64, Option<SystemTime>),
}

impl Source {
    async fn fetch(&self, seen: Option<&Marker>) -> Result<Fetched, String> {
        match self {
            Self::File(path) => {
                let meta = tokio::fs::metadata(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
                let marker = Marker::File(meta.len(), meta.modified().ok());
                if seen == Some(&marker) {
                    return Ok(Fetched::Unchanged);
                }
                let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
                let view: View = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Fetched::New(view, marker))
            }
            Self::Table { reader, mesh, vip_port } => {
                let (generation, table_port) = reader.generation(mesh).await.map_err(|e| e.to_string())?;
                let marker = Marker::Generation(generation);
                if seen == Some(&marker) {
                    return Ok(Fetched::Unchanged);
                }
                // The table's port is the one names were published for; a
                // sidecar whose environment says otherwise follows the table.
                let port = match table_port {
                    Some(p) if p != *vip_port => {
                        if !PORT_WARNED.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                table = p,
                                environment = *vip_port,
                                "KUMA_DNS_SERVER_SERVICE_VIP_PORT differs from the table's; following the table"
                            );
                        }
                        p
                    }
                    Some(p) => p,
                    None => *vip_port,
                };
                let (services, endpoints) = reader.read(mesh).await.map_err(|e| e.to_string())?;
                Ok(Fetched::New(build(generation, &services, &endpoints, port), marker))
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

/// Keeps `listeners` on the source's latest good view until `stop`.
pub async fn refresh(
    source: Source,
    listeners: Arc<Listeners>,
    status: Arc<ViewStatus>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut seen: Option<Marker> = None;
    let timeout = fetch_timeout(interval);
    loop {
        let fetched = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            f = tokio::time::timeout(timeout, source.fetch(seen.as_ref())) => f.unwrap_or_else(|_| {
                status.refresh_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(format!("no answer in {timeout:?}"))
            }),
        };
        let failures = match fetched {
            Ok(Fetched::Unchanged) => {
                status.ok();
                if let Some(a) = listeners.retry_unbound() {
                    tracing::info!(added = a.added, failed = a.failed, "retried VIP listeners that could not bind");
                }
                0
            }
            Ok(Fetched::New(view, marker)) => {
                let generation = view.generation;
                let outbounds = view.outbounds.len();
                let endpoints: usize = view.outbounds.iter().map(|o| o.endpoints.len()).sum();
                match listeners.apply(view) {
                    Ok(a) => {
                        status.ok();
                        status.generation.store(generation, Ordering::Relaxed);
                        seen = Some(marker);
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
            (_, 0) | (Source::File(_), _) => interval,
            (Source::Table { .. }, n) => {
                let backoff = interval.saturating_mul(1 << n.min(8)).min(MAX_BACKOFF);
                backoff.mul_f64(0.5 + fastrand::f64() / 2.0)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
