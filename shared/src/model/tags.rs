//! Tag rules shared by Dataplane inbounds and resource labels.

use super::ValidationErrors;

pub const SERVICE_TAG: &str = "kuma.io/service";
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

/// The values `kuma.io/protocol` may take.
pub const KNOWN_PROTOCOLS: &[&str] = &["tcp", "tls", "http", "http2", "grpc", "kafka"];

/// Kuma's tag key rule: non-empty, letters, digits and `. - _ : /`.
pub fn validate_tag_key(errors: &mut ValidationErrors, path: &str, key: &str) {
    if key.is_empty()
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/'))
    {
        errors.push(path, format!("tag key {key:?} must be non-empty and hold only letters, digits and . - _ : /"));
    }
}

/// Kuma's tag value rule: non-empty, letters, digits and `. - _ :`.
pub fn validate_tag_value(errors: &mut ValidationErrors, path: &str, value: &str) {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')) {
        errors.push(path, format!("tag value {value:?} must be non-empty and hold only letters, digits and . - _ :"));
    }
}

/// Checks a whole tag map, with paths like `networking.inbound[0].tags["kuma.io/service"]`.
pub fn validate_tags<'a>(
    errors: &mut ValidationErrors,
    path: &str,
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (k, v) in tags {
        let p = format!("{path}[{k:?}]");
        validate_tag_key(errors, &p, k);
        validate_tag_value(errors, &p, v);
    }
}
