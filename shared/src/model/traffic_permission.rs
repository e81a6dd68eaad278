//! MeshTrafficPermission, Kong Mesh's `from` form: which clients a
//! Dataplane's inbounds accept under mTLS, decided at the receiving sidecar
//! on the client's verified identity.
//!
//! A client is known by its certificate, which names its `kuma.io/service`
//! and nothing else, so a `from` entry matches on that tag only; a selector
//! on other client tags is refused, never half-applied.

use serde::{Deserialize, Serialize};

use super::document::to_path;
use super::services::{RawDocument, meta};
use super::{Labels, SERVICE_TAG, ValidationErrors};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshTrafficPermission {
    pub name: String,
    pub mesh: String,
    /// Which inbounds the policy is for.
    pub target: TargetRef,
    pub from: Vec<FromRule>,
}

/// Kuma's `targetRef`, the kinds loopmesh matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum TargetRef {
    Mesh,
    MeshSubset { tags: Labels },
    MeshService { name: String },
}

impl TargetRef {
    /// Kuma's order of specificity: a more specific reference wins.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Mesh => 0,
            Self::MeshSubset { .. } => 1,
            Self::MeshService { .. } => 2,
        }
    }

    /// Whether an inbound (or a client) with these tags is selected.
    pub fn selects(&self, tags: &Labels) -> bool {
        match self {
            Self::Mesh => true,
            Self::MeshSubset { tags: want } => want.iter().all(|(k, v)| tags.get(k) == Some(v)),
            Self::MeshService { name } => tags.get(SERVICE_TAG) == Some(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromRule {
    pub target: TargetRef,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Allowed, and logged and counted as a denial would be.
    AllowWithShadowDeny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    target_ref: Option<super::policy::RawRef>,
    #[serde(default)]
    from: Option<Vec<RawFrom>>,
    #[serde(default)]
    to: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    rules: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFrom {
    #[serde(default)]
    target_ref: Option<super::policy::RawRef>,
    #[serde(default)]
    default: Option<RawDefault>,
}

#[derive(Debug, Deserialize)]
struct RawDefault {
    #[serde(default)]
    action: Option<String>,
}

/// A `from` entry's clients: a `targetRef` read as every policy's is
/// ([`super::policy::top_ref`]), where a MeshSubset may select on
/// `kuma.io/service` only, the one tag a client's certificate carries.
fn client(errors: &mut ValidationErrors, path: &str, raw: Option<super::policy::RawRef>) -> TargetRef {
    if raw.is_none() {
        errors.push(path, "required: the clients this entry is for (kind Mesh, MeshService or MeshSubset)");
        return TargetRef::Mesh;
    }
    let target = super::policy::top_ref(errors, path, raw);
    if let TargetRef::MeshSubset { tags } = &target
        && let Some(other) = tags.keys().find(|k| *k != SERVICE_TAG)
    {
        errors.push(
            format!("{path}.tags"),
            format!(
                "{other:?}: a client is known by its certificate, which names only its {SERVICE_TAG}; select clients by {SERVICE_TAG} or use kind MeshService"
            ),
        );
    }
    target
}

pub(super) fn from_value(value: serde_yaml_ng::Value) -> Result<MeshTrafficPermission, ValidationErrors> {
    let mut raw: RawDocument<RawSpec> = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let m = meta(&mut errors, &mut raw);
    let spec = raw.spec.take().unwrap_or_default();
    if spec.to.is_some() {
        errors.push("spec.to", "a MeshTrafficPermission is about who may connect: use spec.from");
    }
    if spec.rules.is_some() {
        errors.push("spec.rules", "the SPIFFE-matcher form (MeshIdentity) is not supported yet; use spec.from");
    }
    let target_ref = super::policy::top_ref(&mut errors, "spec.targetRef", spec.target_ref);
    let raw_from = spec.from.unwrap_or_default();
    if raw_from.is_empty() && spec.rules.is_none() {
        errors.push("spec.from", "required: at least one entry with a targetRef and default.action");
    }
    let mut from = Vec::new();
    for (i, f) in raw_from.into_iter().enumerate() {
        let path = format!("spec.from[{i}]");
        let target = client(&mut errors, &format!("{path}.targetRef"), f.target_ref);
        let action = match f.default.and_then(|d| d.action).as_deref() {
            Some("Allow") => Action::Allow,
            Some("Deny") => Action::Deny,
            Some("AllowWithShadowDeny") => Action::AllowWithShadowDeny,
            Some(other) => {
                errors.push(
                    format!("{path}.default.action"),
                    format!("{other:?} is not Allow, Deny or AllowWithShadowDeny"),
                );
                Action::Deny
            }
            None => {
                errors.push(format!("{path}.default.action"), "required: Allow, Deny or AllowWithShadowDeny");
                Action::Deny
            }
        };
        from.push(FromRule { target, action });
    }
    errors.into_result(MeshTrafficPermission { name: m.name, mesh: m.mesh, target: target_ref, from })
}
