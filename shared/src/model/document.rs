//! Splitting a file into documents and dispatching each on its `type`.

use std::fmt;

use serde::Deserialize;

use super::{
    Dataplane, DataplaneVars, HostnameGenerator, Mesh, MeshExternalService, MeshMultiZoneService, MeshService,
    MeshTrafficPermission, ValidationErrors, dataplane, hostname_generator, mesh, policy, services, traffic_permission,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Dataplane,
    Mesh,
    MeshService,
    MeshExternalService,
    MeshMultiZoneService,
    HostnameGenerator,
    MeshTrafficPermission,
    MeshTimeout,
    MeshRetry,
    MeshCircuitBreaker,
    MeshHttpRoute,
    MeshLoadBalancingStrategy,
}

impl ResourceKind {
    pub const ALL: [Self; 12] = [
        Self::Dataplane,
        Self::Mesh,
        Self::MeshService,
        Self::MeshExternalService,
        Self::MeshMultiZoneService,
        Self::HostnameGenerator,
        Self::MeshTrafficPermission,
        Self::MeshTimeout,
        Self::MeshRetry,
        Self::MeshCircuitBreaker,
        Self::MeshHttpRoute,
        Self::MeshLoadBalancingStrategy,
    ];

    /// The outbound policies, which sidecars read with their view.
    pub const OUTBOUND_POLICIES: [Self; 5] = [
        Self::MeshTimeout,
        Self::MeshRetry,
        Self::MeshCircuitBreaker,
        Self::MeshHttpRoute,
        Self::MeshLoadBalancingStrategy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dataplane => "Dataplane",
            Self::Mesh => "Mesh",
            Self::MeshService => "MeshService",
            Self::MeshExternalService => "MeshExternalService",
            Self::MeshMultiZoneService => "MeshMultiZoneService",
            Self::HostnameGenerator => "HostnameGenerator",
            Self::MeshTrafficPermission => "MeshTrafficPermission",
            Self::MeshTimeout => "MeshTimeout",
            Self::MeshRetry => "MeshRetry",
            Self::MeshCircuitBreaker => "MeshCircuitBreaker",
            Self::MeshHttpRoute => "MeshHTTPRoute",
            Self::MeshLoadBalancingStrategy => "MeshLoadBalancingStrategy",
        }
    }

    /// Accepts the type name as written in documents, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s))
    }

    /// Mesh-scoped kinds carry a `mesh` field; Mesh and HostnameGenerator are global.
    pub fn is_mesh_scoped(self) -> bool {
        !matches!(self, Self::Mesh | Self::HostnameGenerator)
    }
}

impl serde::Serialize for ResourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated resource of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Dataplane(Dataplane),
    Mesh(Mesh),
    MeshService(MeshService),
    MeshExternalService(MeshExternalService),
    MeshMultiZoneService(MeshMultiZoneService),
    HostnameGenerator(HostnameGenerator),
    MeshTrafficPermission(MeshTrafficPermission),
    MeshTimeout(policy::MeshTimeout),
    MeshRetry(policy::MeshRetry),
    MeshCircuitBreaker(policy::MeshCircuitBreaker),
    MeshHttpRoute(policy::MeshHttpRoute),
    MeshLoadBalancingStrategy(policy::MeshLoadBalancingStrategy),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Dataplane(_) => ResourceKind::Dataplane,
            Self::Mesh(_) => ResourceKind::Mesh,
            Self::MeshService(_) => ResourceKind::MeshService,
            Self::MeshExternalService(_) => ResourceKind::MeshExternalService,
            Self::MeshMultiZoneService(_) => ResourceKind::MeshMultiZoneService,
            Self::HostnameGenerator(_) => ResourceKind::HostnameGenerator,
            Self::MeshTrafficPermission(_) => ResourceKind::MeshTrafficPermission,
            Self::MeshTimeout(_) => ResourceKind::MeshTimeout,
            Self::MeshRetry(_) => ResourceKind::MeshRetry,
            Self::MeshCircuitBreaker(_) => ResourceKind::MeshCircuitBreaker,
            Self::MeshHttpRoute(_) => ResourceKind::MeshHttpRoute,
            Self::MeshLoadBalancingStrategy(_) => ResourceKind::MeshLoadBalancingStrategy,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Dataplane(r) => &r.name,
            Self::Mesh(r) => &r.name,
            Self::MeshService(r) => &r.name,
            Self::MeshExternalService(r) => &r.name,
            Self::MeshMultiZoneService(r) => &r.name,
            Self::HostnameGenerator(r) => &r.name,
            Self::MeshTrafficPermission(r) => &r.name,
            Self::MeshTimeout(r) => &r.name,
            Self::MeshRetry(r) => &r.name,
            Self::MeshCircuitBreaker(r) => &r.name,
            Self::MeshHttpRoute(r) => &r.name,
            Self::MeshLoadBalancingStrategy(r) => &r.name,
        }
    }

    /// The mesh of a mesh-scoped resource.
    pub fn mesh(&self) -> Option<&str> {
        match self {
            Self::Dataplane(r) => Some(&r.mesh),
            Self::MeshService(r) => Some(&r.mesh),
            Self::MeshExternalService(r) => Some(&r.mesh),
            Self::MeshMultiZoneService(r) => Some(&r.mesh),
            Self::MeshTrafficPermission(r) => Some(&r.mesh),
            Self::MeshTimeout(r) => Some(&r.mesh),
            Self::MeshRetry(r) => Some(&r.mesh),
            Self::MeshCircuitBreaker(r) => Some(&r.mesh),
            Self::MeshHttpRoute(r) => Some(&r.mesh),
            Self::MeshLoadBalancingStrategy(r) => Some(&r.mesh),
            Self::Mesh(_) | Self::HostnameGenerator(_) => None,
        }
    }
}

