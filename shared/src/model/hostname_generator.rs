//! HostnameGenerator: which services get names from a template, and in which
//! Route53 hosted zones those names live.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::document::{Scalar, to_path};
use super::services::RawMatchLabels;
use super::tags::validate_tags;
use super::{Labels, ValidationErrors, validate_resource_name};
use crate::config::HostedZoneId;
use crate::template::HostnameTemplate;

/// The kind of service a generator names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostnameTarget {
    MeshService,
    MeshExternalService,
    MeshMultiZoneService,
}

/// One hosted zone of a `hostedZones` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedZone {
    pub name: String,
    pub hosted_zone_id: HostedZoneId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameGenerator {
    pub name: String,
    pub labels: Labels,
    pub target: HostnameTarget,
    /// Empty matches every resource of the target kind.
    pub match_labels: Labels,
    pub template: HostnameTemplate,
    /// The zones the names go to; empty means the configured default zone.
    pub zones: Vec<NamedZone>,
}

impl HostnameGenerator {
    /// Whether a resource of `target` with `labels` gets names from this generator.
    pub fn selects(&self, target: HostnameTarget, labels: &Labels) -> bool {
        self.target == target && self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGenerator {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    spec: Option<RawSpec>,
    #[serde(default, rename = "creationTime")]
    _creation_time: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "modificationTime")]
    _modification_time: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    selector: Option<RawSelector>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    extension: Option<RawExtension>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    mesh_service: Option<RawMatchLabels>,
    #[serde(default)]
    mesh_external_service: Option<RawMatchLabels>,
    #[serde(default)]
    mesh_multi_zone_service: Option<RawMatchLabels>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtension {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    config: Option<RawRoute53Config>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute53Config {
    #[serde(default)]
    hosted_zone_id: Option<String>,
    #[serde(default)]
    hosted_zones: Option<Vec<RawNamedZone>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNamedZone {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    hosted_zone_id: Option<String>,
}

pub(super) fn from_value(value: serde_yaml_ng::Value) -> Result<HostnameGenerator, ValidationErrors> {
    let raw: RawGenerator = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let name = raw.name.unwrap_or_default();
    validate_resource_name(&mut errors, "name", &name);
    let labels: Labels = raw.labels.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_string())).collect();
    validate_tags(&mut errors, "labels", &labels);
    let Some(spec) = raw.spec else {
        errors.push("spec", "required, with selector and template");
        return Err(errors);
    };

    let chosen: Vec<(HostnameTarget, RawMatchLabels)> = match spec.selector {
        None => Vec::new(),
        Some(s) => [
            (HostnameTarget::MeshService, s.mesh_service),
            (HostnameTarget::MeshExternalService, s.mesh_external_service),
            (HostnameTarget::MeshMultiZoneService, s.mesh_multi_zone_service),
        ]
        .into_iter()
        .filter_map(|(t, m)| m.map(|m| (t, m)))
        .collect(),
    };
    let selector_rule = "exactly one of meshService, meshExternalService, meshMultiZoneService";
    let (target, match_labels) = match <[_; 1]>::try_from(chosen) {
        Ok([(t, m)]) => {
            (Some(t), m.match_labels.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_string())).collect())
        }
        Err(v) if v.is_empty() => {
            errors.push("spec.selector", format!("required, {selector_rule}"));
            (None, Labels::new())
        }
        Err(_) => {
            errors.push("spec.selector", format!("{selector_rule}, found several"));
            (None, Labels::new())
        }
    };
    validate_tags(&mut errors, "spec.selector.matchLabels", &match_labels);

    let template = match spec.template.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push("spec.template", "required, such as \"{{ .DisplayName }}.svc.mesh.local\"");
            None
        }
        Some(t) => match HostnameTemplate::parse(t) {
            Err(e) => {
                errors.push("spec.template", format!("does not parse: {e}"));
                None
            }
            // Every name it makes has the shape of this one: a template that
            // cannot make a valid name (".svc.mesh.local") is refused now.
            Ok(template) => match template.probe() {
                Ok(name) if crate::dns_name::validate(&name).is_ok() => Some(template),
                Ok(name) => {
                    let why = crate::dns_name::validate(&name).err().map(|e| e.to_string()).unwrap_or_default();
                    errors.push(
                        "spec.template",
                        format!(
                            "renders names like {} (for a service named \"probe\"), not a valid DNS name: {why}",
                            crate::excerpt::quoted(&name)
                        ),
                    );
                    None
                }
                Err(e) => {
                    errors.push("spec.template", format!("does not render: {e}"));
                    None
                }
            },
        },
    };

    let zones = match spec.extension {
        None => Vec::new(),
        Some(ext) => zones(&mut errors, ext),
    };

    match (target, template) {
        (Some(target), Some(template)) if errors.is_empty() => {
            Ok(HostnameGenerator { name, labels, target, match_labels, template, zones })
        }
        _ => Err(errors),
    }
}

fn zones(errors: &mut ValidationErrors, ext: RawExtension) -> Vec<NamedZone> {
    match ext.kind.as_deref() {
        Some("Route53") => {}
        other => {
            errors.push(
                "spec.extension.type",
                format!("{:?} is not Route53, the only extension loopmesh knows", other.unwrap_or("")),
            );
            return Vec::new();
        }
    }
    let rule = "config needs exactly one of hostedZoneId or hostedZones";
    let Some(config) = ext.config else {
        errors.push("spec.extension.config", format!("required; {rule}"));
        return Vec::new();
    };
    let zone = |errors: &mut ValidationErrors, path: &str, raw: &str| {
        HostedZoneId::parse(raw).map_err(|rule| errors.push(path, format!("{raw:?}: {rule}"))).ok()
    };
    match (config.hosted_zone_id, config.hosted_zones) {
        (Some(id), None) => zone(errors, "spec.extension.config.hostedZoneId", &id)
            .map(|hosted_zone_id| vec![NamedZone { name: String::new(), hosted_zone_id }])
            .unwrap_or_default(),
        (None, Some(list)) if !list.is_empty() => {
            let mut out: Vec<NamedZone> = Vec::new();
            for (i, z) in list.into_iter().enumerate() {
                let path = format!("spec.extension.config.hostedZones[{i}]");
                let name = z.name.unwrap_or_default();
                if name.is_empty() {
                    errors.push(format!("{path}.name"), "required, a name for this zone (such as its region)");
                }
                match z.hosted_zone_id {
                    None => errors.push(format!("{path}.hostedZoneId"), "required"),
                    Some(raw) => {
                        if let Some(id) = zone(errors, &format!("{path}.hostedZoneId"), &raw) {
                            if out.iter().any(|o| o.hosted_zone_id == id) {
                                errors.push(format!("{path}.hostedZoneId"), format!("{id} is listed twice"));
                            }
                            out.push(NamedZone { name, hosted_zone_id: id });
                        }
                    }
                }
            }
            out
        }
        _ => {
            errors.push("spec.extension.config", rule);
            Vec::new()
        }
    }
}
