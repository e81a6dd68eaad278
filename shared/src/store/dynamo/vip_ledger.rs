//! [`VipLedger`] on DynamoDB: one GetItem, one BatchGetItem or one
//! TransactWriteItems per call.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};

use super::{build_err, key, n, s, sdk_error, transact};
use crate::error::StoreError;
use crate::store::keys::{self, attr};
use crate::vip::{Assignment, Claim, Lease, ServiceKey, UnixSeconds, VipLedger};

#[derive(Debug, Clone)]
pub struct DynamoVipLedger {
    client: Client,
    table: String,
}

impl DynamoVipLedger {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    fn key(&self, pk: String, sk: String) -> HashMap<String, AttributeValue> {
        key(pk, sk)
    }

    fn build_err(&self, e: impl std::fmt::Display) -> StoreError {
        build_err(&self.table, e)
    }

    /// Consistent BatchGetItem of up to 100 keys of this table, retrying
    /// unprocessed keys, projecting `projection` (over `#sk`, `#v`, `#p`, `#o`, `#q`).
    async fn batch_get(
        &self,
        pending: Vec<HashMap<String, AttributeValue>>,
        projection: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let names = [
            ("#sk", keys::SK),
            ("#v", attr::VIP),
            ("#p", attr::PREVIOUS_VIP),
            ("#o", attr::OWNER),
            ("#q", attr::QUARANTINED_UNTIL),
        ];
        let out = std::sync::Mutex::new(Vec::new());
        super::until_processed("BatchGetItem", pending, |keys| async {
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .projection_expression(projection);
            for (placeholder, name) in names.iter().filter(|(p, _)| projection.contains(p)) {
                request = request.expression_attribute_names(*placeholder, *name);
            }
            let resp = self
                .client
                .batch_get_item()
                .request_items(&self.table, request.build().map_err(|e| self.build_err(e))?)
                .send()
                .await
                .map_err(|e| sdk_error("BatchGetItem", &self.table, e))?;
            let items = resp.responses().and_then(|r| r.get(&self.table)).cloned().unwrap_or_default();
            out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(items);
            // DynamoDB may leave keys unprocessed under load: they go again after a pause.
            Ok(resp.unprocessed_keys().and_then(|u| u.get(&self.table)).map(|k| k.keys().to_vec()).unwrap_or_default())
        })
        .await?;
        let out = out.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(out)
    }

    async fn transact(&self, op: &str, items: Vec<TransactWriteItem>) -> Result<Option<[bool; 2]>, StoreError> {
        let failed = transact(&self.client, &self.table, op, items).await?;
        Ok(failed.map(|f| [f.first().copied().unwrap_or(false), f.get(1).copied().unwrap_or(false)]))
    }
}

fn parse_addr(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::corrupt(format!("attribute {name} is {v:?}, not an IPv4 address"))),
        Some(other) => Err(StoreError::corrupt(format!("attribute {name} is {other:?}, not a string"))),
    }
}

fn parse_lease(item: &HashMap<String, AttributeValue>) -> Result<Lease, StoreError> {
    let sk = match item.get(keys::SK) {
        Some(AttributeValue::S(v)) => v,
        _ => return Err(StoreError::corrupt("a lease without a string sk")),
    };
    let addr = sk
        .strip_prefix("VIP#")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| StoreError::corrupt(format!("lease key {sk:?} does not name an IPv4 address")))?;
    let owner = match item.get(attr::OWNER) {
        Some(AttributeValue::S(o)) => o.clone(),
        _ => return Err(StoreError::corrupt(format!("lease {sk} has no owner"))),
    };
    let quarantined_until = match item.get(attr::QUARANTINED_UNTIL) {
        None => None,
        Some(AttributeValue::N(v)) => {
            Some(v.parse().map_err(|_| StoreError::corrupt(format!("lease {sk}: quarantined_until {v:?}")))?)
        }
        Some(other) => return Err(StoreError::corrupt(format!("lease {sk}: quarantined_until is {other:?}"))),
    };
    Ok(Lease { addr, owner, quarantined_until })
}

