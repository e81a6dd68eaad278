//! Identity rules: what a task's IAM role tags allow it to register.
//!
//! The role is the only identity a Fargate task has, so its `kuma.io/*` tags
//! play the part of Kong Mesh's dataplane token.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::Dataplane;

pub const TYPE_TAG: &str = "kuma.io/type";
pub const MESH_TAG: &str = "kuma.io/mesh";
pub const SERVICE_TAG: &str = "kuma.io/service";

/// Why a role may not register a Dataplane; the text is what operators read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MissingType,
    UnknownType(String),
    NotADataplaneRole(String),
    MissingMesh,
    WrongMesh { role: String, dataplane: String },
    WrongService { role: String, inbound: String, index: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingType => write!(f, "the task role has no {TYPE_TAG} tag (dataplane, ingress or egress)"),
            Self::UnknownType(t) => {
                write!(f, "the task role's {TYPE_TAG} tag is {t:?}, not dataplane, ingress or egress")
            }
            Self::NotADataplaneRole(t) => {
                write!(f, "the task role's {TYPE_TAG} tag is {t:?}; only a dataplane role may register a Dataplane")
            }
            Self::MissingMesh => write!(f, "the task role has {TYPE_TAG}=dataplane but no {MESH_TAG} tag"),
            Self::WrongMesh { role, dataplane } => {
                write!(f, "the task role's {MESH_TAG} tag is {role:?} but the Dataplane's mesh is {dataplane:?}")
            }
            Self::WrongService { role, inbound, index } => write!(
                f,
                "the task role's {SERVICE_TAG} tag is {role:?} but inbound {index} claims service {inbound:?}"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// What the role alone decides, before any Dataplane is read: it must be a
/// dataplane role of one mesh. Returns that mesh.
pub fn check_role(role_tags: &BTreeMap<String, String>) -> Result<&str, Refusal> {
    let kind = role_tags.get(TYPE_TAG).ok_or(Refusal::MissingType)?;
    match kind.as_str() {
        "dataplane" => {}
        "ingress" | "egress" => return Err(Refusal::NotADataplaneRole(kind.clone())),
        other => return Err(Refusal::UnknownType(other.to_owned())),
    }
    role_tags.get(MESH_TAG).map(String::as_str).ok_or(Refusal::MissingMesh)
}

/// Allows the Dataplane, or says why not.
pub fn check(role_tags: &BTreeMap<String, String>, dataplane: &Dataplane) -> Result<(), Refusal> {
    check_services(role_tags, &dataplane.mesh, dataplane.inbounds.iter().map(|ib| ib.service()))
}

/// Allows a role to act for these services of `mesh` (a Dataplane's
/// inbounds, or the identities of a certificate), or says why not.
pub fn check_services<'a>(
    role_tags: &BTreeMap<String, String>,
    mesh: &str,
    services: impl IntoIterator<Item = &'a str>,
) -> Result<(), Refusal> {
    let role_mesh = check_role(role_tags)?;
    if role_mesh != mesh {
        return Err(Refusal::WrongMesh { role: role_mesh.to_owned(), dataplane: mesh.to_owned() });
    }
    if let Some(service) = role_tags.get(SERVICE_TAG) {
        for (index, inbound) in services.into_iter().enumerate() {
            if inbound != service {
                return Err(Refusal::WrongService { role: service.clone(), inbound: inbound.to_owned(), index });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DataplaneVars, render_dataplane};

    fn dataplane(mesh: &str, services: &[&str]) -> Dataplane {
        let inbounds: String = services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("  - port: {}\n    servicePort: 80\n    tags:\n      kuma.io/service: {s}\n", 15000 + i)
            })
            .collect();
        let text = format!(
            "type: Dataplane\nname: dp\nmesh: {mesh}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n{inbounds}"
        );
        render_dataplane(&text, &DataplaneVars::new()).unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn table_of_cases() {
        let dp = dataplane("default", &["demo-app"]);
        let two = dataplane("default", &["demo-app", "admin"]);
        type Case<'a> = (&'a str, BTreeMap<String, String>, &'a Dataplane, Result<(), Refusal>);
        let cases: Vec<Case> = vec![
            ("dataplane with mesh", tags(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "default")]), &dp, Ok(())),
            (
                "dataplane with mesh and service",
                tags(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "default"), (SERVICE_TAG, "demo-app")]),
                &dp,
                Ok(()),
            ),
            ("no tags", tags(&[]), &dp, Err(Refusal::MissingType)),
            (
                "gateway type",
                tags(&[(TYPE_TAG, "gateway"), (MESH_TAG, "default")]),
                &dp,
                Err(Refusal::UnknownType("gateway".into())),
            ),
            ("ingress role", tags(&[(TYPE_TAG, "ingress")]), &dp, Err(Refusal::NotADataplaneRole("ingress".into()))),
            ("egress role", tags(&[(TYPE_TAG, "egress")]), &dp, Err(Refusal::NotADataplaneRole("egress".into()))),
            ("dataplane without mesh", tags(&[(TYPE_TAG, "dataplane")]), &dp, Err(Refusal::MissingMesh)),
            (
                "other mesh",
                tags(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "prod")]),
                &dp,
                Err(Refusal::WrongMesh { role: "prod".into(), dataplane: "default".into() }),
            ),
            (
                "wrong service",
                tags(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "default"), (SERVICE_TAG, "redis")]),
                &dp,
                Err(Refusal::WrongService { role: "redis".into(), inbound: "demo-app".into(), index: 0 }),
            ),
            (
                "service must hold for every inbound",
                tags(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "default"), (SERVICE_TAG, "demo-app")]),
                &two,
                Err(Refusal::WrongService { role: "demo-app".into(), inbound: "admin".into(), index: 1 }),
            ),
        ];
        for (name, role, dp, want) in cases {
            assert_eq!(check(&role, dp), want, "{name}");
        }
    }

    #[test]
    fn refusals_read_well() {
        let r = Refusal::WrongService { role: "redis".into(), inbound: "demo-app".into(), index: 0 };
        assert_eq!(
            r.to_string(),
            "the task role's kuma.io/service tag is \"redis\" but inbound 0 claims service \"demo-app\""
        );
    }
}
