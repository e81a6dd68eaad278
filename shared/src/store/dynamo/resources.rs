//! Applied resources on DynamoDB: `RES#<Kind>#<name>` items with their
//! document and version, the service a resource declares, and the generation
//! bumps that tell sidecars and dns-sync. Each apply or delete is one
//! transaction, conditional on the version the caller read.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};

use super::{build_err, bump_dns, key, labels_value, n, num, ports_value, s, sdk_error, text, transact, view_changed};
use crate::config::Pools;
use crate::error::{StoreError, StoreErrorKind};
use crate::model::{Resource, ResourceKind};
use crate::resources::{Change, Declared, StoredResource, appliable, declared_service, home_mesh};
use crate::store::keys::{self, attr};
use crate::vip::{ServiceKey, ServiceKind, UnixSeconds, VipLedger, VipPool, allocate};

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Clone)]
pub struct DynamoResources {
    client: Client,
    table: String,
}

/// The applied kinds a sidecar reads with its view.
fn sidecars_read(kind: ResourceKind) -> bool {
    matches!(kind, ResourceKind::Mesh | ResourceKind::MeshTrafficPermission)
        || ResourceKind::OUTBOUND_POLICIES.contains(&kind)
}

fn partition(mesh: Option<&str>) -> String {
    mesh.map_or_else(|| keys::GLOBAL_PK.to_owned(), keys::mesh_pk)
}

fn stored(item: &Item) -> Result<StoredResource, StoreError> {
    let sk = text(item, keys::SK).unwrap_or_default();
    let mut parts = sk.splitn(3, '#').skip(1);
    let (Some(kind), Some(name)) = (parts.next().and_then(ResourceKind::parse), parts.next()) else {
        return Err(StoreError::corrupt(format!("resource item {sk:?}")));
    };
    Ok(StoredResource {
        kind,
        name: name.to_owned(),
        mesh: text(item, keys::PK).and_then(|pk| pk.strip_prefix("MESH#")).map(str::to_owned),
        version: num(item, attr::VERSION),
        doc: text(item, attr::DOC).unwrap_or_default().to_owned(),
        updated_at: num(item, attr::UPDATED_AT),
    })
}

/// Why an apply or delete wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "{kind} {name:?} changed since it was read (stored version {found}, expected {expected}); read it again and re-apply"
    )]
    Stale { kind: ResourceKind, name: String, expected: u64, found: u64 },
    #[error("{kind} {name:?} does not exist")]
    Missing { kind: ResourceKind, name: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of applying one resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub kind: ResourceKind,
    pub name: String,
    pub mesh: Option<String>,
    pub change: Change,
    pub version: u64,
    pub vip: Option<Ipv4Addr>,
}

/// The service a stored resource of `kind` declares.
pub fn declared_key(kind: ResourceKind, mesh: Option<&str>, name: &str) -> Option<ServiceKey> {
    let kind = match kind {
        ResourceKind::MeshService => ServiceKind::MeshService,
        ResourceKind::MeshExternalService => ServiceKind::MeshExternalService,
        ResourceKind::MeshMultiZoneService => ServiceKind::MeshMultiZoneService,
        _ => return None,
    };
    Some(ServiceKey::new(mesh?, kind, name))
}

impl DynamoResources {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    pub async fn get(
        &self,
        kind: ResourceKind,
        mesh: Option<&str>,
        name: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(partition(mesh), keys::resource_sk(kind.as_str(), name))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        out.item().map(stored).transpose()
    }

    /// Every resource of `kind` in `mesh` (or globally for a HostnameGenerator).
    pub async fn list(&self, kind: ResourceKind, mesh: Option<&str>) -> Result<Vec<StoredResource>, StoreError> {
        let items =
            super::query(&self.client, &self.table, &partition(mesh), &keys::resource_sk(kind.as_str(), ""), None)
                .await?;
        items.iter().map(stored).collect()
    }

