//! ECS: task definitions, as [`TaskDefinitionDoc`]s.

use crate::registration::TaskDefinitions;
use crate::registration::sidecar_spec::{ContainerDoc, TaskDefinitionDoc};
use crate::store::{StoreError, StoreErrorKind};

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
