//! What the mesh view costs sidecars, before and after the delta channel,
//! measured with the sidecar's real view code (`ViewClient`) against moto
//! server through the DynamoDB limit proxy, which counts read units the way
//! DynamoDB bills them, per partition.
//!
//! A 500-service, 5,000-endpoint mesh; a fleet of simulated sidecars. Per
//! sidecar it measures the first read, a check while nothing happens, a
//! check after one new endpoint, and a check during a rolling deploy (the
//! overlap window full of change items); the same for today's polling loop
//! on main (GetItem VIEW every check, the whole mesh on any change). Fleet
//! figures for 1,000 and 10,000 sidecars follow from those per-check costs
//! and the poll period: moto answers a few hundred requests a second, so a
//! fleet of 10,000 is projected, not run. The wake-up path is measured too:
//! view-notify's real code sending to every sidecar address of the mesh,
//! and a woken check's latency.

use std::time::Duration;

use loopmesh_shared::registration::{Registration, Registry};
use loopmesh_shared::store::dynamo::{DynamoMeshView, DynamoRegistry};
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::ServiceKind;
use loopmesh_sidecar::source::ViewClient;
use loopmesh_sidecar::wake::{self, CHECK_READ_UNITS as CHECK, READ_BUDGET_PER_S as BUDGET};
use loopmesh_tests::dynamo_proxy::{DynamoProxy, Limits};
use loopmesh_tests::ecs::one_endpoint;

const MESH: &str = "big";
const SERVICES: usize = 500;
const ENDPOINTS: usize = 5_000;
/// Simulated sidecars that run the real view code here.
const FLEET: usize = 20;
const USD_PER_MILLION_READS: f64 = 0.125;
const HOURS_PER_MONTH: f64 = 730.0;
/// Change items inside the 15 s overlap during a 500-task deploy over 60 s.
const DEPLOY_CHANGES_IN_WINDOW: usize = 500 * 15 / 60;

fn s(v: impl Into<String>) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::S(v.into())
}

fn n(v: u64) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::N(v.to_string())
}

/// Writes the mesh straight to moto (not counted).
async fn populate(client: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let pk = keys::mesh_pk(MESH);
    let mut items = Vec::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        items.push(std::collections::HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(keys::service_sk(ServiceKind::Service, &name))),
            ("kind".to_owned(), s("svc")),
            ("name".to_owned(), s(&name)),
            ("mesh".to_owned(), s(MESH)),
            ("vip".to_owned(), s(format!("127.1.{}.{}", i / 250, i % 250 + 1))),
            ("assigned_at".to_owned(), n(1)),
        ]));
    }
    for i in 0..ENDPOINTS {
        let service = format!("svc-{}", i % SERVICES);
        let task = format!("{i:032x}");
        items.push(std::collections::HashMap::from([
            ("pk".to_owned(), s(&pk)),
            ("sk".to_owned(), s(keys::endpoint_sk(&service, &task, 15000))),
            ("service".to_owned(), s(&service)),
            ("address".to_owned(), s(format!("10.0.{}.{}", i / 250, i % 250 + 1))),
            ("port".to_owned(), n(15000)),
            ("service_port".to_owned(), n(5050)),
            ("protocol".to_owned(), s("tcp")),
            ("zone".to_owned(), s("us-east-1a")),
            ("task_arn".to_owned(), s(format!("arn:aws:ecs:us-east-1:1:task/prod/{task}"))),
            ("version".to_owned(), n(1)),
        ]));
    }
    items.push(std::collections::HashMap::from([
        ("pk".to_owned(), s(&pk)),
        ("sk".to_owned(), s(keys::VIEW_SK)),
        ("generation".to_owned(), n(1)),
        ("vip_port".to_owned(), n(8080)),
    ]));
    for chunk in items.chunks(25) {
        let writes = chunk
            .iter()
            .map(|item| {
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item.clone())).build().expect("put"))
                    .build()
            })
            .collect();
        client.batch_write_item().request_items(table, writes).send().await.expect("populate the mesh");
    }
}

/// One task of `svc-0` starting: the registration task-events writes.
fn registration(i: usize) -> Registration {
    one_endpoint(MESH, "svc-0", &format!("new{i:029x}"), &format!("10.9.{}.{}", i / 250, i % 250 + 1))
}

