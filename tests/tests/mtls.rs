//! mTLS between two real `loopmesh-sidecar` processes over loopback, with
//! certificates from the issuer function's code (against moto: STS, IAM,
//! KMS, DynamoDB) behind the Lambda Invoke API: the bytes between the
//! sidecars are encrypted, a client without a mesh certificate is refused
//! in STRICT (as are expired, other-mesh and other-CA certificates), a
//! MeshTrafficPermission decides who gets through, and PERMISSIVE takes
//! plain text too.

#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopmesh_shared::identity::{MESH_TAG, SERVICE_TAG, TYPE_TAG};
use loopmesh_shared::mtls::cert::{self, CaSigner, LeafRequest, LocalSigner};
use loopmesh_shared::mtls::proof::SigningKeys;
use loopmesh_shared::registration::Registry;
use loopmesh_shared::store::dynamo::DynamoCaStore;
use loopmesh_shared::store::dynamo::DynamoRegistry;
use loopmesh_tests::ecs::one_endpoint;
use loopmesh_tests::mtls::{apply_resource, builtin_mesh, issuer, kms_key, serve_issuer, service_with_vip, task_role};
use loopmesh_tests::process::{ChildGuard, admin_get, eventually, free_port, metric, workspace_binary};
use loopmesh_tests::{dynamo_client, fresh_table};
use rustls::pki_types::CertificateDer;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MESH: &str = "secure";
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"the plaintext nobody between the sidecars may read";

/// The application behind the receiving sidecar: echoes.
async fn echo_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Forwards `listen` to `to` and keeps every byte that passed: what a
/// capture on the wire between the two sidecars would see.
async fn tap(listen: &str, to: SocketAddr) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let l = TcpListener::bind(listen).await.unwrap();
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(to).await else { return };
                let (mut ar, mut aw) = a.split();
                let (mut br, mut bw) = b.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = ar.read(&mut buf).await {
                        kept.lock().unwrap().extend_from_slice(&buf[..n]);
                        if bw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = bw.shutdown().await;
                };
                let down = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = br.read(&mut buf).await {
                        kept.lock().unwrap().extend_from_slice(&buf[..n]);
                        if aw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = aw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    seen
}

fn dataplane(service: &str, address: &str, app_port: u16) -> String {
    format!(
        "type: Dataplane\nmesh: {MESH}\nname: {service}-1\nnetworking:\n  address: {address}\n  inbound:\n  - port: 15000\n    servicePort: {app_port}\n    tags:\n      kuma.io/service: {service}\n"
    )
}

/// A sidecar with the task role's credentials, reaching the issuer at `lambda`.
#[allow(clippy::too_many_arguments)]
fn sidecar(
    table: &str,
    template: &str,
    keys: &SigningKeys,
    lambda: &str,
    admin: SocketAddr,
    outbounds: bool,
) -> ChildGuard {
    let mut cmd = std::process::Command::new(workspace_binary("loopmesh-sidecar"));
    cmd.args(["run", "--admin-address", &admin.to_string(), "--issuer", "issuer"])
        .env("KUMA_DATAPLANE_RUNTIME_RESOURCE", template)
        .env("LOOPMESH_TABLE_NAME", table)
        .env("LOOPMESH_SIDECAR_REFRESH_INTERVAL", "200ms")
        .env("LOOPMESH_SIDECAR_WAKE_ADDRESS", "off")
        .env("AWS_ENDPOINT_URL_LAMBDA", lambda)
        .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
        .env("AWS_SESSION_TOKEN", keys.session_token.as_deref().unwrap_or_default())
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if outbounds {
        cmd.arg("--bind-outbounds");
    }
    ChildGuard(cmd.spawn().expect("start loopmesh-sidecar"))
}

fn metric_of(admin: SocketAddr, name: &str) -> f64 {
    metric(&admin_get(admin, "/metrics").1, name).unwrap_or(0.0)
}

