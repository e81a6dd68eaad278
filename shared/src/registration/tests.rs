//! The registrar over in-memory ports: ordering by version, identity from
//! what actually runs, caches, refusals. The same flow runs against moto
//! server in `tests/tests/task_events.rs`.

use super::event::{Overrides, TaskEvent, TaskState};
use super::memory::{MemoryRegistry, MemoryRoleTags, MemoryTaskDefinitions};
use super::sidecar_spec::{ContainerDoc, TEMPLATE_ENV, TaskDefinitionDoc};
use super::*;
use crate::vip::MemoryLedger;

const NOW: UnixSeconds = 1_700_000_000;
const DEF: &str = "arn:aws:ecs:us-east-1:1:task-definition/demo-app:1";
const ROLE: &str = "arn:aws:iam::1:role/demo-app";
const TEMPLATE: &str = "type: Dataplane\nname: \"{{ dpname }}\"\nmesh: \"{{ mesh }}\"\nnetworking:\n  address: \"{{ address }}\"\n  inbound:\n  - port: {{ port }}\n    servicePort: 5050\n    tags:\n      kuma.io/service: \"{{ service }}\"\n      kuma.io/protocol: tcp\n";

type Memory = Registrar<MemoryTaskDefinitions, MemoryRoleTags, MemoryRegistry, MemoryLedger>;

fn sidecar_command(extra: &str) -> String {
    format!(
        "kuma-dp run --dataplane-var dpname=`hostname -s` --dataplane-var address=`hostname -i` --dataplane-var mesh=default --dataplane-var port=15000 --dataplane-var service=demo-app{extra}"
    )
}

fn definition(arn: &str, role: Option<&str>) -> TaskDefinitionDoc {
    TaskDefinitionDoc {
        arn: arn.into(),
        task_role_arn: role.map(str::to_owned),
        containers: vec![
            ContainerDoc { name: "app".into(), ..Default::default() },
            ContainerDoc {
                name: "kuma-dp".into(),
                environment: vec![(TEMPLATE_ENV.into(), TEMPLATE.into())],
                entry_point: vec!["sh".into(), "-c".into()],
                command: vec![sidecar_command("")],
                health_check: false,
            },
        ],
    }
}

fn registrar() -> Memory {
    let settings = Settings::from_lookup(|k| (k == "LOOPMESH_TABLE_NAME").then(|| "loopmesh".to_owned())).unwrap();
    let definitions = MemoryTaskDefinitions::default();
    definitions.insert(definition(DEF, Some(ROLE)));
    let roles = MemoryRoleTags::default();
    roles.insert(ROLE, &[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "demo-app")]);
    Registrar::new(settings, definitions, roles, MemoryRegistry::default(), MemoryLedger::default())
}

fn event(task: &str, state: TaskState, version: u64) -> TaskEvent {
    TaskEvent {
        task_arn: format!("arn:aws:ecs:us-east-1:1:task/demo/{task}"),
        task_id: task.into(),
        cluster_arn: "arn:aws:ecs:us-east-1:1:cluster/demo".into(),
        task_definition_arn: DEF.into(),
        state,
        version,
        availability_zone: Some("us-east-1a".into()),
        address: Some("10.0.0.9".parse().unwrap()),
        overrides: Overrides::default(),
        healthy: false,
    }
}

#[tokio::test]
async fn a_task_is_registered_once_and_removed_at_its_stop_whatever_the_order_of_events() {
    let r = registrar();
    let running = event("t1", TaskState::Running, 2);
    let Outcome::Registered { mesh, services, endpoints } = r.handle_task(&running, NOW).await.unwrap() else {
        panic!("not registered")
    };
    assert_eq!((mesh.as_str(), endpoints), ("default", 1));
    assert_eq!(services[0].0, ServiceKey::new("default", ServiceKind::Service, "demo-app"));
    let ep = &r.registry.endpoints(&running.task_arn)[0];
    assert_eq!((ep.address.as_str(), ep.port, ep.service_port), ("10.0.0.9", 15000, 5050));
    assert_eq!(r.registry.dns_changes(), 1, "a new VIP is work for dns-sync");

    // A duplicate, and an older event, change nothing.
    assert_eq!(r.handle_task(&running, NOW + 1).await.unwrap(), Outcome::Stale);
    assert_eq!(r.handle_task(&event("t1", TaskState::Running, 1), NOW + 1).await.unwrap(), Outcome::Stale);

    // A stop applies even at a lower version (DescribeTasks may report one), and is final.
    let stop = event("t1", TaskState::Stopped, 1);
    assert_eq!(r.handle_task(&stop, NOW + 2).await.unwrap(), Outcome::Deregistered { endpoints: 1 });
    assert!(r.registry.endpoints(&running.task_arn).is_empty());
    assert_eq!(r.handle_task(&event("t1", TaskState::Running, 9), NOW + 3).await.unwrap(), Outcome::Stale);
}

