//! The issuer's items: the mesh's Mesh resource (read), each builtin
//! backend's root (`CA#<backend>` in the mesh partition, where sidecars read
//! it with the view), and the proofs already used (`PROOF#<signature>`,
//! expiring once they could no longer be fresh).

use std::time::SystemTime;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::{Item, build_err, key, n, s, sdk_error, text, transact, view_changed};
use crate::error::StoreError;
use crate::model::{Mesh, Resource, parse_one};
use crate::mtls::issuer::{CaStore, StoredRoot};
use crate::store::keys::{self, attr};

#[derive(Debug, Clone)]
pub struct DynamoCaStore {
    client: Client,
    table: String,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A Mesh resource item's document, parsed.
pub(crate) fn mesh_from_item(mesh: &str, item: &Item) -> Result<Mesh, StoreError> {
    let doc = text(item, attr::DOC).unwrap_or_default();
    match parse_one(doc) {
        Ok(Resource::Mesh(m)) => Ok(m),
        Ok(other) => Err(StoreError::corrupt(format!("mesh {mesh}: its Mesh item holds a {}", other.kind()))),
        Err(e) => Err(StoreError::corrupt(format!("mesh {mesh}: its stored Mesh no longer validates: {e}"))),
    }
}

/// A root item.
pub(crate) fn root_from_item(item: &Item) -> Option<StoredRoot> {
    Some(StoredRoot {
        backend: text(item, attr::BACKEND)?.to_owned(),
        certificate: text(item, attr::CERTIFICATE)?.to_owned(),
    })
}

impl DynamoCaStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// One item of the mesh's partition, read consistently.
    async fn item(&self, mesh: &str, sk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::mesh_pk(mesh), sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        Ok(out.item)
    }

    async fn root(&self, mesh: &str, backend: &str) -> Result<Option<StoredRoot>, StoreError> {
        Ok(self.item(mesh, keys::root_sk(backend)).await?.as_ref().and_then(root_from_item))
    }
}

impl CaStore for DynamoCaStore {
    async fn mesh(&self, mesh: &str) -> Result<Option<Mesh>, StoreError> {
        self.item(mesh, keys::mesh_resource_sk(mesh)).await?.map(|i| mesh_from_item(mesh, &i)).transpose()
    }

    async fn roots(&self, mesh: &str) -> Result<Vec<StoredRoot>, StoreError> {
        let items = super::query(&self.client, &self.table, &keys::mesh_pk(mesh), keys::ROOT_PREFIX, None).await?;
        Ok(items.iter().filter_map(root_from_item).collect())
    }

    async fn add_root(&self, mesh: &str, root: &StoredRoot, now: SystemTime) -> Result<StoredRoot, StoreError> {
        let sk = keys::root_sk(&root.backend);
        let mut item = key(keys::mesh_pk(mesh), sk.clone());
        item.insert(attr::BACKEND.into(), s(&root.backend));
        item.insert(attr::CERTIFICATE.into(), s(&root.certificate));
        item.insert(attr::UPDATED_AT.into(), n(secs(now)));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", keys::PK)
            .build()
            .map_err(|e| build_err(&self.table, e))?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        items.extend(view_changed(&self.table, mesh, &[sk], secs(now), None)?);
        match transact(&self.client, &self.table, "TransactWriteItems (root)", items).await? {
            None => Ok(root.clone()),
            // Another issuer made this backend's root first: everyone uses that one.
            Some(_) => self.root(mesh, &root.backend).await?.ok_or_else(|| {
                StoreError::conflict(format!("mesh {mesh}: the root of backend {} was made and is gone", root.backend))
            }),
        }
    }

    async fn first_use(&self, signature: &str, until: SystemTime) -> Result<bool, StoreError> {
        let pk = keys::proof_pk(signature);
        let mut item = key(pk.clone(), pk);
        item.insert(attr::EXPIRES_AT.into(), n(secs(until)));
        super::put_if_absent(&self.client, &self.table, item).await
    }
}
