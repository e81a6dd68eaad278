//! Resources applied by operators (`loopmesh apply`, the CloudFormation
//! custom resource): where each kind lives in the table, and the service it
//! declares.
//!
//! A Mesh and the mesh-scoped kinds live in their mesh's partition, a
//! HostnameGenerator in the global one. A MeshService, MeshExternalService or
//! MeshMultiZoneService also declares a service: it gets a VIP from its kind's
//! pool and keeps it while the resource exists (no garbage collection of a
//! declared service; deleting the resource starts its grace).
//!
//! Every stored resource carries a `version`; an apply replaces it only if
//! the version is still the one the applier read, so two operators cannot
//! silently overwrite each other.

use std::fmt;

use serde::Serialize;

use crate::model::{Labels, Resource, ResourceKind, SERVICE_TAG};
use crate::vip::{ServiceKey, ServiceKind};

/// A resource as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredResource {
    pub kind: ResourceKind,
    pub name: String,
    /// `None` for a HostnameGenerator; a Mesh's own name for a Mesh.
    pub mesh: Option<String>,
    pub version: u64,
    /// The document as applied (YAML).
    pub doc: String,
    pub updated_at: u64,
}

/// Where a resource lives: its partition's mesh (`None`: global).
pub fn home_mesh(resource: &Resource) -> Option<String> {
    match resource {
        Resource::Mesh(m) => Some(m.name.clone()),
        Resource::HostnameGenerator(_) => None,
        other => other.mesh().map(str::to_owned),
    }
}

/// The service a resource declares, and what a sidecar needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub key: ServiceKey,
    /// (port, protocol): one listener per port.
    pub ports: Vec<(u16, String)>,
    pub labels: Labels,
    /// MeshExternalService endpoints, `host:port`.
    pub external: Vec<String>,
    /// MeshMultiZoneService: its MeshService selector. MeshService: its
    /// dataplane tags (the `kuma.io/service` whose endpoints back it).
    pub match_labels: Labels,
    /// MeshService ports whose traffic goes to another inbound port
    /// (`targetPort`): (port, target).
    pub targets: Vec<(u16, u16)>,
    /// A MeshExternalService's TLS origination.
    pub tls: Option<crate::model::ExternalTls>,
}

/// The labels Kuma's control plane puts on a resource, added to the
/// operator's (which win): `kuma.io/origin` (`zone` for what a zone applies,
/// `global` for a MeshMultiZoneService, which lives on the global control
/// plane) and `kuma.io/mesh`. HostnameGenerators select on them.
fn with_kuma_labels(labels: &Labels, origin: &str, mesh: &str) -> Labels {
    let mut out = labels.clone();
    out.entry("kuma.io/origin".to_owned()).or_insert_with(|| origin.to_owned());
    out.entry("kuma.io/mesh".to_owned()).or_insert_with(|| mesh.to_owned());
    out
}

pub fn declared_service(resource: &Resource) -> Option<Declared> {
    match resource {
        Resource::MeshService(s) => Some(Declared {
            key: ServiceKey::new(&s.mesh, ServiceKind::MeshService, &s.name),
            ports: s.ports.iter().map(|p| (p.port, p.app_protocol.clone())).collect(),
            labels: with_kuma_labels(&s.labels, "zone", &s.mesh),
            external: Vec::new(),
            match_labels: s.dataplane_tags.clone(),
            targets: s
                .ports
                .iter()
                .filter_map(|p| Some((p.port, p.target_port.as_deref()?.parse().ok()?)))
                .filter(|(port, target)| port != target)
                .collect(),
            tls: None,
        }),
        Resource::MeshExternalService(s) => Some(Declared {
            key: ServiceKey::new(&s.mesh, ServiceKind::MeshExternalService, &s.name),
            ports: vec![(s.port, s.protocol.clone())],
            labels: with_kuma_labels(&s.labels, "zone", &s.mesh),
            external: s.endpoints.iter().map(|e| format!("{}:{}", e.address, e.port)).collect(),
            match_labels: Labels::new(),
            targets: Vec::new(),
            tls: s.tls.clone(),
        }),
        Resource::MeshMultiZoneService(s) => Some(Declared {
            key: ServiceKey::new(&s.mesh, ServiceKind::MeshMultiZoneService, &s.name),
            ports: s.ports.iter().map(|p| (p.port, p.app_protocol.clone())).collect(),
            labels: with_kuma_labels(&s.labels, "global", &s.mesh),
            external: Vec::new(),
            match_labels: s.match_labels.clone(),
            targets: Vec::new(),
            tls: None,
        }),
        Resource::Dataplane(_)
        | Resource::Mesh(_)
        | Resource::HostnameGenerator(_)
        | Resource::MeshTrafficPermission(_)
        | Resource::MeshTimeout(_)
        | Resource::MeshRetry(_)
        | Resource::MeshCircuitBreaker(_)
        | Resource::MeshHttpRoute(_)
        | Resource::MeshLoadBalancingStrategy(_) => None,
    }
}

/// The `kuma.io/service` whose endpoints back a declared MeshService.
pub fn backing_service<'a>(name: &'a str, match_labels: &'a Labels) -> &'a str {
    match_labels.get(SERVICE_TAG).map(String::as_str).unwrap_or(name)
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        })
    }
}

/// Dataplanes come from ECS tasks, never from `apply`.
pub fn appliable(kind: ResourceKind) -> Result<(), String> {
    if kind == ResourceKind::Dataplane {
        return Err("a Dataplane is registered from its ECS task (task-events); apply Mesh, HostnameGenerator, \
                    MeshService, MeshExternalService or MeshMultiZoneService"
            .into());
    }
    Ok(())
}
