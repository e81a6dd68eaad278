//! task-events against moto server: task definitions in moto's ECS, roles
//! with tags in moto's IAM, events from `events/`, state in DynamoDB.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::{BTreeMap, HashSet};

use loopmesh_shared::registration::{HandleError, Outcome};
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::ServiceKind;
use loopmesh_tests::ecs::{event, registrar, role, settings, task_definition};
use loopmesh_tests::{attr_s, dynamo_client, fresh_table, item_count, query_prefix};

const NOW: u64 = 1_800_000_000;

struct Bed {
    table: String,
    client: aws_sdk_dynamodb::Client,
}

async fn bed(name: &str) -> Bed {
    let client = dynamo_client().await;
    let table = fresh_table(&client, name).await;
    Bed { table, client }
}

impl Bed {
    async fn endpoints(&self, mesh: &str) -> Vec<(String, String, String)> {
        let mut out: Vec<_> = query_prefix(&self.client, &self.table, &keys::mesh_pk(mesh), "EP#")
            .await
            .iter()
            .map(|i| (attr_s(i, "service"), attr_s(i, "address"), attr_s(i, "task_arn")))
            .collect();
        out.sort();
        out
    }

    async fn services(&self, mesh: &str) -> BTreeMap<String, String> {
        query_prefix(&self.client, &self.table, &keys::mesh_pk(mesh), "SVC#")
            .await
            .iter()
            .filter(|i| i.contains_key("vip"))
            .map(|i| (attr_s(i, "sk"), attr_s(i, "vip")))
            .collect()
    }

    async fn refusals(&self) -> Vec<String> {
        query_prefix(&self.client, &self.table, keys::STATUS_PK, "REFUSAL#")
            .await
            .iter()
            .map(|i| attr_s(i, "reason"))
            .collect()
    }
}

async fn demo_task_definition() -> String {
    let role =
        role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "demo-app")]).await;
    task_definition(Some(&role), "demo-app", "default", true).await
}

#[tokio::test]
async fn running_registers_and_stopped_deregisters() {
    let bed = bed("te-basic").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let td = demo_task_definition().await;

    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    let Outcome::Registered { mesh, services, endpoints } = out else { panic!("{out:?}") };
    assert_eq!((mesh.as_str(), endpoints), ("default", 1));
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].0.kind, ServiceKind::Service);
    let eps = bed.endpoints("default").await;
    assert_eq!(eps.len(), 1);
    assert_eq!((eps[0].0.as_str(), eps[0].1.as_str()), ("demo-app", "10.0.1.10"));
    assert!(eps[0].2.ends_with("/t1"));
    let svcs = bed.services("default").await;
    assert_eq!(svcs.get("SVC#svc#demo-app"), Some(&services[0].1.to_string()));

    let out = r.handle(&event("ecs-task-stopped.json", &td, "t1", "10.0.1.10", 5), NOW + 60).await.unwrap();
    assert_eq!(out, Outcome::Deregistered { endpoints: 1 });
    assert!(bed.endpoints("default").await.is_empty());
    // The service keeps its VIP for the deletion grace.
    assert_eq!(bed.services("default").await, svcs);
}

#[tokio::test]
async fn duplicates_and_older_events_change_nothing() {
    let bed = bed("te-dup").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let td = demo_task_definition().await;
    let running = event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3);
    assert!(matches!(r.handle(&running, NOW).await.unwrap(), Outcome::Registered { .. }));
    let items = item_count(&bed.client, &bed.table).await;
    assert_eq!(r.handle(&running, NOW).await.unwrap(), Outcome::Stale);
    assert_eq!(
        r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 2), NOW).await.unwrap(),
        Outcome::Stale
    );
    assert_eq!(item_count(&bed.client, &bed.table).await, items);
    // A stop seen twice deregisters once.
    let stopped = event("ecs-task-stopped.json", &td, "t1", "10.0.1.10", 5);
    assert_eq!(r.handle(&stopped, NOW).await.unwrap(), Outcome::Deregistered { endpoints: 1 });
    assert_eq!(r.handle(&stopped, NOW).await.unwrap(), Outcome::Stale);
}

