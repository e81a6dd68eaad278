//! Registration: what `task-events` does with an ECS task state change.
//!
//! RUNNING: find the task definition's sidecar, render its Dataplane, check the
//! task role's tags, give each service a VIP, and write the task's endpoints.
//! STOPPED: remove the task's endpoints at once. Every write is ordered by the
//! task's ECS `version`, so duplicates and late events change nothing, and a
//! RUNNING that arrives after its task's STOPPED never brings it back.
//!
//! The flow talks to four ports ([`TaskDefinitions`], [`RoleTags`],
//! [`Registry`], [`VipLedger`]) and never to an SDK.

mod cache;
pub mod event;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod reconcile;
pub mod sidecar_spec;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::Settings;
use crate::error::StoreError;
use crate::identity;
use crate::model::{Labels, MeshServicesMode, ValidationErrors, render_dataplane};
use crate::vip::{AllocError, ServiceKey, ServiceKind, UnixSeconds, VipLedger, VipPool, allocate_from};
use cache::TtlCache;
use event::{TaskEvent, TaskState};
use sidecar_spec::{TaskDefinitionDoc, find_sidecar};

/// Reads task definitions (immutable, so cached forever).
pub trait TaskDefinitions: Send + Sync {
    fn describe(&self, arn: &str) -> impl Future<Output = Result<TaskDefinitionDoc, StoreError>> + Send;
}

/// Reads a role's tags; `None` when the role does not exist.
pub trait RoleTags: Send + Sync {
    fn tags(&self, role_arn: &str)
    -> impl Future<Output = Result<Option<BTreeMap<String, String>>, StoreError>> + Send;
}

/// One endpoint: a task's inbound, where peers' sidecars connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub service: String,
    pub address: String,
    /// The peer sidecar's inbound port.
    pub port: u16,
    /// The application's port behind it: the MeshService port.
    pub service_port: u16,
    pub protocol: String,
    pub zone: Option<String>,
    pub task_arn: String,
    pub version: u64,
}

/// A service the registration touches: it must exist with a VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpsert {
    pub key: ServiceKey,
    /// MeshService ports as (port, appProtocol); empty for `kuma.io/service` services.
    pub ports: Vec<(u16, String)>,
    pub labels: Labels,
}

/// Everything one RUNNING event writes, in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub task_arn: String,
    pub task_id: String,
    pub cluster_arn: String,
    pub mesh: String,
    pub version: u64,
    pub endpoints: Vec<Endpoint>,
    pub services: Vec<ServiceUpsert>,
    /// A service got its VIP in this registration: dns-sync has work.
    pub dns_changed: bool,
    /// The services that got their VIP in this registration: sidecars read them.
    pub new_services: Vec<ServiceKey>,
    /// `KUMA_DNS_SERVER_SERVICE_VIP_PORT`, written with the mesh view so
    /// sidecars listen on the port the names were published for.
    pub vip_port: u16,
    pub now: UnixSeconds,
}

/// What the table knows of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub version: u64,
    pub stopped: bool,
    pub mesh: Option<String>,
    /// Sort keys of its endpoint items.
    pub endpoints: Vec<String>,
    /// Sort keys of the service items its endpoints belong to.
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// The stored task is newer (or stopped): nothing was written.
    Stale,
    /// A service lost its VIP meanwhile (garbage collection): allocate again.
    ServiceGone,
}

/// A registration refused for identity or a Dataplane that does not render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRecord {
    pub task_arn: String,
    pub task_definition_arn: String,
    pub cluster_arn: String,
    pub mesh: Option<String>,
    pub reason: String,
    pub at: UnixSeconds,
}