/// One round trip of `payload`; `None` when the connection was closed first.
async fn round_trip(at: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(at).await.ok()?;
    s.write_all(payload).await.ok()?;
    let mut buf = vec![0u8; payload.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

/// Service `echo` with the VIP task-events would have allocated, and one
/// task's endpoint at `address`:15000.
async fn echo_service(client: &aws_sdk_dynamodb::Client, table: &str, vip: &str, task: &str, address: &str) {
    service_with_vip(client, table, MESH, "echo", vip).await;
    let registered =
        DynamoRegistry::new(client.clone(), table).register(&one_endpoint(MESH, "echo", task, address)).await;
    assert!(matches!(registered, Ok(loopmesh_shared::registration::WriteOutcome::Applied)), "{registered:?}");
}

fn permission(name: &str, target: &str, from: &str, action: &str) -> String {
    format!(
        "type: MeshTrafficPermission\nname: {name}\nmesh: {MESH}\nspec:\n  targetRef: {target}\n  from:\n  - targetRef: {from}\n    default:\n      action: {action}\n"
    )
}

/// Accepts any server: these clients test what the receiving sidecar accepts.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client presenting `chain` (none: no certificate); `true` when
/// its bytes came back echoed.
async fn tls_round_trip(at: SocketAddr, chain: Option<(Vec<CertificateDer<'static>>, Vec<u8>)>) -> bool {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match chain {
        Some((chain, key)) => {
            builder.with_client_auth_cert(chain, rustls::pki_types::PrivateKeyDer::Pkcs8(key.into())).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let Ok(tcp) = TcpStream::connect(at).await else { return false };
    let name = rustls::pki_types::ServerName::IpAddress(at.ip().into());
    let Ok(Ok(mut tls)) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    else {
        return false;
    };
    if tls.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await, Ok(Ok(_))) && &buf == b"ping"
}

/// A client certificate for `identity` (a SPIFFE ID) signed by `signer`
/// under `root`, valid from `not_before` for `lifetime`.
async fn client_cert(
    signer: &impl CaSigner,
    root: &[u8],
    mesh: &str,
    service: &str,
    not_before: SystemTime,
    lifetime: Duration,
) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
    let key = LocalSigner::generate();
    let services = vec![service.to_owned()];
    let request = LeafRequest { mesh, services: &services, public_key: key.public_key(), lifetime };
    let leaf = cert::leaf(signer, root, &request, not_before).await.unwrap();
    (vec![CertificateDer::from(leaf), CertificateDer::from(root.to_vec())], key.key_der())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_speak_mtls_strict_refuses_plain_and_permissive_takes_both() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "mtls").await;
    apply_resource(&table, &builtin_mesh(MESH, "STRICT")).await;
    let key_id = kms_key().await;
    let (lambda, _server) = serve_issuer(issuer(&table, &key_id).await).await;
    let (_, echo_keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, MESH), (SERVICE_TAG, "echo")]).await;
    let (_, web_keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, MESH), (SERVICE_TAG, "web")]).await;

    // echo's inbound listens on 127.0.0.41:15000; peers reach it through a
    // tap on 127.0.0.43:15000, the address the table gives for it.
    let app = echo_app().await;
    let inbound: SocketAddr = "127.0.0.41:15000".parse().unwrap();
    let wire = tap("127.0.0.43:15000", inbound).await;
    echo_service(&client, &table, "127.1.0.77", "echo1", "127.0.0.43").await;

    let echo_admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let web_admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let _echo = sidecar(&table, &dataplane("echo", "127.0.0.41", app), &echo_keys, &lambda, echo_admin, false);
    let _web = sidecar(&table, &dataplane("web", "127.0.0.42", app), &web_keys, &lambda, web_admin, true);
    for admin in [echo_admin, web_admin] {
        eventually("a certificate", WAIT, || metric_of(admin, "loopmesh_mtls_certificate_expiry_seconds") > 0.0).await;
    }
    eventually("web's outbound for echo", WAIT, || admin_get(web_admin, "/config").1.contains("127.0.0.43:15000"))
        .await;
    let config: serde_json::Value = serde_json::from_str(&admin_get(web_admin, "/config").1).unwrap();
    let outbound = config["outbounds"].as_array().unwrap().iter().find(|o| o["service"] == "echo").unwrap().clone();
    let vip: SocketAddr = format!("{}:{}", outbound["vip"].as_str().unwrap(), outbound["port"]).parse().unwrap();

    // Under mTLS, no MeshTrafficPermission means no traffic (Kuma's default).
    assert_eq!(round_trip(vip, SECRET).await, None);
    eventually("the denial counted for web", WAIT, || {
        metric_of(echo_admin, "loopmesh_mtls_denied_total{source=\"web\"}") >= 1.0
    })
    .await;
    apply_resource(&table, &permission("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow")).await;

    // Through both sidecars: echoed, and the wire between them never saw the plaintext.
    let deadline = tokio::time::Instant::now() + WAIT;
    while round_trip(vip, SECRET).await.as_deref() != Some(SECRET) {
        assert!(tokio::time::Instant::now() < deadline, "allow-all never let web through");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = wire.lock().unwrap().clone();
    assert!(seen.len() > SECRET.len(), "the tap saw the connection");
    assert!(!seen.windows(SECRET.len()).any(|w| w == SECRET), "plaintext between the sidecars");
    assert_eq!(seen[0], 0x16, "a TLS handshake opened the connection");
    assert!(metric_of(web_admin, "loopmesh_mtls_outbound_handshakes_total") >= 1.0);
    assert!(metric_of(echo_admin, "loopmesh_mtls_inbound_handshakes_total") >= 1.0);

    // STRICT: a client with no certificate gets nothing, and is counted.
    assert_eq!(round_trip(inbound, b"hello").await, None);
    assert!(metric_of(echo_admin, "loopmesh_mtls_plain_refused_total") >= 1.0);

    // TLS clients the mesh does not vouch for: no certificate, an expired
    // one, another mesh's identity, another CA. Each refused and counted.
    let kms = loopmesh_shared::aws::kms::KmsSigner::load(
        aws_sdk_kms::Client::new(&loopmesh_tests::sdk_config().await),
        &key_id,
    )
    .await
    .unwrap();
    let roots =
        loopmesh_shared::mtls::issuer::CaStore::roots(&DynamoCaStore::new(client.clone(), &table), MESH).await.unwrap();
    let root = loopmesh_shared::mtls::pem_certificates(&roots[0].certificate).unwrap().remove(0);
    let now = SystemTime::now();
    let good = client_cert(&kms, &root, MESH, "web", now, Duration::from_secs(3600)).await;
    assert!(tls_round_trip(inbound, Some(good)).await, "a mesh client with a good certificate is served");
    let before = metric_of(echo_admin, "loopmesh_mtls_inbound_refused_total");
    assert!(!tls_round_trip(inbound, None).await, "no client certificate");
    let expired =
        client_cert(&kms, &root, MESH, "web", now - Duration::from_secs(7200), Duration::from_secs(3600)).await;
    assert!(!tls_round_trip(inbound, Some(expired)).await, "an expired certificate");
    let other_mesh = client_cert(&kms, &root, "other", "web", now, Duration::from_secs(3600)).await;
    assert!(!tls_round_trip(inbound, Some(other_mesh)).await, "another mesh's identity");
    let rogue = LocalSigner::generate();
    let rogue_root = cert::root(&rogue, MESH, "ca-1", now, Duration::from_secs(86_400)).await.unwrap();
    let forged = client_cert(&rogue, &rogue_root, MESH, "web", now, Duration::from_secs(3600)).await;
    assert!(!tls_round_trip(inbound, Some(forged)).await, "another CA");
    eventually("four refusals counted", WAIT, || {
        metric_of(echo_admin, "loopmesh_mtls_inbound_refused_total") >= before + 4.0
    })
    .await;

    // A MeshTrafficPermission for echo that denies web wins over allow-all
    // (a MeshService client selector is more specific than Mesh).
    apply_resource(
        &table,
        &permission("deny-web", "{kind: MeshService, name: echo}", "{kind: MeshService, name: web}", "Deny"),
    )
    .await;
    let denied_before = metric_of(echo_admin, "loopmesh_mtls_denied_total{source=\"web\"}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while round_trip(vip, SECRET).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "deny-web never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric_of(echo_admin, "loopmesh_mtls_denied_total{source=\"web\"}") > denied_before);
    apply_resource(
        &table,
        &permission(
            "deny-web",
            "{kind: MeshService, name: echo}",
            "{kind: MeshService, name: web}",
            "AllowWithShadowDeny",
        ),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while round_trip(vip, SECRET).await.as_deref() != Some(SECRET) {
        assert!(tokio::time::Instant::now() < deadline, "AllowWithShadowDeny never let web through");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric_of(echo_admin, "loopmesh_mtls_shadow_denied_total{source=\"web\"}") >= 1.0);

    // PERMISSIVE: the same plain client is served; mTLS still works.
    apply_resource(&table, &builtin_mesh(MESH, "PERMISSIVE")).await;
    eventually("PERMISSIVE reaches the sidecar", WAIT, || admin_get(echo_admin, "/config").1.contains("PERMISSIVE"))
        .await;
    // The sidecar installs new settings within a second of applying the view.
    let deadline = tokio::time::Instant::now() + WAIT;
    while round_trip(inbound, b"hello").await.as_deref() != Some(&b"hello"[..]) {
        assert!(tokio::time::Instant::now() < deadline, "PERMISSIVE never took plain text");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric_of(echo_admin, "loopmesh_mtls_plain_accepted_total") >= 1.0);
    assert_eq!(round_trip(vip, SECRET).await.as_deref(), Some(SECRET));
}

/// One round trip on the connection held open through the rotation.
async fn echo(held: &mut TcpStream, msg: &[u8]) {
    held.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), held.read_exact(&mut buf)).await.expect("no answer").expect("reset");
    assert_eq!(buf, msg);
}

