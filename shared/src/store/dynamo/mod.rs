//! DynamoDB adapters: thin translations between table items and domain types.

mod vip_ledger;

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub use vip_ledger::DynamoVipLedger;

use super::table::TableDefinition;
use super::{StoreError, StoreErrorKind};

/// Maps any SDK error to a [`StoreError`] that says which call on which table
/// failed and whether a retry can help.
pub fn sdk_error<E, R>(operation: &str, table: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown");
            let kind = match code {
                "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "Throttling" => StoreErrorKind::Throttled,
                "InternalServerError" | "ServiceUnavailable" | "InternalFailure" => StoreErrorKind::Unavailable,
                "TransactionConflictException" | "TransactionInProgressException" => StoreErrorKind::Conflict,
                _ => StoreErrorKind::Rejected,
            };
            (kind, format!("{code}: {}", se.err().message().unwrap_or("no message")))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (StoreErrorKind::Unavailable, DisplayErrorContext(&err).to_string())
        }
        _ => (StoreErrorKind::Rejected, DisplayErrorContext(&err).to_string()),
    };
    StoreError::new(kind, format!("{operation} on table {table:?}: {detail}"))
}

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

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Exponential backoff with full jitter, for conflicts the SDK does not retry.
pub(crate) async fn backoff(attempt: u32) {
    let cap_ms = 10u64.saturating_mul(1 << attempt.min(8)).min(1_000);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=cap_ms))).await;
}