#[tokio::test]
async fn stopped_before_running_never_registers() {
    let bed = bed("te-order").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let td = demo_task_definition().await;
    let out = r.handle(&event("ecs-task-stopped.json", &td, "t9", "10.0.1.19", 5), NOW).await.unwrap();
    assert_eq!(out, Outcome::Deregistered { endpoints: 0 });
    let out = r.handle(&event("ecs-task-running.json", &td, "t9", "10.0.1.19", 3), NOW).await.unwrap();
    assert_eq!(out, Outcome::Stale);
    assert!(bed.endpoints("default").await.is_empty());
    assert!(bed.services("default").await.is_empty(), "no VIP for a task that never ran");
}

#[tokio::test]
async fn desired_stopped_deregisters_at_once() {
    let bed = bed("te-stopping").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let td = demo_task_definition().await;
    r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    let out = r.handle(&event("ecs-task-stopping.json", &td, "t1", "10.0.1.10", 4), NOW).await.unwrap();
    assert_eq!(out, Outcome::Deregistered { endpoints: 1 });
}

async fn refused(tags: &[(&str, &str)], service: &str) -> (Outcome, Bed) {
    let bed = bed("te-refuse").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let role = role(tags).await;
    let td = task_definition(Some(&role), service, "default", true).await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    assert!(bed.endpoints("default").await.is_empty());
    assert!(bed.services("default").await.is_empty());
    (out, bed)
}

#[tokio::test]
async fn wrong_service_tag_is_refused_and_recorded() {
    let (out, bed) = refused(
        &[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "redis")],
        "demo-app",
    )
    .await;
    let reason = "the task role's kuma.io/service tag is \"redis\" but inbound 0 claims service \"demo-app\"";
    assert_eq!(out, Outcome::Refused { reason: reason.into() });
    assert_eq!(bed.refusals().await, [reason]);
}

#[tokio::test]
async fn missing_mesh_tag_is_refused() {
    let (out, bed) = refused(&[("kuma.io/type", "dataplane")], "demo-app").await;
    assert!(matches!(out, Outcome::Refused { ref reason } if reason.contains("no kuma.io/mesh tag")), "{out:?}");
    assert_eq!(bed.refusals().await.len(), 1);
}

#[tokio::test]
async fn gateway_type_is_refused() {
    let (out, _) = refused(&[("kuma.io/type", "gateway"), ("kuma.io/mesh", "default")], "demo-app").await;
    assert!(
        matches!(out, Outcome::Refused { ref reason } if reason.contains("\"gateway\", not dataplane, ingress or egress")),
        "{out:?}"
    );
}

#[tokio::test]
async fn other_clusters_are_ignored() {
    let bed = bed("te-cluster").await;
    let r = registrar(&settings(&bed.table, &[("LOOPMESH_CLUSTERS", "prod,staging")])).await;
    let td = demo_task_definition().await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    assert!(matches!(out, Outcome::Ignored { .. }), "{out:?}");
    assert_eq!(item_count(&bed.client, &bed.table).await, 0);
    let watching = registrar(&settings(&bed.table, &[("LOOPMESH_CLUSTERS", "loopmesh-demo")])).await;
    let out = watching.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    assert!(matches!(out, Outcome::Registered { .. }), "{out:?}");
}

#[tokio::test]
async fn tasks_without_a_sidecar_are_skipped() {
    let bed = bed("te-nosidecar").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let role = role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default")]).await;
    let td = task_definition(Some(&role), "plain", "default", false).await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    assert_eq!(out, Outcome::NoSidecar);
    // Nothing registered; only the note `loopmesh status` lists it by.
    assert_eq!(item_count(&bed.client, &bed.table).await, 1);
    let status = loopmesh_shared::store::dynamo::DynamoStatus::new(bed.client.clone(), &bed.table);
    let skipped = status.skipped().await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].task_arn.ends_with("/t1"), "{skipped:?}");
    assert!(skipped[0].reason.contains("KUMA_DATAPLANE_RUNTIME_RESOURCE"), "{skipped:?}");
}

