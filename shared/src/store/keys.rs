//! The table's key layout. One table, partition key `pk`, sort key `sk`.
//!
//! Everything a sidecar reads sits under its mesh's partition (`MESH#<mesh>`),
//! so an IAM condition on `dynamodb:LeadingKeys` limits a task role to its own
//! mesh. The documented layout with the invariant each item proves is in
//! `docs/table.md`.

use std::net::Ipv4Addr;

use crate::vip::ServiceKind;

pub const PK: &str = "pk";
pub const SK: &str = "sk";

/// The partition of one mesh.
pub fn mesh_pk(mesh: &str) -> String {
    format!("MESH#{mesh}")
}

/// A service's item: its VIP (current and previous) and its state.
pub fn service_sk(kind: ServiceKind, name: &str) -> String {
    format!("SVC#{}#{name}", kind.code())
}

/// An address's lease: who holds it, or until when it is quarantined.
pub fn lease_sk(addr: Ipv4Addr) -> String {
    format!("VIP#{addr}")
}

/// A task's record: its ECS version, status and the keys of its endpoints.
/// Outside the mesh partitions: only task-events reads it.
pub fn task_pk(task_arn: &str) -> String {
    format!("TASK#{task_arn}")
}

pub const TASK_SK: &str = "TASK";

/// One endpoint of a service: a task's inbound.
pub fn endpoint_sk(service: &str, task_id: &str, port: u16) -> String {
    format!("EP#{service}#{task_id}#{port}")
}

/// The prefix of every endpoint of `service`.
pub fn endpoint_prefix(service: &str) -> String {
    format!("EP#{service}#")
}

/// The mesh view's generation: sidecars read this one small item to learn
/// whether anything in their mesh changed.
pub const VIEW_SK: &str = "VIEW";

/// The prefix of a mesh's change items: sidecars read the ones newer than
/// the view they hold instead of the whole mesh.
pub const CHANGE_PREFIX: &str = "CHG#";

/// A change item's sort key: when it was written (epoch milliseconds, fixed
/// width so keys sort by time) and a random part that keeps two writers in
/// the same millisecond apart.
pub fn change_sk(at_ms: u64, nonce: u64) -> String {
    format!("{CHANGE_PREFIX}{at_ms:013}#{nonce:016x}")
}

/// How long change items are kept (their `expires_at`): a sidecar whose view
/// is older than this reads the whole mesh again.
pub const CHANGE_RETENTION_S: u64 = 3_600;

/// The desired DNS state's generation: bumped when a service gains or loses a
/// VIP or a name, read by dns-sync.
pub const DNS_PK: &str = "DNS";
pub const DNS_STATE_SK: &str = "STATE";

/// The sync lease: at most one dns-sync run talks to Route53 at a time.
pub const DNS_LEASE_SK: &str = "LEASE";

/// The ownership ledger: one item per record loopmesh created.
pub fn owned_record_sk(zone: &str, name: &str) -> String {
    format!("REC#{zone}#{name}")
}

pub fn conflict_sk(zone: &str, name: &str) -> String {
    format!("CONFLICT#{zone}#{name}")
}

/// Global resources (HostnameGenerators) live in one partition.
pub const GLOBAL_PK: &str = "GLOBAL";

/// Operator-facing status: identity refusals and DNS conflicts.
pub const STATUS_PK: &str = "STATUS";

pub fn refusal_sk(task_arn: &str) -> String {
    format!("REFUSAL#{task_arn}")
}

/// A task whose definition has no loopmesh sidecar, for `loopmesh status`.
pub fn skipped_sk(task_arn: &str) -> String {
    format!("SKIPPED#{task_arn}")
}

/// An applied resource; a Mesh lives in its own mesh's partition.
pub fn resource_sk(kind: &str, name: &str) -> String {
    format!("RES#{kind}#{name}")
}

/// A mesh backend's root certificate, in the mesh's partition so sidecars
/// read it with the view.
pub fn root_sk(backend: &str) -> String {
    format!("{ROOT_PREFIX}{backend}")
}

pub const ROOT_PREFIX: &str = "CA#";

/// The sort key of a mesh's Mesh resource, which sidecars read for its mTLS settings.
pub fn mesh_resource_sk(mesh: &str) -> String {
    resource_sk("Mesh", mesh)
}

