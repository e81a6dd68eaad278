//! [`DnsStore`] on DynamoDB: the DNS state and lease items, the ownership
//! ledger, conflicts, and the service items dns-sync reads and collects.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, ReturnValue, WriteRequest};

use super::{build_err, key, n, num, s, sdk_error, service_entry, text, transact};
use crate::config::HostedZoneId;
use crate::dns::Record;
use crate::dns::sync::{Conflict, DnsState, DnsStore, LeaseHolder, LeaseTake, Ledgered, RunRecord, ServiceRow};
use crate::error::StoreError;
use crate::model::{HostnameGenerator, Resource, parse_one};
use crate::store::keys::{self, attr};
use crate::vip::{ServiceKey, UnixSeconds};

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Clone)]
pub struct DynamoDnsStore {
    client: Client,
    table: String,
}

impl DynamoDnsStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    async fn query(&self, pk: &str, prefix: &str, limit: Option<i32>) -> Result<Vec<Item>, StoreError> {
        super::query(&self.client, &self.table, pk, prefix, limit).await
    }

    async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in requests.chunks(25) {
            super::until_processed("BatchWriteItem", chunk.to_vec(), |pending| async move {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| sdk_error("BatchWriteItem", &self.table, e))?;
                Ok(out.unprocessed_items().and_then(|u| u.get(&self.table)).cloned().unwrap_or_default())
            })
            .await?;
        }
        Ok(())
    }
}

