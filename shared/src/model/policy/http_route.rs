//! MeshHTTPRoute: requests matched by path, method, headers and query go to
//! weighted services (canaries), with their headers modified on the way.

use serde::{Deserialize, Serialize};

use super::{Destination, RawRef, To, ValidationErrors, destination, parse, unsupported};

/// The `rules` of one `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRouteRules(pub Vec<RouteRule>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Any one matching selects the rule.
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// `None`: the outbound's own service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

/// Every part present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Matches the path or a path below it (`/v2` matches `/v2/x`, not `/v2x`).
    PathPrefix(String),
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum HeaderMatch {
    Exact { name: String, value: String },
    Prefix { name: String, value: String },
    RegularExpression { name: String, value: String },
    Present { name: String },
    Absent { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum QueryMatch {
    Exact { name: String, value: String },
    RegularExpression { name: String, value: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    pub target: Destination,
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawTo {
    #[serde(default)]
    target_ref: Option<RawRef>,
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
    #[serde(default)]
    hostnames: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    matches: Option<Vec<RawMatch>>,
    #[serde(default)]
    default: Option<RawRuleConf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    path: Option<RawValueMatch>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<Vec<RawNamedMatch>>,
    #[serde(default)]
    query_params: Option<Vec<RawNamedMatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawValueMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNamedMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRuleConf {
    #[serde(default)]
    filters: Option<Vec<RawFilter>>,
    #[serde(default)]
    backend_refs: Option<Vec<RawBackendRef>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFilter {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    request_header_modifier: Option<RawModifier>,
    #[serde(default)]
    response_header_modifier: Option<RawModifier>,
    #[serde(default)]
    request_redirect: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    url_rewrite: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    request_mirror: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModifier {
    #[serde(default)]
    set: Option<Vec<RawHeader>>,
    #[serde(default)]
    add: Option<Vec<RawHeader>>,
    #[serde(default)]
    remove: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBackendRef {
    #[serde(flatten)]
    target: RawBackendTarget,
    #[serde(default)]
    weight: Option<u32>,
}

/// The `targetRef` part of a backendRef, written inline.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBackendTarget {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<super::Labels>,
    #[serde(default)]
    tags: Option<super::Labels>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

/// RFC 9110's token: a header name.
fn header_name(errors: &mut ValidationErrors, path: &str, name: &str) -> String {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        errors.push(path, format!("{name:?} is not an HTTP header name"));
    }
    name.to_ascii_lowercase()
}

fn regex(errors: &mut ValidationErrors, path: &str, pattern: &str) {
    if let Err(e) = regex_lite::Regex::new(pattern) {
        errors.push(path, format!("{pattern:?} is not a regular expression: {e}"));
    }
}

const METHODS: [&str; 9] = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"];

fn route_match(errors: &mut ValidationErrors, path: &str, raw: RawMatch) -> RouteMatch {
    let path_match = raw.path.map(|p| {
        let value = p.value.unwrap_or_default();
        let at = format!("{path}.path");
        match p.kind.as_deref() {
            Some("Exact") | Some("PathPrefix") if !value.starts_with('/') => {
                errors.push(format!("{at}.value"), format!("{value:?} must be an absolute path (start with /)"));
            }
            Some("RegularExpression") => regex(errors, &format!("{at}.value"), &value),
            _ => {}
        }
        match p.kind.as_deref() {
            Some("Exact") => PathMatch::Exact(value),
            Some("PathPrefix") => PathMatch::PathPrefix(value),
            Some("RegularExpression") => PathMatch::RegularExpression(value),
            other => {
                errors.push(
                    format!("{at}.type"),
                    format!("{other:?} is not one of Exact, PathPrefix, RegularExpression"),
                );
                PathMatch::PathPrefix("/".into())
            }
        }
    });
    if let Some(m) = &raw.method
        && !METHODS.contains(&m.as_str())
    {
        errors.push(format!("{path}.method"), format!("{m:?} is not one of {}", METHODS.join(", ")));
    }
    let headers = raw
        .headers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let at = format!("{path}.headers[{i}]");
            let name = header_name(errors, &format!("{at}.name"), h.name.as_deref().unwrap_or_default());
            let value = h.value.unwrap_or_default();
            Some(match h.kind.as_deref().unwrap_or("Exact") {
                "Exact" => HeaderMatch::Exact { name, value },
                "Prefix" => HeaderMatch::Prefix { name, value },
                "RegularExpression" => {
                    regex(errors, &format!("{at}.value"), &value);
                    HeaderMatch::RegularExpression { name, value }
                }
                "Present" => HeaderMatch::Present { name },
                "Absent" => HeaderMatch::Absent { name },
                other => {
                    errors.push(
                        format!("{at}.type"),
                        format!("{other:?} is not one of Exact, Prefix, RegularExpression, Present, Absent"),
                    );
                    return None;
                }
            })
        })
        .collect();
    let query_params = raw
        .query_params
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, q)| {
            let at = format!("{path}.queryParams[{i}]");
            let name = q.name.unwrap_or_default();
            if name.is_empty() {
                errors.push(format!("{at}.name"), "required");
            }
            let value = q.value.unwrap_or_default();
            Some(match q.kind.as_deref() {
                Some("Exact") => QueryMatch::Exact { name, value },
                Some("RegularExpression") => {
                    regex(errors, &format!("{at}.value"), &value);
                    QueryMatch::RegularExpression { name, value }
                }
                other => {
                    errors.push(format!("{at}.type"), format!("{other:?} is not one of Exact, RegularExpression"));
                    return None;
                }
            })
        })
        .collect();
    RouteMatch { path: path_match, method: raw.method, headers, query_params }
}

fn modifier(errors: &mut ValidationErrors, path: &str, raw: Option<RawModifier>) -> HeaderModifier {
    let Some(raw) = raw else {
        errors.push(path, "required for this filter type");
        return HeaderModifier::default();
    };
    let mut pairs = |what: &str, list: Option<Vec<RawHeader>>| -> Vec<(String, String)> {
        list.unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, h)| (header_name(errors, &format!("{path}.{what}[{i}].name"), &h.name), h.value))
            .collect()
    };
    let set = pairs("set", raw.set);
    let add = pairs("add", raw.add);
    let remove = raw
        .remove
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, n)| header_name(errors, &format!("{path}.remove[{i}]"), n))
        .collect();
    HeaderModifier { set, add, remove }
}

