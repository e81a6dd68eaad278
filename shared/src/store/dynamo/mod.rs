//! DynamoDB adapters: thin translations between table items and domain types.

mod ca;
mod dns_store;
mod mesh_view;
mod registry;
mod resources;
mod status;
mod vip_ledger;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};

pub use ca::DynamoCaStore;
pub use dns_store::DynamoDnsStore;
pub use mesh_view::{ChangeItem, DynamoMeshView, MeshItem, Security};

pub use registry::DynamoRegistry;
pub use resources::{Applied, DynamoResources, WriteError, declared_key};
pub use status::{ConflictRow, DynamoStatus, LeaseRow, RefusalRow};
pub use vip_ledger::DynamoVipLedger;

use super::table::TableDefinition;
use crate::error::{StoreError, StoreErrorKind};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::TransactWriteItem;

/// Creates the table as `infra/template.yaml` defines it; an existing table is fine.
pub async fn create_table(client: &Client, name: &str, def: &TableDefinition) -> Result<bool, StoreError> {
    let attrs = def
        .attributes
        .iter()
        .map(|(n, t)| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::from(t.as_str()))
                .build()
                .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let keys = def
        .key_schema
        .iter()
        .map(|(n, t)| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(KeyType::from(t.as_str()))
                .build()
                .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut req = client
        .create_table()
        .table_name(name)
        .set_attribute_definitions(Some(attrs))
        .set_key_schema(Some(keys))
        .billing_mode(BillingMode::from(def.billing_mode.as_str()));
    if let Some(view) = &def.stream_view_type {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(view.as_str()))
                .build()
                .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))?,
        );
    }
    match req.send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_in_use_exception()) => return Ok(false),
        Err(e) => return Err(sdk_error("CreateTable", name, e)),
    }
    if let Some(attr) = &def.ttl_attribute {
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(attr)
            .enabled(true)
            .build()
            .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))?;
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(|e| sdk_error("UpdateTimeToLive", name, e))?;
    }
    Ok(true)
}

/// An SDK error on `table`, as a [`StoreError`].
pub fn sdk_error<E, R>(
    operation: &str,
    table: &str,
    err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> StoreError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    crate::aws::sdk_error(operation, &format!("table {table:?}"), err)
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Why a transaction attempt did not settle: a concurrent writer (retry),
/// or a final answer.
enum Attempt {
    Contended(StoreError),
    Final(StoreError),
}

/// Repeats `attempt` while it says [`Attempt::Contended`], per
/// [`crate::retry::dynamo_contention`]; the last error is the answer.
async fn while_contended<T, F, Fut>(attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    use backon::Retryable;
    attempt
        .retry(crate::retry::dynamo_contention())
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Attempt::Contended(_)))
        .await
        .map_err(|(Attempt::Contended(e) | Attempt::Final(e))| e)
}

/// Runs a transaction, retrying conflicts with
/// [`crate::retry::dynamo_contention`]. `Ok(None)` when it was applied;
/// `Ok(Some(failed))` when conditions cancelled it, with one flag per item
/// saying whether that item's condition failed.
pub(crate) async fn transact(
    client: &Client,
    table: &str,
    op: &str,
    items: Vec<TransactWriteItem>,
) -> Result<Option<Vec<bool>>, StoreError> {
    let attempt = || async {
        let err = match client.transact_write_items().set_transact_items(Some(items.clone())).send().await {
            Ok(_) => return Ok(None),
            Err(e) => e,
        };
        if let SdkError::ServiceError(se) = &err
            && let TransactWriteItemsError::TransactionCanceledException(c) = se.err()
        {
            let codes: Vec<&str> = c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
            if codes.contains(&"TransactionConflict") {
                return Err(Attempt::Contended(StoreError::conflict(format!(
                    "{op} on table {table:?}: still conflicting with concurrent writers"
                ))));
            }
            if codes.contains(&"ConditionalCheckFailed") {
                return Ok(Some(codes.iter().map(|c| *c == "ConditionalCheckFailed").collect()));
            }
        }
        let e = sdk_error(op, table, err);
        Err(if e.kind == StoreErrorKind::Conflict { Attempt::Contended(e) } else { Attempt::Final(e) })
    };
    while_contended(attempt).await
}

/// Sends a batch call until DynamoDB has processed every item: `send` takes
/// the items still pending and returns those it left unprocessed. Retries
/// follow [`crate::retry::dynamo_contention`]; what is still unprocessed at
/// the end is a throttling error naming how many items were left.
pub(crate) async fn until_processed<T, F, Fut>(what: &str, items: Vec<T>, send: F) -> Result<(), StoreError>
where
    T: Clone,
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    let pending = std::sync::Mutex::new(items);
    let take = || pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let attempt = || async {
        let left = send(take()).await.map_err(Attempt::Final)?;
        let n = left.len();
        *pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = left;
        if n == 0 {
            Ok(())
        } else {
            Err(Attempt::Contended(StoreError::new(
                StoreErrorKind::Throttled,
                format!("{what}: {n} items still unprocessed after retries"),
            )))
        }
    };
    while_contended(attempt).await
}

