//! Route53 as a [`DnsProvider`]. The client must not retry by itself (see
//! [`client_config`]): retries go through loopmesh's limiter so that every
//! call counts against the configured rate.

use aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::config::HostedZoneId;
use crate::dns::provider::{DnsProvider, Page, ProviderError, RecordSet, Refusal, RefusalReason, ZoneInfo};
use crate::dns::{Change, Record};

/// The Route53 client configuration: SDK retries off, because each retry
/// is a call the rate limiter must see.
pub fn client_config(sdk: &aws_config::SdkConfig) -> aws_sdk_route53::Config {
    aws_sdk_route53::config::Builder::from(sdk).retry_config(aws_config::retry::RetryConfig::disabled()).build()
}

#[derive(Debug, Clone)]
pub struct Route53 {
    client: aws_sdk_route53::Client,
}

impl Route53 {
    pub fn new(client: aws_sdk_route53::Client) -> Self {
        Self { client }
    }
}

/// Names as loopmesh keeps them: lower case, no trailing dot.
fn bare(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn classify<
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
>(
    op: &str,
    zone: &HostedZoneId,
    err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> ProviderError {
    let code = err.code().unwrap_or_default().to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    match code.as_str() {
        "Throttling" | "ThrottlingException" => ProviderError::Throttled(message),
        "PriorRequestNotComplete" => ProviderError::PriorRequestNotComplete(message),
        "NoSuchHostedZone" => ProviderError::NoSuchZone(zone.clone()),
        _ => {
            let e = super::sdk_error(op, &format!("hosted zone {zone}"), err);
            ProviderError::Other { message: e.to_string(), retryable: e.is_retryable() }
        }
    }
}

/// Types one of Route53's InvalidChangeBatch messages, which name the record
/// set as `[name='x.mesh.local.', type='A']` and end with what was wrong:
/// "but it already exists", "but it was not found", or another reason (a
/// DELETE whose values no longer match is Other: the record was edited, and
/// the scheduled audit repairs it from what the zone holds).
fn refusal(message: &str) -> Refusal {
    let lower = message.to_ascii_lowercase();
    let name = lower
        .split_once("name='")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| bare(name))
        .filter(|n| !n.is_empty());
    let reason = if lower.contains("already exists") {
        RefusalReason::AlreadyExists
    } else if lower.contains("not found") {
        RefusalReason::NotFound
    } else {
        RefusalReason::Other
    };
    Refusal { name, reason, message: message.to_owned() }
}

fn to_r53(change: &Change) -> Result<R53Change, ProviderError> {
    let (action, rec): (ChangeAction, &Record) = match change {
        Change::Create(r) => (ChangeAction::Create, r),
        Change::Delete(r) => (ChangeAction::Delete, r),
    };
    let bad = |e: aws_sdk_route53::error::BuildError| ProviderError::Other { message: e.to_string(), retryable: false };
    let set = ResourceRecordSet::builder()
        .name(format!("{}.", rec.name))
        .r#type(RrType::A)
        .ttl(i64::from(rec.ttl))
        .resource_records(ResourceRecord::builder().value(rec.value.to_string()).build().map_err(bad)?)
        .build()
        .map_err(bad)?;
    R53Change::builder().action(action).resource_record_set(set).build().map_err(bad)
}

impl DnsProvider for Route53 {
    async fn get_zone(&self, zone: &HostedZoneId) -> Result<ZoneInfo, ProviderError> {
        let out = self
            .client
            .get_hosted_zone()
            .id(zone.as_str())
            .send()
            .await
            .map_err(|e| classify("GetHostedZone", zone, e))?;
        let hz = out.hosted_zone().ok_or_else(|| ProviderError::NoSuchZone(zone.clone()))?;
        Ok(ZoneInfo {
            id: zone.clone(),
            name: bare(hz.name()),
            private: hz.config().is_some_and(|c| c.private_zone()),
            record_count: hz.resource_record_set_count().unwrap_or(0).max(0) as u64,
        })
    }

    async fn list_page(
        &self,
        zone: &HostedZoneId,
        start: Option<(String, String)>,
        max_items: Option<i32>,
    ) -> Result<Page, ProviderError> {
        let mut req = self.client.list_resource_record_sets().hosted_zone_id(zone.as_str()).set_max_items(max_items);
        if let Some((name, kind)) = start {
            req = req.start_record_name(name).start_record_type(RrType::from(kind.as_str()));
        }
        let out = req.send().await.map_err(|e| classify("ListResourceRecordSets", zone, e))?;
        let sets = out
            .resource_record_sets()
            .iter()
            .map(|s| RecordSet {
                name: bare(s.name()),
                kind: s.r#type().as_str().to_owned(),
                ttl: s.ttl().and_then(|t| u32::try_from(t).ok()),
                values: s.resource_records().iter().map(|r| r.value().to_owned()).collect(),
            })
            .collect();
        let next = match (out.is_truncated(), out.next_record_name(), out.next_record_type()) {
            (true, Some(n), Some(t)) => Some((n.to_owned(), t.as_str().to_owned())),
            _ => None,
        };
        Ok((sets, next))
    }

    async fn change(&self, zone: &HostedZoneId, changes: &[Change]) -> Result<(), ProviderError> {
        let changes = changes.iter().map(to_r53).collect::<Result<Vec<_>, _>>()?;
        let batch = ChangeBatch::builder()
            .set_changes(Some(changes))
            .build()
            .map_err(|e| ProviderError::Other { message: e.to_string(), retryable: false })?;
        match self.client.change_resource_record_sets().hosted_zone_id(zone.as_str()).change_batch(batch).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsError::InvalidChangeBatch(icb)) =
                    e.as_service_error()
                {
                    let mut messages = icb.messages().to_vec();
                    if messages.is_empty() {
                        messages.extend(icb.message().map(str::to_owned));
                    }
                    return Err(ProviderError::InvalidChangeBatch(messages.iter().map(|m| refusal(m)).collect()));
                }
                Err(classify("ChangeResourceRecordSets", zone, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_typed_from_route53_wording() {
        let exists =
            refusal("Tried to create resource record set [name='Redis.mesh.local.', type='A'] but it already exists");
        assert_eq!(exists.name.as_deref(), Some("redis.mesh.local"));
        assert_eq!(exists.reason, RefusalReason::AlreadyExists);
        let gone = refusal("Tried to delete resource record set [name='a.mesh.local.', type='A'] but it was not found");
        assert_eq!((gone.name.as_deref(), gone.reason), (Some("a.mesh.local"), RefusalReason::NotFound));
        let edited = refusal(
            "Tried to delete resource record set [name='a.mesh.local.', type='A'] but the values provided do not match the current values",
        );
        assert_eq!(edited.reason, RefusalReason::Other);
        let other = refusal("RRSet of type CNAME with DNS name b.mesh.local. is not permitted at apex");
        assert_eq!((other.name, other.reason), (None, RefusalReason::Other));
    }
}
