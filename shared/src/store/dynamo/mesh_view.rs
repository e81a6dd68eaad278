//! What a sidecar reads: the whole mesh once (its service and endpoint
//! items, and the VIEW item's generation and VIP port), then only the change
//! items written since, and the items they name. Every read stays inside the
//! partition `MESH#<mesh>`, which is what the sidecar policy's
//! `dynamodb:LeadingKeys` condition allows.

use aws_sdk_dynamodb::Client;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use std::sync::Arc;

use aws_sdk_dynamodb::types::ReturnConsumedCapacity;

use super::{Item, ReadUsage, key, num, query_counted, s, sdk_error, service_entry, text};
use crate::error::StoreError;
use crate::model::{Mesh, MeshTrafficPermission, Resource, parse_one};
use crate::mtls::issuer::StoredRoot;
use crate::store::keys::{self, attr};
use crate::view::{EndpointEntry, ServiceEntry};

#[derive(Debug, Clone)]
pub struct DynamoMeshView {
    client: Client,
    table: String,
    usage: Arc<ReadUsage>,
}

impl DynamoMeshView {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into(), usage: Arc::default() }
    }

    /// Requests and read units spent so far by this reader and its clones.
    pub fn usage(&self) -> &ReadUsage {
        &self.usage
    }

    /// The mesh's view generation (0 while nothing was ever registered) and
    /// the VIP port the functions published names for, if they wrote one.
    /// Eventually consistent and projected: half a read unit when idle.
    pub async fn generation(&self, mesh: &str) -> Result<(u64, Option<u16>), StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::mesh_pk(mesh), keys::VIEW_SK.to_owned())))
            .projection_expression("#g, #p")
            .expression_attribute_names("#g", attr::GENERATION)
            .expression_attribute_names("#p", attr::VIP_PORT)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        self.usage.add(out.consumed_capacity());
        let item = out.item();
        let port = item.and_then(|i| u16::try_from(num(i, attr::VIP_PORT)).ok()).filter(|p| *p != 0);
        Ok((item.map(|i| num(i, attr::GENERATION)).unwrap_or(0), port))
    }

    /// The mesh's services and endpoints.
    pub async fn read(&self, mesh: &str) -> Result<(Vec<ServiceEntry>, Vec<EndpointEntry>), StoreError> {
        let (services, endpoints) = self.read_keyed(mesh).await?;
        Ok((services.into_iter().map(|(_, s)| s).collect(), endpoints.into_iter().map(|(_, e)| e).collect()))
    }

    /// The mesh's services and endpoints, each with its sort key.
    #[allow(clippy::type_complexity)]
    pub async fn read_keyed(
        &self,
        mesh: &str,
    ) -> Result<(Vec<(String, ServiceEntry)>, Vec<(String, EndpointEntry)>), StoreError> {
        let pk = keys::mesh_pk(mesh);
        let keyed = |item: &Item| text(item, keys::SK).unwrap_or_default().to_owned();
        let services = query_counted(&self.client, &self.table, &pk, "SVC#", None, Some(&self.usage))
            .await?
            .iter()
            .map(|item| Ok((keyed(item), service_entry(mesh, item)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((services, self.endpoints(mesh).await?))
    }

    /// The mesh's Mesh resource, its backends' roots and its traffic
    /// permissions, each with its sort key: one GetItem and two small Queries.
    pub async fn security(&self, mesh: &str) -> Result<Security, StoreError> {
        let sk = keys::mesh_resource_sk(mesh);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::mesh_pk(mesh), sk.clone())))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        self.usage.add(out.consumed_capacity());
        let resource = out.item().map(|i| super::ca::mesh_from_item(mesh, i)).transpose()?.map(|m| (sk, m));
        let roots =
            query_counted(&self.client, &self.table, &keys::mesh_pk(mesh), keys::ROOT_PREFIX, None, Some(&self.usage))
                .await?
                .iter()
                .filter_map(|item| Some((text(item, keys::SK)?.to_owned(), super::ca::root_from_item(item)?)))
                .collect();
        let permissions = query_counted(
            &self.client,
            &self.table,
            &keys::mesh_pk(mesh),
            keys::PERMISSION_PREFIX,
            None,
            Some(&self.usage),
        )
        .await?
        .iter()
        .map(|item| Ok((text(item, keys::SK).unwrap_or_default().to_owned(), permission_from_item(mesh, item)?)))
        .collect::<Result<_, StoreError>>()?;
        let mut policies = Vec::new();
        for prefix in keys::outbound_policy_prefixes() {
            let items =
                query_counted(&self.client, &self.table, &keys::mesh_pk(mesh), &prefix, None, Some(&self.usage))
                    .await?;
            for item in &items {
                policies.push((text(item, keys::SK).unwrap_or_default().to_owned(), policy_from_item(mesh, item)?));
            }
        }
        Ok(Security { resource, roots, permissions, policies })
    }

    /// The mesh's endpoints, each with its sort key: one Query.
    pub async fn endpoints(&self, mesh: &str) -> Result<Vec<(String, EndpointEntry)>, StoreError> {
        query_counted(&self.client, &self.table, &keys::mesh_pk(mesh), "EP#", None, Some(&self.usage))
            .await?
            .iter()
            .map(|item| Ok((text(item, keys::SK).unwrap_or_default().to_owned(), endpoint_entry(mesh, item)?)))
            .collect()
    }

    /// The mesh's change items written at or after `since_ms` (epoch
    /// milliseconds), oldest first. Eventually consistent: a change item is
    /// written once and never modified, so a read sees it whole or not yet,
    /// and the caller reads again from before it.
    pub async fn changes(&self, mesh: &str, since_ms: u64) -> Result<Vec<ChangeItem>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
                .expression_attribute_names("#pk", keys::PK)
                .expression_attribute_names("#sk", keys::SK)
                .expression_attribute_values(":pk", s(keys::mesh_pk(mesh)))
                .expression_attribute_values(":from", s(keys::change_sk(since_ms, 0)))
                .expression_attribute_values(":to", s(format!("{}~", keys::CHANGE_PREFIX)))
                .set_exclusive_start_key(start)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| sdk_error("Query", &self.table, e))?;
            self.usage.add(page.consumed_capacity());
            for item in page.items() {
                let sk = text(item, keys::SK).unwrap_or_default().to_owned();
                let at_ms = sk
                    .strip_prefix(keys::CHANGE_PREFIX)
                    .and_then(|rest| rest.split('#').next())
                    .and_then(|ms| ms.parse().ok())
                    .ok_or_else(|| StoreError::corrupt(format!("change item {sk:?} in mesh {mesh}")))?;
                let changed = item.get(attr::CHANGED).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
                out.push(ChangeItem { sk, at_ms, changed });
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    /// The service and endpoint items under these sort keys, read strongly
    /// consistent (they may have changed a moment ago), 100 keys a call; a
    /// key with no item is a deletion.
    pub async fn items(&self, mesh: &str, sks: &[String]) -> Result<Vec<(String, Option<MeshItem>)>, StoreError> {
        let pk = keys::mesh_pk(mesh);
        let found = std::sync::Mutex::new(HashMap::new());
        for chunk in sks.chunks(100) {
            let pending: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|sk| key(pk.clone(), sk.clone())).collect();
            super::until_processed("BatchGetItem", pending, |keys| async {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| super::build_err(&self.table, e))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| sdk_error("BatchGetItem", &self.table, e))?;
                self.usage.add(out.consumed_capacity().first());
                for item in out.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                    let sk = text(item, keys::SK).unwrap_or_default().to_owned();
                    if let Some(entry) = mesh_item(mesh, item)? {
                        found.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(sk, entry);
                    }
                }
                Ok(out
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default())
            })
            .await?;
        }
        let mut found = found.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(sks.iter().map(|sk| (sk.clone(), found.remove(sk))).collect())
    }
}

