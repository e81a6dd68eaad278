//! MeshTimeout: how long a connection and a request may take.

use serde::{Deserialize, Serialize};

use super::{RawTo, ValidationErrors, default_entry, duration, parse, unsupported};

/// A `default` of MeshTimeout, in milliseconds; `None`: not set here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawConf {
    #[serde(default)]
    connection_timeout: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    http: Option<RawHttp>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    request_timeout: Option<String>,
    #[serde(default)]
    stream_idle_timeout: Option<String>,
    #[serde(default)]
    max_stream_duration: Option<String>,
    #[serde(default)]
    max_connection_duration: Option<String>,
    #[serde(default)]
    request_headers_timeout: Option<String>,
}

fn conf(errors: &mut ValidationErrors, path: &str, raw: RawConf) -> TimeoutConf {
    let http = raw.http.unwrap_or(RawHttp {
        request_timeout: None,
        stream_idle_timeout: None,
        max_stream_duration: None,
        max_connection_duration: None,
        request_headers_timeout: None,
    });
    let h = format!("{path}.http");
    // Zero is Kuma's "no limit", which loopmesh also is without the field.
    let nonzero = |v: &Option<String>| v.as_deref().filter(|d| super::parse_duration(d) != Some(0)).map(|_| ());
    unsupported(errors, &format!("{h}.maxStreamDuration"), &nonzero(&http.max_stream_duration), "use requestTimeout");
    unsupported(
        errors,
        &format!("{h}.maxConnectionDuration"),
        &nonzero(&http.max_connection_duration),
        "connections live until idle",
    );
    unsupported(
        errors,
        &format!("{h}.requestHeadersTimeout"),
        &nonzero(&http.request_headers_timeout),
        "use requestTimeout",
    );
    TimeoutConf {
        connection_timeout_ms: duration(errors, &format!("{path}.connectionTimeout"), raw.connection_timeout),
        idle_timeout_ms: duration(errors, &format!("{path}.idleTimeout"), raw.idle_timeout),
        request_timeout_ms: duration(errors, &format!("{h}.requestTimeout"), http.request_timeout),
        stream_idle_timeout_ms: duration(errors, &format!("{h}.streamIdleTimeout"), http.stream_idle_timeout),
    }
}

pub(crate) fn from_value(value: serde_yaml_ng::Value) -> Result<super::MeshTimeout, ValidationErrors> {
    parse(value, "MeshTimeout", |errors, path, raw: RawTo<RawConf>| default_entry(errors, path, raw, conf))
}

merge_fields!(TimeoutConf { connection_timeout_ms, idle_timeout_ms, request_timeout_ms, stream_idle_timeout_ms });
