//! [`Registry`] on DynamoDB: each registration or deregistration is one
//! TransactWriteItems, so a task's endpoints, its services and its record
//! change together or not at all.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};

use super::{build_err, key, n, s, sdk_error, transact};
use crate::error::{StoreError, StoreErrorKind};
use crate::model::MeshServicesMode;
use crate::registration::{RefusalRecord, Registration, Registry, TaskRecord, WriteOutcome};
use crate::store::keys::{self, attr};
use crate::vip::UnixSeconds;

/// How long a stopped task's record stays to turn away late RUNNING events:
/// EventBridge retries a delivery for up to 24 hours.
pub const STOPPED_RETENTION: UnixSeconds = 48 * 3600;
/// How long a refusal stays visible to operators after its last occurrence.
pub const REFUSAL_RETENTION: UnixSeconds = 7 * 24 * 3600;

const RUNNING: &str = "RUNNING";
const STOPPED: &str = "STOPPED";

#[derive(Debug, Clone)]
pub struct DynamoRegistry {
    client: Client,
    table: String,
}

impl DynamoRegistry {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        build_err(&self.table, e)
    }

    /// An operator-facing status item about a task, kept 48 hours.
    async fn put_status(&self, sk: String, r: &RefusalRecord) -> Result<(), StoreError> {
        let mut item = key(keys::STATUS_PK.into(), sk);
        item.extend([
            (attr::TASK_ARN.into(), s(&r.task_arn)),
            (attr::TASK_DEFINITION_ARN.into(), s(&r.task_definition_arn)),
            (attr::CLUSTER_ARN.into(), s(&r.cluster_arn)),
            (attr::REASON.into(), s(&r.reason)),
            (attr::AT.into(), n(r.at)),
            (attr::EXPIRES_AT.into(), n(r.at + REFUSAL_RETENTION)),
        ]);
        if let Some(m) = &r.mesh {
            item.insert(attr::MESH.into(), s(m));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", &self.table, e))?;
        Ok(())
    }
}

fn list(values: impl IntoIterator<Item = String>) -> AttributeValue {
    AttributeValue::L(values.into_iter().map(AttributeValue::S).collect())
}

fn strings(item: &HashMap<String, AttributeValue>, name: &str) -> Vec<String> {
    match item.get(name) {
        Some(AttributeValue::L(l)) => l.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
        _ => Vec::new(),
    }
}