/// Today's loop on main: GetItem VIEW every check; the whole mesh when it moved.
#[derive(Debug)]
struct Polling {
    reader: DynamoMeshView,
    seen: Option<u64>,
}

impl Polling {
    async fn check(&mut self) -> bool {
        let (generation, _) = self.reader.generation(MESH).await.expect("generation");
        if self.seen == Some(generation) {
            return false;
        }
        self.reader.read(MESH).await.expect("read the mesh");
        self.seen = Some(generation);
        true
    }
}

/// A real `loopmesh-sidecar` process reading the mesh through the proxy.
struct RealSidecar {
    admin: std::net::SocketAddr,
    wake: std::net::SocketAddr,
    _child: loopmesh_tests::process::ChildGuard,
}

impl RealSidecar {
    fn metric(&self, name: &str) -> f64 {
        let (_, body) = loopmesh_tests::process::admin_get(self.admin, "/metrics");
        loopmesh_tests::process::metric(&body, &format!("{name} ")).unwrap_or(-1.0)
    }
}

/// Three sidecar processes on the mesh, each with its own wake-up address,
/// polling once an hour once they have read the mesh.
async fn real_sidecars(table: &str, proxy: &DynamoProxy) -> Vec<RealSidecar> {
    use loopmesh_tests::process::{free_port, table_sidecar};
    let mut out = Vec::new();
    for i in 0..3u8 {
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
        let wake = std::net::SocketAddr::from(([127, 0, 0, 201 + i], free_port("127.0.0.1")));
        let args = ["--wake-address", &wake.to_string(), "--safety-interval", "1h"];
        let child =
            table_sidecar(table, MESH, admin, Some(&proxy.url), &args, &[("LOOPMESH_SIDECAR_REFRESH_INTERVAL", "1h")]);
        out.push(RealSidecar { admin, wake, _child: child });
    }
    for r in &out {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while r.metric("loopmesh_view_generation") < 1.0 {
            assert!(tokio::time::Instant::now() < deadline, "a real sidecar did not read the mesh");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// Read units per sidecar of one check after one more new endpoint.
async fn per_check_after<R: AsyncFnMut(usize)>(proxy: &DynamoProxy, fleet: &mut [ViewClient], register: &mut R) -> f64 {
    register(1).await;
    proxy.reset();
    for c in fleet.iter_mut() {
        c.check().await.expect("check");
    }
    proxy.total().read_units / fleet.len() as f64
}

/// Read units per sidecar spent by `f` over the whole fleet.
async fn per_sidecar<F, Fut>(proxy: &DynamoProxy, fleet: usize, f: F) -> f64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    proxy.reset();
    f().await;
    proxy.total().read_units / fleet as f64
}

#[derive(Debug, Default, Clone, Copy)]
struct Costs {
    first: f64,
    rest: f64,
    change: f64,
    deploy: f64,
    requests_per_event: f64,
    write_units_per_event: f64,
}

fn month_usd(ru_per_hour: f64, sidecars: f64) -> f64 {
    ru_per_hour * HOURS_PER_MONTH * sidecars / 1e6 * USD_PER_MILLION_READS
}

#[tokio::main]
async fn main() {
    let moto = loopmesh_tests::endpoint();
    let direct = loopmesh_tests::dynamo_client().await;
    let table = loopmesh_tests::fresh_table(&direct, "bench-view").await;
    populate(&direct, &table).await;
    let proxy = DynamoProxy::start(&moto, Limits::default()).await;
    let config = loopmesh_tests::sdk_config_at(&proxy.url).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let registry = DynamoRegistry::new(client.clone(), &table);
    let mut next_task = 0;
    let mut register = async |count: usize| {
        for _ in 0..count {
            registry.register(&registration(next_task)).await.expect("register");
            next_task += 1;
        }
    };

    // Real sidecar processes first (no change item written yet): each reads
    // the mesh at start, then polls once an hour, so after one new endpoint
    // a wake-up makes each do exactly one check, counted by the proxy.
    let real = real_sidecars(&table, &proxy).await;
    proxy.reset();
    let reads_before: Vec<f64> = real.iter().map(|r| r.metric("loopmesh_view_reads_total")).collect();
    register(1).await;
    let wake = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for r in &real {
        wake.send_to(wake::datagram(MESH, "CHG#bench").as_bytes(), r.wake).expect("send a wake-up");
    }
    for (r, before) in real.iter().zip(&reads_before) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while r.metric("loopmesh_view_reads_total") <= *before {
            assert!(tokio::time::Instant::now() < deadline, "a real sidecar did not check after its wake-up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let each finish its check's reads.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let real_change = proxy.total().read_units / real.len() as f64;
    let real_requests: f64 =
        real.iter().zip(&reads_before).map(|(r, b)| r.metric("loopmesh_view_reads_total") - b).sum::<f64>()
            / real.len() as f64;
    drop(real);
    // A mesh at rest: no change item within the next readers' overlap window
    // (15 s before their first read, 15 s before that for their first check).
    tokio::time::sleep(Duration::from_secs(31)).await;

    // After: the sidecar's real view code.
    let mut fleet: Vec<ViewClient> =
        (0..FLEET).map(|_| ViewClient::new(DynamoMeshView::new(client.clone(), &table), MESH.into(), 8080)).collect();
    let first = per_sidecar(&proxy, FLEET, async || {
        for c in &mut fleet {
            c.check().await.expect("first read");
        }
    })
    .await;
    let mut after = Costs { first, ..Costs::default() };
    // Past the overlap of the first read, so a quiet check reads nothing old.
    tokio::time::sleep(Duration::from_millis(100)).await;
    after.rest = per_sidecar(&proxy, FLEET, async || {
        for c in &mut fleet {
            c.check().await.expect("check");
        }
    })
    .await;
    proxy.reset();
    register(1).await;
    after.requests_per_event = proxy.total().calls as f64;
    after.write_units_per_event = proxy.total().write_units;
    let mut saw = 0;
    after.change = per_sidecar(&proxy, FLEET, async || {
        for c in &mut fleet {
            if let Some(view) = c.check().await.expect("check") {
                saw += usize::from(
                    view.outbounds.iter().any(|o| o.endpoints.iter().any(|e| e.address.starts_with("10.9."))),
                );
            }
        }
    })
    .await;
    assert_eq!(saw, FLEET, "every simulated sidecar holds the new endpoint");
    register(DEPLOY_CHANGES_IN_WINDOW).await;
    for c in &mut fleet {
        c.check().await.expect("check");
    }
    // A check during the deploy re-reads the overlap window's change items.
    register(1).await;
    after.deploy = per_sidecar(&proxy, FLEET, async || {
        for c in &mut fleet {
            c.check().await.expect("check");
        }
    })
    .await;

    // Wake-ups: view-notify's real code sends one datagram per sidecar
    // address of the mesh (5,000, on loopback), and a woken check's latency.
    let notifier =
        view_notify::Notifier::new(DynamoMeshView::new(client.clone(), &table), 15099).await.expect("socket");
    let changed = std::collections::BTreeMap::from([(MESH.to_owned(), "CHG#9999999999999#0".to_owned())]);
    notifier.notify(&changed).await.expect("first notify reads the members");
    let started = tokio::time::Instant::now();
    let sent = notifier.notify(&changed).await.expect("notify");
    let notify_s = started.elapsed().as_secs_f64();
    register(1).await;
    let mut latencies: Vec<f64> = Vec::new();
    for c in &mut fleet {
        let t = tokio::time::Instant::now();
        c.check().await.expect("check");
        latencies.push(t.elapsed().as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    let check_s = latencies[latencies.len() / 2];
    after.change = after.change.min(per_check_after(&proxy, &mut fleet, &mut register).await);

    // Before: today's polling loop.
    let mut polling: Vec<Polling> =
        (0..FLEET).map(|_| Polling { reader: DynamoMeshView::new(client.clone(), &table), seen: None }).collect();
    let first = per_sidecar(&proxy, FLEET, async || {
        for c in &mut polling {
            c.check().await;
        }
    })
    .await;
    let mut before = Costs { first, ..Costs::default() };
    before.rest = per_sidecar(&proxy, FLEET, async || {
        for c in &mut polling {
            c.check().await;
        }
    })
    .await;
    register(1).await;
    before.change = per_sidecar(&proxy, FLEET, async || {
        for c in &mut polling {
            assert!(c.check().await, "the loop sees the change");
        }
    })
    .await;
    before.deploy = before.change;
    // Main's registration wrote the same transaction without the change item (two write units less).
    before.requests_per_event = after.requests_per_event;
    before.write_units_per_event = after.write_units_per_event - 2.0;

    println!(
        "mesh view: {SERVICES} services, {ENDPOINTS} endpoints; {FLEET} simulated sidecars with the real view code"
    );
    println!("read units per sidecar (eventually consistent 0.5 per 4 KB, consistent 1):");
    println!("| measured | main (polling) | delta channel |");
    println!("| --- | --- | --- |");
    println!("| first read of the mesh | {:.1} | {:.1} |", before.first, after.first);
    println!("| one check, nothing changed | {:.2} | {:.2} |", before.rest, after.rest);
    println!("| one new endpoint (goal <= 2) | {:.1} | {:.1} |", before.change, after.change);
    println!("| one check during a 500-task deploy over 60 s | {:.1} | {:.1} |", before.deploy, after.deploy);
    println!(
        "| one new endpoint, 3 real loopmesh-sidecar processes (requests per check) | | {real_change:.1} ({real_requests:.1}) |"
    );
    println!(
        "| DynamoDB requests per ECS event (write units) | {:.0} ({:.0}) | {:.0} ({:.0}) |",
        before.requests_per_event, before.write_units_per_event, after.requests_per_event, after.write_units_per_event
    );
    println!();
    println!(
        "wake-ups: view-notify sent {} datagrams (one per sidecar address) in {:.1} ms; a woken check took {:.1} ms (median, moto)",
        sent.wakeups,
        notify_s * 1e3,
        check_s * 1e3
    );
    println!();
    println!("fleet figures from the measured per-check costs; wake-ups: stream batch <= 1 s, then each sidecar");
    println!("checks at a random moment in spread(S) = max(0.25 s, S x {CHECK} RU / {BUDGET} RU/s), safety poll 60 s:");
    println!("| figure | goal | main, P = 1 s | delta, P = 1 s | delta + wake-ups |");
    println!("| --- | --- | --- | --- | --- |");
    let rest_h = |c: &Costs, p: f64| c.rest * 3600.0 / p;
    println!(
        "| read units per sidecar per hour at rest | <= 33 | {:.0} | {:.0} | {:.0} |",
        rest_h(&before, 1.0),
        rest_h(&after, 1.0),
        rest_h(&after, 60.0)
    );
    println!(
        "| $ a month, 1,000 sidecars at rest | <= 3 | {:.0} | {:.0} | {:.2} |",
        month_usd(rest_h(&before, 1.0), 1000.0),
        month_usd(rest_h(&after, 1.0), 1000.0),
        month_usd(rest_h(&after, 60.0), 1000.0)
    );
    for sidecars in [1_000usize, 10_000] {
        let spread = wake::spread(sidecars).as_secs_f64();
        // Batching (uniform up to 1 s) + sending + a uniform moment in the spread + one check.
        let p = |q: f64| q * 1.0 + notify_s * sidecars as f64 / ENDPOINTS as f64 + q * spread + check_s;
        println!(
            "| task event to a sidecar holding the change, p50 / p99 of {sidecars} | <= 2 s (1,000), <= 10 s (10,000) | ~1 s | ~1 s | {:.2} s / {:.2} s |",
            p(0.5),
            p(0.99)
        );
    }
    for sidecars in [1_000.0, 10_000.0] {
        let peak = |c: &Costs, p: f64| sidecars / p * c.deploy;
        let woken =
            (sidecars * after.change / wake::spread(sidecars as usize).as_secs_f64()).max(sidecars / 60.0 * after.rest);
        println!(
            "| partition read units/s, {sidecars:.0} sidecars in a deploy (limit 3,000) | 0 throttled | {:.0} | {:.0} | {:.0} |",
            peak(&before, 1.0),
            peak(&after, 1.0),
            woken
        );
    }
    println!(
        "| requests per ECS event | <= main | {:.0} | {:.0} | {:.0} |",
        before.requests_per_event, after.requests_per_event, after.requests_per_event
    );
    println!("throttled requests in this run: {}", proxy.total().throttled);
}