impl DnsStore for DynamoDnsStore {
    async fn acquire_lease(&self, holder: &str, now: UnixSeconds, until: UnixSeconds) -> Result<LeaseTake, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_LEASE_SK.into())))
            .update_expression("SET #h = :h, #u = :u")
            .condition_expression("attribute_not_exists(#h) OR #u < :now")
            .expression_attribute_names("#h", attr::HOLDER)
            .expression_attribute_names("#u", attr::LEASE_UNTIL)
            .expression_attribute_values(":h", s(holder))
            .expression_attribute_values(":u", n(until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                Ok(LeaseTake::Taken { next_call_ms: out.attributes().map(|a| num(a, attr::NEXT_CALL_MS)).unwrap_or(0) })
            }
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_LEASE_SK.into())))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| sdk_error("GetItem (sync lease)", &self.table, e))?;
                let item = out.item().cloned().unwrap_or_default();
                Ok(LeaseTake::Held(LeaseHolder {
                    holder: text(&item, attr::HOLDER).unwrap_or("(released meanwhile)").to_owned(),
                    until: num(&item, attr::LEASE_UNTIL),
                }))
            }
            Err(e) => Err(sdk_error("UpdateItem (take sync lease)", &self.table, e)),
        }
    }

    async fn renew_lease(&self, holder: &str, until: UnixSeconds) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_LEASE_SK.into())))
            .update_expression("SET #u = :u")
            .condition_expression("#h = :h")
            .expression_attribute_names("#h", attr::HOLDER)
            .expression_attribute_names("#u", attr::LEASE_UNTIL)
            .expression_attribute_values(":h", s(holder))
            .expression_attribute_values(":u", n(until))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(sdk_error("UpdateItem (renew sync lease)", &self.table, e)),
        }
    }

    async fn release_lease(&self, holder: &str, next_call_ms: u64) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_LEASE_SK.into())))
            .update_expression("SET #n = :n REMOVE #h, #u")
            .condition_expression("#h = :h")
            .expression_attribute_names("#h", attr::HOLDER)
            .expression_attribute_names("#u", attr::LEASE_UNTIL)
            .expression_attribute_names("#n", attr::NEXT_CALL_MS)
            .expression_attribute_values(":h", s(holder))
            .expression_attribute_values(":n", n(next_call_ms))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // The lease expired and another run took it: nothing of ours to release.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(sdk_error("UpdateItem (release sync lease)", &self.table, e)),
        }
    }

    async fn state(&self) -> Result<DnsState, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_STATE_SK.into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &self.table, e))?;
        let Some(item) = out.item() else { return Ok(DnsState::default()) };
        Ok(DnsState {
            generation: num(item, attr::GENERATION),
            applied_generation: num(item, attr::APPLIED_GENERATION),
            retry_pending: item.get(attr::RETRY_PENDING).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
            meshes: item.get(attr::MESHES).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default(),
            zone_counts: item
                .get(attr::ZONE_COUNTS)
                .and_then(|v| v.as_m().ok())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_n().ok().and_then(|n| n.parse().ok()).unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
            last_full_audit: num(item, attr::LAST_FULL_AUDIT),
        })
    }

    async fn services(&self, meshes: &[String]) -> Result<Vec<ServiceRow>, StoreError> {
        let mut out = Vec::new();
        for mesh in meshes {
            for item in self.query(&keys::mesh_pk(mesh), "SVC#", None).await? {
                let entry = service_entry(mesh, &item)?;
                out.push(ServiceRow {
                    key: ServiceKey::new(mesh, entry.kind, &entry.name),
                    vip: entry.vip,
                    labels: entry.labels,
                    assigned_at: num(&item, attr::ASSIGNED_AT),
                    last_endpoint_change: num(&item, attr::LAST_ENDPOINT_CHANGE),
                    declared: item.get(attr::DECLARED).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
                });
            }
        }
        Ok(out)
    }

    async fn generators(&self) -> Result<Vec<HostnameGenerator>, StoreError> {
        let mut out = Vec::new();
        for item in self.query(keys::GLOBAL_PK, &keys::resource_sk("HostnameGenerator", ""), None).await? {
            let doc = text(&item, attr::DOC).unwrap_or_default();
            match parse_one(doc) {
                Ok(Resource::HostnameGenerator(g)) => out.push(g),
                // Applied resources were validated; a bad one is skipped, loudly.
                other => {
                    tracing::error!(item = ?text(&item, keys::SK), result = ?other.err(), "stored HostnameGenerator does not parse")
                }
            }
        }
        Ok(out)
    }

    async fn has_endpoints(&self, key: &ServiceKey) -> Result<bool, StoreError> {
        let items = self.query(&keys::mesh_pk(&key.mesh), &keys::endpoint_prefix(&key.name), Some(1)).await?;
        Ok(!items.is_empty())
    }

    async fn ledger(&self) -> Result<Vec<Ledgered>, StoreError> {
        let mut out = Vec::new();
        for item in self.query(keys::DNS_PK, "REC#", None).await? {
            let bad = || StoreError::corrupt(format!("owned record {:?}", text(&item, keys::SK)));
            let zone = text(&item, attr::ZONE).and_then(|z| HostedZoneId::parse(z).ok()).ok_or_else(bad)?;
            let name = text(&item, attr::NAME).ok_or_else(bad)?.to_owned();
            let record = |m: &Item| -> Result<Record, StoreError> {
                let value = text(m, attr::VALUE).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let ttl = u32::try_from(num(m, attr::TTL)).map_err(|_| bad())?;
                Ok(Record { zone: zone.clone(), name: name.clone(), value, ttl })
            };
            match item.get(attr::INTENT).and_then(|v| v.as_l().ok()) {
                Some(candidates) => out.push(Ledgered::Intent(
                    candidates
                        .iter()
                        .map(|c| c.as_m().map_err(|_| bad()).and_then(record))
                        .collect::<Result<_, _>>()?,
                )),
                None => out.push(Ledgered::Owned(record(&item)?)),
            }
        }
        Ok(out)
    }

    async fn write_ledger(&self, entries: &[Ledgered], removed: &[Record]) -> Result<(), StoreError> {
        let record_attrs = |r: &Record| {
            Item::from([(attr::VALUE.into(), s(r.value.to_string())), (attr::TTL.into(), n(r.ttl.into()))])
        };
        let mut requests = Vec::with_capacity(entries.len() + removed.len());
        for r in removed {
            let k = key(keys::DNS_PK.into(), keys::owned_record_sk(r.zone.as_str(), &r.name));
            let d = DeleteRequest::builder().set_key(Some(k)).build().map_err(|e| build_err(&self.table, e))?;
            requests.push(WriteRequest::builder().delete_request(d).build());
        }
        for entry in entries {
            let Some((zone, name)) = entry.id() else { continue };
            let mut item = key(keys::DNS_PK.into(), keys::owned_record_sk(zone.as_str(), name));
            item.extend([(attr::ZONE.into(), s(zone.as_str())), (attr::NAME.into(), s(name))]);
            match entry {
                Ledgered::Owned(r) => item.extend(record_attrs(r)),
                Ledgered::Intent(rs) => {
                    item.insert(
                        attr::INTENT.into(),
                        AttributeValue::L(rs.iter().map(|r| AttributeValue::M(record_attrs(r))).collect()),
                    );
                }
            }
            let p = PutRequest::builder().set_item(Some(item)).build().map_err(|e| build_err(&self.table, e))?;
            requests.push(WriteRequest::builder().put_request(p).build());
        }
        self.batch_write(requests).await
    }

    async fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        let mut out = Vec::new();
        for item in self.query(keys::STATUS_PK, "CONFLICT#", None).await? {
            let Some(zone) = text(&item, attr::ZONE).and_then(|z| HostedZoneId::parse(z).ok()) else { continue };
            out.push(Conflict {
                zone,
                name: text(&item, attr::NAME).unwrap_or_default().to_owned(),
                reason: text(&item, attr::REASON).unwrap_or_default().to_owned(),
                foreign: item.get(attr::FOREIGN).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
            });
        }
        Ok(out)
    }

    async fn set_conflicts(&self, conflicts: &[Conflict]) -> Result<(), StoreError> {
        let existing = self.query(keys::STATUS_PK, "CONFLICT#", None).await?;
        let wanted: BTreeMap<String, &Conflict> =
            conflicts.iter().map(|c| (keys::conflict_sk(c.zone.as_str(), &c.name), c)).collect();
        let mut requests = Vec::new();
        for item in &existing {
            let sk = text(item, keys::SK).unwrap_or_default();
            if !wanted.contains_key(sk) {
                let d = DeleteRequest::builder()
                    .set_key(Some(key(keys::STATUS_PK.into(), sk.to_owned())))
                    .build()
                    .map_err(|e| build_err(&self.table, e))?;
                requests.push(WriteRequest::builder().delete_request(d).build());
            }
        }
        for (sk, c) in &wanted {
            if existing.iter().any(|i| {
                text(i, keys::SK) == Some(sk.as_str())
                    && text(i, attr::REASON) == Some(&c.reason)
                    && i.get(attr::FOREIGN).and_then(|v| v.as_bool().ok()) == Some(&c.foreign)
            }) {
                continue;
            }
            let mut item = key(keys::STATUS_PK.into(), sk.clone());
            item.extend([
                (attr::ZONE.into(), s(c.zone.as_str())),
                (attr::NAME.into(), s(&c.name)),
                (attr::REASON.into(), s(&c.reason)),
                (attr::FOREIGN.into(), AttributeValue::Bool(c.foreign)),
            ]);
            let p = PutRequest::builder().set_item(Some(item)).build().map_err(|e| build_err(&self.table, e))?;
            requests.push(WriteRequest::builder().put_request(p).build());
            tracing::warn!(zone = %c.zone, name = %c.name, reason = %c.reason, "DNS conflict");
        }
        self.batch_write(requests).await
    }

    async fn collect(
        &self,
        service: &ServiceKey,
        vip: Ipv4Addr,
        seen_last_change: UnixSeconds,
        now: UnixSeconds,
        quarantined_until: UnixSeconds,
    ) -> Result<bool, StoreError> {
        let mut items =
            super::vip_ledger::release_items(&self.table, service, vip, quarantined_until, Some(seen_last_change))?;
        // Sidecars drop the VIP's listener on their next view check.
        let changed = [keys::service_sk(service.kind, &service.name)];
        items.extend(super::view_changed(&self.table, &service.mesh, &changed, now, None)?);
        Ok(transact(&self.client, &self.table, "TransactWriteItems (collect service)", items).await?.is_none())
    }

    async fn finish(&self, record: &RunRecord) -> Result<(), StoreError> {
        let r = &record.report;
        let counts = record.zone_counts.iter().map(|(z, c)| (z.clone(), n(*c))).collect();
        let last = HashMap::from([
            ("planned".to_owned(), n(r.planned)),
            ("applied".to_owned(), n(r.applied)),
            ("conflicts".to_owned(), n(r.conflicts)),
            ("failed".to_owned(), n(r.failed)),
            ("collected".to_owned(), n(r.collected)),
            ("repaired".to_owned(), n(r.repaired)),
            ("adopted".to_owned(), n(r.adopted)),
            ("zones_failed".to_owned(), n(r.zones_failed)),
        ]);
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_STATE_SK.into())))
            .update_expression("SET #a = :a, #r = :r, #z = :z, #f = :f, #l = :l")
            .expression_attribute_names("#a", attr::APPLIED_GENERATION)
            .expression_attribute_names("#r", attr::RETRY_PENDING)
            .expression_attribute_names("#z", attr::ZONE_COUNTS)
            .expression_attribute_names("#f", attr::LAST_FULL_AUDIT)
            .expression_attribute_names("#l", attr::LAST_SYNC)
            .expression_attribute_values(":a", n(record.applied_generation))
            .expression_attribute_values(":r", AttributeValue::Bool(record.retry_pending))
            .expression_attribute_values(":z", AttributeValue::M(counts))
            .expression_attribute_values(":f", n(record.last_full_audit))
            .expression_attribute_values(":l", AttributeValue::M(last))
            .send()
            .await
            .map_err(|e| sdk_error("UpdateItem (finish sync)", &self.table, e))?;
        Ok(())
    }
}
