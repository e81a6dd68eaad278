//! ECS and IAM fixtures in the emulator: task roles with `kuma.io/*` tags,
//! task definitions with a sidecar shaped like the Kong Mesh ECS example, and
//! events from `events/` with their ARNs swapped for the emulator's.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair};
use aws_sdk_iam::types::Tag;
use loopmesh_shared::config::Settings;
use loopmesh_shared::registration::Registrar;
use loopmesh_shared::registration::sidecar_spec::TEMPLATE_ENV;
use loopmesh_shared::store::dynamo::{DynamoRegistry, DynamoVipLedger};
use loopmesh_shared::{aws::ecs::EcsTaskDefinitions, aws::iam::IamRoleTags};
use serde_json::Value;

use super::{sdk_config, unique};

/// The Dataplane template of the Kong Mesh ECS example task definitions.
pub const DATAPLANE_TEMPLATE: &str = "---\ntype: Dataplane\nname: \"{{ dpname }}\"\nmesh: \"{{ mesh }}\"\nnetworking:\n  address: \"{{ address }}\"\n  inbound:\n  - port: {{ port }}\n    servicePort: {{ servicePort }}\n    tags:\n      kuma.io/service: \"{{ service }}\"\n      kuma.io/protocol: \"{{ protocol }}\"\n";

pub type LiveRegistrar = Registrar<EcsTaskDefinitions, IamRoleTags, DynamoRegistry, DynamoVipLedger>;

/// A registrar on fresh clients, as one Lambda execution environment has.
pub async fn registrar(settings: &Settings) -> LiveRegistrar {
    let config = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    Registrar::new(
        settings.clone(),
        EcsTaskDefinitions::new(aws_sdk_ecs::Client::new(&config)),
        IamRoleTags::new(aws_sdk_iam::Client::new(&config)),
        DynamoRegistry::new(dynamo.clone(), &settings.table_name),
        DynamoVipLedger::new(dynamo, &settings.table_name),
    )
}

/// Settings for a test table; `extra` adds or overrides variables.
pub fn settings(table: &str, extra: &[(&str, &str)]) -> Settings {
    let mut vars: BTreeMap<String, String> = BTreeMap::from([("LOOPMESH_TABLE_NAME".into(), table.to_owned())]);
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::from_lookup(|k| vars.get(k).cloned()).expect("valid test settings")
}

/// Creates a task role with these tags; returns its ARN.
pub async fn role(tags: &[(&str, &str)]) -> String {
    let iam = aws_sdk_iam::Client::new(&sdk_config().await);
    let tags: Vec<Tag> =
        tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build().expect("tag has key and value")).collect();
    let out = iam
        .create_role()
        .role_name(format!("task-{}", unique()))
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .set_tags(Some(tags))
        .send()
        .await
        .expect("create role");
    out.role().expect("role").arn().to_owned()
}

/// Registers a task definition whose sidecar runs `sh -c "... --dataplane-var ..."`
/// like the Kong Mesh example; `sidecar: false` leaves the sidecar out.
pub async fn task_definition(role_arn: Option<&str>, service: &str, mesh: &str, sidecar: bool) -> String {
    let ecs = aws_sdk_ecs::Client::new(&sdk_config().await);
    let workload = ContainerDefinition::builder()
        .name("workload")
        .image("ghcr.io/kumahq/kuma-counter-demo")
        .memory(256)
        .essential(true)
        .build();
    let command = format!(
        "loopmesh-sidecar run --cp-address https://controlplane.kongmesh:5678 --dataplane-var dpname=`hostname -s` --dataplane-var address=`hostname -i` --dataplane-var mesh={mesh} --dataplane-var port=15000 --dataplane-var servicePort=5050 --dataplane-var service={service} --dataplane-var protocol=http --auth-type=aws --bind-outbounds"
    );
    let dp = ContainerDefinition::builder()
        .name("loopmesh-sidecar")
        .image("loopmesh/sidecar:latest")
        .memory(128)
        .essential(true)
        .environment(KeyValuePair::builder().name(TEMPLATE_ENV).value(DATAPLANE_TEMPLATE).build())
        .entry_point("sh")
        .entry_point("-c")
        .command(command)
        .build();
    let mut req = ecs
        .register_task_definition()
        .family(format!("{service}-{}", unique()))
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .container_definitions(workload)
        .set_task_role_arn(role_arn.map(str::to_owned));
    if sidecar {
        req = req.container_definitions(dp);
    }
    let out = req.send().await.expect("register task definition");
    out.task_definition().and_then(|t| t.task_definition_arn()).expect("task definition ARN").to_owned()
}

/// An event from `events/`, for another task: ARNs, address and version replaced.
pub fn event(fixture: &str, task_definition_arn: &str, task_id: &str, address: &str, version: u64) -> Value {
    let path = format!("{}/../events/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut ev: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let d = &mut ev["detail"];
    let cluster = d["clusterArn"].as_str().expect("clusterArn").to_owned();
    let task_arn = format!("{}/{task_id}", cluster.replace(":cluster/", ":task/"));
    d["taskArn"] = task_arn.clone().into();
    d["taskDefinitionArn"] = task_definition_arn.into();
    d["version"] = version.into();
    for detail in d["attachments"][0]["details"].as_array_mut().expect("details") {
        if detail["name"] == "privateIPv4Address" {
            detail["value"] = address.into();
        }
    }
    for c in d["containers"].as_array_mut().expect("containers") {
        c["taskArn"] = task_arn.clone().into();
        c["networkInterfaces"][0]["privateIpv4Address"] = address.into();
    }
    ev["resources"] = serde_json::json!([task_arn]);
    ev
}
