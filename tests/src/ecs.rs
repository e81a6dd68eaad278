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
    registrar_with(settings, &sdk_config().await)
}

/// A registrar whose clients use `config` (another endpoint, other timeouts).
pub fn registrar_with(settings: &Settings, config: &aws_config::SdkConfig) -> LiveRegistrar {
    let config = config.clone();
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
    task_definition_on_port(role_arn, service, mesh, sidecar, 15000, false).await
}

/// As [`task_definition`], with the sidecar's inbound on `port` (the application stays on 5050).
pub async fn task_definition_on_port(
    role_arn: Option<&str>,
    service: &str,
    mesh: &str,
    sidecar: bool,
    port: u16,
    health_check: bool,
) -> String {
    let ecs = aws_sdk_ecs::Client::new(&sdk_config().await);
    let mut workload = ContainerDefinition::builder()
        .name("workload")
        .image("ghcr.io/kumahq/kuma-counter-demo")
        .memory(256)
        .essential(true);
    if health_check {
        workload = workload.health_check(
            aws_sdk_ecs::types::HealthCheck::builder()
                .command("CMD-SHELL")
                .command("curl -f http://localhost:5050/ || exit 1")
                .build()
                .expect("health check"),
        );
    }
    let workload = workload.build();
    let command = format!(
        "loopmesh-sidecar run --cp-address https://controlplane.kongmesh:5678 --dataplane-var dpname=`hostname -s` --dataplane-var address=`hostname -i` --dataplane-var mesh={mesh} --dataplane-var port={port} --dataplane-var servicePort=5050 --dataplane-var service={service} --dataplane-var protocol=tcp --auth-type=aws --bind-outbounds"
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

/// Keeps emulated tasks RUNNING until stopped: by default the emulator moves
/// a task one step towards STOPPED each time it is described.
pub async fn tasks_stay_running() {
    let body = r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#;
    let (status, _) =
        post(&format!("{}/moto-api/state-manager/set-transition", super::endpoint()), "application/json", None, body)
            .await;
    assert!((200..300).contains(&status), "set-transition: {status}");
}

/// A subnet of the emulator's default VPC, asked with EC2's query API (the
/// workspace has no EC2 SDK; the emulator picks the service from the
/// credential scope).
pub async fn default_subnet() -> String {
    let auth =
        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0";
    let (_, text) = post(
        &super::endpoint(),
        "application/x-www-form-urlencoded",
        Some(auth),
        "Action=DescribeSubnets&Version=2016-11-15",
    )
    .await;
    let start = text.find("<subnetId>").unwrap_or_else(|| panic!("no subnet in {text}")) + "<subnetId>".len();
    text[start..].split('<').next().unwrap_or_default().to_owned()
}

async fn post(url: &str, content_type: &str, authorization: Option<&str>, body: &'static str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::post(url).header("content-type", content_type);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let req = req.body(Full::new(bytes::Bytes::from_static(body.as_bytes()))).expect("request");
    let response = client.request(req).await.expect("emulator answers");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs `count` Fargate tasks of `task_definition` in `cluster`; returns them.
pub async fn run_tasks(cluster: &str, task_definition: &str, count: i32) -> Vec<aws_sdk_ecs::types::Task> {
    use aws_sdk_ecs::types::{AssignPublicIp, AwsVpcConfiguration, LaunchType, NetworkConfiguration};
    let ecs = aws_sdk_ecs::Client::new(&sdk_config().await);
    let network = NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets(default_subnet().await)
                .security_groups("sg-0123456789abcdef0")
                .assign_public_ip(AssignPublicIp::Disabled)
                .build()
                .expect("awsvpc configuration"),
        )
        .build();
    let out = ecs
        .run_task()
        .cluster(cluster)
        .task_definition(task_definition)
        .launch_type(LaunchType::Fargate)
        .network_configuration(network)
        .count(count)
        .send()
        .await
        .expect("run task");
    out.tasks().to_vec()
}

/// The Task State Change event ECS would send for `task` in `status`.
pub fn event_for(task: &aws_sdk_ecs::types::Task, status: &str, version: u64) -> Value {
    let address = task
        .attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .unwrap_or_default();
    let fixture = if status == "RUNNING" { "ecs-task-running.json" } else { "ecs-task-stopped.json" };
    let mut ev = event(fixture, task.task_definition_arn().unwrap_or_default(), "x", address, version);
    let arn = task.task_arn().unwrap_or_default();
    ev["detail"]["taskArn"] = arn.into();
    ev["detail"]["clusterArn"] = task.cluster_arn().unwrap_or_default().into();
    ev["resources"] = serde_json::json!([arn]);
    ev
}

/// What task-events writes for one task of an existing `kuma.io/service`
/// service with one inbound (15000 -> 5050) at `address`: for tests and
/// benchmarks that write registrations without an ECS event.
pub fn one_endpoint(
    mesh: &str,
    service: &str,
    task_id: &str,
    address: &str,
) -> loopmesh_shared::registration::Registration {
    use loopmesh_shared::registration::{Endpoint, Registration, ServiceUpsert};
    use loopmesh_shared::vip::{ServiceKey, ServiceKind};
    let task_arn = format!("arn:aws:ecs:us-east-1:123456789012:task/c/{task_id}");
    Registration {
        task_arn: task_arn.clone(),
        task_id: task_id.into(),
        cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/c".into(),
        mesh: mesh.into(),
        version: 1,
        endpoints: vec![Endpoint {
            service: service.into(),
            address: address.into(),
            port: 15000,
            service_port: 5050,
            protocol: "tcp".into(),
            zone: None,
            task_arn,
            version: 1,
        }],
        services: vec![ServiceUpsert {
            key: ServiceKey::new(mesh, ServiceKind::Service, service),
            ports: Vec::new(),
            labels: Default::default(),
        }],
        dns_changed: false,
        new_services: Vec::new(),
        vip_port: 8080,
        now: 1_800_000_000,
    }
}