#[tokio::test]
async fn malformed_and_foreign_events_name_the_field_and_write_nothing() {
    let bed = bed("te-malformed").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../events/ecs-task-malformed.json")).unwrap();
    let err = r.handle(&serde_json::from_str(&text).unwrap(), NOW).await.unwrap_err();
    assert!(matches!(err, HandleError::Malformed(_)));
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert_eq!(msg, "malformed ECS task state change: detail.version: invalid type: string \"three\", expected u64");
    let mut no_arn: serde_json::Value = serde_json::from_str(&text).unwrap();
    no_arn["detail"]["version"] = 3.into();
    let msg = r.handle(&no_arn, NOW).await.unwrap_err().to_string();
    assert_eq!(msg, "malformed ECS task state change: detail: missing field `taskArn`");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../events/not-ecs.json")).unwrap();
    let msg = r.handle(&serde_json::from_str(&text).unwrap(), NOW).await.unwrap_err().to_string();
    assert_eq!(
        msg,
        "malformed ECS task state change: source: \"aws.ec2\" is not \"aws.ecs\"; this function takes ECS task state changes; detail-type: \"EC2 Instance State-change Notification\" is not \"ECS Task State Change\""
    );
    let msg = r.handle(&serde_json::json!({"hello": 1}), NOW).await.unwrap_err().to_string();
    assert!(msg.contains("detail-type"), "{msg}");
    assert_eq!(item_count(&bed.client, &bed.table).await, 0);
}

/// A demo-app task registered in mesh `default` whose `meshServices.mode` is `mode`.
async fn registered_in_mode(
    name: &str,
    mode: &str,
) -> (Bed, Vec<(loopmesh_shared::vip::ServiceKey, std::net::Ipv4Addr)>) {
    let bed = bed(name).await;
    let mesh_item = loopmesh_tests::mesh_resource_item("default", mode);
    bed.client.put_item().table_name(&bed.table).set_item(Some(mesh_item)).send().await.unwrap();
    let r = registrar(&settings(&bed.table, &[])).await;
    let td = demo_task_definition().await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    let Outcome::Registered { services, .. } = out else { panic!("{out:?}") };
    (bed, services)
}

#[tokio::test]
async fn mesh_service_mode_also_yields_a_mesh_service() {
    let (bed, services) = registered_in_mode("te-ms", "Everywhere").await;
    let kinds: Vec<_> = services.iter().map(|(k, _)| k.kind).collect();
    assert_eq!(kinds, [ServiceKind::Service, ServiceKind::MeshService]);
    let ms = &services[1].1;
    assert!(ms.octets()[..2] == [127, 4], "MeshService VIP {ms} comes from 127.4.0.0/16");
    let items = query_prefix(&bed.client, &bed.table, &keys::mesh_pk("default"), "SVC#ms#demo-app").await;
    let labels = items[0].get("labels").unwrap().as_m().unwrap();
    assert_eq!(labels.get("kuma.io/origin").unwrap().as_s().unwrap(), "zone");
    assert_eq!(labels.get("kuma.io/display-name").unwrap().as_s().unwrap(), "demo-app");
    let ports = items[0].get("ports").unwrap().as_l().unwrap();
    // Kuma's generator: the inbound's `port` (15000), not its `servicePort` (5050).
    assert_eq!(ports[0].as_m().unwrap().get("port").unwrap().as_n().unwrap(), "15000");
}