fn rule(errors: &mut ValidationErrors, path: &str, raw: RawRule) -> RouteRule {
    let matches: Vec<RouteMatch> = raw
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, m)| route_match(errors, &format!("{path}.matches[{i}]"), m))
        .collect();
    if matches.is_empty() {
        errors
            .push(format!("{path}.matches"), "required: at least one match (a PathPrefix of / matches every request)");
    }
    let conf = raw.default.unwrap_or(RawRuleConf { filters: None, backend_refs: None });
    let mut filters = Vec::new();
    for (i, f) in conf.filters.unwrap_or_default().into_iter().enumerate() {
        let at = format!("{path}.default.filters[{i}]");
        let why = "loopmesh modifies request and response headers only";
        unsupported(errors, &format!("{at}.requestRedirect"), &f.request_redirect, why);
        unsupported(errors, &format!("{at}.urlRewrite"), &f.url_rewrite, why);
        unsupported(errors, &format!("{at}.requestMirror"), &f.request_mirror, why);
        match f.kind.as_deref() {
            Some("RequestHeaderModifier") => filters.push(Filter::RequestHeaderModifier(modifier(
                errors,
                &format!("{at}.requestHeaderModifier"),
                f.request_header_modifier,
            ))),
            Some("ResponseHeaderModifier") => filters.push(Filter::ResponseHeaderModifier(modifier(
                errors,
                &format!("{at}.responseHeaderModifier"),
                f.response_header_modifier,
            ))),
            Some(other @ ("RequestRedirect" | "URLRewrite" | "RequestMirror")) => {
                errors.push(format!("{at}.type"), format!("{other} is not supported by loopmesh yet: {why}"));
            }
            other => errors.push(
                format!("{at}.type"),
                format!(
                    "{other:?} is not one of RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror"
                ),
            ),
        }
    }
    let backend_refs = conf.backend_refs.map(|refs| {
        if refs.is_empty() {
            errors.push(format!("{path}.default.backendRefs"), "at least one backend, or leave backendRefs out");
        }
        refs.into_iter()
            .enumerate()
            .map(|(i, b)| {
                let at = format!("{path}.default.backendRefs[{i}]");
                let t = b.target;
                let raw_ref = RawRef {
                    kind: t.kind,
                    name: t.name,
                    tags: t.tags,
                    labels: t.labels,
                    namespace: t.namespace,
                    section_name: t.section_name,
                    port: t.port,
                    proxy_types: None,
                };
                let target = destination(errors, &at, Some(raw_ref));
                if target == Destination::Mesh {
                    errors.push(
                        format!("{at}.kind"),
                        "a backend is a service: MeshService, MeshExternalService or MeshMultiZoneService",
                    );
                }
                BackendRef { target, weight: b.weight.unwrap_or(1) }
            })
            .collect::<Vec<_>>()
    });
    if backend_refs.as_ref().is_some_and(|r| !r.is_empty() && r.iter().all(|b| b.weight == 0)) {
        errors.push(format!("{path}.default.backendRefs"), "every weight is 0: no request could be sent");
    }
    RouteRule { matches, filters, backend_refs }
}

fn entry(errors: &mut ValidationErrors, path: &str, raw: RawTo) -> Option<To<HttpRouteRules>> {
    let target = destination(errors, &format!("{path}.targetRef"), raw.target_ref);
    unsupported(errors, &format!("{path}.hostnames"), &raw.hostnames, "hostnames apply to MeshGateways");
    let rules: Vec<RouteRule> = raw
        .rules
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(errors, &format!("{path}.rules[{i}]"), r))
        .collect();
    if rules.is_empty() {
        errors.push(format!("{path}.rules"), "required: at least one rule");
    }
    Some(To { target, conf: HttpRouteRules(rules) })
}

pub(crate) fn from_value(value: serde_yaml_ng::Value) -> Result<super::MeshHttpRoute, ValidationErrors> {
    parse(value, "MeshHTTPRoute", entry)
}

impl RouteMatch {
    /// Gateway API precedence: an exact path, then the longest prefix, then
    /// a method, then more headers, then more query parameters.
    pub fn specificity(&self) -> (u8, usize, bool, usize, usize) {
        let (kind, len) = match &self.path {
            Some(PathMatch::Exact(p)) => (3, p.len()),
            Some(PathMatch::RegularExpression(p)) => (2, p.len()),
            Some(PathMatch::PathPrefix(p)) => (1, p.len()),
            None => (0, 0),
        };
        (kind, len, self.method.is_some(), self.headers.len(), self.query_params.len())
    }
}
