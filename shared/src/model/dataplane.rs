//! Dataplane: one proxy's registration, in the full form or the simplified form
//! that `--bind-outbounds` uses, whose empty or `{{ var }}` fields come from
//! `--dataplane-var` values.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::document::{Scalar, single_value, to_path};
use super::tags::{KNOWN_PROTOCOLS, PROTOCOL_TAG, SERVICE_TAG, validate_tags};
use super::{Labels, ValidationErrors, validate_resource_name};
use crate::dns_name;

/// Variables supplied with `--dataplane-var key=value` (and, in task-events, the
/// task's own `address` and `dpname`).
pub type DataplaneVars = BTreeMap<String, String>;

/// The most inbounds one Dataplane may have: its registration (the task, an
/// endpoint and up to two services per inbound, the view, its change item and
/// the DNS state) must fit one `TransactWriteItems` of 100 items.
pub const MAX_INBOUNDS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    pub name: String,
    pub mesh: String,
    pub labels: Labels,
    /// The task's address: what peers dial to reach the inbounds.
    pub address: String,
    pub inbounds: Vec<Inbound>,
    /// The pre-2.11 form's explicit outbounds: the sidecar listens on each
    /// `address:port` for its service, besides (or instead of) the VIPs.
    pub outbounds: Vec<StaticOutbound>,
}

/// One `networking.outbound` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticOutbound {
    /// Where the application dials, 127.0.0.1 unless the entry says.
    pub address: IpAddr,
    pub port: u16,
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Where the sidecar listens for peers, on `address`.
    pub port: u16,
    /// Where the application listens, on `service_address`.
    pub service_port: u16,
    pub service_address: IpAddr,
    pub tags: BTreeMap<String, String>,
}

impl Inbound {
    /// The `kuma.io/service` tag; validation guarantees it is there.
    pub fn service(&self) -> &str {
        self.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or_default()
    }

