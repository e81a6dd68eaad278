//! The ECS Task State Change event: its typed detail (aws_lambda_events has
//! none) and the checks that turn it into a [`TaskEvent`].
//!
//! Unknown fields are tolerated, because AWS adds fields; missing ones that
//! loopmesh needs are errors naming the field.

use std::net::IpAddr;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde::{Deserialize, Serialize};

use crate::model::ValidationErrors;

pub const SOURCE: &str = "aws.ecs";
pub const DETAIL_TYPE: &str = "ECS Task State Change";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EcsTaskStateChange {
    pub task_arn: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub last_status: String,
    pub desired_status: String,
    /// Increases with every change of the task; orders duplicate and late events.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// HEALTHY, UNHEALTHY or UNKNOWN: the task's containers' health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub containers: Vec<Container>,
    /// What RunTask changed for this task: its role, a container's command or
    /// environment. Identity and the Dataplane come from what actually runs.
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub overrides: Overrides,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_overrides: Vec<ContainerOverride>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.task_role_arn.is_none() && self.container_overrides.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    #[serde(default)]
    pub name: String,
    /// Replaces the container's command when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Added to the container's environment, replacing variables of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<NameValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub details: Vec<NameValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub last_status: Option<String>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(default)]
    pub attachment_id: Option<String>,
    #[serde(default)]
    pub private_ipv4_address: Option<String>,
}

/// What a state change means for registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Last and desired status RUNNING: register.
    Running,
    /// Stopped, or on its way there: deregister at once.
    Stopped,
    /// Provisioning, pending, activating: nothing to do yet.
    Starting,
}

/// A checked task event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub task_arn: String,
    /// The last segment of the task ARN: the Dataplane's default name.
    pub task_id: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub state: TaskState,
    pub version: u64,
    pub availability_zone: Option<String>,
    /// The task's private IPv4 (awsvpc ENI), when the event carries one.
    pub address: Option<IpAddr>,
    pub overrides: Overrides,
    /// ECS says the task's health checks pass.
    pub healthy: bool,
}

impl TaskEvent {
    /// The cluster's name, the last segment of its ARN.
    pub fn cluster_name(&self) -> &str {
        self.cluster_arn.rsplit('/').next().unwrap_or(&self.cluster_arn)
    }

    /// Whether `clusters` (names or ARNs; empty means all) includes this task's cluster.
    pub fn in_clusters(&self, clusters: &[String]) -> bool {
        clusters.is_empty() || clusters.iter().any(|c| *c == self.cluster_arn || c == self.cluster_name())
    }
}

/// Parses an EventBridge envelope holding an ECS Task State Change.
pub fn parse(raw: &serde_json::Value) -> Result<TaskEvent, ValidationErrors> {
    // The envelope first, so a foreign event is named as such rather than
    // failing on a detail it was never meant to have.
    let envelope: EventBridgeEvent<serde_json::Value> = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        ValidationErrors::single(if path == "." { String::new() } else { path }, e.into_inner().to_string())
    })?;
    let mut errors = ValidationErrors::default();
    if envelope.source != SOURCE {
        errors.push(
            "source",
            format!(
                "{} is not {SOURCE:?}; this function takes ECS task state changes",
                crate::excerpt::quoted(&envelope.source)
            ),
        );
    }
    if envelope.detail_type != DETAIL_TYPE {
        errors.push("detail-type", format!("{} is not {DETAIL_TYPE:?}", crate::excerpt::quoted(&envelope.detail_type)));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let d: EcsTaskStateChange = serde_path_to_error::deserialize(&envelope.detail).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "detail".to_owned() } else { format!("detail.{path}") };
        ValidationErrors::single(path, e.into_inner().to_string())
    })?;
    from_detail(d)
}

/// Checks a task's state as ECS reports it, from an event's detail or from
/// DescribeTasks (the reconciliation), and turns it into a [`TaskEvent`].
pub fn from_detail(d: EcsTaskStateChange) -> Result<TaskEvent, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    for (field, value, rule) in [
        ("detail.taskArn", &d.task_arn, ":task/"),
        ("detail.clusterArn", &d.cluster_arn, ":cluster/"),
        ("detail.taskDefinitionArn", &d.task_definition_arn, ":task-definition/"),
    ] {
        if !value.starts_with("arn:") || !value.contains(rule) {
            errors.push(field, format!("{} is not an ECS ARN containing {rule:?}", crate::excerpt::quoted(value)));
        }
    }
    let state = match (d.last_status.as_str(), d.desired_status.as_str()) {
        ("STOPPED", _) | (_, "STOPPED") | ("DEPROVISIONING" | "STOPPING" | "DEACTIVATING", _) => TaskState::Stopped,
        ("RUNNING", "RUNNING") => TaskState::Running,
        ("", _) => {
            errors.push("detail.lastStatus", "required, the task's status");
            TaskState::Starting
        }
        _ => TaskState::Starting,
    };
    let address = task_address(&d, &mut errors);
    let task_id = d.task_arn.rsplit('/').next().unwrap_or_default().to_owned();
    errors.into_result(TaskEvent {
        task_arn: d.task_arn,
        task_id,
        cluster_arn: d.cluster_arn,
        task_definition_arn: d.task_definition_arn,
        state,
        version: d.version,
        availability_zone: d.availability_zone.filter(|z| !z.is_empty()),
        address,
        overrides: d.overrides,
        healthy: d.health_status.as_deref() == Some("HEALTHY"),
    })
}

/// The ENI's `privateIPv4Address`, else a container's `privateIpv4Address`.
fn task_address(d: &EcsTaskStateChange, errors: &mut ValidationErrors) -> Option<IpAddr> {
    let from_eni = d.attachments.iter().enumerate().flat_map(|(i, a)| {
        a.details.iter().enumerate().filter(|(_, nv)| nv.name == "privateIPv4Address").map(move |(j, nv)| {
            (format!("detail.attachments[{i}].details[{j}].value"), nv.value.clone().unwrap_or_default())
        })
    });
    let from_containers = d.containers.iter().enumerate().flat_map(|(i, c)| {
        c.network_interfaces.iter().enumerate().filter_map(move |(j, ni)| {
            ni.private_ipv4_address
                .clone()
                .map(|v| (format!("detail.containers[{i}].networkInterfaces[{j}].privateIpv4Address"), v))
        })
    });
    let (path, raw) = from_eni.chain(from_containers).next()?;
    match raw.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push(path, format!("{} is not an IP address", crate::excerpt::quoted(&raw)));
            None
        }
    }
}