/// A table key from its two parts.
pub(crate) fn key(pk: String, sk: String) -> std::collections::HashMap<String, AttributeValue> {
    std::collections::HashMap::from([(super::keys::PK.to_owned(), s(pk)), (super::keys::SK.to_owned(), s(sk))])
}

/// What every write a sidecar must see adds to its transaction: `ADD
/// generation 1` on the mesh's VIEW item (and the VIP port sidecars listen
/// on, when known), and a change item listing the sort keys it changed, so
/// sidecars read just those items. Both commit with the change or not at all.
pub(crate) fn view_changed(
    table: &str,
    mesh: &str,
    changed: &[String],
    now: crate::vip::UnixSeconds,
    vip_port: Option<u16>,
) -> Result<Vec<TransactWriteItem>, StoreError> {
    use super::keys::{self, attr};
    let pk = keys::mesh_pk(mesh);
    let mut u = aws_sdk_dynamodb::types::Update::builder()
        .table_name(table)
        .set_key(Some(key(pk.clone(), keys::VIEW_SK.to_owned())))
        .expression_attribute_names("#g", attr::GENERATION)
        .expression_attribute_names("#u", attr::UPDATED_AT)
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":now", n(now));
    u = match vip_port {
        Some(p) => u
            .update_expression("ADD #g :one SET #u = :now, #p = :p")
            .expression_attribute_names("#p", attr::VIP_PORT)
            .expression_attribute_values(":p", n(p.into())),
        None => u.update_expression("ADD #g :one SET #u = :now"),
    };
    let mut items = vec![TransactWriteItem::builder().update(u.build().map_err(|e| build_err(table, e))?).build()];
    let mut changed: Vec<String> = changed.to_vec();
    changed.sort();
    changed.dedup();
    if !changed.is_empty() {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut item = key(pk, keys::change_sk(at_ms, fastrand::u64(..)));
        item.insert(attr::CHANGED.into(), AttributeValue::Ss(changed));
        item.insert(attr::EXPIRES_AT.into(), n(now + keys::CHANGE_RETENTION_S));
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .build()
            .map_err(|e| build_err(table, e))?;
        items.push(TransactWriteItem::builder().put(put).build());
    }
    Ok(items)
}

/// Writes `item` unless one with its key exists; `false` when one did.
pub(crate) async fn put_if_absent(client: &Client, table: &str, item: Item) -> Result<bool, StoreError> {
    let out = client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", super::keys::PK)
        .send()
        .await;
    match out {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
        Err(e) => Err(sdk_error("PutItem", table, e)),
    }
}

/// Bumps the DNS state's generation so dns-sync runs, and adds `mesh` to
/// the meshes it reads services from.
pub(crate) fn bump_dns(
    table: &str,
    mesh: Option<&str>,
    now: crate::vip::UnixSeconds,
) -> Result<TransactWriteItem, StoreError> {
    use super::keys::{self, attr};
    let mut u = aws_sdk_dynamodb::types::Update::builder()
        .table_name(table)
        .set_key(Some(key(keys::DNS_PK.into(), keys::DNS_STATE_SK.into())))
        .expression_attribute_names("#g", attr::GENERATION)
        .expression_attribute_names("#u", attr::UPDATED_AT)
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":now", n(now));
    u = match mesh {
        Some(m) => u
            .update_expression("ADD #g :one, #m :m SET #u = :now")
            .expression_attribute_names("#m", attr::MESHES)
            .expression_attribute_values(":m", AttributeValue::Ss(vec![m.to_owned()])),
        None => u.update_expression("ADD #g :one SET #u = :now"),
    };
    Ok(TransactWriteItem::builder().update(u.build().map_err(|e| build_err(table, e))?).build())
}

pub(crate) fn build_err(table: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Rejected, format!("building a request for table {table:?}: {e}"))
}

type Item = std::collections::HashMap<String, AttributeValue>;

/// Every item of partition `pk` whose sort key starts with `prefix`, all
/// pages (or the first `limit` items), read consistently.
pub(crate) async fn query(
    client: &Client,
    table: &str,
    pk: &str,
    prefix: &str,
    limit: Option<i32>,
) -> Result<Vec<Item>, StoreError> {
    query_counted(client, table, pk, prefix, limit, None).await
}

