//! What `loopmesh status` reads besides services and records: identity
//! refusals, DNS conflicts, VIP leases and the last dns-sync run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

use super::{key, num, query, sdk_error, text};
use crate::error::StoreError;
use crate::store::keys::{self, attr};
use crate::vip::UnixSeconds;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalRow {
    pub task_arn: String,
    pub mesh: String,
    pub reason: String,
    pub at: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictRow {
    pub zone: String,
    pub name: String,
    pub reason: String,
}

/// A VIP lease: held by `owner`, or resting in quarantine until a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    pub vip: Ipv4Addr,
    pub owner: String,
    pub quarantined_until: Option<UnixSeconds>,
}

#[derive(Debug, Clone)]
pub struct DynamoStatus {
    client: Client,
    table: String,
}

impl DynamoStatus {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    pub async fn refusals(&self) -> Result<Vec<RefusalRow>, StoreError> {
        self.task_rows("REFUSAL#").await
    }

    /// Tasks skipped because their definition has no loopmesh sidecar.
    pub async fn skipped(&self) -> Result<Vec<RefusalRow>, StoreError> {
        self.task_rows("SKIPPED#").await
    }

    async fn task_rows(&self, prefix: &str) -> Result<Vec<RefusalRow>, StoreError> {
        let items = query(&self.client, &self.table, keys::STATUS_PK, prefix, None).await?;
        Ok(items
            .iter()
            .map(|i| RefusalRow {
                task_arn: text(i, keys::SK).and_then(|s| s.strip_prefix(prefix)).unwrap_or_default().to_owned(),
                mesh: text(i, attr::MESH).unwrap_or_default().to_owned(),
                reason: text(i, attr::REASON).unwrap_or_default().to_owned(),
                at: num(i, attr::AT),
            })
            .collect())
    }

    pub async fn conflicts(&self) -> Result<Vec<ConflictRow>, StoreError> {
        let items = query(&self.client, &self.table, keys::STATUS_PK, "CONFLICT#", None).await?;
        Ok(items
            .iter()
            .map(|i| ConflictRow {
                zone: text(i, attr::ZONE).unwrap_or_default().to_owned(),
                name: text(i, attr::NAME).unwrap_or_default().to_owned(),
                reason: text(i, attr::REASON).unwrap_or_default().to_owned(),
            })
            .collect())
    }

    pub async fn leases(&self, mesh: &str) -> Result<Vec<LeaseRow>, StoreError> {
        let items = query(&self.client, &self.table, &keys::mesh_pk(mesh), "VIP#", None).await?;
        Ok(items
            .iter()
            .filter_map(|i| {
                Some(LeaseRow {
                    vip: text(i, keys::SK)?.strip_prefix("VIP#")?.parse().ok()?,
                    owner: text(i, attr::OWNER).unwrap_or_default().to_owned(),
                    quarantined_until: i.contains_key(attr::QUARANTINED_UNTIL).then(|| num(i, attr::QUARANTINED_UNTIL)),
                })
            })
            .collect())
    }

    /// The counts of the last dns-sync run and when it ran, as JSON.
    pub async fn last_sync(&self) -> Result<Option<serde_json::Value>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_STATE_SK.into())))
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        Ok(out.item().and_then(|i| i.get(attr::LAST_SYNC)).map(json))
    }
}

fn json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => {
            n.parse::<i64>().map(Value::from).or_else(|_| n.parse::<f64>().map(Value::from)).unwrap_or(Value::Null)
        }
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::L(l) => Value::Array(l.iter().map(json).collect()),
        AttributeValue::M(m) => {
            let sorted: BTreeMap<&String, &AttributeValue> = m.iter().collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), json(v))).collect())
        }
        AttributeValue::Ss(s) => Value::from(s.clone()),
        _ => Value::Null,
    }
}
