//! What one reconciliation pass costs at fleet sizes moto server cannot hold:
//! the real `Registrar::reconcile` over in-process fakes of ECS and the
//! table that count calls and DynamoDB read units the way AWS bills them
//! (a Query reads up to 1 MB a page; a consistent read costs one unit per
//! 4 KB). The correctness of the same code against moto is
//! `tests/tests/reconcile.rs`.
//!
//! Prints, for 1,000 and 10,000 running tasks: ECS calls and DynamoDB
//! requests and read units per pass, quiet and after 1 % of events were lost
//! both ways, and the $ per month at a 5-minute schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use loopmesh_shared::config::Settings;
use loopmesh_shared::error::StoreError;
use loopmesh_shared::model::MeshServicesMode;
use loopmesh_shared::registration::event::{Attachment, EcsTaskStateChange, NameValue};
use loopmesh_shared::registration::reconcile::EcsTasks;
use loopmesh_shared::registration::sidecar_spec::{ContainerDoc, TEMPLATE_ENV, TaskDefinitionDoc};
use loopmesh_shared::registration::{
    RefusalRecord, Registrar, Registration, Registry, RoleTags, TaskDefinitions, TaskRecord, WriteOutcome,
};
use loopmesh_shared::vip::{MemoryLedger, UnixSeconds};

const NOW: u64 = 1_800_000_000;
const CLUSTER: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/prod";
/// On-demand price of one million read request units (us-east-1).
const USD_PER_MILLION_READS: f64 = 0.125;
/// Lambda requests, per million.
const USD_PER_MILLION_INVOCATIONS: f64 = 0.20;
/// Passes a month at rate(5 minutes).
const PASSES_PER_MONTH: f64 = 30.0 * 24.0 * 12.0;

fn task_arn(i: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{i:032x}")
}

/// ECS: which tasks run, and what DescribeTasks says of each.
#[derive(Debug, Default)]
struct Ecs {
    running: Mutex<BTreeSet<usize>>,
    list_calls: AtomicU64,
    describe_calls: AtomicU64,
}

impl EcsTasks for Ecs {
    async fn clusters(&self) -> Result<Vec<String>, StoreError> {
        Ok(vec![CLUSTER.into()])
    }
    async fn running(&self, _cluster: &str) -> Result<Vec<String>, StoreError> {
        let arns: Vec<String> = self.running.lock().expect("lock").iter().map(|i| task_arn(*i)).collect();
        // ListTasks returns 100 a page.
        self.list_calls.fetch_add((arns.len() as u64).div_ceil(100).max(1), Ordering::Relaxed);
        Ok(arns)
    }
    async fn describe(&self, _cluster: &str, arns: &[String]) -> Result<Vec<EcsTaskStateChange>, StoreError> {
        self.describe_calls.fetch_add(1, Ordering::Relaxed);
        let running = self.running.lock().expect("lock").clone();
        Ok(arns
            .iter()
            .filter_map(|arn| {
                let i = usize::from_str_radix(arn.rsplit('/').next()?, 16).ok()?;
                let status = if running.contains(&i) { "RUNNING" } else { "STOPPED" };
                Some(EcsTaskStateChange {
                    task_arn: arn.clone(),
                    cluster_arn: CLUSTER.into(),
                    task_definition_arn: "arn:aws:ecs:us-east-1:123456789012:task-definition/redis:1".into(),
                    last_status: status.into(),
                    desired_status: status.into(),
                    version: 2,
                    availability_zone: Some("us-east-1a".into()),
                    attachments: vec![Attachment {
                        kind: Some("ElasticNetworkInterface".into()),
                        details: vec![NameValue {
                            name: "privateIPv4Address".into(),
                            value: Some(format!("10.0.{}.{}", i / 250, i % 250 + 1)),
                        }],
                        ..Attachment::default()
                    }],
                    ..EcsTaskStateChange::default()
                })
            })
            .collect())
    }
}

/// The table as registration uses it, counting requests and read units;
/// clones share one state, so the benchmark reads what the registrar did.
#[derive(Debug, Default, Clone)]
struct Table(std::sync::Arc<TableState>);

#[derive(Debug, Default)]
struct TableState {
    tasks: Mutex<BTreeMap<String, TaskRecord>>,
    /// Endpoint item sizes by task, in bytes.
    endpoints: Mutex<BTreeMap<String, u64>>,
    requests: AtomicU64,
    read_units: AtomicU64,
}

impl Table {
    fn charge(&self, requests: u64, bytes_read: u64) {
        self.0.requests.fetch_add(requests, Ordering::Relaxed);
        self.0.read_units.fetch_add(bytes_read.div_ceil(4096).max(1), Ordering::Relaxed);
    }
}

