//! ECS: task definitions, as [`TaskDefinitionDoc`]s, and the running tasks
//! the reconciliation compares with the table.

use aws_sdk_ecs::types::DesiredStatus;

use crate::error::{StoreError, StoreErrorKind};
use crate::registration::TaskDefinitions;
use crate::registration::event::{
    Attachment, Container, ContainerOverride, EcsTaskStateChange, NameValue, NetworkInterface, Overrides,
};
use crate::registration::reconcile::EcsTasks;
use crate::registration::sidecar_spec::{ContainerDoc, TaskDefinitionDoc};

#[derive(Debug, Clone)]
pub struct EcsTaskDefinitions {
    client: aws_sdk_ecs::Client,
}

impl EcsTaskDefinitions {
    pub fn new(client: aws_sdk_ecs::Client) -> Self {
        Self { client }
    }
}

impl TaskDefinitions for EcsTaskDefinitions {
    async fn describe(&self, arn: &str) -> Result<TaskDefinitionDoc, StoreError> {
        let out = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .map_err(|e| super::sdk_error("DescribeTaskDefinition", arn, e))?;
        let td = out.task_definition().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("DescribeTaskDefinition {arn}: no task definition returned"),
            )
        })?;
        Ok(TaskDefinitionDoc {
            arn: td.task_definition_arn().unwrap_or(arn).to_owned(),
            task_role_arn: td.task_role_arn().map(str::to_owned),
            containers: td
                .container_definitions()
                .iter()
                .map(|c| ContainerDoc {
                    name: c.name().unwrap_or_default().to_owned(),
                    health_check: c.health_check().is_some(),
                    environment: c
                        .environment()
                        .iter()
                        .filter_map(|kv| Some((kv.name()?.to_owned(), kv.value().unwrap_or_default().to_owned())))
                        .collect(),
                    entry_point: c.entry_point().to_vec(),
                    command: c.command().to_vec(),
                })
                .collect(),
        })
    }
}

/// The ECS calls of the reconciliation: ListClusters, ListTasks, DescribeTasks.
#[derive(Debug, Clone)]
pub struct EcsRunningTasks {
    client: aws_sdk_ecs::Client,
}

impl EcsRunningTasks {
    pub fn new(client: aws_sdk_ecs::Client) -> Self {
        Self { client }
    }
}

impl EcsTasks for EcsRunningTasks {
    async fn clusters(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_clusters()
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| super::sdk_error("ListClusters", "the account", e))?;
            out.extend(page.cluster_arns().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn running(&self, cluster: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_tasks()
                .cluster(cluster)
                .desired_status(DesiredStatus::Running)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| super::sdk_error("ListTasks", &format!("cluster {cluster}"), e))?;
            out.extend(page.task_arns().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn describe(&self, cluster: &str, task_arns: &[String]) -> Result<Vec<EcsTaskStateChange>, StoreError> {
        if task_arns.is_empty() {
            return Ok(Vec::new());
        }
        let out = match self.client.describe_tasks().cluster(cluster).set_tasks(Some(task_arns.to_vec())).send().await {
            Ok(out) => out,
            // A cluster that is gone runs none of these tasks.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_cluster_not_found_exception()) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(super::sdk_error("DescribeTasks", &format!("cluster {cluster}"), e)),
        };
        Ok(out.tasks().iter().map(detail).collect())
    }
}

/// A described task in the shape of a Task State Change event's detail.
fn detail(t: &aws_sdk_ecs::types::Task) -> EcsTaskStateChange {
    let text = |v: Option<&str>| v.unwrap_or_default().to_owned();
    EcsTaskStateChange {
        task_arn: text(t.task_arn()),
        cluster_arn: text(t.cluster_arn()),
        task_definition_arn: text(t.task_definition_arn()),
        last_status: text(t.last_status()),
        desired_status: text(t.desired_status()),
        version: u64::try_from(t.version()).unwrap_or(0),
        group: t.group().map(str::to_owned),
        availability_zone: t.availability_zone().map(str::to_owned),
        launch_type: t.launch_type().map(|l| l.as_str().to_owned()),
        stopped_reason: t.stopped_reason().map(str::to_owned),
        health_status: t.health_status().map(|h| h.as_str().to_owned()),
        attachments: t
            .attachments()
            .iter()
            .map(|a| Attachment {
                id: a.id().map(str::to_owned),
                kind: a.r#type().map(str::to_owned),
                status: a.status().map(str::to_owned),
                details: a
                    .details()
                    .iter()
                    .map(|kv| NameValue { name: text(kv.name()), value: kv.value().map(str::to_owned) })
                    .collect(),
            })
            .collect(),
        containers: t
            .containers()
            .iter()
            .map(|c| Container {
                name: c.name().map(str::to_owned),
                last_status: c.last_status().map(str::to_owned),
                network_interfaces: c
                    .network_interfaces()
                    .iter()
                    .map(|n| NetworkInterface {
                        attachment_id: n.attachment_id().map(str::to_owned),
                        private_ipv4_address: n.private_ipv4_address().map(str::to_owned),
                    })
                    .collect(),
            })
            .collect(),
        overrides: t
            .overrides()
            .map(|o| Overrides {
                task_role_arn: o.task_role_arn().map(str::to_owned),
                container_overrides: o
                    .container_overrides()
                    .iter()
                    .map(|c| ContainerOverride {
                        name: text(c.name()),
                        command: (!c.command().is_empty()).then(|| c.command().to_vec()),
                        environment: c
                            .environment()
                            .iter()
                            .map(|kv| NameValue { name: text(kv.name()), value: kv.value().map(str::to_owned) })
                            .collect(),
                    })
                    .collect(),
            })
            .unwrap_or_default(),
    }
}