#[tokio::test]
async fn a_stop_before_any_running_leaves_a_tombstone_that_a_late_running_respects() {
    let r = registrar();
    assert_eq!(
        r.handle_task(&event("t2", TaskState::Stopped, 3), NOW).await.unwrap(),
        Outcome::Deregistered { endpoints: 0 }
    );
    assert_eq!(r.handle_task(&event("t2", TaskState::Running, 2), NOW + 1).await.unwrap(), Outcome::Stale);
    assert!(r.registry.registered_tasks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_second_task_costs_no_definition_or_role_read_until_the_tags_expire() {
    let r = registrar();
    r.handle_task(&event("t1", TaskState::Running, 1), NOW).await.unwrap();
    r.handle_task(&event("t2", TaskState::Running, 1), NOW + 1).await.unwrap();
    assert_eq!((r.task_definitions.reads(), r.roles.reads()), (1, 1));
    // A service that already holds its VIP is not new work for dns-sync.
    assert_eq!(r.registry.dns_changes(), 1);
    r.handle_task(&event("t3", TaskState::Running, 1), NOW + ROLE_TAGS_TTL + 1).await.unwrap();
    assert_eq!((r.task_definitions.reads(), r.roles.reads()), (1, 2), "definitions never change; tags do");
}

#[tokio::test]
async fn identity_comes_from_the_role_the_task_runs_with_not_its_definition() {
    let r = registrar();
    r.roles.insert(
        "arn:aws:iam::1:role/redis",
        &[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "redis")],
    );
    let mut ev = event("t1", TaskState::Running, 1);
    ev.overrides.task_role_arn = Some("arn:aws:iam::1:role/redis".into());
    let Outcome::Refused { reason } = r.handle_task(&ev, NOW).await.unwrap() else { panic!("not refused") };
    assert!(reason.contains("\"redis\"") && reason.contains("demo-app"), "{reason}");
    assert_eq!(r.registry.refusals()[0].task_arn, ev.task_arn);
    assert!(r.registry.endpoints(&ev.task_arn).is_empty());
}

#[tokio::test]
async fn refusals_are_recorded_with_their_reason() {
    let r = registrar();
    // No role: refused before the template is read.
    r.task_definitions.insert(definition("arn:aws:ecs:us-east-1:1:task-definition/norole:1", None));
    let mut ev = event("t1", TaskState::Running, 1);
    ev.task_definition_arn = "arn:aws:ecs:us-east-1:1:task-definition/norole:1".into();
    let Outcome::Refused { reason } = r.handle_task(&ev, NOW).await.unwrap() else { panic!("not refused") };
    assert!(reason.contains("no task role"), "{reason}");

    // A literal address that is not the task's.
    let mut doc = definition("arn:aws:ecs:us-east-1:1:task-definition/elsewhere:1", Some(ROLE));
    doc.containers[1].command = vec![sidecar_command("").replace("address=`hostname -i`", "address=10.9.9.9")];
    r.task_definitions.insert(doc);
    let mut ev = event("t2", TaskState::Running, 1);
    ev.task_definition_arn = "arn:aws:ecs:us-east-1:1:task-definition/elsewhere:1".into();
    let Outcome::Refused { reason } = r.handle_task(&ev, NOW).await.unwrap() else { panic!("not refused") };
    assert!(reason.contains("10.9.9.9") && reason.contains("10.0.0.9"), "{reason}");
    assert_eq!(r.registry.refusals().len(), 2);
    assert!(r.registry.registered_tasks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_task_without_a_sidecar_is_skipped_and_listed() {
    let r = registrar();
    let mut doc = definition("arn:aws:ecs:us-east-1:1:task-definition/plain:1", Some(ROLE));
    doc.containers.truncate(1);
    r.task_definitions.insert(doc);
    let mut ev = event("t1", TaskState::Running, 1);
    ev.task_definition_arn = "arn:aws:ecs:us-east-1:1:task-definition/plain:1".into();
    assert_eq!(r.handle_task(&ev, NOW).await.unwrap(), Outcome::NoSidecar);
    assert_eq!(r.registry.skipped()[0].task_arn, ev.task_arn);
}

#[tokio::test]
async fn exclusive_mode_registers_mesh_services_only() {
    let r = registrar();
    r.registry.set_mode("default", MeshServicesMode::Exclusive);
    r.handle_task(&event("t1", TaskState::Running, 1), NOW).await.unwrap();
    assert_eq!(r.registry.services(), [ServiceKey::new("default", ServiceKind::MeshService, "demo-app")]);
}
