//! What the tests of the endpoint legs share: one outbound over one backend.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use loopmesh_shared::model::Protocol;
use loopmesh_sidecar::listeners::Listeners;
use loopmesh_sidecar::proxy::ProxySettings;
use loopmesh_sidecar::view::{Endpoint, Outbound, View};

/// Listeners serving a `protocol` outbound at `ip` (a free port on it) over
/// `backend`; the address to dial.
pub fn serve(ip: Ipv4Addr, backend: SocketAddr, protocol: Protocol) -> (Arc<Listeners>, SocketAddr) {
    let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    let outbound = Outbound {
        service: "api".into(),
        kind: None,
        vip: ip,
        port,
        endpoints: vec![Endpoint { address: backend.to_string(), zone: None, identity: None }],
        tls: None,
        protocol,
    };
    let settings = ProxySettings { connect_timeout: Duration::from_millis(500), ..ProxySettings::default() };
    let l = Arc::new(Listeners::new(settings, None, Duration::from_secs(1)));
    l.apply(View { generation: 1, outbounds: vec![outbound], mtls: None, policies: Default::default() }).unwrap();
    (l, SocketAddr::from((ip, port)))
}
