//! mTLS on the data path: the sidecar's certificate and the mesh's roots
//! as rustls configurations, swapped whole when either changes.
//!
//! Outbound, a connection to a mesh endpoint originates TLS and accepts the
//! peer only if its certificate chains to a mesh root and names the service
//! the endpoint belongs to (`spiffe://<mesh>/<service>`). Inbound, STRICT
//! requires a client certificate of the mesh; PERMISSIVE also takes plain
//! text (told apart by the first byte: a TLS handshake record is 0x16).
//! Until the sidecar holds a certificate, nothing is sent in plain text to
//! a mesh that asks for mTLS: such connections are closed and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use loopmesh_shared::model::{MeshTrafficPermission, MtlsMode};
use loopmesh_shared::mtls::{inspect, parse_spiffe_id, spiffe_id};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MtlsStats {
    pub inbound_handshakes: AtomicU64,
    pub outbound_handshakes: AtomicU64,
    /// Inbound handshakes that failed: no certificate, another CA, expired.
    pub inbound_refused: AtomicU64,
    /// Outbound handshakes that failed: the peer is not the service expected, or not of the mesh.
    pub outbound_refused: AtomicU64,
    /// Plain-text inbound connections refused (STRICT).
    pub plain_refused: AtomicU64,
    /// Plain-text inbound connections accepted (PERMISSIVE).
    pub plain_accepted: AtomicU64,
    /// Connections closed because the sidecar holds no certificate yet.
    pub no_certificate: AtomicU64,
    pub issued: AtomicU64,
    pub issue_failures: AtomicU64,
    /// The certificate's expiry, seconds since the epoch (0: none held).
    pub not_after: AtomicU64,
    /// Connections denied (or shadow-denied) by MeshTrafficPermission, per source service.
    denials: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

/// Sources counted one by one; beyond this many, the rest share one series.
const MAX_SOURCES: usize = 256;

impl MtlsStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One denial (or shadow denial) of a connection from `source`.
    pub fn denied(&self, source: &str, shadow: bool) {
        let mut d = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if d.len() >= MAX_SOURCES && !d.contains_key(source) { "_other" } else { source };
        let entry = d.entry(key.to_owned()).or_default();
        if shadow {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }

    /// (source, denied, shadow-denied) for `/metrics`.
    pub fn denials(&self) -> Vec<(String, u64, u64)> {
        self.denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(s, (d, sh))| (s.clone(), *d, *sh))
            .collect()
    }
}

/// The sidecar's certificate: chain (leaf first) and its PKCS#8 key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

/// What the data path does under the current settings.
#[derive(Debug)]
pub struct Active {
    pub mesh: String,
    pub mode: MtlsMode,
    tls: Option<Configs>,
    permissions: Vec<MeshTrafficPermission>,
}

#[derive(Debug)]
struct Configs {
    server: Arc<ServerConfig>,
    roots: Arc<RootCertStore>,
    identity: Identity,
    /// One client configuration per expected peer service, built on first use.
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

/// mTLS settings shared by every listener. Empty while the mesh does not enable mTLS.
#[derive(Debug, Default)]
pub struct Mtls {
    active: ArcSwapOption<Active>,
    pub stats: MtlsStats,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Mtls {
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    /// No mTLS: the mesh does not enable it.
    pub fn disable(&self) {
        self.active.store(None);
    }

    /// mTLS for `mesh` in `mode`, trusting `roots` (PEM), serving
    /// `identity` once one is held.
    pub fn install(
        &self,
        mesh: &str,
        mode: MtlsMode,
        roots: &[Vec<u8>],
        identity: Option<Identity>,
        permissions: Vec<MeshTrafficPermission>,
    ) -> Result<(), String> {
        let tls = match identity {
            None => None,
            Some(identity) => {
                let mut store = RootCertStore::empty();
                for der in roots {
                    store.add(CertificateDer::from(der.clone())).map_err(|e| format!("a mesh root: {e}"))?;
                }
                let roots = Arc::new(store);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                    .build()
                    .map_err(|e| format!("client verifier: {e}"))?;
                let mut server = ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|e| e.to_string())?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(identity.chain.clone(), key(&identity))
                    .map_err(|e| format!("the sidecar's certificate: {e}"))?;
                server.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
                Some(Configs { server: Arc::new(server), roots, identity, clients: Mutex::default() })
            }
        };
        self.active.store(Some(Arc::new(Active { mesh: mesh.to_owned(), mode, tls, permissions })));
        Ok(())
    }
}

fn key(identity: &Identity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()))
}

impl Active {
    /// The mesh's MeshTrafficPermissions.
    pub fn permissions(&self) -> &[MeshTrafficPermission] {
        &self.permissions
    }

    /// The server side of an inbound handshake; `None` without a certificate.
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        self.tls.as_ref().map(|c| c.server.clone())
    }

    /// The client side for a peer of `service`; `None` without a certificate.
    pub fn client(&self, service: &str) -> Option<Arc<ClientConfig>> {
        let c = self.tls.as_ref()?;
        let mut clients = c.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cfg) = clients.get(service) {
            return Some(cfg.clone());
        }
        let verifier =
            Arc::new(PeerIs { roots: c.roots.clone(), expected: spiffe_id(&self.mesh, service), provider: provider() });
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(c.identity.chain.clone(), key(&c.identity))
            .ok()?;
        cfg.enable_sni = false;
        let cfg = Arc::new(cfg);
        clients.insert(service.to_owned(), cfg.clone());
        Some(cfg)
    }

    /// The service a verified client certificate names in this mesh.
    pub fn peer_service(&self, chain: Option<&[CertificateDer<'_>]>) -> Option<String> {
        let leaf = chain?.first()?;
        let info = inspect(leaf).ok()?;
        info.identities.iter().find_map(|id| match parse_spiffe_id(id) {
            Some((mesh, service)) if mesh == self.mesh => Some(service.to_owned()),
            _ => None,
        })
    }
}

/// The outbound verifier: the chain to a mesh root, then the identity.
#[derive(Debug)]
struct PeerIs {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerIs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let info = inspect(end_entity).map_err(rustls::Error::General)?;
        if info.identities.contains(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("the peer is {:?}, not {}", info.identities, self.expected)))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The address of an endpoint as rustls wants a server name: its IP (no
/// SNI is sent for an IP; the resumption cache is per peer).
pub fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}