    /// The `kuma.io/protocol` tag, `tcp` when absent.
    pub fn protocol(&self) -> &str {
        self.tags.get(PROTOCOL_TAG).map(String::as_str).unwrap_or("tcp")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDataplane {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    name: Option<Scalar>,
    #[serde(default)]
    mesh: Option<Scalar>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    networking: Option<RawNetworking>,
    #[serde(default, rename = "metrics")]
    _metrics: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "probes")]
    _probes: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "creationTime")]
    _creation_time: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "modificationTime")]
    _modification_time: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetworking {
    #[serde(default)]
    address: Option<Scalar>,
    #[serde(default)]
    inbound: Option<Vec<RawInbound>>,
    #[serde(default)]
    outbound: Option<Vec<RawOutbound>>,
    #[serde(default)]
    gateway: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOutbound {
    #[serde(default)]
    port: Option<Scalar>,
    #[serde(default)]
    address: Option<Scalar>,
    #[serde(default)]
    tags: Option<BTreeMap<String, Scalar>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInbound {
    #[serde(default)]
    port: Option<Scalar>,
    #[serde(default)]
    service_port: Option<Scalar>,
    #[serde(default)]
    service_address: Option<Scalar>,
    #[serde(default)]
    tags: Option<BTreeMap<String, Scalar>>,
}

/// Renders the `KUMA_DATAPLANE_RUNTIME_RESOURCE` template with `vars` and validates it.
///
/// `{{ var }}` (or `{{ .var }}`) placeholders are replaced first; then fields
/// left empty take the conventional variable: `name` <- `dpname`, `mesh` <-
/// `mesh`, `networking.address` <- `address`, an inbound's `port`,
/// `servicePort`, `kuma.io/service` and `kuma.io/protocol` <- `port`,
/// `servicePort`, `service`, `protocol`.
pub fn render_dataplane(template: &str, vars: &DataplaneVars) -> Result<Dataplane, ValidationErrors> {
    let text = substitute(template, vars)?;
    let value = single_value(&text)?;
    match value.get("type").and_then(serde_yaml_ng::Value::as_str) {
        Some("Dataplane") => from_value(value, vars),
        Some(other) => {
            Err(ValidationErrors::single("type", format!("the template renders a {other}, not a Dataplane")))
        }
        None => Err(ValidationErrors::single("type", "required, Dataplane")),
    }
}

/// Replaces `{{ var }}` placeholders; every unknown variable is reported.
fn substitute(template: &str, vars: &DataplaneVars) -> Result<String, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            errors.push("template", "a {{ placeholder is never closed with }}");
            rest = "";
            break;
        };
        let key = rest[open + 2..open + close].trim().trim_start_matches('.');
        match vars.get(key) {
            Some(v) => out.push_str(v),
            None => errors
                .push("template", format!("variable {{{{ {key} }}}} has no value; pass --dataplane-var {key}=VALUE")),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    errors.into_result(out)
}

impl Dataplane {
    /// Validates a parsed document; `vars` fills fields the document left empty.
    pub(super) fn from_raw(raw: RawDataplane, vars: &DataplaneVars) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let var = |k: &str| vars.get(k).cloned();
        let filled = |v: Option<Scalar>, k: &str| {
            v.map(Scalar::into_string).filter(|s| !s.is_empty()).or_else(|| var(k)).unwrap_or_default()
        };

        let name = filled(raw.name, "dpname");
        validate_resource_name(&mut errors, "name", &name);
        let mesh = filled(raw.mesh, "mesh");
        validate_resource_name(&mut errors, "mesh", &mesh);
        let labels: Labels = raw.labels.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_string())).collect();
        validate_tags(&mut errors, "labels", &labels);

        let networking = raw.networking.unwrap_or_default();
        let address = filled(networking.address, "address");
        if address.is_empty() {
            errors.push("networking.address", "required, the task's IP address or DNS name");
        } else if address.parse::<IpAddr>().is_err() && dns_name::validate(&address).is_err() {
            errors.push("networking.address", format!("{address:?} is neither an IP address nor a DNS name"));
        }

        if networking.gateway.as_ref().is_some_and(|g| !g.is_null()) {
            errors.push(
                "networking.gateway",
                "gateway Dataplanes are not supported; loopmesh runs sidecars (a Dataplane with inbounds) only",
            );
        }
        let raw_inbounds = networking.inbound.unwrap_or_default();
        if raw_inbounds.is_empty() {
            errors.push("networking.inbound", "at least one inbound is required");
        }
        if raw_inbounds.len() > MAX_INBOUNDS {
            errors.push(
                "networking.inbound",
                format!(
                    "at most {MAX_INBOUNDS} inbounds, found {}: a task's registration is one DynamoDB transaction of at most 100 items (an endpoint and up to two services per inbound)",
                    raw_inbounds.len()
                ),
            );
        }
        let mut inbounds = Vec::with_capacity(raw_inbounds.len());
        for (i, ib) in raw_inbounds.into_iter().enumerate() {
            let path = format!("networking.inbound[{i}]");
            let port = port_field(
                &mut errors,
                &format!("{path}.port"),
                ib.port.map(Scalar::into_string).filter(|s| !s.is_empty()).or_else(|| var("port")),
            );
            let service_port =
                match ib.service_port.map(Scalar::into_string).filter(|s| !s.is_empty()).or_else(|| var("servicePort"))
                {
                    Some(raw) => port_field(&mut errors, &format!("{path}.servicePort"), Some(raw)),
                    None => port,
                };
            let service_address = match ib.service_address.map(Scalar::into_string).filter(|s| !s.is_empty()) {
                None => IpAddr::from([127, 0, 0, 1]),
                Some(a) => a.parse().unwrap_or_else(|_| {
                    errors.push(format!("{path}.serviceAddress"), format!("{a:?} is not an IP address"));
                    IpAddr::from([127, 0, 0, 1])
                }),
            };
            let mut tags: BTreeMap<String, String> =
                ib.tags.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_string())).collect();
            for (tag, var_name) in [(SERVICE_TAG, "service"), (PROTOCOL_TAG, "protocol")] {
                let empty = tags.get(tag).is_none_or(String::is_empty);
                match var(var_name) {
                    Some(v) if empty => {
                        tags.insert(tag.to_owned(), v);
                    }
                    _ if empty && tag == PROTOCOL_TAG => {
                        tags.remove(tag);
                    }
                    _ => {}
                }
            }
            if tags.get(SERVICE_TAG).is_none_or(String::is_empty) {
                errors.push(format!("{path}.tags[{SERVICE_TAG:?}]"), "required, the service this inbound belongs to");
                tags.remove(SERVICE_TAG);
            }
            validate_tags(&mut errors, &format!("{path}.tags"), &tags);
            if let Some(p) = tags.get(PROTOCOL_TAG)
                && !KNOWN_PROTOCOLS.contains(&p.as_str())
            {
                errors.push(
                    format!("{path}.tags[{PROTOCOL_TAG:?}]"),
                    format!("{p:?} is not one of {}", KNOWN_PROTOCOLS.join(", ")),
                );
            }
            if let (Some(port), Some(service_port)) = (port, service_port) {
                inbounds.push(Inbound { port, service_port, service_address, tags });
            }
        }
        let mut outbounds = Vec::new();
        for (i, ob) in networking.outbound.unwrap_or_default().into_iter().enumerate() {
            let path = format!("networking.outbound[{i}]");
            let port = port_field(&mut errors, &format!("{path}.port"), ob.port.map(Scalar::into_string));
            let address = match ob.address.map(Scalar::into_string).filter(|s| !s.is_empty()) {
                None => Some(IpAddr::from([127, 0, 0, 1])),
                Some(a) => match a.parse::<IpAddr>() {
                    Ok(ip) if ip.is_loopback() => Some(ip),
                    _ => {
                        errors.push(
                            format!("{path}.address"),
                            format!(
                                "{} is not a loopback IP address (the sidecar listens inside the task)",
                                crate::excerpt::quoted(&a)
                            ),
                        );
                        None
                    }
                },
            };
            let service = ob.tags.unwrap_or_default().remove(SERVICE_TAG).map(Scalar::into_string).unwrap_or_default();
            if service.is_empty() {
                errors.push(format!("{path}.tags[{SERVICE_TAG:?}]"), "required, the service this outbound reaches");
            }
            if let (Some(port), Some(address), false) = (port, address, service.is_empty()) {
                outbounds.push(StaticOutbound { address, port, service });
            }
        }
        errors.into_result(Self { name, mesh, labels, address, inbounds, outbounds })
    }

    /// The distinct services of the inbounds, in order.
    pub fn services(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for ib in &self.inbounds {
            if !out.contains(&ib.service()) {
                out.push(ib.service());
            }
        }
        out
    }
}

/// A port given as a number or numeric string, 1..65535.
pub(super) fn port_field(errors: &mut ValidationErrors, path: &str, raw: Option<String>) -> Option<u16> {
    match raw {
        None => {
            errors.push(path, "required, a port in 1..65535");
            None
        }
        Some(s) => match s.trim().parse::<u16>() {
            Ok(p) if p >= 1 => Some(p),
            _ => {
                errors.push(path, format!("{s:?} is not a port in 1..65535"));
                None
            }
        },
    }
}

/// Deserializes and validates in one step; used by the document parser.
pub(super) fn from_value(value: serde_yaml_ng::Value, vars: &DataplaneVars) -> Result<Dataplane, ValidationErrors> {
    let raw: RawDataplane = serde_path_to_error::deserialize(value).map_err(to_path)?;
    Dataplane::from_raw(raw, vars)
}