/// Why one document of a file was refused: its position (1-based), what it
/// claimed to be, and every broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub errors: ValidationErrors,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n:?})")?,
            (Some(k), None) => write!(f, " ({k})")?,
            _ => {}
        }
        write!(f, ": {}", self.errors)
    }
}

/// Parses every document of a YAML stream (or one JSON document). Each document
/// is judged on its own: a bad one does not hide the others' errors.
pub fn parse_documents(text: &str) -> Vec<Result<Resource, DocumentError>> {
    parse_documents_with_text(text).into_iter().map(|(r, _)| r).collect()
}

/// Like [`parse_documents`], each result with its document as YAML text: what
/// `loopmesh apply` stores, so the stored form reads like what was written.
pub fn parse_documents_with_text(text: &str) -> Vec<(Result<Resource, DocumentError>, String)> {
    let values = match split_values(text) {
        Ok(v) => v,
        Err((document, errors)) => {
            return vec![(Err(DocumentError { document, kind: None, name: None, errors }), String::new())];
        }
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let kind = value.get("type").and_then(serde_yaml_ng::Value::as_str).map(str::to_owned);
            let name = value.get("name").and_then(serde_yaml_ng::Value::as_str).map(str::to_owned);
            let doc = serde_yaml_ng::to_string(&value).unwrap_or_default();
            (from_value(value).map_err(|errors| DocumentError { document: i + 1, kind, name, errors }), doc)
        })
        .collect()
}

/// Parses a text that must hold exactly one document.
pub fn parse_one(text: &str) -> Result<Resource, ValidationErrors> {
    from_value(single_value(text)?)
}

/// The one document of `text`, as a generic value.
pub(super) fn single_value(text: &str) -> Result<serde_yaml_ng::Value, ValidationErrors> {
    let mut values = split_values(text).map_err(|(_, e)| e)?;
    match values.len() {
        1 => Ok(values.remove(0)),
        0 => Err(ValidationErrors::single("", "the text holds no document")),
        n => Err(ValidationErrors::single("", format!("expected one document, found {n}"))),
    }
}

