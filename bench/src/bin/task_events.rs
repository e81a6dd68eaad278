//! AWS requests per ECS task event, counted at the HTTP layer against moto
//! server: DynamoDB per event (budget: 3 for a known service with warm
//! caches, 6 for the first task of a new service), and the ECS and IAM calls
//! a cold cache costs.

use loopmesh_shared::aws::ecs::EcsTaskDefinitions;
use loopmesh_shared::aws::iam::IamRoleTags;
use loopmesh_shared::registration::{Outcome, Registrar};
use loopmesh_shared::store::dynamo::{DynamoRegistry, DynamoVipLedger};
use loopmesh_tests::ecs::{event, role, settings, task_definition};
use loopmesh_tests::{CallCounter, fresh_table, mesh_resource_item, sdk_config};

const NOW: u64 = 1_800_000_000;

struct Counted {
    dynamo: CallCounter,
    ecs: CallCounter,
    iam: CallCounter,
}

impl Counted {
    fn reset(&self) {
        self.dynamo.reset();
        self.ecs.reset();
        self.iam.reset();
    }

    fn row(&self, what: &str, outcome: &Outcome) {
        let ops = |c: &CallCounter| c.snapshot().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let kind = match outcome {
            Outcome::Registered { .. } => "registered",
            Outcome::Deregistered { .. } => "deregistered",
            Outcome::Stale => "stale",
            _ => "other",
        };
        println!(
            "{what:<44} {kind:<13} {:>8} {:>4} {:>4}   {}",
            self.dynamo.total(),
            self.ecs.total(),
            self.iam.total(),
            ops(&self.dynamo)
        );
    }
}

#[tokio::main]
async fn main() {
    let conf = sdk_config().await;
    let c = Counted { dynamo: CallCounter::default(), ecs: CallCounter::default(), iam: CallCounter::default() };
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&conf).interceptor(c.dynamo.clone()).build(),
    );
    let ecs =
        aws_sdk_ecs::Client::from_conf(aws_sdk_ecs::config::Builder::from(&conf).interceptor(c.ecs.clone()).build());
    let iam =
        aws_sdk_iam::Client::from_conf(aws_sdk_iam::config::Builder::from(&conf).interceptor(c.iam.clone()).build());
    let table = fresh_table(&aws_sdk_dynamodb::Client::new(&conf), "bench-te").await;
    let s = settings(&table, &[]);
    let r = Registrar::new(
        s,
        EcsTaskDefinitions::new(ecs),
        IamRoleTags::new(iam),
        DynamoRegistry::new(dynamo.clone(), &table),
        DynamoVipLedger::new(dynamo.clone(), &table),
    );
    let td = |service: &'static str| async move {
        let role =
            role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", service)]).await;
        task_definition(Some(&role), service, "default", true).await
    };
    let redis = td("redis").await;
    let web = td("web").await;
    let api = td("api").await;

    println!("AWS requests per task event (HTTP attempts, moto server)");
    println!("{:<44} {:<13} {:>8} {:>4} {:>4}   DynamoDB operations", "event", "outcome", "DynamoDB", "ECS", "IAM");
    let run = async |what: &str, ev: serde_json::Value| {
        c.reset();
        let out = r.handle(&ev, NOW).await.expect("event handled");
        c.row(what, &out);
    };
    run("RUNNING, new service, cold caches", event("ecs-task-running.json", &redis, "r1", "10.0.2.11", 3)).await;
    run("RUNNING, known service, warm caches", event("ecs-task-running.json", &redis, "r2", "10.0.2.12", 3)).await;
    run("RUNNING, new service, new task definition", event("ecs-task-running.json", &web, "w1", "10.0.3.11", 3)).await;
    run("RUNNING duplicate", event("ecs-task-running.json", &redis, "r2", "10.0.2.12", 3)).await;
    run("STOPPED", event("ecs-task-stopped.json", &redis, "r2", "10.0.2.12", 5)).await;
    run("STOPPED before RUNNING (tombstone)", event("ecs-task-stopped.json", &redis, "r9", "10.0.2.19", 5)).await;
    dynamo
        .put_item()
        .table_name(&table)
        .set_item(Some(mesh_resource_item("default", "Everywhere")))
        .send()
        .await
        .expect("mesh resource");
    // The mesh mode is cached for 30 s; a later "now" reads it again.
    c.reset();
    let out = r.handle(&event("ecs-task-running.json", &api, "a1", "10.0.4.11", 3), NOW + 31).await.expect("handled");
    c.row("RUNNING, new service, MeshService mode (cold)", &out);
    c.reset();
    let out = r.handle(&event("ecs-task-running.json", &api, "a2", "10.0.4.12", 3), NOW + 32).await.expect("handled");
    c.row("RUNNING, known service, MeshService mode", &out);
}
