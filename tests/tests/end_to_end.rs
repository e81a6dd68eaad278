//! The whole chain against moto server with real binaries and sockets:
//! ECS-shaped events through task-events' registrar, dns-sync into a private
//! hosted zone, and a `loopmesh-sidecar` process for the demo app reading the
//! table and carrying TCP through the VIP its name resolves to. The redis
//! tasks are servers on their inbound addresses that answer with their name.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use loopmesh_shared::dns::sync::Trigger;
use loopmesh_shared::store::dynamo::DynamoVipLedger;
use loopmesh_shared::vip::{ServiceKey, ServiceKind, VipPool, allocate, unix_now};
use loopmesh_tests::dns::{a_records, syncer, zone_settings};
use loopmesh_tests::ecs::{DATAPLANE_TEMPLATE, event, registrar, role, task_definition};
use loopmesh_tests::process::{
    ChildGuard, Forwarder, admin_get, eventually, free_port, metric, table_sidecar, workspace_binary,
};
use loopmesh_tests::{dynamo_client, endpoint, fresh_table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// A task's inbound: answers each connection with its name, then echoes.
async fn task_server(address: Ipv4Addr, name: &'static str) -> JoinHandle<()> {
    let l = TcpListener::bind((address, 15000)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

/// What the demo app sees: connect to the name's address on the VIP port
/// and read the first line.
async fn ask(at: SocketAddr) -> String {
    let mut s = TcpStream::connect(at).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

async fn spread(at: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(ask(at).await).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_to_names_to_traffic_through_the_sidecar() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "e2e").await;
    let (zone, settings) = zone_settings(&table, "mesh.local").await;
    // A mesh of its own: VIPs derive from (mesh, service), so no other test binds them.
    let mesh = format!("e2e{}", fastrand::u32(..));
    let tags = |service: &'static str| {
        [("kuma.io/type", "dataplane"), ("kuma.io/mesh", mesh.as_str()), ("kuma.io/service", service)]
    };
    let redis_td = task_definition(Some(&role(&tags("redis")).await), "redis", &mesh, true).await;
    let api_td = task_definition(Some(&role(&tags("api")).await), "api", &mesh, true).await;
    let registrar = registrar(&settings).await;
    let sync = syncer(&settings, &endpoint()).await;
    let now = unix_now();
    let running = |td: &str, id: &str, last: u8, version| {
        event("ecs-task-running.json", td, id, &format!("127.0.0.{last}"), version)
    };
    let stopped = |td: &str, id: &str, last: u8, version| {
        event("ecs-task-stopped.json", td, id, &format!("127.0.0.{last}"), version)
    };

    // One redis task; dns-sync publishes its name.
    let redis_1 = task_server(Ipv4Addr::new(127, 0, 0, 41), "redis-1").await;
    registrar.handle(&running(&redis_td, "redis1", 41, 2), now).await.unwrap();
    sync.run(Trigger::Changed, now).await.unwrap();
    let records = a_records(&zone).await;
    // A mesh other than the short-names one (`default`) publishes <service>.<mesh>.<domain>.
    let redis_vip: Ipv4Addr = records[&format!("redis.{mesh}.mesh.local")][0].parse().unwrap();
    let redis_at = SocketAddr::from((redis_vip, settings.vip_port));

    // The demo app's sidecar, reading the table through a forwarder we can cut.
    let mut aws = Forwarder::start(&endpoint()).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let template_port = free_port("127.0.0.40");
    let sidecar = Command::new(workspace_binary("loopmesh-sidecar"))
        .args(["run", "--bind-outbounds", "--admin-address", &admin.to_string(), "--refresh-interval", "200ms"])
        .args(["--dataplane-var", "address=127.0.0.40", "--dataplane-var", "dpname=demo-1"])
        .args(["--dataplane-var", &format!("mesh={mesh}"), "--dataplane-var", &format!("port={template_port}")])
        .args(["--dataplane-var", "servicePort=5050", "--dataplane-var", "service=demo-app"])
        .args(["--dataplane-var", "protocol=http"])
        .env("KUMA_DATAPLANE_RUNTIME_RESOURCE", DATAPLANE_TEMPLATE)
        .env("LOOPMESH_TABLE_NAME", &table)
        .env("AWS_ENDPOINT_URL", &aws.url)
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = sidecar.id();
    let mut sidecar = ChildGuard(sidecar);
    eventually("/ready", WAIT, || admin_get(admin, "/ready").0 == 200).await;
    assert_eq!(ask(redis_at).await, "redis-1", "redis.<mesh>.mesh.local:8080 reaches the redis task");

    // Scaled to three: new connections spread over all of them.
    let _redis_2 = task_server(Ipv4Addr::new(127, 0, 0, 42), "redis-2").await;
    let _redis_3 = task_server(Ipv4Addr::new(127, 0, 0, 43), "redis-3").await;
    registrar.handle(&running(&redis_td, "redis2", 42, 2), now).await.unwrap();
    registrar.handle(&running(&redis_td, "redis3", 43, 2), now).await.unwrap();
    let endpoints_metric = format!("loopmesh_outbound_endpoints{{service=\"redis\",listener=\"{redis_at}\"}}");
    eventually("three redis endpoints", WAIT, || {
        metric(&admin_get(admin, "/metrics").1, &endpoints_metric) == Some(3.0)
    })
    .await;
    let seen = spread(redis_at, 90).await;
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["redis-1", "redis-2", "redis-3"], "{seen:?}");
    assert!(seen.values().all(|n| *n >= 15), "new connections spread: {seen:?}");

    // One stops: its endpoint goes, traffic continues on the others.
    registrar.handle(&stopped(&redis_td, "redis1", 41, 3), now).await.unwrap();
    redis_1.abort();
    eventually("two redis endpoints", WAIT, || metric(&admin_get(admin, "/metrics").1, &endpoints_metric) == Some(2.0))
        .await;
    let seen = spread(redis_at, 30).await;
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["redis-2", "redis-3"], "{seen:?}");

    // A new service: the running sidecar opens its listener, no restart.
    let _api = task_server(Ipv4Addr::new(127, 0, 0, 44), "api-1").await;
    registrar.handle(&running(&api_td, "api1", 44, 2), now).await.unwrap();
    sync.run(Trigger::Changed, now).await.unwrap();
    let api_vip: Ipv4Addr = a_records(&zone).await[&format!("api.{mesh}.mesh.local")][0].parse().unwrap();
    let api_at = SocketAddr::from((api_vip, settings.vip_port));
    eventually("the api listener", WAIT, || std::net::TcpStream::connect(api_at).is_ok()).await;
    assert_eq!(ask(api_at).await, "api-1");
    assert_eq!(sidecar.0.try_wait().unwrap(), None, "pid {pid} still the same process");

    // api's only task stops; after the grace dns-sync collects the name, the
    // sidecar closes the listener, and the VIP rests in quarantine.
    registrar.handle(&stopped(&api_td, "api1", 44, 3), now).await.unwrap();
    let later = now + settings.service_deletion_grace.as_secs() + 1;
    let report = sync.run(Trigger::Schedule, later).await.unwrap();
    assert_eq!(report.collected, 1, "{report:?}");
    assert!(!a_records(&zone).await.contains_key(&format!("api.{mesh}.mesh.local")));
    eventually("the api listener closed", WAIT, || std::net::TcpStream::connect(api_at).is_err()).await;
    let ledger = DynamoVipLedger::new(client.clone(), &table);
    let pool = VipPool::new(format!("{}/30", Ipv4Addr::from(u32::from(api_vip) & !3)).parse().unwrap()).unwrap();
    let newcomer = ServiceKey::new(&mesh, ServiceKind::Service, "newcomer");
    if let Ok(a) = allocate(&ledger, &pool, &newcomer, later + 1).await {
        assert_ne!(a.vip, api_vip, "a VIP in quarantine is not handed out");
    }

    // The table goes away: the last good view keeps serving, its age grows.
    aws.cut();
    eventually("a refresh error", WAIT, || {
        metric(&admin_get(admin, "/metrics").1, "loopmesh_view_refresh_errors_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    let seen = spread(redis_at, 20).await;
    assert_eq!(seen.values().sum::<usize>(), 20, "traffic keeps flowing: {seen:?}");
    assert_eq!(admin_get(admin, "/ready").0, 200);
    let age = metric(&admin_get(admin, "/metrics").1, "loopmesh_view_age_seconds").unwrap();
    assert!(age > 0.2, "the view's age is reported: {age}");
}

/// Sends SIGTERM to a child process.
fn sigterm(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_hangs_ages_the_view_heals_and_never_blocks_sigterm() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "hang").await;
    let (_zone, settings) = zone_settings(&table, "hang.mesh.local").await;
    let mesh = format!("hang{}", fastrand::u32(..));
    let tags = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", mesh.as_str()), ("kuma.io/service", "redis")];
    let redis_td = task_definition(Some(&role(&tags).await), "redis", &mesh, true).await;
    let registrar = registrar(&settings).await;
    let now = unix_now();
    let running = |id: &str, last: u8| event("ecs-task-running.json", &redis_td, id, &format!("127.0.0.{last}"), 2);
    let _redis_1 = task_server(Ipv4Addr::new(127, 0, 0, 51), "redis-1").await;
    let _redis_2 = task_server(Ipv4Addr::new(127, 0, 0, 52), "redis-2").await;
    let outcome = registrar.handle(&running("redis1", 51), now).await.unwrap();
    let loopmesh_shared::registration::Outcome::Registered { services, .. } = outcome else { panic!("{outcome:?}") };
    let redis_at = SocketAddr::from((services[0].1, settings.vip_port));

    let aws = Forwarder::start(&endpoint()).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let mut sidecar = table_sidecar(&table, &mesh, admin, Some(&aws.url), &["--drain-timeout", "1s"], &[]);
    let pid = sidecar.0.id();
    eventually("/ready", WAIT, || admin_get(admin, "/ready").0 == 200).await;
    assert_eq!(ask(redis_at).await, "redis-1");

    // DynamoDB accepts connections and never answers: each refresh times
    // out and counts, the view ages, traffic keeps flowing.
    aws.hang();
    eventually("a timed-out refresh", WAIT, || {
        metric(&admin_get(admin, "/metrics").1, "loopmesh_view_refresh_timeouts_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    let text = admin_get(admin, "/metrics").1;
    assert!(metric(&text, "loopmesh_view_refresh_failing").unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "loopmesh_view_age_seconds").unwrap() >= 4.0, "the view ages: {text}");
    let (status, body) = admin_get(admin, "/ready");
    assert_eq!(status, 200, "a stale view still serves (invariant 8)");
    assert!(body.contains("view stale"), "/ready says the view is stale: {body}");
    assert_eq!(ask(redis_at).await, "redis-1", "the last good view serves");

    // A task starts during the hang; once the table answers again, the
    // sidecar catches up without a restart.
    registrar.handle(&running("redis2", 52), now).await.unwrap();
    aws.heal();
    let endpoints_metric = format!("loopmesh_outbound_endpoints{{service=\"redis\",listener=\"{redis_at}\"}}");
    eventually("the endpoint added during the hang", Duration::from_secs(60), || {
        metric(&admin_get(admin, "/metrics").1, &endpoints_metric) == Some(2.0)
    })
    .await;
    assert_eq!(metric(&admin_get(admin, "/metrics").1, "loopmesh_view_refresh_failing"), Some(0.0));

    // SIGTERM in the middle of a hung refresh: drained and gone within the
    // drain timeout, not after the table answers (it never does).
    aws.hang();
    eventually("a second timed-out refresh", WAIT, || {
        metric(&admin_get(admin, "/metrics").1, "loopmesh_view_refresh_failing").unwrap_or(0.0) >= 1.0
    })
    .await;
    sigterm(pid);
    let exited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(status) = sidecar.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the sidecar exits on SIGTERM while its table hangs");
    assert!(exited.success(), "{exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_environment_names_another_vip_port_follows_the_table() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "vipport").await;
    let (_zone, settings) = zone_settings(&table, "vipport.mesh.local").await;
    let mesh = format!("port{}", fastrand::u32(..));
    let tags = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", mesh.as_str()), ("kuma.io/service", "redis")];
    let td = task_definition(Some(&role(&tags).await), "redis", &mesh, true).await;
    let _redis = task_server(Ipv4Addr::new(127, 0, 0, 71), "redis-1").await;
    let ev = event("ecs-task-running.json", &td, "redis1", "127.0.0.71", 2);
    let outcome = registrar(&settings).await.handle(&ev, unix_now()).await.unwrap();
    let loopmesh_shared::registration::Outcome::Registered { services, .. } = outcome else { panic!("{outcome:?}") };
    // task-events published names for the default VIP port, 8080.
    let redis_at = SocketAddr::from((services[0].1, settings.vip_port));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let _sidecar = table_sidecar(&table, &mesh, admin, None, &[], &[("KUMA_DNS_SERVER_SERVICE_VIP_PORT", "18080")]);
    eventually("/ready", WAIT, || admin_get(admin, "/ready").0 == 200).await;
    assert_eq!(ask(redis_at).await, "redis-1", "the sidecar listens where the names point, :8080");
    let other = SocketAddr::from((services[0].1, 18080));
    assert!(std::net::TcpStream::connect(other).is_err(), "not on its environment's port");
}

/// A wake-up brings a change at once, long before the next poll; a change
/// whose wake-up was lost arrives with the safety poll, and the sidecar then
/// stops trusting wake-ups and polls at its refresh interval again.
#[tokio::test]
async fn a_wake_up_brings_a_change_at_once_and_a_lost_one_is_caught_by_the_safety_poll() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "wake").await;
    let (_zone, settings) = zone_settings(&table, "wake.mesh.local").await;
    let mesh = format!("wake{}", fastrand::u32(..));
    let registrar = registrar(&settings).await;
    let start = |service: &'static str, ip: [u8; 4], version| {
        let mesh = mesh.clone();
        let registrar = &registrar;
        async move {
            let tags = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", mesh.as_str()), ("kuma.io/service", service)];
            let td = task_definition(Some(&role(&tags).await), service, &mesh, true).await;
            let address = Ipv4Addr::from(ip).to_string();
            let ev = event("ecs-task-running.json", &td, &format!("{service}1"), &address, version);
            match registrar.handle(&ev, unix_now()).await.unwrap() {
                loopmesh_shared::registration::Outcome::Registered { services, .. } => services[0].1,
                other => panic!("{other:?}"),
            }
        }
    };
    let _redis = task_server(Ipv4Addr::new(127, 0, 0, 81), "redis-1").await;
    let _cache = task_server(Ipv4Addr::new(127, 0, 0, 82), "cache-1").await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let wake_at = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let args = ["--safety-interval", "8s", "--wake-address", &wake_at.to_string()];
    let _sidecar = table_sidecar(&table, &mesh, admin, None, &args, &[("LOOPMESH_SIDECAR_REFRESH_INTERVAL", "8s")]);
    eventually("/ready", WAIT, || admin_get(admin, "/ready").0 == 200).await;

    let vip = start("redis", [127, 0, 0, 81], 2).await;
    let redis_at = SocketAddr::from((vip, settings.vip_port));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(loopmesh_sidecar_wake("other-mesh").as_bytes(), wake_at).unwrap();
    udp.send_to(loopmesh_sidecar_wake(&mesh).as_bytes(), wake_at).unwrap();
    let woken = tokio::time::Instant::now();
    eventually("the woken sidecar to listen on redis's VIP", Duration::from_secs(3), || {
        std::net::TcpStream::connect(redis_at).is_ok()
    })
    .await;
    assert!(woken.elapsed() < Duration::from_secs(3), "well before the 8 s poll");
    assert_eq!(ask(redis_at).await, "redis-1");
    let metrics = admin_get(admin, "/metrics").1;
    assert_eq!(metric(&metrics, "loopmesh_view_wakeups_total"), Some(1.0));
    assert_eq!(metric(&metrics, "loopmesh_view_wakeups_ignored_total"), Some(1.0));
    assert_eq!(metric(&metrics, "loopmesh_view_wakeups_trusted"), Some(1.0));

    // No wake-up this time: the safety poll brings it.
    let vip = start("cache", [127, 0, 0, 82], 2).await;
    let cache_at = SocketAddr::from((vip, settings.vip_port));
    eventually("the safety poll to bring cache's VIP", Duration::from_secs(15), || {
        std::net::TcpStream::connect(cache_at).is_ok()
    })
    .await;
    assert_eq!(ask(cache_at).await, "cache-1");
    let metrics = admin_get(admin, "/metrics").1;
    assert_eq!(metric(&metrics, "loopmesh_view_wakeups_trusted"), Some(0.0), "a lost wake-up ends the trust");
}

fn loopmesh_sidecar_wake(mesh: &str) -> String {
    format!("loopmesh-wake 1 {mesh} CHG#0000000000000#0")
}
