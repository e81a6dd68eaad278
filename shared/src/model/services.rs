//! MeshService, MeshExternalService and MeshMultiZoneService: the resources
//! that get VIPs on their real ports and names from HostnameGenerators.

use serde::Deserialize;

use super::dataplane::port_field;
use super::document::{Scalar, to_path};
use super::tags::{KNOWN_PROTOCOLS, validate_tags};
use super::{Labels, ValidationErrors, validate_resource_name};
use crate::dns_name;

pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// A number or the name of the endpoint's port.
    pub target_port: Option<String>,
    pub app_protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshService {
    pub name: String,
    pub mesh: String,
    pub labels: Labels,
    /// `spec.selector.dataplaneTags`: which inbounds back this service.
    pub dataplane_tags: Labels,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEndpoint {
    /// An IP address or a DNS name resolved when a connection is made.
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshExternalService {
    pub name: String,
    pub mesh: String,
    pub labels: Labels,
    /// `spec.match.port`: the port on the VIP.
    pub port: u16,
    pub protocol: String,
    pub endpoints: Vec<ExternalEndpoint>,
    /// `spec.tls` with `enabled: true`: the sidecar originates TLS.
    pub tls: Option<super::ExternalTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMultiZoneService {
    pub name: String,
    pub mesh: String,
    pub labels: Labels,
    /// `spec.selector.meshService.matchLabels`.
    pub match_labels: Labels,
    pub ports: Vec<ServicePort>,
}

/// The name templates see as `.DisplayName`: the `kuma.io/display-name` label, else the name.
pub fn display_name<'a>(name: &'a str, labels: &'a Labels) -> &'a str {
    labels.get(DISPLAY_NAME_LABEL).map(String::as_str).unwrap_or(name)
}

impl MeshService {
    pub fn display_name(&self) -> &str {
        display_name(&self.name, &self.labels)
    }
}
impl MeshExternalService {
    pub fn display_name(&self) -> &str {
        display_name(&self.name, &self.labels)
    }
}
impl MeshMultiZoneService {
    pub fn display_name(&self) -> &str {
        display_name(&self.name, &self.labels)
    }
}

/// The fields every mesh-scoped service document has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDocument<S> {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mesh: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, Scalar>>,
    pub(super) spec: Option<S>,
    #[serde(default, rename = "status")]
    _status: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "creationTime")]
    _creation_time: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "modificationTime")]
    _modification_time: Option<serde_yaml_ng::Value>,
}

pub(super) struct Meta {
    pub(super) name: String,
    pub(super) mesh: String,
    pub(super) labels: Labels,
}

pub(super) fn meta<S>(errors: &mut ValidationErrors, raw: &mut RawDocument<S>) -> Meta {
    let name = raw.name.take().unwrap_or_default();
    validate_resource_name(errors, "name", &name);
    let mesh = raw.mesh.take().unwrap_or_else(|| "default".to_owned());
    validate_resource_name(errors, "mesh", &mesh);
    let labels: Labels = raw.labels.take().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_string())).collect();
    validate_tags(errors, "labels", &labels);
    Meta { name, mesh, labels }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    #[serde(default)]
    name: Option<Scalar>,
    #[serde(default)]
    port: Option<Scalar>,
    #[serde(default)]
    target_port: Option<Scalar>,
    #[serde(default)]
    app_protocol: Option<String>,
}

fn protocol(errors: &mut ValidationErrors, path: &str, raw: Option<String>) -> String {
    let p = raw.filter(|p| !p.is_empty()).unwrap_or_else(|| "tcp".to_owned());
    if !KNOWN_PROTOCOLS.contains(&p.as_str()) {
        errors.push(path, format!("{p:?} is not one of {}", KNOWN_PROTOCOLS.join(", ")));
    }
    p
}

