//! IAM: the tags of a task role, which carry the task's mesh identity.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::registration::RoleTags;

#[derive(Debug, Clone)]
pub struct IamRoleTags {
    client: aws_sdk_iam::Client,
}

impl IamRoleTags {
    pub fn new(client: aws_sdk_iam::Client) -> Self {
        Self { client }
    }
}

/// The role name of a role ARN (`arn:aws:iam::1:role/path/name` -> `name`).
pub fn role_name(role_arn: &str) -> &str {
    role_arn.rsplit('/').next().unwrap_or(role_arn)
}

impl RoleTags for IamRoleTags {
    async fn tags(&self, role_arn: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let name = role_name(role_arn);
        let mut tags = BTreeMap::new();
        let mut marker = None;
        loop {
            let out = match self.client.list_role_tags().role_name(name).set_marker(marker).send().await {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_entity_exception()) => return Ok(None),
                Err(e) => return Err(super::sdk_error("ListRoleTags", role_arn, e)),
            };
            tags.extend(out.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())));
            if !out.is_truncated() {
                return Ok(Some(tags));
            }
            marker = out.marker().map(str::to_owned);
        }
    }
}