/// [`query`], adding each page's request and consumed read units to `usage`.
pub(crate) async fn query_counted(
    client: &Client,
    table: &str,
    pk: &str,
    prefix: &str,
    limit: Option<i32>,
    usage: Option<&ReadUsage>,
) -> Result<Vec<Item>, StoreError> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :p)")
            .expression_attribute_names("#pk", super::keys::PK)
            .expression_attribute_names("#sk", super::keys::SK)
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":p", s(prefix))
            .consistent_read(true)
            .set_limit(limit)
            .set_exclusive_start_key(start)
            .set_return_consumed_capacity(usage.map(|_| aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total))
            .send()
            .await
            .map_err(|e| sdk_error("Query", table, e))?;
        if let Some(u) = usage {
            u.add(page.consumed_capacity());
        }
        out.extend(page.items().iter().cloned());
        start = page.last_evaluated_key().cloned();
        if start.is_none() || limit.is_some() {
            return Ok(out);
        }
    }
}

/// Requests and read units a reader spent, as DynamoDB reports them
/// (`ReturnConsumedCapacity`): what a sidecar's `/metrics` shows.
#[derive(Debug, Default)]
pub struct ReadUsage {
    requests: std::sync::atomic::AtomicU64,
    milli_units: std::sync::atomic::AtomicU64,
}

impl ReadUsage {
    pub(crate) fn add(&self, consumed: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests.fetch_add(1, Relaxed);
        let units = consumed.and_then(|c| c.capacity_units()).unwrap_or(0.0);
        self.milli_units.fetch_add((units * 1000.0).round() as u64, Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn read_units(&self) -> f64 {
        self.milli_units.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    }
}

/// A service's ports as stored: a list of `{port, protocol}` maps.
pub(crate) fn ports_value(ports: &[(u16, String)]) -> AttributeValue {
    use super::keys::attr;
    AttributeValue::L(
        ports
            .iter()
            .map(|(p, proto)| {
                AttributeValue::M(Item::from([
                    (attr::PORT.to_owned(), n((*p).into())),
                    (attr::PROTOCOL.to_owned(), s(proto)),
                ]))
            })
            .collect(),
    )
}

/// Labels (or a selector) as a map of strings.
pub(crate) fn labels_value(labels: &crate::model::Labels) -> AttributeValue {
    AttributeValue::M(labels.iter().map(|(k, v)| (k.clone(), s(v))).collect())
}

pub(crate) fn num(item: &Item, name: &str) -> u64 {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub(crate) fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn string_map(item: &Item, name: &str) -> crate::model::Labels {
    item.get(name)
        .and_then(|v| v.as_m().ok())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_s().ok()?.clone()))).collect())
        .unwrap_or_default()
}

/// A `SVC#<kind>#<name>` item as the domain sees it.
pub(crate) fn service_entry(mesh: &str, item: &Item) -> Result<crate::view::ServiceEntry, StoreError> {
    use super::keys::attr;
    let sk = text(item, super::keys::SK).unwrap_or_default();
    let mut parts = sk.splitn(3, '#').skip(1);
    let (Some(kind), Some(name)) = (parts.next().and_then(crate::vip::ServiceKind::from_code), parts.next()) else {
        return Err(StoreError::corrupt(format!("service item {sk:?} in mesh {mesh}")));
    };
    let vip = match text(item, attr::VIP) {
        None => None,
        Some(v) => Some(v.parse().map_err(|_| StoreError::corrupt(format!("{sk}: vip {v:?}")))?),
    };
    let declared: Vec<(u16, crate::model::Protocol)> = item
        .get(attr::PORTS)
        .and_then(|v| v.as_l().ok())
        .map(|l| {
            l.iter()
                .filter_map(|p| p.as_m().ok())
                .filter_map(|m| {
                    let port = u16::try_from(num(m, attr::PORT)).ok().filter(|p| *p != 0)?;
                    Some((port, text(m, attr::PROTOCOL).map(crate::model::Protocol::parse).unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default();
    let ports = declared.iter().map(|(p, _)| *p).collect();
    let external = item
        .get(attr::EXTERNAL)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
        .unwrap_or_default();
    let targets = item
        .get(attr::TARGETS)
        .and_then(|v| v.as_m().ok())
        .map(|m| m.iter().filter_map(|(p, t)| Some((p.parse().ok()?, t.as_n().ok()?.parse().ok()?))).collect())
        .unwrap_or_default();
    Ok(crate::view::ServiceEntry {
        targets,
        kind,
        name: name.to_owned(),
        vip,
        ports,
        labels: string_map(item, attr::LABELS),
        external,
        match_labels: string_map(item, attr::MATCH_LABELS),
        tls: match text(item, attr::TLS) {
            None => None,
            Some(json) => Some(serde_json::from_str(json).map_err(|e| StoreError::corrupt(format!("{sk}: tls {e}")))?),
        },
        protocols: declared.into_iter().collect(),
    })
}
