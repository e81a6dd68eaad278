//! mTLS on the data path, in one run against the same traffic:
//!
//! - two loopmesh sidecars with mTLS between them (certificates from the
//!   issuer function's real code: moto's STS, IAM and KMS);
//! - two haproxies doing the same: TLS 1.3 between them with client
//!   certificates verified on both sides;
//! - two loopmesh sidecars in plain text.
//!
//! Each pair is client proxy -> server proxy -> application on loopback.
//! It prints throughput (1 and 8 streams, and the proxies' CPU per GB), new
//! connections per second (each a full handshake for haproxy; loopmesh
//! resumes TLS 1.3 sessions between a pair of sidecars), the round trip
//! added over plaintext loopmesh, and what certificates cost: issuer calls
//! and KMS signatures per task per day, and dollars a month for 1,000 tasks.
//! Needs iperf3, haproxy and moto server (`bench/run sidecar` provides them).
#![allow(clippy::unwrap_used, clippy::disallowed_types)] // a benchmark measures wall time and fails loudly

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use loopmesh_bench::*;
use loopmesh_shared::identity::{MESH_TAG, TYPE_TAG};
use loopmesh_shared::registration::{Endpoint, Registration, Registry, ServiceUpsert};
use loopmesh_shared::store::dynamo::DynamoRegistry;
use loopmesh_shared::vip::{ServiceKey, ServiceKind};
use loopmesh_tests::mtls::{apply_resource, builtin_mesh, issuer, kms_key, serve_issuer, service_with_vip, task_role};
use loopmesh_tests::process::{ChildGuard, admin_get, metric, workspace_binary};

const MESH: &str = "bench";
/// The three applications behind each server proxy: iperf3, echo, echo-once.
const APPS: usize = 3;

/// A Dataplane whose inbounds `15001..` forward to `apps`.
fn dataplane(name: &str, address: Ipv4Addr, apps: &[u16]) -> String {
    let inbounds: String = apps
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!("  - port: {}\n    servicePort: {port}\n    tags:\n      kuma.io/service: {name}-{i}\n", 15001 + i)
        })
        .collect();
    format!("type: Dataplane\nmesh: {MESH}\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n{inbounds}")
}

fn sidecar(template: &str, extra: &[&str], env: &[(&str, String)]) -> (ChildGuard, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("loopmesh-sidecar"));
    cmd.args(["run", "--admin-address", &admin.to_string()])
        .args(extra)
        .env("KUMA_DATAPLANE_RUNTIME_RESOURCE", template)
        .env("LOOPMESH_SIDECAR_WAKE_ADDRESS", "off")
        .env("LOOPMESH_SIDECAR_REFRESH_INTERVAL", "200ms")
        .env("RUST_LOG", "warn")
        .env_remove("ECS_CONTAINER_METADATA_URI_V4");
    for (k, v) in env {
        cmd.env(k, v);
    }
    (spawn(&mut cmd), admin)
}

/// The service items (with VIPs) and endpoints of the server's inbounds, as task-events writes them.
async fn register(client: &aws_sdk_dynamodb::Client, table: &str, address: Ipv4Addr, vips: &[Ipv4Addr]) {
    let task_arn = "arn:aws:ecs:us-east-1:123456789012:task/bench/server".to_owned();
    let mut reg = Registration {
        task_arn: task_arn.clone(),
        task_id: "server".into(),
        cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/bench".into(),
        mesh: MESH.into(),
        version: 1,
        endpoints: Vec::new(),
        services: Vec::new(),
        dns_changed: false,
        new_services: Vec::new(),
        vip_port: 8080,
        now: 1_800_000_000,
    };
    for (i, vip) in vips.iter().enumerate() {
        let service = format!("server-{i}");
        service_with_vip(client, table, MESH, &service, &vip.to_string()).await;
        reg.endpoints.push(Endpoint {
            service: service.clone(),
            address: address.to_string(),
            port: 15001 + i as u16,
            service_port: 1,
            protocol: "tcp".into(),
            zone: None,
            task_arn: task_arn.clone(),
            version: 1,
        });
        reg.services.push(ServiceUpsert {
            key: ServiceKey::new(MESH, ServiceKind::Service, &service),
            ports: Vec::new(),
            labels: Default::default(),
        });
    }
    DynamoRegistry::new(client.clone(), table).register(&reg).await.unwrap();
}

