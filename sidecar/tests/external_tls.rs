//! A MeshExternalService with `spec.tls`: the application speaks plain text
//! to the VIP and the sidecar originates TLS to the endpoint, verifying it as
//! Kuma's modes say (Secured, SkipSAN, SkipCA, SkipAll), with real sockets
//! and a real TLS server on loopback.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loopmesh_shared::model::{ExternalTls, SanMatch, TlsVersion, VerificationMode};
use loopmesh_sidecar::listeners::Listeners;
use loopmesh_sidecar::proxy::ProxySettings;
use loopmesh_sidecar::view::{Endpoint, Outbound, View};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A TLS echo server for `localhost` (and 127.0.0.1) signed by `ca`,
/// counting handshakes that completed.
async fn tls_echo(ca: &Ca) -> (u16, Arc<AtomicUsize>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                count.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, handshakes)
}

fn spec(mode: VerificationMode, ca: Option<&Ca>) -> ExternalTls {
    ExternalTls {
        min_version: None,
        max_version: None,
        mode,
        server_name: None,
        subject_alt_names: Vec::new(),
        ca_cert: ca.map(|c| c.pem.clone()),
        client_cert: None,
        client_key: None,
    }
}

/// Through a VIP whose endpoint is `localhost:port` with `tls`: the echo, or
/// `None` when the sidecar closed the connection.
async fn through(n: u8, port: u16, tls: ExternalTls) -> Option<Vec<u8>> {
    let ip = Ipv4Addr::new(127, 1, 201, n);
    let vip_port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    let settings = ProxySettings { connect_timeout: Duration::from_millis(500), ..ProxySettings::default() };
    let l = Arc::new(Listeners::new(settings, None, Duration::from_secs(1)));
    let outbound = Outbound {
        service: "api".into(),
        kind: Some("mes".into()),
        vip: ip,
        port: vip_port,
        endpoints: vec![Endpoint { address: format!("localhost:{port}"), zone: None, identity: None }],
        tls: Some(tls),
        protocol: Default::default(),
    };
    l.apply(View { generation: 1, outbounds: vec![outbound], mtls: None, policies: Default::default() }).unwrap();
    let mut s = TcpStream::connect(SocketAddr::from((ip, vip_port))).await.unwrap();
    s.write_all(b"GET /").await.unwrap();
    let mut buf = [0u8; 5];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf.to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn the_sidecar_originates_tls_and_verifies_as_the_mode_says() {
    let (good, other) = (ca(), ca());
    let (port, handshakes) = tls_echo(&good).await;
    let ok = Some(b"GET /".to_vec());
    // Secured: the right CA and the endpoint's name.
    assert_eq!(through(1, port, spec(VerificationMode::Secured, Some(&good))).await, ok);
    assert_eq!(handshakes.load(Ordering::Relaxed), 1, "the endpoint saw TLS");
    // Another CA: refused, except where the CA is not checked.
    assert_eq!(through(2, port, spec(VerificationMode::Secured, Some(&other))).await, None);
    assert_eq!(through(3, port, spec(VerificationMode::SkipSAN, Some(&other))).await, None);
    assert_eq!(through(4, port, spec(VerificationMode::SkipCA, Some(&other))).await, ok);
    // A name the certificate does not carry: refused, except where the name is not checked.
    let wrong_name = |mode| ExternalTls { server_name: Some("api.example.com".into()), ..spec(mode, Some(&good)) };
    assert_eq!(through(5, port, wrong_name(VerificationMode::Secured)).await, None);
    assert_eq!(through(6, port, wrong_name(VerificationMode::SkipSAN)).await, ok);
    // subjectAltNames replace the name check.
    let sans = |value: &str, prefix| ExternalTls {
        subject_alt_names: vec![SanMatch { prefix, value: value.into() }],
        ..wrong_name(VerificationMode::Secured)
    };
    assert_eq!(through(7, port, sans("local", true)).await, ok);
    assert_eq!(through(8, port, sans("local", false)).await, None);
    // SkipAll: encrypted, nothing verified. The default roots do not know this CA.
    assert_eq!(through(9, port, spec(VerificationMode::SkipAll, Some(&other))).await, ok);
    assert_eq!(through(10, port, spec(VerificationMode::Secured, None)).await, None);
    // TLS 1.2 only is still spoken by this server.
    let tls12 = ExternalTls { max_version: Some(TlsVersion::Tls12), ..spec(VerificationMode::Secured, Some(&good)) };
    assert_eq!(through(11, port, tls12).await, ok);
}

#[test]
fn a_view_whose_tls_cannot_be_built_is_refused_whole() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let l = Listeners::new(ProxySettings::default(), None, Duration::from_secs(1));
        let outbound = Outbound {
            service: "api".into(),
            kind: Some("mes".into()),
            vip: Ipv4Addr::new(127, 1, 201, 20),
            port: 443,
            endpoints: vec![],
            tls: Some(ExternalTls {
                ca_cert: Some("not a certificate".into()),
                ..spec(VerificationMode::Secured, None)
            }),
            protocol: Default::default(),
        };
        let err = l
            .apply(View { generation: 1, outbounds: vec![outbound], mtls: None, policies: Default::default() })
            .unwrap_err();
        assert!(err.contains("tls.ca_cert"), "{err}");
    });
}