/// The prefix of a mesh's MeshTrafficPermissions, which sidecars read.
pub const PERMISSION_PREFIX: &str = "RES#MeshTrafficPermission#";

/// The prefixes of a mesh's outbound policies, which sidecars read.
pub fn outbound_policy_prefixes() -> [String; 5] {
    crate::model::ResourceKind::OUTBOUND_POLICIES.map(|k| format!("RES#{}#", k.as_str()))
}

/// A used identity proof (by its signature), kept until it could no longer
/// be fresh, so it is never accepted twice.
pub fn proof_pk(signature: &str) -> String {
    format!("PROOF#{signature}")
}

/// Attribute names, in one place so adapters and docs agree.
pub mod attr {
    pub const VIP: &str = "vip";
    pub const PREVIOUS_VIP: &str = "previous_vip";
    pub const OWNER: &str = "owner";
    pub const QUARANTINED_UNTIL: &str = "quarantined_until";
    pub const ASSIGNED_AT: &str = "assigned_at";
    pub const KIND: &str = "kind";
    pub const NAME: &str = "name";
    pub const MESH: &str = "mesh";
    pub const VERSION: &str = "version";
    pub const STATUS: &str = "status";
    pub const ENDPOINTS: &str = "endpoints";
    pub const SERVICES: &str = "services";
    pub const CLUSTER_ARN: &str = "cluster_arn";
    pub const TASK_DEFINITION_ARN: &str = "task_definition_arn";
    pub const TASK_ARN: &str = "task_arn";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const LAST_ENDPOINT_CHANGE: &str = "last_endpoint_change";
    pub const PORTS: &str = "ports";
    pub const LABELS: &str = "labels";
    /// A MeshExternalService's endpoints, `host:port` strings.
    pub const EXTERNAL: &str = "external";
    /// A MeshMultiZoneService's selector over MeshService labels.
    pub const MATCH_LABELS: &str = "match_labels";
    /// A MeshService's `targetPort`s: a map from port to the inbound port it sends to.
    pub const TARGETS: &str = "targets";
    /// Set while an applied resource declares the service: never collected.
    pub const DECLARED: &str = "declared";
    pub const GENERATION: &str = "generation";
    /// On a change item: the sort keys of the mesh items it changed (string set).
    pub const CHANGED: &str = "changed";
    /// On a mesh's VIEW item: `KUMA_DNS_SERVER_SERVICE_VIP_PORT` as the functions have it.
    pub const VIP_PORT: &str = "vip_port";
    pub const UPDATED_AT: &str = "updated_at";
    pub const REASON: &str = "reason";
    /// On a conflict: a record loopmesh did not create holds the name.
    pub const FOREIGN: &str = "foreign";
    pub const AT: &str = "at";
    pub const SERVICE: &str = "service";
    pub const ADDRESS: &str = "address";
    pub const PORT: &str = "port";
    pub const SERVICE_PORT: &str = "service_port";
    pub const PROTOCOL: &str = "protocol";
    pub const ZONE: &str = "zone";
    pub const MESH_SERVICES_MODE: &str = "mesh_services_mode";
    pub const DOC: &str = "doc";
    pub const APPLIED_GENERATION: &str = "applied_generation";
    pub const RETRY_PENDING: &str = "retry_pending";
    pub const MESHES: &str = "meshes";
    pub const ZONE_COUNTS: &str = "zone_counts";
    pub const LAST_FULL_AUDIT: &str = "last_full_audit";
    pub const LAST_SYNC: &str = "last_sync";
    pub const HOLDER: &str = "holder";
    pub const LEASE_UNTIL: &str = "lease_until";
    pub const NEXT_CALL_MS: &str = "next_call_ms";
    pub const VALUE: &str = "value";
    pub const TTL: &str = "ttl";
    /// On an owned-record item: the records an unfinished change may have
    /// left at the name (a list of `{value, ttl}`); absent once settled.
    pub const INTENT: &str = "intent";
    /// A root's certificate, PEM.
    pub const CERTIFICATE: &str = "certificate";
    pub const BACKEND: &str = "backend";
    /// A MeshExternalService's TLS origination, JSON.
    pub const TLS: &str = "tls";
}