    /// Every Mesh resource: one item per mesh partition, found by a scan (an
    /// operator's occasional read).
    pub async fn meshes(&self) -> Result<Vec<StoredResource>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(#sk, :p)")
                .expression_attribute_names("#sk", keys::SK)
                .expression_attribute_values(":p", s(keys::resource_sk("Mesh", "")))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("Scan", &self.table, e))?;
            for item in page.items() {
                out.push(stored(item)?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                out.sort_by(|a, b| a.name.cmp(&b.name));
                return Ok(out);
            }
        }
    }

    /// Validated `resource` (its document text `doc`) into the table: the
    /// declared service gets its VIP, then one transaction writes the
    /// resource if nobody changed it since it was read.
    pub async fn apply(
        &self,
        ledger: &impl VipLedger,
        pools: &Pools,
        resource: &Resource,
        doc: &str,
        now: UnixSeconds,
    ) -> Result<Applied, WriteError> {
        appliable(resource.kind()).map_err(WriteError::Refused)?;
        let mesh = home_mesh(resource);
        let current = self.get(resource.kind(), mesh.as_deref(), resource.name()).await?;
        let expected = current.as_ref().map_or(0, |c| c.version);
        let declared = declared_service(resource);
        let vip = match &declared {
            Some(d) => {
                let pool = VipPool::new(pools.for_kind(d.key.kind)).map_err(|e| WriteError::Refused(e.to_string()))?;
                Some(allocate(ledger, &pool, &d.key, now).await.map_err(|e| WriteError::Refused(e.to_string()))?.vip)
            }
            None => None,
        };
        let applied = |change, version| Applied {
            kind: resource.kind(),
            name: resource.name().to_owned(),
            mesh: mesh.clone(),
            change,
            version,
            vip,
        };
        if current.as_ref().is_some_and(|c| c.doc == doc) {
            return Ok(applied(Change::Unchanged, expected));
        }
        match self.put(resource, mesh.as_deref(), doc, expected, declared.as_ref().zip(vip), now).await {
            Ok(version) => Ok(applied(if expected == 0 { Change::Created } else { Change::Updated }, version)),
            // Someone wrote meanwhile; if they wrote exactly this, the apply
            // has nothing left to do (concurrent identical applies all succeed).
            Err(stale @ WriteError::Stale { .. }) => {
                match self.get(resource.kind(), mesh.as_deref(), resource.name()).await? {
                    Some(now_stored) if now_stored.doc == doc => Ok(applied(Change::Unchanged, now_stored.version)),
                    _ => Err(stale),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `resource` as version `expected + 1` (`expected == 0`: it must
    /// not exist yet), with its declared service holding `vip`.
    pub async fn put(
        &self,
        resource: &Resource,
        mesh: Option<&str>,
        doc: &str,
        expected: u64,
        declared: Option<(&Declared, Ipv4Addr)>,
        now: UnixSeconds,
    ) -> Result<u64, WriteError> {
        let kind = resource.kind();
        let name = resource.name();
        let mut item: Item = key(partition(mesh), keys::resource_sk(kind.as_str(), name));
        item.insert(attr::KIND.into(), s(kind.as_str()));
        item.insert(attr::NAME.into(), s(name));
        item.insert(attr::DOC.into(), s(doc));
        item.insert(attr::VERSION.into(), n(expected + 1));
        item.insert(attr::UPDATED_AT.into(), n(now));
        if let Resource::Mesh(m) = resource {
            item.insert(attr::MESH_SERVICES_MODE.into(), s(m.mesh_services.as_str()));
        }
        let mut put =
            Put::builder().table_name(&self.table).set_item(Some(item)).expression_attribute_names("#v", attr::VERSION);
        put = if expected == 0 {
            put.condition_expression("attribute_not_exists(#v)")
        } else {
            put.condition_expression("#v = :v").expression_attribute_values(":v", n(expected))
        };
        let mut items =
            vec![TransactWriteItem::builder().put(put.build().map_err(|e| build_err(&self.table, e))?).build()];
        if let Some((d, vip)) = declared {
            items.push(self.declare(d, vip, now)?);
        }
        if let Some(m) = mesh {
            let mut changed: Vec<String> =
                declared.map(|(d, _)| keys::service_sk(d.key.kind, &d.key.name)).into_iter().collect();
            // Sidecars read their mesh's Mesh (mTLS) and its traffic permissions.
            if sidecars_read(kind) {
                changed.push(keys::resource_sk(kind.as_str(), name));
            }
            items.extend(view_changed(&self.table, m, &changed, now, None)?);
        }
        items.push(bump_dns(&self.table, mesh, now)?);
        match transact(&self.client, &self.table, "TransactWriteItems (apply)", items).await? {
            None => Ok(expected + 1),
            Some(failed) if failed.first() == Some(&true) => {
                let found = self.get(kind, mesh, name).await?.map_or(0, |r| r.version);
                Err(WriteError::Stale { kind, name: name.to_owned(), expected, found })
            }
            Some(_) => Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("{kind} {name:?}: its service lost its VIP meanwhile; apply again"),
            )
            .into()),
        }
    }

    /// Sets what a sidecar needs on the declared service's item, if it still
    /// holds `vip`, and marks it declared (kept from garbage collection).
    fn declare(&self, d: &Declared, vip: Ipv4Addr, now: UnixSeconds) -> Result<TransactWriteItem, StoreError> {
        let tls = d.tls.as_ref().map(serde_json::to_string).transpose().map_err(|e| build_err(&self.table, e))?;
        let set = "SET #p = :p, #l = :l, #x = :x, #ml = :ml, #t = :t, #d = :true, #c = :now";
        let mut u = Update::builder().expression_attribute_names("#tls", attr::TLS).update_expression(match &tls {
            Some(_) => format!("{set}, #tls = :tls"),
            None => format!("{set} REMOVE #tls"),
        });
        if let Some(tls) = tls {
            u = u.expression_attribute_values(":tls", s(tls));
        }
        let u = u
            .table_name(&self.table)
            .set_key(Some(key(keys::mesh_pk(&d.key.mesh), keys::service_sk(d.key.kind, &d.key.name))))
            .condition_expression("#vip = :vip")
            .expression_attribute_names("#t", attr::TARGETS)
            .expression_attribute_names("#vip", attr::VIP)
            .expression_attribute_names("#p", attr::PORTS)
            .expression_attribute_names("#l", attr::LABELS)
            .expression_attribute_names("#x", attr::EXTERNAL)
            .expression_attribute_names("#ml", attr::MATCH_LABELS)
            .expression_attribute_names("#d", attr::DECLARED)
            .expression_attribute_names("#c", attr::LAST_ENDPOINT_CHANGE)
            .expression_attribute_values(":vip", s(vip.to_string()))
            .expression_attribute_values(":p", ports_value(&d.ports))
            .expression_attribute_values(":l", labels_value(&d.labels))
            .expression_attribute_values(":x", AttributeValue::L(d.external.iter().map(s).collect()))
            .expression_attribute_values(":ml", labels_value(&d.match_labels))
            .expression_attribute_values(
                ":t",
                AttributeValue::M(d.targets.iter().map(|(p, t)| (p.to_string(), n((*t).into()))).collect()),
            )
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":now", n(now))
            .build()
            .map_err(|e| build_err(&self.table, e))?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    /// Deletes the resource; a declared service stops listening at once and
    /// its name and VIP go after the deletion grace, like a service whose
    /// last task stopped.
    pub async fn delete(
        &self,
        kind: ResourceKind,
        mesh: Option<&str>,
        name: &str,
        declared: Option<&crate::vip::ServiceKey>,
        now: UnixSeconds,
    ) -> Result<(), WriteError> {
        let del = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(partition(mesh), keys::resource_sk(kind.as_str(), name))))
            .condition_expression("attribute_exists(#v)")
            .expression_attribute_names("#v", attr::VERSION)
            .build()
            .map_err(|e| build_err(&self.table, e))?;
        let mut items = vec![TransactWriteItem::builder().delete(del).build()];
        if let Some(k) = declared {
            let u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(keys::mesh_pk(&k.mesh), keys::service_sk(k.kind, &k.name))))
                .condition_expression("attribute_exists(#sk)")
                .update_expression("REMOVE #d, #p, #x, #tls SET #c = :now")
                .expression_attribute_names("#tls", attr::TLS)
                .expression_attribute_names("#sk", keys::SK)
                .expression_attribute_names("#d", attr::DECLARED)
                .expression_attribute_names("#p", attr::PORTS)
                .expression_attribute_names("#x", attr::EXTERNAL)
                .expression_attribute_names("#c", attr::LAST_ENDPOINT_CHANGE)
                .expression_attribute_values(":now", n(now))
                .build()
                .map_err(|e| build_err(&self.table, e))?;
            items.push(TransactWriteItem::builder().update(u).build());
        }
        if let Some(m) = mesh {
            let mut changed: Vec<String> = declared.map(|k| keys::service_sk(k.kind, &k.name)).into_iter().collect();
            if sidecars_read(kind) {
                changed.push(keys::resource_sk(kind.as_str(), name));
            }
            items.extend(view_changed(&self.table, m, &changed, now, None)?);
        }
        items.push(bump_dns(&self.table, mesh, now)?);
        match transact(&self.client, &self.table, "TransactWriteItems (delete)", items).await? {
            None => Ok(()),
            Some(failed) if failed.first() == Some(&true) => Err(WriteError::Missing { kind, name: name.to_owned() }),
            // The service item was already collected: delete the resource alone.
            Some(_) => Box::pin(self.delete(kind, mesh, name, None, now)).await,
        }
    }
}
