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
use loopmesh_shared::model::{ExternalTls, MeshTrafficPermission, MtlsMode, TlsVersion};
use loopmesh_shared::mtls::{inspect, parse_spiffe_id, pem_certificates, spiffe_id};
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
    /// Outbound handshakes that resumed a TLS 1.3 session (no certificate exchange).
    pub outbound_resumed: AtomicU64,
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

    /// One denial (or shadow denial) of a connection from `source`; the
    /// count so far for that source, so callers can log the 1st, 2nd, 4th,
    /// 8th ... and a denial storm does not flood the log.
    pub fn denied(&self, source: &str, shadow: bool) -> u64 {
        let mut d = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if d.len() >= MAX_SOURCES && !d.contains_key(source) { "_other" } else { source };
        let entry = d.entry(key.to_owned()).or_default();
        let count = if shadow { &mut entry.1 } else { &mut entry.0 };
        *count += 1;
        *count
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
    resumption: bool,
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
    /// Outbound connections skip resumption of TLS 1.3 sessions (for measuring what it buys).
    no_resumption: std::sync::atomic::AtomicBool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Mtls {
    /// Whether outbound connections resume TLS 1.3 sessions (the default).
    pub fn set_resumption(&self, on: bool) {
        self.no_resumption.store(!on, Ordering::Relaxed);
    }

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
                // Stateless TLS 1.3 tickets (encrypted with a key rotated every
                // few hours), four per connection as each is single use: a busy
                // pair of sidecars resumes instead of repeating full handshakes,
                // and no server-side cache can evict what a client still holds.
                server.ticketer =
                    rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
                server.send_tls13_tickets = 4;
                Some(Configs { server: Arc::new(server), roots, identity, clients: Mutex::default() })
            }
        };
        let resumption = !self.no_resumption.load(Ordering::Relaxed);
        self.active.store(Some(Arc::new(Active { mesh: mesh.to_owned(), mode, tls, permissions, resumption })));
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
        let verifier = Arc::new(Verifier {
            roots: c.roots.clone(),
            check: Check::Peer(spiffe_id(&self.mesh, service)),
            provider: provider(),
        });
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(c.identity.chain.clone(), key(&c.identity))
            .ok()?;
        cfg.enable_sni = false;
        if !self.resumption {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
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

/// The outbound verifier: the chain to a trusted root, then who the server
/// is: a mesh peer's SPIFFE identity, or an external endpoint's names as its
/// `spec.tls` says (whose mode may skip either check).
#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    check: Check,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
enum Check {
    /// A mesh peer: its certificate must name this SPIFFE ID.
    Peer(String),
    External(ExternalTls),
}

impl Verifier {
    fn chain(
        &self,
        parsed: &rustls::server::ParsedCertificate<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        match &self.check {
            Check::Peer(expected) => {
                self.chain(&parsed, intermediates, now)?;
                let info = inspect(end_entity).map_err(rustls::Error::General)?;
                if !info.identities.contains(expected) {
                    return Err(rustls::Error::General(format!("the peer is {:?}, not {expected}", info.identities)));
                }
            }
            Check::External(spec) => {
                if spec.mode.checks_ca() {
                    self.chain(&parsed, intermediates, now)?;
                }
                if spec.mode.checks_name() {
                    if spec.subject_alt_names.is_empty() {
                        rustls::client::verify_server_name(&parsed, server_name)?;
                    } else {
                        let names = san_names(end_entity);
                        if !spec.subject_alt_names.iter().any(|m| names.iter().any(|n| m.matches(n))) {
                            return Err(rustls::Error::General(format!(
                                "the server's names {names:?} match no subjectAltNames"
                            )));
                        }
                    }
                }
            }
        }
        Ok(ServerCertVerified::assertion())
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

/// TLS the sidecar originates to a MeshExternalService's endpoints: the
/// client configuration and the server name to send.
#[derive(Debug)]
pub struct ExternalOrigin {
    pub spec: ExternalTls,
    pub config: Arc<ClientConfig>,
}

impl ExternalOrigin {
    /// Builds the configuration; an error names the field that is wrong.
    pub fn new(spec: &ExternalTls) -> Result<Self, String> {
        let provider = provider();
        let versions: Vec<&'static rustls::SupportedProtocolVersion> =
            [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
                .into_iter()
                .filter(|(v, _)| spec.min_version.is_none_or(|m| *v >= m) && spec.max_version.is_none_or(|m| *v <= m))
                .map(|(_, p)| p)
                .collect();
        let mut roots = RootCertStore::empty();
        match &spec.ca_cert {
            Some(pem) => {
                let certs = pem_certificates(pem).map_err(|e| format!("tls.ca_cert: {e}"))?;
                if certs.is_empty() {
                    return Err("tls.ca_cert: no PEM certificate".to_owned());
                }
                for der in certs {
                    roots.add(CertificateDer::from(der)).map_err(|e| format!("tls.ca_cert: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let verifier = Arc::new(Verifier {
            roots: Arc::new(roots),
            check: Check::External(spec.clone()),
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| format!("tls.version: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&spec.client_cert, &spec.client_key) {
            (Some(cert), Some(key)) => {
                let chain = pem_certificates(cert)
                    .map_err(|e| format!("tls.client_cert: {e}"))?
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
                let key = rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes())
                    .map_err(|e| format!("tls.client_key: {e:?}"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("tls.client_cert: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Self { spec: spec.clone(), config: Arc::new(config) })
    }

    /// What the connection to `host` is for: the SNI and the name checked
    /// (the override, else a hostname endpoint's name, else its IP).
    pub fn server_name(&self, host: &str, addr: std::net::SocketAddr) -> ServerName<'static> {
        let name = self.spec.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned()).unwrap_or_else(|_| server_name(addr))
    }
}

/// A certificate's DNS names, IP addresses and URIs, as text.
fn san_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::URI(u) => Some((*u).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::Ipv6Addr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
