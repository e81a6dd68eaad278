//! The mesh view a sidecar serves: one outbound per VIP:port, with the
//! endpoints its connections go to. It is built from the table's service and
//! endpoint rows of one mesh ([`build`]), and printed by the sidecar's
//! `/config` in the same JSON form `--view-file` reads.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Labels, Protocol};
use crate::vip::ServiceKind;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The table's view generation this was built from (0 for a file).
    #[serde(default)]
    pub generation: u64,
    pub outbounds: Vec<Outbound>,
    /// The mesh's mTLS, when its Mesh enables a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MeshMtls>,
    /// The mesh's outbound policies (MeshTimeout, MeshRetry, ...), which
    /// each sidecar resolves for its own outbounds.
    #[serde(default, skip_serializing_if = "crate::model::OutboundPolicies::is_empty")]
    pub policies: crate::model::OutboundPolicies,
}

/// A CA backend as a sidecar sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub name: String,
    /// Its root is made by the issuer and kept in the table (else an operator's, in Secrets Manager).
    pub builtin: bool,
}

impl MeshMtls {
    /// Whether every builtin backend the Mesh lists has its root in the table.
    pub fn builtin_roots_missing(&self) -> bool {
        self.backends.iter().any(|b| b.builtin && !self.roots.contains_key(&b.name))
    }
}

/// What a sidecar needs of its mesh's mTLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshMtls {
    pub mesh: String,
    /// The backend that signs new certificates.
    pub backend: String,
    pub mode: crate::model::MtlsMode,
    /// The backends the Mesh lists (their roots are trusted), in order.
    pub backends: Vec<BackendView>,
    /// The roots of builtin backends made so far, PEM by backend (a
    /// provided backend's root comes with the sidecar's certificate).
    pub roots: std::collections::BTreeMap<String, String>,
    /// The mesh's MeshTrafficPermissions, which inbounds enforce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<crate::model::MeshTrafficPermission>,
}

/// One listener: a service's VIP and port, and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub vip: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// TLS the sidecar originates to the endpoints (a MeshExternalService's `spec.tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::ExternalTls>,
    /// `http`, `http2` and `grpc` outbounds balance each request; `tcp` (the
    /// default) each connection.
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
}

/// Where a connection may go: `ip:port`, or `name:port` for a
/// MeshExternalService, resolved when a connection is made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The `kuma.io/service` a mesh endpoint's certificate must name when
    /// the mesh enables mTLS; `None` for a MeshExternalService's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl View {
    /// A view is applied whole or not at all: every VIP on loopback, each
    /// VIP:port once, every port non-zero, every endpoint `host:port`.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for (i, o) in self.outbounds.iter().enumerate() {
            if !o.vip.is_loopback() {
                return Err(format!("outbounds[{i}].vip: {} is not a loopback address", o.vip));
            }
            if o.port == 0 {
                return Err(format!("outbounds[{i}].port: 0 is not a port"));
            }
            if !seen.insert((o.vip, o.port)) {
                return Err(format!("outbounds[{i}]: {}:{} is listed twice", o.vip, o.port));
            }
            for (j, e) in o.endpoints.iter().enumerate() {
                if e.identity.as_deref().is_some_and(|s| s.is_empty() || s.contains('/')) {
                    return Err(format!("outbounds[{i}].endpoints[{j}].identity: not a service name"));
                }
                if split_host_port(&e.address).is_none() {
                    return Err(format!(
                        "outbounds[{i}].endpoints[{j}].address: {:?} is not host:port with a port in 1..65535",
                        e.address
                    ));
                }
            }
        }
        if let Some(m) = &self.mtls {
            for (backend, pem) in &m.roots {
                if crate::mtls::pem_certificates(pem).map_or(true, |c| c.is_empty()) {
                    return Err(format!("mtls.roots.{backend}: not a PEM certificate"));
                }
            }
        }
        Ok(())
    }
}

/// `host:port` (`[v6]:port` too) with a non-zero port.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

