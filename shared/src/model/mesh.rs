//! Mesh: the parts loopmesh acts on, `meshServices.mode` and `mtls` (Kuma's
//! CA backends, the enabled one and its mode). Other fields (logging,
//! metrics, ...) are accepted and left alone.

use std::time::Duration;

use serde::Deserialize;

use super::document::to_path;
use super::{ValidationErrors, validate_resource_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub name: String,
    pub mesh_services: MeshServicesMode,
    /// `None` while no backend is enabled: traffic stays plain.
    pub mtls: Option<Mtls>,
}

/// Kuma's `mtls`: every backend's root is trusted, the enabled one signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mtls {
    pub enabled_backend: String,
    pub backends: Vec<CaBackend>,
}

impl Mtls {
    /// The backend that signs new certificates (validation proved it exists).
    pub fn enabled(&self) -> &CaBackend {
        self.backends.iter().find(|b| b.name == self.enabled_backend).unwrap_or(&self.backends[0])
    }
}

/// One CA backend of a Mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBackend {
    pub name: String,
    pub kind: CaKind,
    pub mode: MtlsMode,
    /// `dpCert.rotation.expiration`: how long a sidecar's certificate lives.
    pub cert_lifetime: Duration,
    /// `conf.caCert.expiration` (builtin): how long the root lives.
    pub ca_lifetime: Duration,
}

/// Where a backend's root key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaKind {
    /// The stack's KMS key signs; the key never leaves KMS.
    Builtin,
    /// An operator's CA: certificate and key PEM in Secrets Manager (name or ARN).
    Provided { cert_secret: String, key_secret: String },
}

/// Kuma's backend `mode`: what inbounds accept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mTLS from the mesh's identities.
    #[default]
    Strict,
    /// mTLS and plain text both, to migrate a mesh task by task.
    Permissive,
}

/// Kuma's default certificate lifetime.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Kuma's default builtin root lifetime (10 years).
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Shorter certificates would have sidecars call the issuer every few minutes.
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(3600);

/// Kuma's `meshServices.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MeshServicesMode {
    #[default]
    Disabled,
    Everywhere,
    ReachableBackends,
    Exclusive,
}