impl Registry for Table {
    async fn task(&self, task_arn: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.charge(1, 200);
        Ok(self.0.tasks.lock().expect("lock").get(task_arn).cloned())
    }
    async fn register(&self, reg: &Registration) -> Result<WriteOutcome, StoreError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        let size: u64 = reg
            .endpoints
            .iter()
            .map(|e| (e.service.len() + e.address.len() + e.task_arn.len() + e.protocol.len() + 160) as u64)
            .sum();
        self.0.endpoints.lock().expect("lock").insert(reg.task_arn.clone(), size);
        self.0.tasks.lock().expect("lock").insert(
            reg.task_arn.clone(),
            TaskRecord {
                version: reg.version,
                stopped: false,
                mesh: Some(reg.mesh.clone()),
                endpoints: vec![String::new(); reg.endpoints.len()],
                services: Vec::new(),
            },
        );
        Ok(WriteOutcome::Applied)
    }
    async fn deregister(
        &self,
        task_arn: &str,
        _seen: &TaskRecord,
        version: u64,
        _now: UnixSeconds,
    ) -> Result<WriteOutcome, StoreError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.endpoints.lock().expect("lock").remove(task_arn);
        if let Some(t) = self.0.tasks.lock().expect("lock").get_mut(task_arn) {
            t.stopped = true;
            t.version = version;
        }
        Ok(WriteOutcome::Applied)
    }
    async fn tombstone(&self, _task_arn: &str, _version: u64, _now: UnixSeconds) -> Result<WriteOutcome, StoreError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(WriteOutcome::Applied)
    }
    async fn record_refusal(&self, _refusal: &RefusalRecord) -> Result<(), StoreError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn record_skipped(&self, _skipped: &RefusalRecord) -> Result<(), StoreError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn mesh_mode(&self, _mesh: &str) -> Result<MeshServicesMode, StoreError> {
        self.charge(1, 100);
        Ok(MeshServicesMode::default())
    }
    async fn registered_tasks(&self) -> Result<Vec<String>, StoreError> {
        // One GetItem of the DNS state, then the endpoints a Query page (1 MB) at a time.
        let endpoints = self.0.endpoints.lock().expect("lock").clone();
        let bytes: u64 = endpoints.values().sum();
        self.charge(1, 200);
        let pages = bytes.div_ceil(1 << 20).max(1);
        self.0.requests.fetch_add(pages, Ordering::Relaxed);
        self.0.read_units.fetch_add(bytes.div_ceil(4096), Ordering::Relaxed);
        Ok(endpoints.into_keys().collect())
    }
}

struct Definitions;

impl TaskDefinitions for Definitions {
    async fn describe(&self, arn: &str) -> Result<TaskDefinitionDoc, StoreError> {
        let template = "type: Dataplane\nname: \"{{ dpname }}\"\nmesh: default\nnetworking:\n  address: \"{{ address }}\"\n  inbound:\n  - port: 15000\n    servicePort: 6379\n    tags:\n      kuma.io/service: redis\n";
        Ok(TaskDefinitionDoc {
            arn: arn.to_owned(),
            task_role_arn: Some("arn:aws:iam::123456789012:role/redis".into()),
            containers: vec![ContainerDoc {
                name: "loopmesh-sidecar".into(),
                environment: vec![(TEMPLATE_ENV.into(), template.into())],
                command: vec!["run".into(), "--bind-outbounds".into()],
                ..ContainerDoc::default()
            }],
        })
    }
}

struct Tags;

impl RoleTags for Tags {
    async fn tags(&self, _role: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        Ok(Some(BTreeMap::from([
            ("kuma.io/type".into(), "dataplane".into()),
            ("kuma.io/mesh".into(), "default".into()),
            ("kuma.io/service".into(), "redis".into()),
        ])))
    }
}

struct Pass {
    ecs_calls: u64,
    dynamo_requests: u64,
    read_units: u64,
    registered: u64,
    removed: u64,
}

async fn pass(r: &Registrar<Definitions, Tags, Table, MemoryLedger>, ecs: &Ecs, table: &Table) -> Pass {
    ecs.list_calls.store(0, Ordering::Relaxed);
    ecs.describe_calls.store(0, Ordering::Relaxed);
    table.0.requests.store(0, Ordering::Relaxed);
    table.0.read_units.store(0, Ordering::Relaxed);
    let report = r.reconcile(ecs, NOW).await.expect("reconcile");
    Pass {
        ecs_calls: ecs.list_calls.load(Ordering::Relaxed) + ecs.describe_calls.load(Ordering::Relaxed),
        dynamo_requests: table.0.requests.load(Ordering::Relaxed),
        read_units: table.0.read_units.load(Ordering::Relaxed),
        registered: report.registered,
        removed: report.removed,
    }
}

fn row(n: usize, what: &str, p: &Pass) {
    let usd = p.read_units as f64 * PASSES_PER_MONTH * USD_PER_MILLION_READS / 1e6
        + PASSES_PER_MONTH * USD_PER_MILLION_INVOCATIONS / 1e6;
    println!(
        "{n:>7} {what:<34} {:>9} {:>9} {:>10} {:>10} {:>8} {:>12.2}",
        p.ecs_calls, p.dynamo_requests, p.read_units, p.registered, p.removed, usd
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("One reconciliation pass (real Registrar::reconcile; ECS and the table counted in process)");
    println!(
        "{:>7} {:<34} {:>9} {:>9} {:>10} {:>10} {:>8} {:>12}",
        "tasks", "pass", "ECS", "DynamoDB", "read units", "registered", "removed", "$/month (5m)"
    );
    for n in [1_000usize, 10_000] {
        let ecs = Ecs::default();
        let table = Table::default();
        let registrar = Registrar::new(Settings::default(), Definitions, Tags, table.clone(), MemoryLedger::default());
        ecs.running.lock().expect("lock").extend(0..n);
        let first = pass(&registrar, &ecs, &table).await;
        row(n, "first (every event lost)", &first);
        let quiet = pass(&registrar, &ecs, &table).await;
        row(n, "quiet (nothing to repair)", &quiet);
        // 1 % of starts and 1 % of stops lost since the last pass.
        let lost = n / 100;
        {
            let mut running = ecs.running.lock().expect("lock");
            for i in 0..lost {
                running.remove(&i);
                running.insert(n + i);
            }
        }
        let churn = pass(&registrar, &ecs, &table).await;
        row(n, "1 % of events lost both ways", &churn);
        assert_eq!((churn.registered, churn.removed), (lost as u64, lost as u64));
    }
    println!(
        "$/month: read units x {PASSES_PER_MONTH} passes at ${USD_PER_MILLION_READS}/million, plus ${USD_PER_MILLION_INVOCATIONS}/million invocations; ECS List/Describe calls are free"
    );
}