fn ports(errors: &mut ValidationErrors, raw: Option<Vec<RawPort>>) -> Vec<ServicePort> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        errors.push("spec.ports", "at least one port is required");
    }
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let port = port_field(errors, &format!("{path}.port"), p.port.map(Scalar::into_string));
        let app_protocol = protocol(errors, &format!("{path}.appProtocol"), p.app_protocol);
        if let Some(port) = port {
            if out.iter().any(|o: &ServicePort| o.port == port) {
                errors.push(format!("{path}.port"), format!("port {port} is listed twice"));
            }
            let target_port = p.target_port.map(Scalar::into_string);
            // A number is the inbound port traffic goes to; an inbound's name
            // would need Dataplane inbound names, which loopmesh does not keep.
            if let Some(t) = &target_port
                && t.parse::<u16>().map_or(true, |v| v == 0)
            {
                errors.push(
                    format!("{path}.targetPort"),
                    format!(
                        "{} is not a port in 1..65535 (named inbounds are not supported yet)",
                        crate::excerpt::quoted(t)
                    ),
                );
            }
            out.push(ServicePort { name: p.name.map(Scalar::into_string), port, target_port, app_protocol });
        }
    }
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeshServiceSpec {
    #[serde(default)]
    selector: Option<RawMeshServiceSelector>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeshServiceSelector {
    #[serde(default)]
    dataplane_tags: Option<std::collections::BTreeMap<String, Scalar>>,
}

pub(super) fn mesh_service_from_value(value: serde_yaml_ng::Value) -> Result<MeshService, ValidationErrors> {
    let mut raw: RawDocument<RawMeshServiceSpec> = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let m = meta(&mut errors, &mut raw);
    let spec = raw.spec.unwrap_or_default();
    let dataplane_tags: Labels = spec
        .selector
        .and_then(|s| s.dataplane_tags)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_string()))
        .collect();
    validate_tags(&mut errors, "spec.selector.dataplaneTags", &dataplane_tags);
    let ports = ports(&mut errors, spec.ports);
    errors.into_result(MeshService { name: m.name, mesh: m.mesh, labels: m.labels, dataplane_tags, ports })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawExternalSpec {
    #[serde(default, rename = "match")]
    matcher: Option<RawMatch>,
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
    #[serde(default)]
    tls: Option<super::external_tls::RawTls>,
    #[serde(default)]
    extension: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    port: Option<Scalar>,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    port: Option<Scalar>,
}

pub(super) fn external_from_value(value: serde_yaml_ng::Value) -> Result<MeshExternalService, ValidationErrors> {
    let mut raw: RawDocument<RawExternalSpec> = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let m = meta(&mut errors, &mut raw);
    let spec = raw.spec.unwrap_or_default();
    let (port, protocol) = match spec.matcher {
        None => {
            errors.push("spec.match", "required, with the port and protocol applications use");
            (None, String::new())
        }
        Some(mt) => {
            if let Some(k) = mt.kind.filter(|k| k != "HostnameGenerator") {
                errors.push("spec.match.type", format!("{k:?} is not HostnameGenerator"));
            }
            (
                port_field(&mut errors, "spec.match.port", mt.port.map(Scalar::into_string)),
                protocol(&mut errors, "spec.match.protocol", mt.protocol),
            )
        }
    };
    let tls = spec.tls.and_then(|t| super::external_tls::from_raw(&mut errors, t));
    if spec.extension.is_some_and(|x| !x.is_null()) {
        errors.push("spec.extension", "MeshExternalService extensions are not supported; remove spec.extension");
    }
    let raw_endpoints = spec.endpoints.unwrap_or_default();
    if raw_endpoints.is_empty() {
        errors.push("spec.endpoints", "at least one endpoint is required");
    }
    let mut endpoints = Vec::new();
    for (i, e) in raw_endpoints.into_iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        let address = e.address.unwrap_or_default();
        if address.parse::<std::net::IpAddr>().is_err() && dns_name::validate(&address.to_ascii_lowercase()).is_err() {
            errors.push(format!("{path}.address"), format!("{address:?} is neither an IP address nor a DNS name"));
        }
        if let Some(port) = port_field(&mut errors, &format!("{path}.port"), e.port.map(Scalar::into_string)) {
            endpoints.push(ExternalEndpoint { address, port });
        }
    }
    let service = MeshExternalService {
        name: m.name,
        mesh: m.mesh,
        labels: m.labels,
        port: port.unwrap_or_default(),
        protocol,
        endpoints,
        tls,
    };
    errors.into_result(service)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMultiZoneSpec {
    #[serde(default)]
    selector: Option<RawMultiZoneSelector>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMultiZoneSelector {
    #[serde(default)]
    mesh_service: Option<RawMatchLabels>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMatchLabels {
    #[serde(default)]
    pub(super) match_labels: Option<std::collections::BTreeMap<String, Scalar>>,
}

pub(super) fn multi_zone_from_value(value: serde_yaml_ng::Value) -> Result<MeshMultiZoneService, ValidationErrors> {
    let mut raw: RawDocument<RawMultiZoneSpec> = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let m = meta(&mut errors, &mut raw);
    let spec = raw.spec.unwrap_or_default();
    let match_labels: Labels = match spec.selector.and_then(|s| s.mesh_service) {
        None => {
            errors.push("spec.selector.meshService", "required, with matchLabels naming the MeshServices to join");
            Labels::new()
        }
        Some(s) => s.match_labels.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_string())).collect(),
    };
    validate_tags(&mut errors, "spec.selector.meshService.matchLabels", &match_labels);
    let ports = ports(&mut errors, spec.ports);
    errors.into_result(MeshMultiZoneService { name: m.name, mesh: m.mesh, labels: m.labels, match_labels, ports })
}