/// What a sidecar reads of its mesh's security, each item with its sort key.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub resource: Option<(String, Mesh)>,
    pub roots: Vec<(String, StoredRoot)>,
    pub permissions: Vec<(String, MeshTrafficPermission)>,
    /// Outbound policies (MeshTimeout, MeshRetry, ...).
    pub policies: Vec<(String, Resource)>,
}

/// A change item: when it was written and what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeItem {
    pub sk: String,
    pub at_ms: u64,
    /// Sort keys of the mesh items it changed.
    pub changed: Vec<String>,
}

/// A mesh item a sidecar serves from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshItem {
    Service(ServiceEntry),
    Endpoint(EndpointEntry),
    /// The mesh's Mesh resource (its mTLS settings).
    Mesh(Box<Mesh>),
    /// A backend's root certificate.
    Root(StoredRoot),
    Permission(Box<MeshTrafficPermission>),
    /// An outbound policy.
    Policy(Box<Resource>),
}

fn mesh_item(mesh: &str, item: &Item) -> Result<Option<MeshItem>, StoreError> {
    let sk = text(item, keys::SK).unwrap_or_default();
    if sk.starts_with("SVC#") {
        Ok(Some(MeshItem::Service(service_entry(mesh, item)?)))
    } else if sk.starts_with("EP#") {
        Ok(Some(MeshItem::Endpoint(endpoint_entry(mesh, item)?)))
    } else if sk == keys::mesh_resource_sk(mesh) {
        Ok(Some(MeshItem::Mesh(Box::new(super::ca::mesh_from_item(mesh, item)?))))
    } else if sk.starts_with(keys::ROOT_PREFIX) {
        Ok(super::ca::root_from_item(item).map(MeshItem::Root))
    } else if sk.starts_with(keys::PERMISSION_PREFIX) {
        Ok(Some(MeshItem::Permission(Box::new(permission_from_item(mesh, item)?))))
    } else if keys::outbound_policy_prefixes().iter().any(|p| sk.starts_with(p.as_str())) {
        Ok(Some(MeshItem::Policy(Box::new(policy_from_item(mesh, item)?))))
    } else {
        Ok(None)
    }
}