/// 500 events for 100 tasks of 10 services, shuffled, each delivered twice,
/// handled by 16 workers with their own clients and caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_of_duplicated_shuffled_events_converges() {
    let bed = bed("te-storm").await;
    let s = settings(&bed.table, &[]);
    let mut tds = Vec::new();
    for i in 0..10 {
        let service = format!("svc{i}");
        let role =
            role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", &service)]).await;
        tds.push((service.clone(), task_definition(Some(&role), &service, "default", true).await));
    }
    let mut events = Vec::new();
    let mut expected = HashSet::new();
    for t in 0..100 {
        let (service, td) = &tds[t % 10];
        let id = format!("task{t:03}");
        let ip = format!("10.1.{}.{}", t / 200, t % 200 + 1);
        events.push(event("ecs-task-running.json", td, &id, &ip, 3));
        events.push(event("ecs-task-running.json", td, &id, &ip, 4));
        if t % 2 == 0 {
            events.push(event("ecs-task-stopped.json", td, &id, &ip, 6));
        } else {
            expected.insert((service.clone(), ip.clone()));
        }
    }
    let mut deliveries: Vec<_> = events.iter().chain(events.iter()).cloned().collect();
    assert_eq!(deliveries.len(), 500);
    fastrand::Rng::with_seed(7).shuffle(&mut deliveries);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(deliveries));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let queue = queue.clone();
        let s = s.clone();
        workers.push(tokio::spawn(async move {
            let r = registrar(&s).await;
            loop {
                let Some(ev) = queue.lock().unwrap().pop() else { break };
                r.handle(&ev, NOW).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let got: HashSet<_> = bed.endpoints("default").await.into_iter().map(|(s, a, _)| (s, a)).collect();
    assert_eq!(got, expected);
    let services = bed.services("default").await;
    assert_eq!(services.len(), 10);
    assert_eq!(services.values().collect::<HashSet<_>>().len(), 10);
}

#[tokio::test]
async fn a_template_that_names_another_address_than_the_tasks_is_refused() {
    let bed = bed("te-address").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let role =
        role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "demo-app")]).await;
    // The sidecar command gains a literal address after the shell's one: a
    // later --dataplane-var wins, as kuma-dp reads them.
    let td = task_definition(Some(&role), "demo-app", "default --dataplane-var address=127.0.0.1", true).await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    let Outcome::Refused { reason } = out else { panic!("{out:?}") };
    assert!(reason.contains("\"127.0.0.1\"") && reason.contains("10.0.1.10"), "{reason}");
    assert!(bed.endpoints("default").await.is_empty(), "nothing is published");
    assert_eq!(bed.refusals().await, [reason], "loopmesh status shows why");
}

/// A task definition whose sidecar carries `template` as its Dataplane.
async fn task_definition_with_template(role_arn: &str, template: &str) -> String {
    use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair};
    let ecs = aws_sdk_ecs::Client::new(&loopmesh_tests::sdk_config().await);
    let sidecar = ContainerDefinition::builder()
        .name("loopmesh-sidecar")
        .image("loopmesh/sidecar:latest")
        .memory(128)
        .environment(
            KeyValuePair::builder()
                .name(loopmesh_shared::registration::sidecar_spec::TEMPLATE_ENV)
                .value(template)
                .build(),
        )
        .command("run")
        .build();
    let out = ecs
        .register_task_definition()
        .family(format!("hostile-{}", loopmesh_tests::unique()))
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .container_definitions(sidecar)
        .task_role_arn(role_arn)
        .send()
        .await
        .unwrap();
    out.task_definition().unwrap().task_definition_arn().unwrap().to_owned()
}

#[tokio::test]
async fn hostile_templates_fail_fast_and_the_role_decides_first() {
    let bed = bed("te-hostile").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let nested = format!(
        "type: Dataplane\nname: x\nmesh: default\nnetworking:\n  address: 10.0.1.10\n  inbound: {}{}\n",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    // A role with no kuma.io tags: refused on the role alone, the template unread.
    let untagged = role(&[]).await;
    let td = task_definition_with_template(&untagged, &nested).await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3), NOW).await.unwrap();
    assert!(matches!(&out, Outcome::Refused { reason } if reason.contains("no kuma.io/type tag")), "{out:?}");
    // A dataplane role: the template is refused by its depth, in one line.
    let tagged = role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default")]).await;
    let td = task_definition_with_template(&tagged, &nested).await;
    let out = r.handle(&event("ecs-task-running.json", &td, "t2", "10.0.1.11", 3), NOW).await.unwrap();
    let Outcome::Refused { reason } = out else { panic!("{out:?}") };
    assert!(reason.contains("nests deeper than 32 levels"), "{reason}");
    assert!(reason.len() < 600, "a bounded message: {} bytes", reason.len());
    assert!(bed.endpoints("default").await.is_empty());
}

