//! MeshRetry: which failed attempts are sent again, how often and after
//! how long.

use serde::{Deserialize, Serialize};

use super::{RawTo, ValidationErrors, default_entry, duration, parse, unsupported};

/// A `default` of MeshRetry; `None`: not set here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_max_connect_attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<RetrySection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<RetrySection>,
}

/// The `http` or `grpc` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrySection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// 0: no per-try limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
}

/// One `retryOn` condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", content = "value")]
pub enum RetryOn {
    /// `5xx`: any 5xx, a reset, a refused stream or a failed connect.
    ServerError,
    GatewayError,
    Reset,
    ConnectFailure,
    RefusedStream,
    /// A status code (`"503"`; `Retriable4xx` is 409).
    Status(u16),
    /// `HttpMethodGet` ...: only these methods are retried.
    Method(String),
    /// A gRPC status code in a headers-only answer.
    Grpc(u32),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawConf {
    #[serde(default)]
    tcp: Option<RawTcp>,
    #[serde(default)]
    http: Option<RawSection>,
    #[serde(default)]
    grpc: Option<RawSection>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTcp {
    #[serde(default)]
    max_connect_attempt: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSection {
    #[serde(default)]
    num_retries: Option<u32>,
    #[serde(default)]
    per_try_timeout: Option<String>,
    #[serde(default)]
    back_off: Option<RawBackOff>,
    #[serde(default)]
    retry_on: Option<Vec<String>>,
    #[serde(default)]
    rate_limited_back_off: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    retriable_response_headers: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    retriable_request_headers: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    host_selection: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    host_selection_max_attempts: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBackOff {
    #[serde(default)]
    base_interval: Option<String>,
    #[serde(default)]
    max_interval: Option<String>,
}

const HTTP_METHODS: [&str; 9] = ["Connect", "Delete", "Get", "Head", "Options", "Patch", "Post", "Put", "Trace"];

fn http_condition(errors: &mut ValidationErrors, path: &str, text: &str) -> Option<RetryOn> {
    Some(match text {
        "5xx" | "5XX" => RetryOn::ServerError,
        "GatewayError" => RetryOn::GatewayError,
        "Reset" => RetryOn::Reset,
        "ConnectFailure" => RetryOn::ConnectFailure,
        "RefusedStream" => RetryOn::RefusedStream,
        "Retriable4xx" => RetryOn::Status(409),
        "EnvoyRatelimited" | "Http3PostConnectFailure" => {
            errors.push(path, format!("{text} is not supported by loopmesh (no Envoy rate limiting, no HTTP/3)"));
            return None;
        }
        _ => {
            if let Some(m) = text.strip_prefix("HttpMethod").filter(|m| HTTP_METHODS.contains(m)) {
                return Some(RetryOn::Method(m.to_ascii_uppercase()));
            }
            match text.parse::<u16>() {
                Ok(code @ 100..=599) => RetryOn::Status(code),
                _ => {
                    errors.push(
                        path,
                        format!(
                            "{text:?} is not one of 5xx, GatewayError, Reset, Retriable4xx, ConnectFailure, RefusedStream, HttpMethod<Method> or a status code"
                        ),
                    );
                    return None;
                }
            }
        }
    })
}

fn grpc_condition(errors: &mut ValidationErrors, path: &str, text: &str) -> Option<RetryOn> {
    Some(RetryOn::Grpc(match text {
        "Canceled" => 1,
        "DeadlineExceeded" => 4,
        "ResourceExhausted" => 8,
        "Internal" => 13,
        "Unavailable" => 14,
        _ => {
            errors.push(
                path,
                format!("{text:?} is not one of Canceled, DeadlineExceeded, Internal, ResourceExhausted, Unavailable"),
            );
            return None;
        }
    }))
}

fn section(errors: &mut ValidationErrors, path: &str, raw: RawSection, grpc: bool) -> RetrySection {
    let why = "loopmesh retries on retryOn's conditions only";
    unsupported(errors, &format!("{path}.rateLimitedBackOff"), &raw.rate_limited_back_off, why);
    unsupported(errors, &format!("{path}.retriableResponseHeaders"), &raw.retriable_response_headers, why);
    unsupported(errors, &format!("{path}.retriableRequestHeaders"), &raw.retriable_request_headers, why);
    let hosts = "a retry always goes to another endpoint when one is healthy";
    unsupported(errors, &format!("{path}.hostSelection"), &raw.host_selection, hosts);
    unsupported(errors, &format!("{path}.hostSelectionMaxAttempts"), &raw.host_selection_max_attempts, hosts);
    let (base, max) = raw.back_off.map_or((None, None), |b| {
        (
            duration(errors, &format!("{path}.backOff.baseInterval"), b.base_interval),
            duration(errors, &format!("{path}.backOff.maxInterval"), b.max_interval),
        )
    });
    if let (Some(b), Some(m)) = (base, max)
        && m < b
    {
        errors.push(format!("{path}.backOff.maxInterval"), "must not be less than baseInterval");
    }
    if base == Some(0) {
        errors.push(format!("{path}.backOff.baseInterval"), "must be greater than zero");
    }
    let retry_on = raw.retry_on.map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let p = format!("{path}.retryOn[{i}]");
                if grpc { grpc_condition(errors, &p, c) } else { http_condition(errors, &p, c) }
            })
            .collect()
    });
    RetrySection {
        num_retries: raw.num_retries,
        per_try_timeout_ms: duration(errors, &format!("{path}.perTryTimeout"), raw.per_try_timeout),
        base_interval_ms: base,
        max_interval_ms: max,
        retry_on,
    }
}

fn conf(errors: &mut ValidationErrors, path: &str, raw: RawConf) -> RetryConf {
    if raw.tcp.as_ref().and_then(|t| t.max_connect_attempt) == Some(0) {
        errors.push(format!("{path}.tcp.maxConnectAttempt"), "must be at least 1");
    }
    RetryConf {
        tcp_max_connect_attempt: raw.tcp.and_then(|t| t.max_connect_attempt),
        http: raw.http.map(|s| section(errors, &format!("{path}.http"), s, false)),
        grpc: raw.grpc.map(|s| section(errors, &format!("{path}.grpc"), s, true)),
    }
}

pub(crate) fn from_value(value: serde_yaml_ng::Value) -> Result<super::MeshRetry, ValidationErrors> {
    parse(value, "MeshRetry", |errors, path, raw: RawTo<RawConf>| default_entry(errors, path, raw, conf))
}

merge_fields!(RetrySection { num_retries, per_try_timeout_ms, base_interval_ms, max_interval_ms, retry_on });

/// The `tcp` field, and each of the `http` and `grpc` sections merged field by field.
impl super::Merge for RetryConf {
    fn merge(&mut self, other: &Self) {
        if other.tcp_max_connect_attempt.is_some() {
            self.tcp_max_connect_attempt = other.tcp_max_connect_attempt;
        }
        for (mine, theirs) in [(&mut self.http, &other.http), (&mut self.grpc, &other.grpc)] {
            if let Some(theirs) = theirs {
                mine.get_or_insert_with(RetrySection::default).merge(theirs);
            }
        }
    }
}