impl MeshServicesMode {
    pub const NAMES: [&'static str; 4] = ["Disabled", "Everywhere", "ReachableBackends", "Exclusive"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Disabled" => Self::Disabled,
            "Everywhere" => Self::Everywhere,
            "ReachableBackends" => Self::ReachableBackends,
            "Exclusive" => Self::Exclusive,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether inbounds of this mesh also yield MeshServices.
    pub fn generates_mesh_services(self) -> bool {
        self != Self::Disabled
    }

    /// Whether `kuma.io/service` services keep their VIPs and names
    /// (everything but Exclusive, where only MeshServices are addressed).
    pub fn keeps_service_names(self) -> bool {
        self != Self::Exclusive
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMesh {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mesh_services: Option<RawMeshServices>,
    #[serde(default)]
    mtls: Option<RawMtls>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMtls {
    #[serde(default)]
    enabled_backend: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    /// Kuma's `skipValidation`: accepted, nothing to skip here.
    #[serde(default)]
    #[allow(dead_code)]
    skip_validation: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBackend {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    dp_cert: Option<RawDpCert>,
    #[serde(default)]
    conf: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDpCert {
    #[serde(default)]
    rotation: Option<RawRotation>,
}

#[derive(Debug, Deserialize)]
struct RawRotation {
    #[serde(default)]
    expiration: Option<String>,
}

fn duration(errors: &mut ValidationErrors, path: &str, text: Option<&str>, default: Duration) -> Duration {
    let Some(text) = text else { return default };
    match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(_) => {
            errors.push(path, format!("{text:?} is not a duration such as 24h, 1d or 10y"));
            default
        }
    }
}

/// Kuma's `provided` conf: `cert`/`key` each `{secret: <name>}`; here the
/// secret is a Secrets Manager name or ARN.
fn provided_secret(errors: &mut ValidationErrors, path: &str, conf: Option<&serde_yaml_ng::Value>) -> String {
    let secret = conf.and_then(|c| c.get("secret")).and_then(|s| s.as_str()).unwrap_or_default();
    if secret.is_empty() {
        let other = conf.and_then(|c| c.as_mapping()).and_then(|m| m.keys().next()).and_then(|k| k.as_str());
        match other {
            Some(k) if k != "secret" => errors.push(
                format!("{path}.{k}"),
                "loopmesh reads a provided CA from Secrets Manager only: use secret: <secret name or ARN>",
            ),
            _ => errors
                .push(format!("{path}.secret"), "required: the Secrets Manager secret (name or ARN) holding the PEM"),
        }
    }
    secret.to_owned()
}

fn mtls(errors: &mut ValidationErrors, raw: RawMtls) -> Option<Mtls> {
    let mut backends = Vec::new();
    for (i, b) in raw.backends.into_iter().enumerate() {
        let path = format!("mtls.backends[{i}]");
        if b.name.is_empty() {
            errors.push(format!("{path}.name"), "required");
        } else if backends.iter().any(|o: &CaBackend| o.name == b.name) {
            errors.push(format!("{path}.name"), format!("{:?} names two backends", b.name));
        }
        let conf = b.conf.as_ref();
        let kind = match b.kind.as_str() {
            "builtin" => CaKind::Builtin,
            "provided" => CaKind::Provided {
                cert_secret: provided_secret(errors, &format!("{path}.conf.cert"), conf.and_then(|c| c.get("cert"))),
                key_secret: provided_secret(errors, &format!("{path}.conf.key"), conf.and_then(|c| c.get("key"))),
            },
            "" => {
                errors.push(format!("{path}.type"), "required: builtin or provided");
                CaKind::Builtin
            }
            other => {
                errors.push(
                    format!("{path}.type"),
                    format!("{other:?} is not builtin or provided (the CA backends loopmesh has)"),
                );
                CaKind::Builtin
            }
        };
        let mode = match b.mode.as_deref() {
            None | Some("STRICT") => MtlsMode::Strict,
            Some("PERMISSIVE") => MtlsMode::Permissive,
            Some(other) => {
                errors.push(format!("{path}.mode"), format!("{other:?} is not STRICT or PERMISSIVE"));
                MtlsMode::Strict
            }
        };
        let expiration = b.dp_cert.and_then(|d| d.rotation).and_then(|r| r.expiration);
        let cert_lifetime = duration(
            errors,
            &format!("{path}.dpCert.rotation.expiration"),
            expiration.as_deref(),
            DEFAULT_CERT_LIFETIME,
        );
        if cert_lifetime < MIN_CERT_LIFETIME {
            errors.push(format!("{path}.dpCert.rotation.expiration"), "at least 1h");
        }
        let ca_expiration =
            conf.and_then(|c| c.get("caCert")).and_then(|c| c.get("expiration")).and_then(|e| e.as_str());
        let ca_lifetime =
            duration(errors, &format!("{path}.conf.caCert.expiration"), ca_expiration, DEFAULT_CA_LIFETIME);
        if ca_lifetime <= cert_lifetime {
            errors.push(format!("{path}.conf.caCert.expiration"), "must be longer than dpCert.rotation.expiration");
        }
        backends.push(CaBackend { name: b.name, kind, mode, cert_lifetime, ca_lifetime });
    }
    // Kuma enables mTLS by naming a backend; backends alone enable nothing.
    let enabled = raw.enabled_backend.filter(|b| !b.is_empty())?;
    if !backends.iter().any(|b| b.name == enabled) {
        errors.push("mtls.enabledBackend", format!("{enabled:?} is not the name of one of mtls.backends"));
        return None;
    }
    Some(Mtls { enabled_backend: enabled, backends })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshServices {
    #[serde(default)]
    mode: Option<String>,
}

pub(super) fn from_value(value: serde_yaml_ng::Value) -> Result<Mesh, ValidationErrors> {
    let raw: RawMesh = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let name = raw.name.unwrap_or_default();
    validate_resource_name(&mut errors, "name", &name);
    let mode = match raw.mesh_services.and_then(|m| m.mode) {
        None => MeshServicesMode::Disabled,
        // Needs each Dataplane's reachableBackends, which loopmesh does not
        // read yet: refused rather than run as Everywhere.
        Some(m) if m == "ReachableBackends" => {
            errors.push(
                "meshServices.mode",
                "ReachableBackends is not supported yet (it needs each Dataplane's reachableBackends); use Everywhere or Exclusive",
            );
            MeshServicesMode::Disabled
        }
        Some(m) => MeshServicesMode::parse(&m).unwrap_or_else(|| {
            errors.push("meshServices.mode", format!("{m:?} is not one of {}", MeshServicesMode::NAMES.join(", ")));
            MeshServicesMode::Disabled
        }),
    };
    let mtls = raw.mtls.and_then(|m| mtls(&mut errors, m));
    errors.into_result(Mesh { name, mesh_services: mode, mtls })
}
