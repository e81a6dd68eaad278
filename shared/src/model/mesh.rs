//! Mesh: the part loopmesh acts on, `meshServices.mode`. A Mesh that
//! enables mTLS is refused (loopmesh does not encrypt yet, and a user must
//! never believe traffic is encrypted when it is not); other fields
//! (logging, metrics, ...) are accepted and left alone.

use serde::Deserialize;

use super::document::to_path;
use super::{ValidationErrors, validate_resource_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub name: String,
    pub mesh_services: MeshServicesMode,
}

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
    mtls: Option<serde_yaml_ng::Value>,
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
    // Kuma enables mTLS by naming a backend; backends alone enable nothing.
    if let Some(backend) = raw.mtls.as_ref().and_then(|m| m.get("enabledBackend")).filter(|b| !b.is_null()) {
        let backend = backend.as_str().unwrap_or("?");
        errors.push(
            "mtls.enabledBackend",
            format!(
                "{backend:?}: loopmesh does not encrypt traffic between sidecars yet, so a Mesh that enables mTLS is refused rather than run in plain text; remove mtls.enabledBackend to run this mesh without mTLS"
            ),
        );
    }
    errors.into_result(Mesh { name, mesh_services: mode })
}
