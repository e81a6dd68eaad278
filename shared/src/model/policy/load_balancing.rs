//! MeshLoadBalancingStrategy: which endpoint a request or connection goes
//! to, and whether the task's own zone comes first.

use serde::{Deserialize, Serialize};

use super::{RawTo, ValidationErrors, default_entry, parse, unsupported};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancingType {
    /// The less loaded of `choice_count` random endpoints (outstanding
    /// requests on HTTP outbounds, open connections on TCP ones).
    LeastRequest {
        choice_count: u32,
    },
    Random,
    RoundRobin,
}

/// A `default` of MeshLoadBalancingStrategy; `None`: not set here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancingConf {
    /// `localityAwareness.disabled`: ignore zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<LoadBalancingType>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawConf {
    #[serde(default)]
    locality_awareness: Option<RawLocality>,
    #[serde(default)]
    load_balancer: Option<RawBalancer>,
    #[serde(default)]
    hash_policies: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLocality {
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    local_zone: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    cross_zone: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBalancer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    least_request: Option<RawLeastRequest>,
    #[serde(default)]
    ring_hash: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    maglev: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLeastRequest {
    #[serde(default)]
    choice_count: Option<u32>,
    #[serde(default)]
    active_request_bias: Option<serde_yaml_ng::Value>,
}

fn conf(errors: &mut ValidationErrors, path: &str, raw: RawConf) -> LoadBalancingConf {
    let hashing = "no hash-based balancing yet (RingHash, Maglev)";
    unsupported(errors, &format!("{path}.hashPolicies"), &raw.hash_policies, hashing);
    let locality_disabled = raw.locality_awareness.map(|l| {
        let zones = "the task's own zone first, then any";
        unsupported(errors, &format!("{path}.localityAwareness.localZone"), &l.local_zone, zones);
        unsupported(errors, &format!("{path}.localityAwareness.crossZone"), &l.cross_zone, zones);
        l.disabled.unwrap_or(false)
    });
    let algorithm = raw.load_balancer.and_then(|b| {
        let p = format!("{path}.loadBalancer");
        unsupported(errors, &format!("{p}.ringHash"), &b.ring_hash, hashing);
        unsupported(errors, &format!("{p}.maglev"), &b.maglev, hashing);
        if let Some(lr) = &b.least_request {
            unsupported(
                errors,
                &format!("{p}.leastRequest.activeRequestBias"),
                &lr.active_request_bias,
                "plain least request",
            );
        }
        match b.kind.as_deref() {
            Some("LeastRequest") => {
                let choice_count = b.least_request.and_then(|l| l.choice_count).unwrap_or(2);
                if choice_count < 2 {
                    errors.push(format!("{p}.leastRequest.choiceCount"), "must be at least 2");
                }
                Some(LoadBalancingType::LeastRequest { choice_count })
            }
            Some("Random") => Some(LoadBalancingType::Random),
            Some("RoundRobin") => Some(LoadBalancingType::RoundRobin),
            Some(other @ ("RingHash" | "Maglev")) => {
                errors.push(format!("{p}.type"), format!("{other} is not supported by loopmesh yet: {hashing}"));
                None
            }
            Some(other) => {
                errors.push(
                    format!("{p}.type"),
                    format!("{other:?} is not one of RoundRobin, LeastRequest, Random, RingHash, Maglev"),
                );
                None
            }
            None => {
                errors.push(format!("{p}.type"), "required: RoundRobin, LeastRequest or Random");
                None
            }
        }
    });
    LoadBalancingConf { locality_disabled, algorithm }
}

pub(crate) fn from_value(value: serde_yaml_ng::Value) -> Result<super::MeshLoadBalancingStrategy, ValidationErrors> {
    parse(value, "MeshLoadBalancingStrategy", |errors, path, raw: RawTo<RawConf>| {
        default_entry(errors, path, raw, conf)
    })
}

merge_fields!(LoadBalancingConf { locality_disabled, algorithm });