/// A CA and a certificate for each haproxy, PEM files (certificate then key).
fn haproxy_pki(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    // Distinct names: OpenSSL takes a leaf named like its issuer for self-signed.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem() + &key.serialize_pem()).unwrap();
        path.display().to_string()
    };
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    (ca_path.display().to_string(), leaf("client"), leaf("server"))
}

/// The client haproxy (plain in, TLS out with its certificate, the server's
/// verified) and the server haproxy (TLS in, client certificate required).
fn haproxy_pair(
    dir: &std::path::Path,
    fronts: &[SocketAddr],
    middles: &[SocketAddr],
    apps: &[SocketAddr],
) -> [ChildGuard; 2] {
    let (ca, client, server) = haproxy_pki(dir);
    let global = "global\n  maxconn 4000\n  nosplice\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n";
    let mut c = global.to_owned();
    let mut s = global.to_owned();
    for i in 0..fronts.len() {
        c += &format!(
            "frontend f{i}\n  bind {}\n  default_backend b{i}\nbackend b{i}\n  server s {} ssl verify required ca-file {ca} crt {client} verifyhost server sni str(server)\n",
            fronts[i], middles[i]
        );
        s += &format!(
            "frontend f{i}\n  bind {} ssl crt {server} ca-file {ca} verify required\n  default_backend b{i}\nbackend b{i}\n  server s {}\n",
            middles[i], apps[i]
        );
    }
    let (cp, sp) = (dir.join("client.cfg"), dir.join("server.cfg"));
    std::fs::write(&cp, c).unwrap();
    std::fs::write(&sp, s).unwrap();
    [spawn(Command::new("haproxy").arg("-f").arg(cp)), spawn(Command::new("haproxy").arg("-f").arg(sp))]
}

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn wait_ready(admin: SocketAddr) {
    while admin_get(admin, "/ready").0 != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let iperf_port = free_port();
    let _iperf_server = spawn(Command::new("iperf3").args(["-s", "-p", &iperf_port.to_string()]));
    let (echo, once) = (echo_server().await, echo_once_server().await);
    let app_ports = [iperf_port, echo.port(), once.port()];
    let apps: Vec<SocketAddr> = app_ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let dir = std::env::temp_dir().join(format!("loopmesh-bench-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // loopmesh with mTLS: the table, the Mesh, the issuer, the two task roles.
    let client = loopmesh_tests::dynamo_client().await;
    let table = loopmesh_tests::fresh_table(&client, "bench-mtls").await;
    apply_resource(&table, &builtin_mesh(MESH, "STRICT")).await;
    apply_resource(
        &table,
        &format!("type: MeshTrafficPermission\nname: allow-all\nmesh: {MESH}\nspec:\n  targetRef: {{kind: Mesh}}\n  from:\n  - targetRef: {{kind: Mesh}}\n    default: {{action: Allow}}\n"),
    )
    .await;
    let (lambda, _issuer) = serve_issuer(issuer(&table, &kms_key().await).await).await;
    let vips: Vec<Ipv4Addr> = (0..APPS as u8).map(|i| Ipv4Addr::new(127, 1, 230, i + 1)).collect();
    register(&client, &table, loopback(61), &vips).await;
    let (_, keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, MESH)]).await;
    let creds = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("LOOPMESH_TABLE_NAME", table.clone()),
            ("AWS_ENDPOINT_URL_LAMBDA", lambda.clone()),
            ("AWS_ACCESS_KEY_ID", keys.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", keys.secret_access_key.clone()),
            ("AWS_SESSION_TOKEN", keys.session_token.clone().unwrap_or_default()),
        ];
        env.extend(extra);
        env
    };
    let (m_server, m_server_admin) =
        sidecar(&dataplane("server", loopback(61), &app_ports), &["--issuer", "issuer"], &creds(vec![]));
    let (m_client, m_client_admin) =
        sidecar(&dataplane("client", loopback(62), &[1]), &["--issuer", "issuer", "--bind-outbounds"], &creds(vec![]));
    for admin in [m_server_admin, m_client_admin] {
        wait_ready(admin).await;
        while metric(&admin_get(admin, "/metrics").1, "loopmesh_mtls_certificate_expiry_seconds").unwrap_or(0.0) == 0.0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mtls: Vec<SocketAddr> = vips.iter().map(|v| SocketAddr::from((*v, 8080))).collect();
    while tokio::net::TcpStream::connect(mtls[1]).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // loopmesh in plain text: the server sidecar's inbounds, the client's view file.
    let (p_server, p_server_admin) = sidecar(&dataplane("server", loopback(71), &app_ports), &[], &[]);
    let plain: Vec<SocketAddr> = (0..APPS as u8).map(|i| SocketAddr::from(([127, 22, 0, i + 1], 8080))).collect();
    let view: Vec<String> = plain
        .iter()
        .enumerate()
        .map(|(i, at)| {
            format!(
                r#"{{"service":"server-{i}","vip":"{}","port":8080,"endpoints":[{{"address":"127.0.0.71:{}"}}]}}"#,
                at.ip(),
                15001 + i
            )
        })
        .collect();
    let view_file = dir.join("view.json");
    std::fs::write(&view_file, format!(r#"{{"outbounds":[{}]}}"#, view.join(","))).unwrap();
    let (p_client, p_client_admin) = sidecar(
        &dataplane("client", loopback(72), &[1]),
        &["--bind-outbounds", "--view-file", &view_file.display().to_string()],
        &[],
    );
    wait_ready(p_server_admin).await;
    wait_ready(p_client_admin).await;

    // haproxy pair with TLS and client certificates.
    let fronts: Vec<SocketAddr> = (0..APPS).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
    let middles: Vec<SocketAddr> = (0..APPS).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
    let [ha_client, ha_server] = haproxy_pair(&dir, &fronts, &middles, &apps);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pids = |a: &ChildGuard, b: &ChildGuard| [a.0.id(), b.0.id()];
    let (m_pids, p_pids, h_pids) =
        (pids(&m_client, &m_server), pids(&p_client, &p_server), pids(&ha_client, &ha_server));

    println!("mTLS between two proxies: client proxy -> server proxy -> application, all on loopback");
    println!("\nthroughput (iperf3, {IPERF_SECONDS} s, median of 3), Gbit/s; both proxies' CPU per GB carried");
    println!(
        "{:<8} {:>16} {:>16} {:>16} {:>12}",
        "streams", "loopmesh plain", "haproxy TLS", "loopmesh mTLS", "vs haproxy"
    );
    for streams in ["1", "8"] {
        let run = |target: SocketAddr, procs: [u32; 2]| {
            let before: u64 = procs.iter().map(|p| cpu_ticks(*p)).sum();
            let t = throughput(target, streams, None);
            let ticks: u64 = procs.iter().map(|p| cpu_ticks(*p)).sum::<u64>() - before;
            let gigabytes = t.gbps * 3.0 * IPERF_SECONDS.parse::<f64>().unwrap() / 8.0;
            (t.gbps, ticks as f64 * 10.0 / gigabytes.max(f64::MIN_POSITIVE))
        };
        let (p, pc) = run(plain[0], p_pids);
        let (h, hc) = run(fronts[0], h_pids);
        let (m, mc) = run(mtls[0], m_pids);
        println!(
            "{streams:<8} {p:>9.2} ({pc:>4.0} ms) {h:>9.2} ({hc:>4.0} ms) {m:>9.2} ({mc:>4.0} ms) {:>11.2}x",
            m / h
        );
    }

    println!(
        "\nnew connections per second through both proxies (32 workers, connect + 1-byte echo; 6 rounds of 1 s, order rotated)"
    );
    let [p, h, m] = connection_rates([(plain[2], None), (fronts[2], None), (mtls[2], None)]).await;
    println!(
        "loopmesh plain {:.0} ({} errors), haproxy TLS {:.0} ({} errors), loopmesh mTLS {:.0} ({} errors): mTLS {:.2}x haproxy, {:.2}x plain",
        p.per_second,
        p.errors,
        h.per_second,
        h.errors,
        m.per_second,
        m.errors,
        m.per_second / h.per_second,
        m.per_second / p.per_second
    );
    let text = admin_get(m_client_admin, "/metrics").1;
    let handshakes = metric(&text, "loopmesh_mtls_outbound_handshakes_total").unwrap_or(0.0);
    let resumed = metric(&text, "loopmesh_mtls_outbound_resumed_total").unwrap_or(0.0);
    println!(
        "loopmesh mTLS handshakes so far: {handshakes:.0}, of which {resumed:.0} ({:.0} %) resumed a TLS 1.3 session (no certificate exchange)",
        resumed * 100.0 / handshakes.max(1.0)
    );

    // What resumption buys: the same client sidecar with every handshake full.
    let issued_before =
        metric(&admin_get(m_client_admin, "/metrics").1, "loopmesh_mtls_certificates_issued_total").unwrap_or(0.0);
    drop(m_client);
    let (m_full, m_full_admin) = sidecar(
        &dataplane("client", loopback(62), &[1]),
        &["--issuer", "issuer", "--bind-outbounds", "--tls-resumption", "false"],
        &creds(vec![]),
    );
    wait_ready(m_full_admin).await;
    while metric(&admin_get(m_full_admin, "/metrics").1, "loopmesh_mtls_certificate_expiry_seconds").unwrap_or(0.0)
        == 0.0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while tokio::net::TcpStream::connect(mtls[2]).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let [_, _, full] = connection_rates([(plain[2], None), (fronts[2], None), (mtls[2], None)]).await;
    let text = admin_get(m_full_admin, "/metrics").1;
    println!(
        "without resumption (every handshake full, {:.0} resumed): loopmesh mTLS {:.0} per second ({} errors); resumption buys {:.2}x",
        metric(&text, "loopmesh_mtls_outbound_resumed_total").unwrap_or(0.0),
        full.per_second,
        full.errors,
        m.per_second / full.per_second.max(1.0)
    );
    let (_m_client, m_client_admin) = (m_full, m_full_admin);

    println!("\nheld-connection round trip through both proxies, 1 byte, 20,000 samples (us)");
    let (pp50, pp99) = round_trips(plain[1]).await;
    let (hp50, hp99) = round_trips(fronts[1]).await;
    let (mp50, mp99) = round_trips(mtls[1]).await;
    println!(
        "loopmesh plain p50 {pp50:.1} p99 {pp99:.1}; haproxy TLS p50 {hp50:.1} p99 {hp99:.1}; loopmesh mTLS p50 {mp50:.1} p99 {mp99:.1}"
    );
    println!(
        "added by mTLS over plaintext loopmesh: p50 +{:.1} us (goal <= 20), p99 +{:.1} us",
        mp50 - pp50,
        mp99 - pp99
    );

    // Certificates: what this run cost, and what a fleet pays.
    let issued: f64 = issued_before
        + [m_client_admin, m_server_admin]
            .iter()
            .map(|a| metric(&admin_get(*a, "/metrics").1, "loopmesh_mtls_certificates_issued_total").unwrap_or(0.0))
            .sum::<f64>();
    let lifetime_h: f64 = 24.0;
    let per_day = 24.0 / (lifetime_h * 2.0 / 3.0);
    let tasks: f64 = 1_000.0;
    let per_month = per_day * 30.0 * tasks;
    // us-east-1 list prices: KMS $1 a key-month, asymmetric requests $0.15 per 10,000 (20,000 free a month);
    // Lambda $0.20 per million requests and $0.0000133334 per GB-s (256 MB, ~100 ms);
    // DynamoDB on demand $0.625 per million write units (one used-proof item per issuance).
    let kms = 1.0 + (per_month - 20_000.0).max(0.0) * 0.15 / 10_000.0;
    let lambda = per_month * (0.20 / 1e6 + 0.1 * 0.25 * 0.000_013_333_4);
    let dynamo = per_month * 0.625 / 1e6;
    println!(
        "\ncertificates: this run issued {issued:.0} (one per sidecar process) with {} KMS signatures (a root and {issued:.0} certificates)",
        issued as u64 + 1
    );
    println!(
        "per task per day at {lifetime_h:.0} h certificates renewed at 2/3: {per_day:.1} issuer invocations, {per_day:.1} KMS signatures"
    );
    println!(
        "1,000 tasks: {per_month:.0} issuances a month: KMS ${kms:.2} (key included), Lambda ${lambda:.3}, DynamoDB ${dynamo:.3}: ${:.2} a month",
        kms + lambda + dynamo
    );
}