impl VipLedger for DynamoVipLedger {
    async fn assignment(&self, key: &ServiceKey) -> Result<Assignment, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(keys::mesh_pk(&key.mesh), keys::service_sk(key.kind, &key.name))))
            .consistent_read(true)
            .projection_expression("#v, #p")
            .expression_attribute_names("#v", attr::VIP)
            .expression_attribute_names("#p", attr::PREVIOUS_VIP)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        let Some(item) = out.item() else {
            return Ok(Assignment::default());
        };
        Ok(Assignment { current: parse_addr(item, attr::VIP)?, previous: parse_addr(item, attr::PREVIOUS_VIP)? })
    }

    async fn assignments(&self, service_keys: &[ServiceKey]) -> Result<Vec<Assignment>, StoreError> {
        let sks: Vec<(String, String)> =
            service_keys.iter().map(|k| (keys::mesh_pk(&k.mesh), keys::service_sk(k.kind, &k.name))).collect();
        let items = self
            .batch_get(sks.iter().map(|(pk, sk)| self.key(pk.clone(), sk.clone())).collect(), "#sk, #v, #p")
            .await?;
        let mut out = Vec::with_capacity(sks.len());
        for (_, sk) in &sks {
            let item = items.iter().find(|i| i.get(keys::SK).and_then(|v| v.as_s().ok()) == Some(sk));
            out.push(match item {
                None => Assignment::default(),
                Some(i) => {
                    Assignment { current: parse_addr(i, attr::VIP)?, previous: parse_addr(i, attr::PREVIOUS_VIP)? }
                }
            });
        }
        Ok(out)
    }

    async fn leases(&self, mesh: &str, addrs: &[Ipv4Addr]) -> Result<Vec<Lease>, StoreError> {
        let pk = keys::mesh_pk(mesh);
        let items = self
            .batch_get(addrs.iter().map(|a| self.key(pk.clone(), keys::lease_sk(*a))).collect(), "#sk, #o, #q")
            .await?;
        items.iter().map(parse_lease).collect()
    }

    async fn claim(&self, key: &ServiceKey, addr: Ipv4Addr, now: UnixSeconds) -> Result<Claim, StoreError> {
        let pk = keys::mesh_pk(&key.mesh);
        let owner = key.owner_id();
        let mut lease = self.key(pk.clone(), keys::lease_sk(addr));
        lease.insert(attr::OWNER.into(), s(&owner));
        lease.insert(attr::ASSIGNED_AT.into(), n(now));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(lease))
            .condition_expression("attribute_not_exists(#pk) OR #o = :o OR #q <= :now")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#o", attr::OWNER)
            .expression_attribute_names("#q", attr::QUARANTINED_UNTIL)
            .expression_attribute_values(":o", s(&owner))
            .expression_attribute_values(":now", n(now))
            .build()
            .map_err(|e| self.build_err(e))?;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(self.key(pk, keys::service_sk(key.kind, &key.name))))
            .update_expression("SET #v = :v, #k = :k, #n = :n, #m = :m, #at = :now")
            .condition_expression("attribute_not_exists(#v)")
            .expression_attribute_names("#v", attr::VIP)
            .expression_attribute_names("#k", attr::KIND)
            .expression_attribute_names("#n", attr::NAME)
            .expression_attribute_names("#m", attr::MESH)
            .expression_attribute_names("#at", attr::ASSIGNED_AT)
            .expression_attribute_values(":v", s(addr.to_string()))
            .expression_attribute_values(":k", s(key.kind.code()))
            .expression_attribute_values(":n", s(&key.name))
            .expression_attribute_values(":m", s(&key.mesh))
            .expression_attribute_values(":now", n(now))
            .build()
            .map_err(|e| self.build_err(e))?;
        // The service gains a VIP, so its name must be published: the DNS
        // state records the mesh and moves on in the same transaction. A
        // task-events run that dies right after (before its registration)
        // leaves nothing for the next one to redo: that one finds the VIP
        // already assigned, and the mesh already in the DNS state.
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(update).build(),
            super::bump_dns(&self.table, Some(&key.mesh), now)?,
        ];
        Ok(match self.transact("TransactWriteItems (claim VIP)", items).await? {
            None => Claim::Won,
            Some([_, true]) => Claim::AlreadyAssigned,
            Some(_) => Claim::Taken,
        })
    }

    async fn release(
        &self,
        key: &ServiceKey,
        addr: Ipv4Addr,
        quarantined_until: UnixSeconds,
    ) -> Result<bool, StoreError> {
        let items = release_items(&self.table, key, addr, quarantined_until, None)?;
        Ok(self.transact("TransactWriteItems (release VIP)", items).await?.is_none())
    }
}

/// The two writes that release a VIP: the lease goes into quarantine (only if
/// `key` holds it), and the service's `vip` moves to `previous_vip`. With
/// `guard`, the service must still show that `last_endpoint_change` (0: none),
/// so a task registering meanwhile keeps its service from being collected.
pub(crate) fn release_items(
    table: &str,
    service: &ServiceKey,
    addr: Ipv4Addr,
    quarantined_until: UnixSeconds,
    guard: Option<UnixSeconds>,
) -> Result<Vec<TransactWriteItem>, StoreError> {
    let pk = keys::mesh_pk(&service.mesh);
    let lease = Update::builder()
        .table_name(table)
        .set_key(Some(key(pk.clone(), keys::lease_sk(addr))))
        .update_expression("SET #q = :q")
        .condition_expression("#o = :o AND attribute_not_exists(#q)")
        .expression_attribute_names("#o", attr::OWNER)
        .expression_attribute_names("#q", attr::QUARANTINED_UNTIL)
        .expression_attribute_values(":o", s(service.owner_id()))
        .expression_attribute_values(":q", n(quarantined_until))
        .build()
        .map_err(|e| build_err(table, e))?;
    let mut svc = Update::builder()
        .table_name(table)
        .set_key(Some(key(pk, keys::service_sk(service.kind, &service.name))))
        .update_expression("SET #p = #v REMOVE #v")
        .expression_attribute_names("#v", attr::VIP)
        .expression_attribute_names("#p", attr::PREVIOUS_VIP)
        .expression_attribute_values(":v", s(addr.to_string()));
    svc = match guard {
        None => svc.condition_expression("#v = :v"),
        Some(0) => svc
            .condition_expression("#v = :v AND attribute_not_exists(#c)")
            .expression_attribute_names("#c", attr::LAST_ENDPOINT_CHANGE),
        Some(seen) => svc
            .condition_expression("#v = :v AND #c = :seen")
            .expression_attribute_names("#c", attr::LAST_ENDPOINT_CHANGE)
            .expression_attribute_values(":seen", n(seen)),
    };
    Ok(vec![
        TransactWriteItem::builder().update(lease).build(),
        TransactWriteItem::builder().update(svc.build().map_err(|e| build_err(table, e))?).build(),
    ])
}