#[tokio::test]
async fn identity_and_template_come_from_what_runtask_actually_ran() {
    let bed = bed("te-overrides").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let demo = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "demo-app")];
    let td = task_definition(Some(&role(&demo).await), "demo-app", "default", true).await;
    // RunTask swapped the role for one that may only register redis.
    let redis_role =
        role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "redis")]).await;
    let mut ev = event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3);
    ev["detail"]["overrides"] = serde_json::json!({"taskRoleArn": redis_role});
    let out = r.handle(&ev, NOW).await.unwrap();
    assert!(
        matches!(&out, Outcome::Refused { reason } if reason.contains("tag is \"redis\"") && reason.contains("\"demo-app\"")),
        "the overriding role decides: {out:?}"
    );
    // RunTask replaced the sidecar's template with one claiming another service.
    let template = loopmesh_tests::ecs::DATAPLANE_TEMPLATE.replace("{{ service }}", "payments");
    let mut ev = event("ecs-task-running.json", &td, "t2", "10.0.1.11", 3);
    ev["detail"]["overrides"] = serde_json::json!({"containerOverrides": [
        {"name": "loopmesh-sidecar", "environment": [{"name": "KUMA_DATAPLANE_RUNTIME_RESOURCE", "value": template}]}
    ]});
    let out = r.handle(&ev, NOW).await.unwrap();
    assert!(
        matches!(&out, Outcome::Refused { reason } if reason.contains("\"payments\"")),
        "the overridden template is what is checked: {out:?}"
    );
    assert!(bed.endpoints("default").await.is_empty(), "nothing registered");
}

#[tokio::test]
async fn an_exclusive_mesh_addresses_mesh_services_only() {
    let (bed, services) = registered_in_mode("te-exclusive", "Exclusive").await;
    let kinds: Vec<_> = services.iter().map(|(k, _)| k.kind).collect();
    assert_eq!(kinds, [ServiceKind::MeshService], "no kuma.io/service VIP or name in Exclusive mode");
    assert!(bed.services("default").await.keys().all(|sk| sk.starts_with("SVC#ms#")));
    assert_eq!(bed.endpoints("default").await.len(), 1, "the MeshService has its endpoint");
}

#[tokio::test]
async fn a_task_with_health_checks_takes_traffic_once_healthy() {
    let first = bed("te-healthy").await;
    let r = registrar(&settings(&first.table, &[])).await;
    let tags = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "demo-app")];
    let td = loopmesh_tests::ecs::task_definition_on_port(
        Some(&role(&tags).await),
        "demo-app",
        "default",
        true,
        15000,
        true,
    )
    .await;
    let mut ev = event("ecs-task-running.json", &td, "t1", "10.0.1.10", 3);
    ev["detail"]["healthStatus"] = "UNKNOWN".into();
    let out = r.handle(&ev, NOW).await.unwrap();
    assert!(matches!(out, Outcome::Ignored { why } if why.contains("HEALTHY")), "{out:?}");
    assert!(first.endpoints("default").await.is_empty(), "no traffic before the health checks pass");
    ev["detail"]["healthStatus"] = "HEALTHY".into();
    ev["detail"]["version"] = 4.into();
    assert!(matches!(r.handle(&ev, NOW).await.unwrap(), Outcome::Registered { .. }));
    assert_eq!(first.endpoints("default").await.len(), 1);
    // LOOPMESH_REGISTER_AT=running registers at RUNNING, as before.
    let bed2 = bed("te-running").await;
    let r2 = registrar(&settings(&bed2.table, &[("LOOPMESH_REGISTER_AT", "running")])).await;
    let mut early = event("ecs-task-running.json", &td, "t2", "10.0.1.11", 3);
    early["detail"]["healthStatus"] = "UNKNOWN".into();
    assert!(matches!(r2.handle(&early, NOW).await.unwrap(), Outcome::Registered { .. }));
}

#[tokio::test]
async fn a_stop_is_final_whatever_version_it_carries() {
    let bed = bed("te-stopfinal").await;
    let r = registrar(&settings(&bed.table, &[])).await;
    let td = demo_task_definition().await;
    let running = event("ecs-task-running.json", &td, "t1", "10.0.1.10", 7);
    assert!(matches!(r.handle(&running, NOW).await.unwrap(), Outcome::Registered { .. }));
    // DescribeTasks (the reconciliation) may report a version below the last event's.
    let stopped = event("ecs-task-stopped.json", &td, "t1", "10.0.1.10", 2);
    assert_eq!(r.handle(&stopped, NOW).await.unwrap(), Outcome::Deregistered { endpoints: 1 });
    assert!(bed.endpoints("default").await.is_empty());
    assert_eq!(r.handle(&running, NOW).await.unwrap(), Outcome::Stale, "a stopped task never comes back");
}