/// The table, as registration uses it.
pub trait Registry: Send + Sync {
    fn task(&self, task_arn: &str) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send;
    /// Writes task, endpoints and services atomically, if the stored task is older.
    fn register(&self, reg: &Registration) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;
    /// Marks the task stopped and deletes its endpoints, if it is still as `seen`.
    fn deregister(
        &self,
        task_arn: &str,
        seen: &TaskRecord,
        version: u64,
        now: UnixSeconds,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;
    /// Records a stop for a task never seen running, so its late RUNNING is ignored.
    fn tombstone(
        &self,
        task_arn: &str,
        version: u64,
        now: UnixSeconds,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;
    fn record_refusal(&self, refusal: &RefusalRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records a task skipped because its definition has no sidecar.
    fn record_skipped(&self, skipped: &RefusalRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn mesh_mode(&self, mesh: &str) -> impl Future<Output = Result<MeshServicesMode, StoreError>> + Send;
    /// The ARNs of every task that has an endpoint in the table.
    fn registered_tasks(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// Why a rendered Dataplane's address cannot be published: it is not the
/// address ECS reports for the task, or ECS reports none.
fn address_refusal(rendered: &str, reported: Option<&str>, container: &str) -> Option<String> {
    let shown: String = rendered.chars().take(64).collect();
    match reported {
        Some(task) if rendered == task => None,
        Some(task) => Some(format!(
            "the Dataplane of container {container:?} gives networking.address {shown:?}, but ECS reports the task at {task}; loopmesh publishes only the task's own address (drop the literal --dataplane-var address=, or use `hostname -i`)"
        )),
        None => Some(format!(
            "ECS reports no address for this task (no awsvpc network interface), so networking.address {shown:?} cannot be checked; loopmesh publishes only addresses ECS reports (use awsvpc networking)"
        )),
    }
}

/// What one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered {
        mesh: String,
        services: Vec<(ServiceKey, Ipv4Addr)>,
        endpoints: usize,
    },
    Deregistered {
        endpoints: usize,
    },
    /// A duplicate or older event: nothing changed.
    Stale,
    Refused {
        reason: String,
    },
    /// The task definition has no sidecar container.
    NoSidecar,
    /// Not a state registration acts on, or a cluster not watched.
    Ignored {
        why: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("malformed ECS task state change: {0}")]
    Malformed(ValidationErrors),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Alloc(#[from] AllocError),
    #[error("task {task_arn}: its services kept losing their VIPs to garbage collection; retry")]
    Contended { task_arn: String },
}

impl HandleError {
    /// Malformed input and an exhausted pool cannot be fixed by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Malformed(_) => false,
            Self::Store(e) => e.is_retryable(),
            Self::Alloc(e) => e.is_retryable(),
            Self::Contended { .. } => true,
        }
    }
}

/// How long a role's tags are trusted: long enough to spare IAM during a
/// deployment's burst of tasks, short enough that a retag takes effect soon.
pub const ROLE_TAGS_TTL: UnixSeconds = 60;
/// How long a mesh's `meshServices.mode` is cached.
pub const MESH_MODE_TTL: UnixSeconds = 30;
/// Attempts when garbage collection takes a service's VIP mid-registration.
const REGISTER_ATTEMPTS: usize = 3;

/// The registration flow over its ports, with caches that live as long as
/// the Lambda execution environment.
#[derive(Debug)]
pub struct Registrar<T, R, G, L> {
    settings: Settings,
    task_definitions: T,
    roles: R,
    registry: G,
    ledger: L,
    definitions_cache: TtlCache<Arc<TaskDefinitionDoc>>,
    tags_cache: TtlCache<Option<BTreeMap<String, String>>>,
    mode_cache: TtlCache<MeshServicesMode>,
}

impl<T: TaskDefinitions, R: RoleTags, G: Registry, L: VipLedger> Registrar<T, R, G, L> {
    pub fn new(settings: Settings, task_definitions: T, roles: R, registry: G, ledger: L) -> Self {
        Self {
            settings,
            task_definitions,
            roles,
            registry,
            ledger,
            definitions_cache: TtlCache::new(1024),
            tags_cache: TtlCache::new(1024),
            mode_cache: TtlCache::new(256),
        }
    }

    /// Handles one EventBridge envelope.
    pub async fn handle(&self, raw: &serde_json::Value, now: UnixSeconds) -> Result<Outcome, HandleError> {
        let event = event::parse(raw).map_err(HandleError::Malformed)?;
        self.handle_task(&event, now).await
    }

    /// Acts on one task's state, from an event or from the reconciliation.
    pub async fn handle_task(&self, event: &TaskEvent, now: UnixSeconds) -> Result<Outcome, HandleError> {
        if !event.in_clusters(&self.settings.clusters) {
            return Ok(Outcome::Ignored { why: "the task's cluster is not in LOOPMESH_CLUSTERS" });
        }
        match event.state {
            TaskState::Starting => Ok(Outcome::Ignored { why: "the task is not running yet" }),
            TaskState::Running => self.running(event, now).await,
            TaskState::Stopped => self.stopped(event, now).await,
        }
    }

    async fn running(&self, ev: &TaskEvent, now: UnixSeconds) -> Result<Outcome, HandleError> {
        let td = self.task_definition(&ev.task_definition_arn).await?;
        // What runs, not what the definition says: RunTask may change the
        // role (and so the identity) or the sidecar's command and template.
        let td = if ev.overrides.is_empty() { td } else { Arc::new(td.with_overrides(&ev.overrides)) };
        let Some(spec) = find_sidecar(&td) else {
            tracing::debug!(task = %ev.task_arn, task_definition = %td.arn, "no sidecar container; skipped");
            let skipped = RefusalRecord {
                task_arn: ev.task_arn.clone(),
                task_definition_arn: ev.task_definition_arn.clone(),
                cluster_arn: ev.cluster_arn.clone(),
                mesh: None,
                reason: format!("no container of {} has {}", td.arn, sidecar_spec::TEMPLATE_ENV),
                at: now,
            };
            self.registry.record_skipped(&skipped).await?;
            return Ok(Outcome::NoSidecar);
        };
        // A task whose containers have health checks takes traffic once ECS
        // says it is HEALTHY (ECS sends another state change then).
        if self.settings.register_when_healthy && td.containers.iter().any(|c| c.health_check) && !ev.healthy {
            return Ok(Outcome::Ignored { why: "waiting for the task's health checks to pass (HEALTHY)" });
        }
        // The role decides first: a task whose role cannot register anything
        // costs no template parse.
        let Some(role) = td.task_role_arn.as_deref() else {
            let reason =
                "the task definition has no task role; loopmesh identifies a task by its role's kuma.io/* tags";
            return self.refuse(ev, None, reason.into(), now).await;
        };
        let Some(tags) = self.role_tags(role, now).await? else {
            return self.refuse(ev, None, format!("the task role {role} does not exist"), now).await;
        };
        if let Err(refusal) = identity::check_role(&tags) {
            return self.refuse(ev, None, refusal.to_string(), now).await;
        }
        let address = ev.address.map(|a| a.to_string());
        let rendered =
            spec.vars_for_task(&ev.task_id, address.as_deref()).and_then(|v| render_dataplane(&spec.template, &v));
        let dp = match rendered {
            Ok(dp) => dp,
            Err(e) => {
                let reason = format!("the Dataplane of container {:?} does not render: {e}", spec.container);
                return self.refuse(ev, None, reason, now).await;
            }
        };
        // The endpoint is where ECS put the task, never what a template
        // claims: a role for service X must not send X's callers elsewhere.
        if let Some(reason) = address_refusal(&dp.address, address.as_deref(), &spec.container) {
            return self.refuse(ev, Some(&dp.mesh), reason, now).await;
        }
        if let Err(refusal) = identity::check(&tags, &dp) {
            return self.refuse(ev, Some(&dp.mesh), refusal.to_string(), now).await;
        }

        if let Some(rec) = self.registry.task(&ev.task_arn).await?
            && (rec.stopped || rec.version >= ev.version)
        {
            return Ok(Outcome::Stale);
        }
        let mode = self.mesh_mode(&dp.mesh, now).await?;
        let endpoints: Vec<Endpoint> = dp
            .inbounds
            .iter()
            .map(|ib| Endpoint {
                service: ib.service().to_owned(),
                address: dp.address.clone(),
                port: ib.port,
                service_port: ib.service_port,
                protocol: ib.protocol().to_owned(),
                zone: ev.availability_zone.clone(),
                task_arn: ev.task_arn.clone(),
                version: ev.version,
            })
            .collect();
        let mut wanted = Vec::new();
        for service in dp.services() {
            // Kuma's Exclusive mode: MeshServices only, no `kuma.io/service`
            // VIP or name.
            if mode.keeps_service_names() {
                wanted.push(ServiceUpsert {
                    key: ServiceKey::new(&dp.mesh, ServiceKind::Service, service),
                    ports: Vec::new(),
                    labels: Labels::new(),
                });
            }
            if mode.generates_mesh_services() {
                // As Kuma's MeshService generator: an inbound's `port` (where
                // the sidecar listens) is the MeshService port; its
                // `servicePort` is only where that sidecar forwards.
                let mut ports: Vec<(u16, String)> = Vec::new();
                for e in endpoints.iter().filter(|e| e.service == service) {
                    if !ports.iter().any(|(p, _)| *p == e.port) {
                        ports.push((e.port, e.protocol.clone()));
                    }
                }
                let mut labels = Labels::from([
                    ("kuma.io/origin".to_owned(), "zone".to_owned()),
                    ("kuma.io/display-name".to_owned(), service.to_owned()),
                    ("kuma.io/mesh".to_owned(), dp.mesh.clone()),
                ]);
                if let Some(zone) = &self.settings.zone_name {
                    labels.insert("kuma.io/zone".to_owned(), zone.clone());
                }
                wanted.push(ServiceUpsert {
                    key: ServiceKey::new(&dp.mesh, ServiceKind::MeshService, service),
                    ports,
                    labels,
                });
            }
        }

        for _ in 0..REGISTER_ATTEMPTS {
            let mut vips = Vec::new();
            let mut new_services = Vec::new();
            // One batch read tells which services already hold VIPs: a known
            // service costs no further read.
            let keys: Vec<ServiceKey> = wanted.iter().map(|w| w.key.clone()).collect();
            let assignments = self.ledger.assignments(&keys).await?;
            for (s, assignment) in wanted.iter().zip(assignments) {
                let pool = VipPool::new(self.settings.pools.for_kind(s.key.kind))
                    .map_err(|e| StoreError::new(crate::error::StoreErrorKind::Rejected, e.to_string()))?;
                let a = allocate_from(&self.ledger, &pool, &s.key, assignment, now).await?;
                if a.new {
                    new_services.push(s.key.clone());
                }
                vips.push((s.key.clone(), a.vip));
            }
            let reg = Registration {
                task_arn: ev.task_arn.clone(),
                task_id: ev.task_id.clone(),
                cluster_arn: ev.cluster_arn.clone(),
                mesh: dp.mesh.clone(),
                version: ev.version,
                endpoints: endpoints.clone(),
                services: wanted.clone(),
                dns_changed: !new_services.is_empty(),
                new_services,
                vip_port: self.settings.vip_port,
                now,
            };
            match self.registry.register(&reg).await? {
                WriteOutcome::Applied => {
                    tracing::info!(task = %ev.task_arn, mesh = %dp.mesh, endpoints = endpoints.len(), version = ev.version, "registered");
                    return Ok(Outcome::Registered { mesh: dp.mesh, services: vips, endpoints: endpoints.len() });
                }
                WriteOutcome::Stale => return Ok(Outcome::Stale),
                WriteOutcome::ServiceGone => continue,
            }
        }
        Err(HandleError::Contended { task_arn: ev.task_arn.clone() })
    }

    async fn stopped(&self, ev: &TaskEvent, now: UnixSeconds) -> Result<Outcome, HandleError> {
        // Each retry follows a concurrent writer; two are plenty, the third reports.
        for _ in 0..REGISTER_ATTEMPTS {
            let outcome = match self.registry.task(&ev.task_arn).await? {
                None => match self.registry.tombstone(&ev.task_arn, ev.version, now).await? {
                    WriteOutcome::Applied => return Ok(Outcome::Deregistered { endpoints: 0 }),
                    _ => continue,
                },
                Some(rec) if rec.stopped => return Ok(Outcome::Stale),
                // STOPPED is final: no later state brings a task back, so a
                // stop applies whatever version it carries (DescribeTasks may
                // report one below the last event's), and the stored version
                // only grows.
                Some(rec) => {
                    let version = ev.version.max(rec.version);
                    (self.registry.deregister(&ev.task_arn, &rec, version, now).await?, rec.endpoints.len())
                }
            };
            if let (WriteOutcome::Applied, endpoints) = outcome {
                tracing::info!(task = %ev.task_arn, endpoints, version = ev.version, "deregistered");
                return Ok(Outcome::Deregistered { endpoints });
            }
        }
        Err(HandleError::Contended { task_arn: ev.task_arn.clone() })
    }

    async fn refuse(
        &self,
        ev: &TaskEvent,
        mesh: Option<&str>,
        reason: String,
        now: UnixSeconds,
    ) -> Result<Outcome, HandleError> {
        tracing::warn!(
            task = %ev.task_arn,
            task_definition = %ev.task_definition_arn,
            mesh = mesh.unwrap_or(""),
            reason = %reason,
            "registration refused"
        );
        let refusal = RefusalRecord {
            task_arn: ev.task_arn.clone(),
            task_definition_arn: ev.task_definition_arn.clone(),
            cluster_arn: ev.cluster_arn.clone(),
            mesh: mesh.map(str::to_owned),
            reason: reason.clone(),
            at: now,
        };
        self.registry.record_refusal(&refusal).await?;
        Ok(Outcome::Refused { reason })
    }

    async fn task_definition(&self, arn: &str) -> Result<Arc<TaskDefinitionDoc>, StoreError> {
        if let Some(td) = self.definitions_cache.get(arn, 0) {
            return Ok(td);
        }
        let td = Arc::new(self.task_definitions.describe(arn).await?);
        // Task definitions are immutable: the entry never expires.
        self.definitions_cache.insert(arn, td.clone(), UnixSeconds::MAX);
        Ok(td)
    }

    async fn role_tags(
        &self,
        role_arn: &str,
        now: UnixSeconds,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        if let Some(tags) = self.tags_cache.get(role_arn, now) {
            return Ok(tags);
        }
        let tags = self.roles.tags(role_arn).await?;
        self.tags_cache.insert(role_arn, tags.clone(), now.saturating_add(ROLE_TAGS_TTL));
        Ok(tags)
    }

    async fn mesh_mode(&self, mesh: &str, now: UnixSeconds) -> Result<MeshServicesMode, StoreError> {
        if let Some(mode) = self.mode_cache.get(mesh, now) {
            return Ok(mode);
        }
        let mode = self.registry.mesh_mode(mesh).await?;
        self.mode_cache.insert(mesh, mode, now.saturating_add(MESH_MODE_TTL));
        Ok(mode)
    }
}