fn two_backends(enabled: &str, backends: &[&str]) -> String {
    let listed: String = backends.iter().map(|b| format!("  - name: {b}\n    type: builtin\n")).collect();
    format!("type: Mesh\nname: {MESH}\nmtls:\n  enabledBackend: {enabled}\n  backends:\n{listed}")
}

/// Kuma's CA rotation (add a backend, enable it, remove the old one) while
/// a connection stays open through both sidecars: every sidecar moves to the
/// new backend, new connections keep working at each step, and the open
/// connection is never reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_under_traffic_resets_nothing() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "rotate").await;
    apply_resource(&table, &builtin_mesh(MESH, "STRICT")).await;
    apply_resource(&table, &permission("allow-all", "{kind: Mesh}", "{kind: Mesh}", "Allow")).await;
    let (lambda, _server) = serve_issuer(issuer(&table, &kms_key().await).await).await;
    let (_, echo_keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, MESH), (SERVICE_TAG, "echo")]).await;
    let (_, web_keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, MESH), (SERVICE_TAG, "web")]).await;
    let app = echo_app().await;
    echo_service(&client, &table, "127.1.0.78", "echo2", "127.0.0.51").await;
    let echo_admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let web_admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let _echo = sidecar(&table, &dataplane("echo", "127.0.0.51", app), &echo_keys, &lambda, echo_admin, false);
    let _web = sidecar(&table, &dataplane("web", "127.0.0.52", app), &web_keys, &lambda, web_admin, true);
    let vip: SocketAddr = "127.1.0.78:8080".parse().unwrap();
    let works = || async {
        let deadline = tokio::time::Instant::now() + WAIT;
        while round_trip(vip, SECRET).await.as_deref() != Some(SECRET) {
            assert!(tokio::time::Instant::now() < deadline, "new connections stopped working");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    works().await;
    let mut held = TcpStream::connect(vip).await.unwrap();
    echo(&mut held, b"before").await;
    let issued = |admin| metric_of(admin, "loopmesh_mtls_certificates_issued_total");

    // 1. A second backend: its root is made (one sidecar renews) and trusted everywhere.
    apply_resource(&table, &two_backends("ca-1", &["ca-1", "ca-2"])).await;
    // Both keepers see the root (a second one then makes no renewal of its
    // own): a keeper that had not yet would make a late renewal, still on
    // ca-1, which step 2's count would take for its switch to ca-2.
    for admin in [web_admin, echo_admin] {
        eventually("the ca-2 root", Duration::from_secs(60), || {
            admin_get(admin, "/config").1.contains("\"ca-2\": \"-----BEGIN")
        })
        .await;
    }
    echo(&mut held, b"added").await;
    works().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (echo_certs, web_certs) = (issued(echo_admin), issued(web_admin));

    // 2. Enable it: both sidecars renew to ca-2.
    apply_resource(&table, &two_backends("ca-2", &["ca-1", "ca-2"])).await;
    eventually("both sidecars renewed", Duration::from_secs(60), || {
        issued(echo_admin) > echo_certs && issued(web_admin) > web_certs
    })
    .await;
    echo(&mut held, b"switched").await;
    works().await;

    // 3. Drop ca-1: nothing signed by it is trusted any more, and traffic still flows.
    apply_resource(&table, &two_backends("ca-2", &["ca-2"])).await;
    eventually("ca-1 dropped", WAIT, || !admin_get(echo_admin, "/config").1.contains("\"ca-1\"")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    works().await;
    echo(&mut held, b"after").await;
    assert_eq!(metric_of(web_admin, "loopmesh_mtls_outbound_refused_total"), 0.0, "no handshake failed");
}

/// A MeshExternalService's `spec.tls` goes through the table to the view a
/// sidecar builds, whole; deleting the resource takes it away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_external_service_tls_reaches_the_sidecar_view() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "mes-tls").await;
    apply_resource(
        &table,
        "type: MeshExternalService\nname: httpbin\nmesh: default\nspec:\n  match:\n    type: HostnameGenerator\n    port: 443\n    protocol: tcp\n  endpoints:\n  - address: httpbin.org\n    port: 443\n  tls:\n    enabled: true\n    verification:\n      serverName: httpbin.org\n",
    )
    .await;
    let reader = loopmesh_shared::store::dynamo::DynamoMeshView::new(client.clone(), &table);
    let (services, endpoints) = reader.read("default").await.unwrap();
    let view = loopmesh_shared::view::build(1, &services, &endpoints, 8080);
    let outbound = view.outbounds.iter().find(|o| o.service == "httpbin").unwrap();
    let tls = outbound.tls.as_ref().expect("the view carries spec.tls");
    assert_eq!(tls.server_name.as_deref(), Some("httpbin.org"));
    assert_eq!(tls.mode, loopmesh_shared::model::VerificationMode::Secured);
    assert_eq!(outbound.endpoints[0].address, "httpbin.org:443");
    assert_eq!(outbound.endpoints[0].identity, None, "not a mesh endpoint: no mTLS identity");
}
