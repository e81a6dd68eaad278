//! The Route53 port, in loopmesh's terms, and the limiter that every call
//! goes through.

use std::future::Future;

use super::rate::RateLimiter;
use super::{Change, Record};
use crate::config::HostedZoneId;

/// What GetHostedZone says of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneInfo {
    pub id: HostedZoneId,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub private: bool,
    /// Route53's count of record sets: the audit's cheap drift check.
    pub record_count: u64,
}

/// A record set as Route53 lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    pub name: String,
    pub kind: String,
    pub ttl: Option<u32>,
    pub values: Vec<String>,
}

impl RecordSet {
    /// Whether this is exactly `record`: one A value, same TTL.
    pub fn is(&self, record: &Record) -> bool {
        self.kind == "A" && self.values == [record.value.to_string()] && self.ttl == Some(record.ttl)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("Route53 throttled the call: {0}")]
    Throttled(String),
    #[error("Route53 has a change to this zone in progress: {0}")]
    PriorRequestNotComplete(String),
    #[error("Route53 refused the change batch: {}", .0.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; "))]
    InvalidChangeBatch(Vec<Refusal>),
    #[error("hosted zone {0} does not exist")]
    NoSuchZone(HostedZoneId),
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

/// One reason Route53 gave for refusing a change batch, typed by the adapter
/// so the domain never reads Route53's wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The record set it names (lower case, no trailing dot), when it names one.
    pub name: Option<String>,
    pub reason: RefusalReason,
    /// Route53's words, for logs and status.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// A CREATE for a record set the zone already holds.
    AlreadyExists,
    /// A DELETE for a record set the zone does not hold.
    NotFound,
    Other,
}

impl ProviderError {
    /// The call may have been applied although it failed: no answer came
    /// (a timeout, a dropped connection) or Route53 failed inside. Route53
    /// refusals (throttling, a bad batch, a missing zone) applied nothing.
    pub fn is_uncertain(&self) -> bool {
        matches!(self, Self::Other { retryable: true, .. })
    }

    /// Route53 asked for air: the same call may succeed after a pause.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::PriorRequestNotComplete(_))
    }
}

/// One page of a zone's record sets, and where the next starts.
pub type Page = (Vec<RecordSet>, Option<(String, String)>);

/// Route53 as dns-sync uses it; each method is exactly one API call.
pub trait DnsProvider: Send + Sync {
    fn get_zone(&self, zone: &HostedZoneId) -> impl Future<Output = Result<ZoneInfo, ProviderError>> + Send;
    /// Record sets from `start` (name, type) on, at most `max_items`.
    fn list_page(
        &self,
        zone: &HostedZoneId,
        start: Option<(String, String)>,
        max_items: Option<i32>,
    ) -> impl Future<Output = Result<Page, ProviderError>> + Send;
    fn change(&self, zone: &HostedZoneId, changes: &[Change])
    -> impl Future<Output = Result<(), ProviderError>> + Send;
}

/// Counts of what went to Route53 in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    pub calls: u64,
    pub throttles: u64,
}

/// A provider behind the limiter: every call, retries included, waits its
/// turn; throttling backs off and retries, so nothing is lost.
#[derive(Debug)]
pub struct Limited<'a, P> {
    pub provider: &'a P,
    pub limiter: &'a RateLimiter,
    stats: std::sync::Mutex<CallStats>,
}

impl<'a, P: DnsProvider> Limited<'a, P> {
    pub fn new(provider: &'a P, limiter: &'a RateLimiter) -> Self {
        Self { provider, limiter, stats: std::sync::Mutex::new(CallStats::default()) }
    }

    pub fn stats(&self) -> CallStats {
        *self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One logical call: every attempt waits its turn at the limiter and is
    /// counted; Throttling and PriorRequestNotComplete are retried with
    /// backoff ([`crate::retry::route53_busy`]), anything else is the answer.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        use backon::Retryable;
        let attempt = || async {
            self.limiter.acquire().await;
            let result = f().await;
            self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).calls += 1;
            result
        };
        attempt
            .retry(crate::retry::route53_busy())
            .sleep(tokio::time::sleep)
            .when(ProviderError::is_busy)
            .notify(|_, _| self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).throttles += 1)
            .await
    }

    pub async fn get_zone(&self, zone: &HostedZoneId) -> Result<ZoneInfo, ProviderError> {
        self.call(|| self.provider.get_zone(zone)).await
    }

    pub async fn list_page(
        &self,
        zone: &HostedZoneId,
        start: Option<(String, String)>,
        max_items: Option<i32>,
    ) -> Result<Page, ProviderError> {
        self.call(|| self.provider.list_page(zone, start.clone(), max_items)).await
    }

    /// Every record set of the zone, one call per page.
    pub async fn list_all(&self, zone: &HostedZoneId) -> Result<Vec<RecordSet>, ProviderError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.list_page(zone, start, None).await?;
            out.extend(page);
            match next {
                Some(n) => start = Some(n),
                None => return Ok(out),
            }
        }
    }

    pub async fn change(&self, zone: &HostedZoneId, changes: &[Change]) -> Result<(), ProviderError> {
        self.call(|| self.provider.change(zone, changes)).await
    }
}