/// A service row of the mesh, as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub kind: ServiceKind,
    pub name: String,
    /// `None` while the service has no VIP (after collection): no listener.
    pub vip: Option<Ipv4Addr>,
    /// MeshService / MeshExternalService / MeshMultiZoneService ports.
    pub ports: Vec<u16>,
    pub labels: Labels,
    /// A MeshExternalService's declared endpoints, `host:port`.
    pub external: Vec<String>,
    /// A MeshMultiZoneService's selector over MeshService labels.
    pub match_labels: Labels,
    /// A MeshService port whose traffic goes to another inbound port (`targetPort`).
    pub targets: std::collections::BTreeMap<u16, u16>,
    /// A MeshExternalService's TLS origination.
    pub tls: Option<crate::model::ExternalTls>,
    /// Each port's `appProtocol` (MeshService, MeshMultiZoneService) or the
    /// match's protocol (MeshExternalService).
    pub protocols: BTreeMap<u16, Protocol>,
}

/// An endpoint row: one task's inbound for `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub service: String,
    pub address: String,
    pub port: u16,
    pub service_port: u16,
    pub zone: Option<String>,
    /// The task it belongs to (for operators; the sidecar does not need it).
    pub task_arn: Option<String>,
    /// The inbound's `kuma.io/protocol`.
    pub protocol: Protocol,
}

/// The view of one mesh. A `kuma.io/service` service listens on the shared
/// `vip_port` and reaches every inbound of the service; a MeshService listens
/// on each of its ports and reaches the inbounds whose application port is
/// that port; a MeshMultiZoneService does the same over the MeshServices its
/// selector matches; a MeshExternalService reaches its declared endpoints.
pub fn build(generation: u64, services: &[ServiceEntry], endpoints: &[EndpointEntry], vip_port: u16) -> View {
    let mut by_service: BTreeMap<&str, Vec<&EndpointEntry>> = BTreeMap::new();
    for e in endpoints {
        by_service.entry(&e.service).or_default().push(e);
    }
    let endpoint = |e: &EndpointEntry| Endpoint {
        address: format!("{}:{}", e.address, e.port),
        zone: e.zone.clone(),
        identity: Some(e.service.clone()),
    };
    let of_port = |service: &str, port: u16| -> Vec<Endpoint> {
        // A MeshService port is the inbound port peers dial (Kuma's generator).
        by_service.get(service).into_iter().flatten().filter(|e| e.port == port).map(|e| endpoint(e)).collect()
    };
    let mut outbounds = Vec::new();
    for s in services {
        let Some(vip) = s.vip else { continue };
        let kind = Some(s.kind.code().to_owned());
        let mut push = |port: u16, mut endpoints: Vec<Endpoint>, protocol: Protocol| {
            endpoints.sort();
            endpoints.dedup();
            let tls = s.tls.clone();
            outbounds.push(Outbound {
                service: s.name.clone(),
                kind: kind.clone(),
                vip,
                port,
                endpoints,
                tls,
                protocol,
            });
        };
        let declared = |port: u16| s.protocols.get(&port).copied().unwrap_or_default();
        match s.kind {
            ServiceKind::Service => {
                let inbounds = by_service.get(s.name.as_str()).map(Vec::as_slice).unwrap_or_default();
                // The protocol every inbound speaks (Kuma's InferServiceProtocol).
                let protocol = inbounds.iter().map(|e| e.protocol).reduce(Protocol::common).unwrap_or_default();
                push(vip_port, inbounds.iter().map(|e| endpoint(e)).collect(), protocol)
            }
            ServiceKind::MeshService => {
                let backing = crate::resources::backing_service(&s.name, &s.match_labels);
                for &port in &s.ports {
                    push(port, of_port(backing, s.targets.get(&port).copied().unwrap_or(port)), declared(port));
                }
            }
            ServiceKind::MeshMultiZoneService => {
                let matched: Vec<&ServiceEntry> = services
                    .iter()
                    .filter(|m| m.kind == ServiceKind::MeshService)
                    .filter(|m| s.match_labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)))
                    .collect();
                for &port in &s.ports {
                    push(
                        port,
                        matched
                            .iter()
                            .flat_map(|m| {
                                let target = m.targets.get(&port).copied().unwrap_or(port);
                                of_port(crate::resources::backing_service(&m.name, &m.match_labels), target)
                            })
                            .collect(),
                        declared(port),
                    );
                }
            }
            ServiceKind::MeshExternalService => {
                let external: Vec<Endpoint> =
                    s.external.iter().map(|a| Endpoint { address: a.clone(), zone: None, identity: None }).collect();
                for &port in &s.ports {
                    push(port, external.clone(), declared(port));
                }
            }
        }
    }
    outbounds.sort_by_key(|o| (o.vip, o.port));
    // Two services can never share a VIP (invariant 1); should the table say
    // otherwise, the first keeps the listener and the view stays valid.
    outbounds.dedup_by(|b, a| (a.vip, a.port) == (b.vip, b.port));
    View { generation, outbounds, mtls: None, policies: Default::default() }
}