/// Splits into non-empty documents; a syntax error names its document and line.
fn split_values(text: &str) -> Result<Vec<serde_yaml_ng::Value>, (usize, ValidationErrors)> {
    super::limits::check(text).map_err(|rule| (1, ValidationErrors::single("", rule)))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let super::limits::UniqueKeys(json) = serde_json::from_str(text).map_err(|e| {
            (1, ValidationErrors::single("", format!("invalid JSON at line {} column {}: {e}", e.line(), e.column())))
        })?;
        let items = match json {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        return items
            .into_iter()
            .enumerate()
            .map(|(i, v)| serde_yaml_ng::to_value(v).map_err(|e| (i + 1, ValidationErrors::single("", e.to_string()))))
            .collect();
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match serde_yaml_ng::Value::deserialize(doc) {
            Ok(serde_yaml_ng::Value::Null) => {}
            Ok(v) => out.push(v),
            Err(e) => {
                let at =
                    e.location().map(|l| format!(" at line {} column {}", l.line(), l.column())).unwrap_or_default();
                return Err((i + 1, ValidationErrors::single("", format!("invalid YAML{at}: {e}"))));
            }
        }
    }
    Ok(out)
}

fn from_value(value: serde_yaml_ng::Value) -> Result<Resource, ValidationErrors> {
    if !value.is_mapping() {
        return Err(ValidationErrors::single("", "a document must be a mapping with a type field"));
    }
    let kind = match value.get("type") {
        None => return Err(ValidationErrors::single("type", format!("required, one of {}", kinds_list()))),
        Some(t) => match t.as_str().and_then(ResourceKind::parse) {
            Some(k) => k,
            None if t.as_str().is_some_and(|k| KONG_POLICY_KINDS.contains(&k)) => {
                return Err(ValidationErrors::single(
                    "type",
                    format!(
                        "{} is a Kong Mesh policy loopmesh does not enforce yet; it is refused rather than accepted and ignored",
                        show(t)
                    ),
                ));
            }
            None => {
                return Err(ValidationErrors::single("type", format!("{} is not one of {}", show(t), kinds_list())));
            }
        },
    };
    Ok(match kind {
        ResourceKind::Dataplane => Resource::Dataplane(dataplane::from_value(value, &DataplaneVars::new())?),
        ResourceKind::Mesh => Resource::Mesh(mesh::from_value(value)?),
        ResourceKind::MeshService => Resource::MeshService(services::mesh_service_from_value(value)?),
        ResourceKind::MeshExternalService => Resource::MeshExternalService(services::external_from_value(value)?),
        ResourceKind::MeshMultiZoneService => Resource::MeshMultiZoneService(services::multi_zone_from_value(value)?),
        ResourceKind::HostnameGenerator => Resource::HostnameGenerator(hostname_generator::from_value(value)?),
        ResourceKind::MeshTrafficPermission => Resource::MeshTrafficPermission(traffic_permission::from_value(value)?),
        ResourceKind::MeshTimeout => Resource::MeshTimeout(policy::timeout::from_value(value)?),
        ResourceKind::MeshRetry => Resource::MeshRetry(policy::retry::from_value(value)?),
        ResourceKind::MeshCircuitBreaker => Resource::MeshCircuitBreaker(policy::circuit_breaker::from_value(value)?),
        ResourceKind::MeshHttpRoute => Resource::MeshHttpRoute(policy::http_route::from_value(value)?),
        ResourceKind::MeshLoadBalancingStrategy => {
            Resource::MeshLoadBalancingStrategy(policy::load_balancing::from_value(value)?)
        }
    })
}

/// Kong Mesh and Kuma policy kinds: known by name, so refusing one says why
/// (not supported yet) instead of calling it an unknown kind.
pub const KONG_POLICY_KINDS: [&str; 10] = [
    "MeshTCPRoute",
    "MeshHealthCheck",
    "MeshAccessLog",
    "MeshRateLimit",
    "MeshFaultInjection",
    "MeshProxyPatch",
    "MeshMetric",
    "MeshTrace",
    "MeshTLS",
    "MeshPassthrough",
];

fn kinds_list() -> String {
    ResourceKind::ALL.map(ResourceKind::as_str).join(", ")
}

fn show(v: &serde_yaml_ng::Value) -> String {
    serde_yaml_ng::to_string(v).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "the value".into())
}

/// A serde error with the path where it happened, as a validation error.
pub(super) fn to_path(e: serde_path_to_error::Error<serde_yaml_ng::Error>) -> ValidationErrors {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    ValidationErrors::single(path, e.into_inner().to_string())
}

/// A scalar written as a string, number or boolean; `port: 8080` and
/// `port: "8080"` are the same to an operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(super) fn into_string(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}
