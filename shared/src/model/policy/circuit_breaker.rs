//! MeshCircuitBreaker: limits on what is in flight to an outbound, and
//! outlier detection (consecutive failures eject an endpoint).

use serde::{Deserialize, Serialize};

use super::{RawTo, ValidationErrors, default_entry, duration, parse, unsupported};

/// A `default` of MeshCircuitBreaker; `None`: not set here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_and_local_errors: Option<bool>,
    /// `detectors.totalFailures.consecutive`: 5xx answers (and, unless
    /// split, local failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_total: Option<u32>,
    /// `detectors.gatewayFailures.consecutive`: 502, 503, 504 (and, unless split, local failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway: Option<u32>,
    /// `detectors.localOriginFailures.consecutive`: failed connects, resets, timeouts (split mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawConf {
    #[serde(default)]
    connection_limits: Option<RawLimits>,
    #[serde(default)]
    outlier_detection: Option<RawOutlier>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    max_connection_pools: Option<u32>,
    #[serde(default)]
    max_pending_requests: Option<u32>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    max_requests: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOutlier {
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    base_ejection_time: Option<String>,
    #[serde(default)]
    max_ejection_percent: Option<u32>,
    #[serde(default)]
    split_external_and_local_errors: Option<bool>,
    #[serde(default)]
    detectors: Option<RawDetectors>,
    #[serde(default)]
    healthy_panic_threshold: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDetectors {
    #[serde(default)]
    total_failures: Option<RawConsecutive>,
    #[serde(default)]
    gateway_failures: Option<RawConsecutive>,
    #[serde(default)]
    local_origin_failures: Option<RawConsecutive>,
    #[serde(default)]
    success_rate: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    failure_percentage: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConsecutive {
    #[serde(default)]
    consecutive: Option<u32>,
}

/// Envoy's default count for a detector written with no `consecutive`.
const ENVOY_CONSECUTIVE: u32 = 5;

fn conf(errors: &mut ValidationErrors, path: &str, raw: RawConf) -> CircuitBreakerConf {
    let limits = raw.connection_limits;
    if let Some(l) = &limits {
        unsupported(
            errors,
            &format!("{path}.connectionLimits.maxConnectionPools"),
            &l.max_connection_pools,
            "one pool per outbound",
        );
    }
    let mut c = CircuitBreakerConf {
        max_connections: limits.as_ref().and_then(|l| l.max_connections),
        max_pending_requests: limits.as_ref().and_then(|l| l.max_pending_requests),
        max_requests: limits.as_ref().and_then(|l| l.max_requests),
        max_retries: limits.as_ref().and_then(|l| l.max_retries),
        ..CircuitBreakerConf::default()
    };
    let Some(o) = raw.outlier_detection else { return c };
    let p = format!("{path}.outlierDetection");
    let statistics = "consecutive-failure detectors only (totalFailures, gatewayFailures, localOriginFailures)";
    unsupported(
        errors,
        &format!("{p}.healthyPanicThreshold"),
        &o.healthy_panic_threshold,
        "at most half the endpoints are ever ejected",
    );
    // The interval paces Envoy's sweeps; loopmesh ejects at the failure itself.
    let _ = duration(errors, &format!("{p}.interval"), o.interval);
    if let Some(d) = &o.detectors {
        unsupported(errors, &format!("{p}.detectors.successRate"), &d.success_rate, statistics);
        unsupported(errors, &format!("{p}.detectors.failurePercentage"), &d.failure_percentage, statistics);
    }
    if o.max_ejection_percent.is_some_and(|m| m > 100) {
        errors.push(format!("{p}.maxEjectionPercent"), "must be between 0 and 100");
    }
    let detectors = o.detectors;
    let consecutive =
        |d: Option<&RawConsecutive>| d.map(|d| d.consecutive.unwrap_or(ENVOY_CONSECUTIVE)).filter(|n| *n > 0);
    c.outlier_disabled = o.disabled;
    c.base_ejection_time_ms = duration(errors, &format!("{p}.baseEjectionTime"), o.base_ejection_time);
    c.max_ejection_percent = o.max_ejection_percent;
    c.split_external_and_local_errors = o.split_external_and_local_errors;
    c.consecutive_total = consecutive(detectors.as_ref().and_then(|d| d.total_failures.as_ref()));
    c.consecutive_gateway = consecutive(detectors.as_ref().and_then(|d| d.gateway_failures.as_ref()));
    c.consecutive_local = consecutive(detectors.as_ref().and_then(|d| d.local_origin_failures.as_ref()));
    c
}

pub(crate) fn from_value(value: serde_yaml_ng::Value) -> Result<super::MeshCircuitBreaker, ValidationErrors> {
    parse(value, "MeshCircuitBreaker", |errors, path, raw: RawTo<RawConf>| default_entry(errors, path, raw, conf))
}

merge_fields!(CircuitBreakerConf {
    max_connections,
    max_pending_requests,
    max_requests,
    max_retries,
    outlier_disabled,
    base_ejection_time_ms,
    max_ejection_percent,
    split_external_and_local_errors,
    consecutive_total,
    consecutive_gateway,
    consecutive_local,
});