fn permission_from_item(mesh: &str, item: &Item) -> Result<MeshTrafficPermission, StoreError> {
    let sk = text(item, keys::SK).unwrap_or_default();
    match parse_one(text(item, attr::DOC).unwrap_or_default()) {
        Ok(Resource::MeshTrafficPermission(p)) => Ok(p),
        Ok(other) => Err(StoreError::corrupt(format!("{sk:?} in mesh {mesh} holds a {}", other.kind()))),
        Err(e) => Err(StoreError::corrupt(format!("{sk:?} in mesh {mesh} no longer validates: {e}"))),
    }
}

fn policy_from_item(mesh: &str, item: &Item) -> Result<Resource, StoreError> {
    let sk = text(item, keys::SK).unwrap_or_default();
    parse_one(text(item, attr::DOC).unwrap_or_default())
        .map_err(|e| StoreError::corrupt(format!("{sk:?} in mesh {mesh} no longer validates: {e}")))
}

fn endpoint_entry(mesh: &str, item: &Item) -> Result<EndpointEntry, StoreError> {
    let sk = text(item, keys::SK).unwrap_or_default();
    let bad = |what: &str| StoreError::corrupt(format!("endpoint item {sk:?} in mesh {mesh}: {what}"));
    let port = |name: &str| u16::try_from(num(item, name)).ok().filter(|p| *p != 0);
    Ok(EndpointEntry {
        service: text(item, attr::SERVICE).ok_or_else(|| bad("no service"))?.to_owned(),
        address: text(item, attr::ADDRESS).ok_or_else(|| bad("no address"))?.to_owned(),
        port: port(attr::PORT).ok_or_else(|| bad("no port"))?,
        service_port: port(attr::SERVICE_PORT).unwrap_or(0),
        zone: text(item, attr::ZONE).map(str::to_owned),
        task_arn: text(item, attr::TASK_ARN).map(str::to_owned),
        protocol: text(item, attr::PROTOCOL).map(crate::model::Protocol::parse).unwrap_or_default(),
    })
}