impl Registry for DynamoRegistry {
    async fn task(&self, task_arn: &str) -> Result<Option<TaskRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::task_pk(task_arn), keys::TASK_SK.into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        let Some(item) = out.item() else { return Ok(None) };
        let version = item
            .get(attr::VERSION)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::corrupt(format!("task {task_arn}: no numeric version")))?;
        Ok(Some(TaskRecord {
            version,
            stopped: item.get(attr::STATUS).and_then(|v| v.as_s().ok()).is_some_and(|s| s == STOPPED),
            mesh: item.get(attr::MESH).and_then(|v| v.as_s().ok()).cloned(),
            endpoints: strings(item, attr::ENDPOINTS),
            services: strings(item, attr::SERVICES),
        }))
    }

    async fn register(&self, reg: &Registration) -> Result<WriteOutcome, StoreError> {
        let mesh_pk = keys::mesh_pk(&reg.mesh);
        let endpoint_sks: Vec<String> =
            reg.endpoints.iter().map(|e| keys::endpoint_sk(&e.service, &reg.task_id, e.port)).collect();
        let service_sks: Vec<String> = reg.services.iter().map(|s| keys::service_sk(s.key.kind, &s.key.name)).collect();

        let mut task = key(keys::task_pk(&reg.task_arn), keys::TASK_SK.into());
        task.extend([
            (attr::VERSION.into(), n(reg.version)),
            (attr::STATUS.into(), s(RUNNING)),
            (attr::MESH.into(), s(&reg.mesh)),
            (attr::CLUSTER_ARN.into(), s(&reg.cluster_arn)),
            (attr::ENDPOINTS.into(), list(endpoint_sks.clone())),
            (attr::SERVICES.into(), list(service_sks.clone())),
            (attr::UPDATED_AT.into(), n(reg.now)),
        ]);
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(task))
                        .condition_expression("attribute_not_exists(#pk) OR (#st <> :stopped AND #v < :v)")
                        .expression_attribute_names("#pk", keys::PK)
                        .expression_attribute_names("#st", attr::STATUS)
                        .expression_attribute_names("#v", attr::VERSION)
                        .expression_attribute_values(":stopped", s(STOPPED))
                        .expression_attribute_values(":v", n(reg.version))
                        .build()
                        .map_err(|e| self.err(e))?,
                )
                .build(),
        ];
        for (e, sk) in reg.endpoints.iter().zip(&endpoint_sks) {
            let mut item = key(mesh_pk.clone(), sk.clone());
            item.extend([
                (attr::SERVICE.into(), s(&e.service)),
                (attr::ADDRESS.into(), s(&e.address)),
                (attr::PORT.into(), n(e.port.into())),
                (attr::SERVICE_PORT.into(), n(e.service_port.into())),
                (attr::PROTOCOL.into(), s(&e.protocol)),
                (attr::TASK_ARN.into(), s(&e.task_arn)),
                (attr::VERSION.into(), n(e.version)),
            ]);
            if let Some(z) = &e.zone {
                item.insert(attr::ZONE.into(), s(z));
            }
            let put = Put::builder().table_name(&self.table).set_item(Some(item)).build().map_err(|e| self.err(e))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let first_service = items.len();
        for (svc, sk) in reg.services.iter().zip(&service_sks) {
            // The condition is what keeps an endpoint from ever existing without
            // its service's VIP: garbage collection removes `vip` first.
            let mut u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(mesh_pk.clone(), sk.clone())))
                .condition_expression("attribute_exists(#vip)")
                .expression_attribute_names("#vip", attr::VIP)
                .expression_attribute_names("#c", attr::LAST_ENDPOINT_CHANGE)
                .expression_attribute_values(":now", n(reg.now));
            if svc.ports.is_empty() {
                u = u.update_expression("SET #c = :now");
            } else {
                u = u
                    .update_expression("SET #c = :now, #p = :p, #l = :l")
                    .expression_attribute_names("#p", attr::PORTS)
                    .expression_attribute_names("#l", attr::LABELS)
                    .expression_attribute_values(":p", super::ports_value(&svc.ports))
                    .expression_attribute_values(":l", super::labels_value(&svc.labels));
            }
            items.push(TransactWriteItem::builder().update(u.build().map_err(|e| self.err(e))?).build());
        }
        // Sidecars see endpoints, and services that are new or carry ports.
        let changed: Vec<String> = reg
            .endpoints
            .iter()
            .map(|e| keys::endpoint_sk(&e.service, &reg.task_id, e.port))
            .chain(
                reg.services
                    .iter()
                    .zip(&service_sks)
                    .filter(|(svc, _)| reg.new_services.contains(&svc.key) || !svc.ports.is_empty())
                    .map(|(_, sk)| sk.clone()),
            )
            .collect();
        items.extend(super::view_changed(&self.table, &reg.mesh, &changed, reg.now, Some(reg.vip_port))?);
        if reg.dns_changed {
            // dns-sync learns of the change, and of the mesh to read services from.
            items.push(super::bump_dns(&self.table, Some(&reg.mesh), reg.now)?);
        }
        match transact(&self.client, &self.table, "TransactWriteItems (register task)", items).await? {
            None => Ok(WriteOutcome::Applied),
            Some(failed) if failed.first() == Some(&true) => Ok(WriteOutcome::Stale),
            Some(failed) if failed.iter().skip(first_service).any(|f| *f) => Ok(WriteOutcome::ServiceGone),
            Some(_) => {
                Err(StoreError::new(StoreErrorKind::Conflict, "register task: a condition failed on no checked item"))
            }
        }
    }

    async fn deregister(
        &self,
        task_arn: &str,
        seen: &TaskRecord,
        version: u64,
        now: UnixSeconds,
    ) -> Result<WriteOutcome, StoreError> {
        let mesh_pk = keys::mesh_pk(seen.mesh.as_deref().unwrap_or_default());
        let task = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(keys::task_pk(task_arn), keys::TASK_SK.into())))
            .update_expression("SET #st = :stopped, #v = :v, #x = :x, #u = :now REMOVE #e")
            .condition_expression("#v = :seen AND #st = :running")
            .expression_attribute_names("#st", attr::STATUS)
            .expression_attribute_names("#v", attr::VERSION)
            .expression_attribute_names("#x", attr::EXPIRES_AT)
            .expression_attribute_names("#u", attr::UPDATED_AT)
            .expression_attribute_names("#e", attr::ENDPOINTS)
            .expression_attribute_values(":stopped", s(STOPPED))
            .expression_attribute_values(":running", s(RUNNING))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":seen", n(seen.version))
            .expression_attribute_values(":x", n(now + STOPPED_RETENTION))
            .expression_attribute_values(":now", n(now))
            .build()
            .map_err(|e| self.err(e))?;
        let mut items = vec![TransactWriteItem::builder().update(task).build()];
        for sk in &seen.endpoints {
            let d = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(mesh_pk.clone(), sk.clone())))
                .build()
                .map_err(|e| self.err(e))?;
            items.push(TransactWriteItem::builder().delete(d).build());
        }
        for sk in &seen.services {
            // Starts the deletion grace; `attribute_exists` keeps a collected
            // service from being recreated as an item without a VIP.
            let u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(mesh_pk.clone(), sk.clone())))
                .update_expression("SET #c = :now")
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", keys::PK)
                .expression_attribute_names("#c", attr::LAST_ENDPOINT_CHANGE)
                .expression_attribute_values(":now", n(now))
                .build()
                .map_err(|e| self.err(e))?;
            items.push(TransactWriteItem::builder().update(u).build());
        }
        if let Some(mesh) = &seen.mesh {
            items.extend(super::view_changed(&self.table, mesh, &seen.endpoints, now, None)?);
        }
        match transact(&self.client, &self.table, "TransactWriteItems (deregister task)", items.clone()).await? {
            None => Ok(WriteOutcome::Applied),
            Some(failed) if failed.first() == Some(&true) => Ok(WriteOutcome::Stale),
            Some(_) => {
                // A service item is gone: deregister without touching services.
                let first_service = 1 + seen.endpoints.len();
                items.drain(first_service..first_service + seen.services.len());
                match transact(&self.client, &self.table, "TransactWriteItems (deregister task)", items).await? {
                    None => Ok(WriteOutcome::Applied),
                    Some(_) => Ok(WriteOutcome::Stale),
                }
            }
        }
    }

    async fn tombstone(&self, task_arn: &str, version: u64, now: UnixSeconds) -> Result<WriteOutcome, StoreError> {
        let mut item = key(keys::task_pk(task_arn), keys::TASK_SK.into());
        item.extend([
            (attr::VERSION.into(), n(version)),
            (attr::STATUS.into(), s(STOPPED)),
            (attr::EXPIRES_AT.into(), n(now + STOPPED_RETENTION)),
            (attr::UPDATED_AT.into(), n(now)),
        ]);
        Ok(if super::put_if_absent(&self.client, &self.table, item).await? {
            WriteOutcome::Applied
        } else {
            WriteOutcome::Stale
        })
    }

    async fn record_refusal(&self, r: &RefusalRecord) -> Result<(), StoreError> {
        self.put_status(keys::refusal_sk(&r.task_arn), r).await
    }

    async fn record_skipped(&self, r: &RefusalRecord) -> Result<(), StoreError> {
        self.put_status(keys::skipped_sk(&r.task_arn), r).await
    }

    async fn registered_tasks(&self) -> Result<Vec<String>, StoreError> {
        // Every mesh with services is in the DNS state's `meshes`; endpoints
        // live under their mesh and name their task.
        use crate::dns::sync::DnsStore;
        let meshes = super::DynamoDnsStore::new(self.client.clone(), &self.table).state().await?.meshes;
        let mut tasks = std::collections::BTreeSet::new();
        for mesh in meshes {
            for item in super::query(&self.client, &self.table, &keys::mesh_pk(&mesh), "EP#", None).await? {
                if let Some(arn) = super::text(&item, attr::TASK_ARN) {
                    tasks.insert(arn.to_owned());
                }
            }
        }
        Ok(tasks.into_iter().collect())
    }

    async fn mesh_mode(&self, mesh: &str) -> Result<MeshServicesMode, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::mesh_pk(mesh), keys::resource_sk("Mesh", mesh))))
            .projection_expression("#m")
            .expression_attribute_names("#m", attr::MESH_SERVICES_MODE)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        let mode = out.item().and_then(|i| i.get(attr::MESH_SERVICES_MODE)).and_then(|v| v.as_s().ok());
        match mode {
            None => Ok(MeshServicesMode::Disabled),
            Some(m) => MeshServicesMode::parse(m).ok_or_else(|| {
                StoreError::corrupt(format!("mesh {mesh}: meshServices mode {m:?} is not a known mode"))
            }),
        }
    }
}