/// The first word of a wake-up: one UDP datagram, `loopmesh-wake 1 <mesh>
/// <change key>`, telling a sidecar its mesh changed so it checks the table
/// now. It carries nothing to trust: the table stays the authority.
pub const WAKE_MAGIC: &str = "loopmesh-wake";

/// The port sidecars listen on for wake-ups unless configured otherwise.
pub const WAKE_PORT: u16 = 15099;

/// A wake-up for `mesh`, naming the newest change item.
pub fn wake_datagram(mesh: &str, change: &str) -> String {
    format!("{WAKE_MAGIC} 1 {mesh} {change}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let text = r#"{"generation":0,"outbounds":[{"service":"redis","vip":"127.1.0.7","port":8080,"endpoints":[{"address":"10.0.2.11:16379","zone":"us-east-1a"}]}]}"#;
        let v: View = serde_json::from_str(text).unwrap();
        assert_eq!(v.validate(), Ok(()));
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
        let mut twice = v.clone();
        twice.outbounds.push(v.outbounds[0].clone());
        assert_eq!(twice.validate(), Err("outbounds[1]: 127.1.0.7:8080 is listed twice".into()));
        let mut wide = v.clone();
        wide.outbounds[0].vip = Ipv4Addr::new(10, 0, 0, 1);
        assert!(wide.validate().unwrap_err().contains("not a loopback"));
        let mut portless = v;
        portless.outbounds[0].endpoints[0].address = "redis.example.com".into();
        assert_eq!(
            portless.validate(),
            Err(r#"outbounds[0].endpoints[0].address: "redis.example.com" is not host:port with a port in 1..65535"#
                .into())
        );
    }

    fn svc(kind: ServiceKind, name: &str, vip: [u8; 4], ports: &[u16]) -> ServiceEntry {
        ServiceEntry {
            kind,
            name: name.into(),
            vip: Some(vip.into()),
            ports: ports.to_vec(),
            labels: Labels::new(),
            external: Vec::new(),
            match_labels: Labels::new(),
            targets: std::collections::BTreeMap::new(),
            tls: None,
            protocols: BTreeMap::new(),
        }
    }

    #[test]
    fn an_outbound_speaks_what_its_inbounds_or_ports_declare() {
        let with = |protocol| EndpointEntry { protocol, ..ep("api", "10.0.0.1", 5000, 5000) };
        let second = |protocol| EndpointEntry { protocol, ..ep("api", "10.0.0.2", 5000, 5000) };
        let service = svc(ServiceKind::Service, "api", [127, 1, 0, 2], &[]);
        let of = |a, b| build(1, std::slice::from_ref(&service), &[with(a), second(b)], 8080).outbounds[0].protocol;
        assert_eq!(of(Protocol::Grpc, Protocol::Grpc), Protocol::Grpc);
        assert_eq!(of(Protocol::Grpc, Protocol::Http2), Protocol::Http2, "Kuma's common protocol");
        assert_eq!(of(Protocol::Http, Protocol::Tcp), Protocol::Tcp, "one TCP inbound makes the service TCP");
        let mut ms = svc(ServiceKind::MeshService, "api", [127, 4, 0, 2], &[5000, 5001]);
        ms.protocols.insert(5000, Protocol::Http);
        let v = build(1, &[ms], &[], 8080);
        assert_eq!((v.outbounds[0].protocol, v.outbounds[1].protocol), (Protocol::Http, Protocol::Tcp));
        let json = serde_json::to_string(&v.outbounds[1]).unwrap();
        assert!(!json.contains("protocol"), "tcp is left out of the JSON: {json}");
    }

    #[test]
    fn a_target_port_sends_a_mesh_service_port_to_another_inbound() {
        // MeshService redis: port 6379 goes to the tasks' inbound 16379.
        let mut ms = svc(ServiceKind::MeshService, "redis", [127, 4, 0, 2], &[6379]);
        ms.targets.insert(6379, 16379);
        let endpoints = vec![ep("redis", "10.0.0.1", 16379, 6379), ep("redis", "10.0.0.2", 16379, 6379)];
        let v = build(1, &[ms], &endpoints, 8080);
        assert_eq!(v.outbounds.len(), 1);
        assert_eq!((v.outbounds[0].port, v.outbounds[0].endpoints.len()), (6379, 2));
        assert_eq!(v.outbounds[0].endpoints[0].address, "10.0.0.1:16379");
    }

    fn ep(service: &str, address: &str, port: u16, service_port: u16) -> EndpointEntry {
        EndpointEntry {
            service: service.into(),
            address: address.into(),
            port,
            service_port,
            zone: None,
            task_arn: None,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn builds_one_listener_per_vip_port() {
        // MeshService ports are the inbound ports peers dial (Kuma's generator).
        let mut ms = svc(ServiceKind::MeshService, "api", [127, 4, 0, 9], &[15000, 15001]);
        ms.labels.insert("team".into(), "a".into());
        let mut mzs = svc(ServiceKind::MeshMultiZoneService, "api-global", [127, 2, 0, 1], &[15000]);
        mzs.match_labels.insert("team".into(), "a".into());
        let mut mes = svc(ServiceKind::MeshExternalService, "httpbin", [127, 3, 0, 1], &[443]);
        mes.external = vec!["httpbin.org:443".into()];
        let gone = ServiceEntry { vip: None, ..svc(ServiceKind::Service, "old", [127, 1, 0, 3], &[]) };
        let services = vec![svc(ServiceKind::Service, "redis", [127, 1, 0, 7], &[]), ms, mzs, mes, gone];
        let endpoints = vec![
            ep("redis", "10.0.0.1", 16379, 6379),
            ep("redis", "10.0.0.2", 16379, 6379),
            ep("api", "10.0.0.3", 15000, 80),
            ep("api", "10.0.0.3", 15001, 9090),
            ep("old", "10.0.0.4", 1, 1),
        ];
        let v = build(7, &services, &endpoints, 8080);
        assert_eq!(v.validate(), Ok(()));
        let got: Vec<(String, u16, Vec<&str>)> = v
            .outbounds
            .iter()
            .map(|o| (o.vip.to_string(), o.port, o.endpoints.iter().map(|e| e.address.as_str()).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.1.0.7".into(), 8080, vec!["10.0.0.1:16379", "10.0.0.2:16379"]),
                ("127.2.0.1".into(), 15000, vec!["10.0.0.3:15000"]),
                ("127.3.0.1".into(), 443, vec!["httpbin.org:443"]),
                ("127.4.0.9".into(), 15000, vec!["10.0.0.3:15000"]),
                ("127.4.0.9".into(), 15001, vec!["10.0.0.3:15001"]),
            ]
        );
        assert_eq!(v.generation, 7);
    }
}
