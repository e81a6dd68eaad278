//! What a sidecar reads: one mesh's view generation (one small item, read on
//! every refresh) and, when it moved, the mesh's service and endpoint items.
//! Every read stays inside the partition `MESH#<mesh>`, which is what the
//! sidecar policy's `dynamodb:LeadingKeys` condition allows.

use aws_sdk_dynamodb::Client;

use super::{key, num, query, sdk_error, service_entry, text};
use crate::error::StoreError;
use crate::store::keys::{self, attr};
use crate::view::{EndpointEntry, ServiceEntry};

#[derive(Debug, Clone)]
pub struct DynamoMeshView {
    client: Client,
    table: String,
}

impl DynamoMeshView {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
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
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        let item = out.item();
        let port = item.and_then(|i| u16::try_from(num(i, attr::VIP_PORT)).ok()).filter(|p| *p != 0);
        Ok((item.map(|i| num(i, attr::GENERATION)).unwrap_or(0), port))
    }

    /// The mesh's services and endpoints.
    pub async fn read(&self, mesh: &str) -> Result<(Vec<ServiceEntry>, Vec<EndpointEntry>), StoreError> {
        let pk = keys::mesh_pk(mesh);
        let services = query(&self.client, &self.table, &pk, "SVC#", None)
            .await?
            .iter()
            .map(|item| service_entry(mesh, item))
            .collect::<Result<Vec<_>, _>>()?;
        let mut endpoints = Vec::new();
        for item in query(&self.client, &self.table, &pk, "EP#", None).await? {
            let sk = text(&item, keys::SK).unwrap_or_default();
            let bad = |what: &str| StoreError::corrupt(format!("endpoint item {sk:?} in mesh {mesh}: {what}"));
            let port = |name: &str| u16::try_from(num(&item, name)).ok().filter(|p| *p != 0);
            endpoints.push(EndpointEntry {
                service: text(&item, attr::SERVICE).ok_or_else(|| bad("no service"))?.to_owned(),
                address: text(&item, attr::ADDRESS).ok_or_else(|| bad("no address"))?.to_owned(),
                port: port(attr::PORT).ok_or_else(|| bad("no port"))?,
                service_port: port(attr::SERVICE_PORT).unwrap_or(0),
                zone: text(&item, attr::ZONE).map(str::to_owned),
                task_arn: text(&item, attr::TASK_ARN).map(str::to_owned),
            });
        }
        Ok((services, endpoints))
    }
}
