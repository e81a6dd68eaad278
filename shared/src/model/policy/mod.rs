//! Kong Mesh's outbound policies, the `to` form: MeshTimeout, MeshRetry,
//! MeshCircuitBreaker, MeshHTTPRoute and MeshLoadBalancingStrategy. Each
//! names the sidecars it configures (`spec.targetRef`) and, per entry of
//! `spec.to`, the outbounds it is about and what to do there.
//!
//! Every field is parsed with unknown names refused, so a typo is an error
//! at validate. Fields Kong defines that loopmesh does not act on yet are
//! refused by name, never accepted and ignored.

/// Implements [`Merge`] for a conf whose fields are all `Option`s: each
/// field `other` sets replaces this one's (Kuma merges field by field; a
/// list is replaced whole).
macro_rules! merge_fields {
    ($conf:ty { $($field:ident),* $(,)? }) => {
        impl super::Merge for $conf {
            fn merge(&mut self, other: &Self) {
                $( if other.$field.is_some() { self.$field.clone_from(&other.$field); } )*
            }
        }
    };
}

pub mod circuit_breaker;
pub mod http_route;
pub mod load_balancing;
pub mod retry;
pub mod timeout;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::document::to_path;
use super::services::{RawDocument, meta};
use super::{Labels, SERVICE_TAG, TargetRef, ValidationErrors, validate_resource_name};

pub use circuit_breaker::CircuitBreakerConf;
pub use http_route::{HttpRouteRules, RouteRule};
pub use load_balancing::{LoadBalancingConf, LoadBalancingType};
pub use retry::{RetryConf, RetrySection};
pub use timeout::TimeoutConf;

/// One outbound policy: the sidecars it is for and its `to` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundPolicy<C> {
    pub name: String,
    pub mesh: String,
    /// The sidecars it configures (Mesh, MeshSubset of inbound tags, MeshService).
    pub target: TargetRef,
    pub to: Vec<To<C>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct To<C> {
    pub target: Destination,
    pub conf: C,
}

pub type MeshTimeout = OutboundPolicy<TimeoutConf>;
pub type MeshRetry = OutboundPolicy<RetryConf>;
pub type MeshCircuitBreaker = OutboundPolicy<CircuitBreakerConf>;
pub type MeshHttpRoute = OutboundPolicy<HttpRouteRules>;
pub type MeshLoadBalancingStrategy = OutboundPolicy<LoadBalancingConf>;

/// The outbounds a `to` entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Destination {
    Mesh,
    /// A `kuma.io/service` service or a MeshService, by name.
    MeshService {
        name: String,
    },
    MeshExternalService {
        name: String,
    },
    MeshMultiZoneService {
        name: String,
    },
}

impl Destination {
    /// Kuma's order of specificity: a named destination beats the Mesh.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Mesh => 0,
            _ => 1,
        }
    }

    /// Whether the outbound of `service`, of kind `kind` (the view's code:
    /// `svc`, `ms`, `mes`, `mzs`; `None` from a file), is one of these.
    pub fn selects(&self, service: &str, kind: Option<&str>) -> bool {
        let named = |name: &str, kinds: &[&str]| name == service && kind.is_none_or(|k| kinds.contains(&k));
        match self {
            Self::Mesh => true,
            Self::MeshService { name } => named(name, &["svc", "ms"]),
            Self::MeshExternalService { name } => named(name, &["mes"]),
            Self::MeshMultiZoneService { name } => named(name, &["mzs"]),
        }
    }
}

/// A `targetRef` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawRef {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tags: Option<Labels>,
    #[serde(default)]
    labels: Option<Labels>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    proxy_types: Option<Vec<String>>,
}

/// `spec.targetRef`: which sidecars the policy configures. A sidecar is
/// known by its inbounds' tags (its `kuma.io/service` among them).
pub(crate) fn top_ref(errors: &mut ValidationErrors, path: &str, raw: Option<RawRef>) -> TargetRef {
    let Some(raw) = raw else { return TargetRef::Mesh };
    refuse_ref_extras(errors, path, &raw);
    if raw.proxy_types.is_some() {
        errors.push(format!("{path}.proxyTypes"), "not supported by loopmesh: every sidecar is a Sidecar");
    }
    match raw.kind.as_deref() {
        Some("Mesh") => TargetRef::Mesh,
        Some("MeshService") => {
            let name = raw.name.unwrap_or_default();
            validate_resource_name(errors, &format!("{path}.name"), &name);
            TargetRef::MeshService { name }
        }
        Some("MeshSubset") => {
            let tags = raw.tags.unwrap_or_default();
            if tags.is_empty() {
                errors.push(format!("{path}.tags"), "required: the tags a MeshSubset selects");
            }
            TargetRef::MeshSubset { tags }
        }
        Some(other @ ("Dataplane" | "MeshServiceSubset" | "MeshGateway" | "MeshHTTPRoute")) => {
            errors.push(
                format!("{path}.kind"),
                format!("{other} is not supported by loopmesh yet; use Mesh, MeshService or MeshSubset"),
            );
            TargetRef::Mesh
        }
        Some(other) => {
            errors.push(format!("{path}.kind"), format!("{other:?} is not one of Mesh, MeshService, MeshSubset"));
            TargetRef::Mesh
        }
        None => {
            errors.push(format!("{path}.kind"), "required: Mesh, MeshService or MeshSubset");
            TargetRef::Mesh
        }
    }
}

fn refuse_ref_extras(errors: &mut ValidationErrors, path: &str, raw: &RawRef) {
    if raw.namespace.is_some() {
        errors.push(format!("{path}.namespace"), "loopmesh has no namespaces (Universal mode): remove it");
    }
    if raw.section_name.is_some() {
        errors.push(format!("{path}.sectionName"), "not supported by loopmesh yet: the policy applies to every port");
    }
    if raw.port.is_some() {
        errors.push(format!("{path}.port"), "not supported by loopmesh yet: the policy applies to every port");
    }
}

/// `spec.to[].targetRef`: which outbounds. A MeshService may be named by
/// `name` or by its `kuma.io/display-name` label.
pub(crate) fn destination(errors: &mut ValidationErrors, path: &str, raw: Option<RawRef>) -> Destination {
    let Some(raw) = raw else {
        errors.push(path, "required: the outbounds this entry is for (kind Mesh, MeshService, ...)");
        return Destination::Mesh;
    };
    refuse_ref_extras(errors, path, &raw);
    if raw.tags.is_some() {
        errors.push(format!("{path}.tags"), "tags select sidecars, not outbounds: name the service");
    }
    let mut name = || {
        let mut labels = raw.labels.clone().unwrap_or_default();
        let by_label = labels.remove(super::DISPLAY_NAME_LABEL);
        if let Some(other) = labels.keys().next() {
            errors.push(
                format!("{path}.labels"),
                format!("{other:?}: loopmesh selects outbounds by name or {}", super::DISPLAY_NAME_LABEL),
            );
        }
        let name = match (raw.name.clone(), by_label) {
            (Some(n), None) | (None, Some(n)) => n,
            (Some(n), Some(l)) if n == l => n,
            (Some(_), Some(_)) => {
                errors.push(format!("{path}.labels"), "names another service than `name`");
                String::new()
            }
            (None, None) => {
                errors.push(format!("{path}.name"), "required: the service's name");
                String::new()
            }
        };
        validate_resource_name(errors, &format!("{path}.name"), &name);
        name
    };
    match raw.kind.as_deref() {
        Some("Mesh") => Destination::Mesh,
        Some("MeshService") => Destination::MeshService { name: name() },
        Some("MeshExternalService") => Destination::MeshExternalService { name: name() },
        Some("MeshMultiZoneService") => Destination::MeshMultiZoneService { name: name() },
        Some(other @ ("MeshServiceSubset" | "MeshHTTPRoute" | "MeshSubset" | "Dataplane")) => {
            errors.push(
                format!("{path}.kind"),
                format!(
                    "{other} is not supported by loopmesh yet; use Mesh, MeshService, MeshExternalService or MeshMultiZoneService"
                ),
            );
            Destination::Mesh
        }
        Some(other) => {
            errors.push(
                format!("{path}.kind"),
                format!("{other:?} is not one of Mesh, MeshService, MeshExternalService, MeshMultiZoneService"),
            );
            Destination::Mesh
        }
        None => {
            errors.push(
                format!("{path}.kind"),
                "required: Mesh, MeshService, MeshExternalService or MeshMultiZoneService",
            );
            Destination::Mesh
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, bound(deserialize = "T: Deserialize<'de>"))]
struct RawSpec<T> {
    #[serde(default)]
    target_ref: Option<RawRef>,
    #[serde(default)]
    to: Option<Vec<T>>,
    #[serde(default)]
    from: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    rules: Option<serde_yaml_ng::Value>,
}

/// A `to` entry with `default` (every kind but MeshHTTPRoute).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, bound(deserialize = "R: Deserialize<'de>"))]
pub(crate) struct RawTo<R> {
    #[serde(default)]
    pub(crate) target_ref: Option<RawRef>,
    #[serde(default)]
    pub(crate) default: Option<R>,
}

/// Parses a policy document whose `to` entries are `T`, each turned into
/// its destination and conf by `entry`.
pub(crate) fn parse<T: DeserializeOwned, C>(
    value: serde_yaml_ng::Value,
    kind: &str,
    mut entry: impl FnMut(&mut ValidationErrors, &str, T) -> Option<To<C>>,
) -> Result<OutboundPolicy<C>, ValidationErrors> {
    let mut raw: RawDocument<RawSpec<T>> = serde_path_to_error::deserialize(value).map_err(to_path)?;
    let mut errors = ValidationErrors::default();
    let m = meta(&mut errors, &mut raw);
    let Some(spec) = raw.spec.take() else {
        errors.push("spec", "required: targetRef and to");
        return Err(errors);
    };
    if spec.from.is_some() {
        errors.push("spec.from", format!("inbound {kind} (spec.from) is not supported by loopmesh yet; use spec.to"));
    }
    if spec.rules.is_some() {
        errors.push("spec.rules", format!("inbound {kind} (spec.rules) is not supported by loopmesh yet; use spec.to"));
    }
    let target = top_ref(&mut errors, "spec.targetRef", spec.target_ref);
    let raw_to = spec.to.unwrap_or_default();
    if raw_to.is_empty() {
        errors.push("spec.to", "required: at least one entry with a targetRef");
    }
    let to =
        raw_to.into_iter().enumerate().filter_map(|(i, t)| entry(&mut errors, &format!("spec.to[{i}]"), t)).collect();
    errors.into_result(OutboundPolicy { name: m.name, mesh: m.mesh, target, to })
}

/// The usual `to` entry: a destination and a `default` conf.
pub(crate) fn default_entry<R, C>(
    errors: &mut ValidationErrors,
    path: &str,
    raw: RawTo<R>,
    conf: impl FnOnce(&mut ValidationErrors, &str, R) -> C,
) -> Option<To<C>> {
    let target = destination(errors, &format!("{path}.targetRef"), raw.target_ref);
    let Some(default) = raw.default else {
        errors.push(format!("{path}.default"), "required: the configuration for these outbounds");
        return None;
    };
    Some(To { target, conf: conf(errors, &format!("{path}.default"), default) })
}

/// A Go duration (`15s`, `1m30s`, `250ms`, `1.5h`, `0s`) in milliseconds,
/// as Kubernetes writes them.
pub(crate) fn duration(errors: &mut ValidationErrors, path: &str, text: Option<String>) -> Option<u64> {
    let text = text?;
    match parse_duration(&text) {
        Some(ms) => Some(ms),
        None => {
            errors.push(path, format!("{text:?} is not a duration like 15s, 1m30s or 250ms"));
            None
        }
    }
}

fn parse_duration(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text.trim();
    if rest.is_empty() || rest.starts_with('-') {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ms = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * ms;
    }
    (total.is_finite() && total < u64::MAX as f64).then(|| total.ceil() as u64)
}

/// A field Kong defines that loopmesh does not act on yet.
pub(crate) fn unsupported<T>(errors: &mut ValidationErrors, path: &str, value: &Option<T>, why: &str) {
    if value.is_some() {
        errors.push(path, format!("not supported by loopmesh yet: {why}"));
    }
}

/// Whether a policy's `spec.targetRef` selects a sidecar whose inbounds
/// carry these tags (a sidecar with no inbound is selected by Mesh only).
pub fn selects_sidecar(target: &TargetRef, inbounds: &[Labels]) -> bool {
    match target {
        TargetRef::Mesh => true,
        TargetRef::MeshService { name } => inbounds.iter().any(|t| t.get(SERVICE_TAG) == Some(name)),
        TargetRef::MeshSubset { .. } => inbounds.iter().any(|t| target.selects(t)),
    }
}

/// The `to` confs of `policies` that apply to an outbound, in the order
/// they merge (later wins): by the policy's `targetRef` (Mesh, MeshSubset,
/// MeshService), then its name, then the entry's destination (Mesh before
/// a named service), then its place.
pub fn applicable<'a, C>(
    policies: &'a [OutboundPolicy<C>],
    inbounds: &[Labels],
    service: &str,
    kind: Option<&str>,
) -> Vec<&'a C> {
    let mut found: Vec<(u8, &str, u8, usize, &C)> = Vec::new();
    for p in policies.iter().filter(|p| selects_sidecar(&p.target, inbounds)) {
        for (i, to) in p.to.iter().enumerate().filter(|(_, t)| t.target.selects(service, kind)) {
            found.push((p.target.rank(), &p.name, to.target.rank(), i, &to.conf));
        }
    }
    found.sort_by(|a, b| (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3)));
    found.into_iter().map(|f| f.4).collect()
}

/// A `default` that later, more specific ones override field by field.
pub trait Merge {
    fn merge(&mut self, other: &Self);
}

/// The merged conf of `policies` for an outbound (see [`applicable`]);
/// every field unset when none applies.
pub fn merged<C: Merge + Default>(
    policies: &[OutboundPolicy<C>],
    inbounds: &[Labels],
    service: &str,
    kind: Option<&str>,
) -> C {
    let mut conf = C::default();
    for c in applicable(policies, inbounds, service, kind) {
        conf.merge(c);
    }
    conf
}

/// The mesh's outbound policies, as the view carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundPolicies {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeouts: Vec<MeshTimeout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<MeshRetry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub circuit_breakers: Vec<MeshCircuitBreaker>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<MeshHttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancing: Vec<MeshLoadBalancingStrategy>,
}

impl OutboundPolicies {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Adds one policy resource; other kinds are not outbound policies.
    pub fn add(&mut self, resource: super::Resource) {
        use super::Resource;
        match resource {
            Resource::MeshTimeout(p) => self.timeouts.push(p),
            Resource::MeshRetry(p) => self.retries.push(p),
            Resource::MeshCircuitBreaker(p) => self.circuit_breakers.push(p),
            Resource::MeshHttpRoute(p) => self.http_routes.push(p),
            Resource::MeshLoadBalancingStrategy(p) => self.load_balancing.push(p),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> String {
        match crate::model::parse_one(yaml) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn kongs_examples_validate() {
        let docs = [
            // developer.konghq.com/mesh/policies/meshretry/examples/retry-http-5xx (Universal form)
            "type: MeshRetry\nname: frontend-to-backend-http\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      labels:\n        kuma.io/display-name: backend\n    default:\n      http:\n        numRetries: 3\n        perTryTimeout: 2s\n        retryOn:\n        - 5xx\n        - Reset\n",
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      idleTimeout: 1h\n      connectionTimeout: 5s\n      http:\n        requestTimeout: 15s\n        streamIdleTimeout: 30m\n        maxStreamDuration: 0s\n",
            "type: MeshCircuitBreaker\nname: cb\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      connectionLimits:\n        maxConnections: 1024\n        maxPendingRequests: 1024\n        maxRequests: 1024\n        maxRetries: 3\n      outlierDetection:\n        disabled: false\n        detectors:\n          totalFailures:\n            consecutive: 10\n",
            "type: MeshLoadBalancingStrategy\nname: lb\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      localityAwareness:\n        disabled: true\n      loadBalancer:\n        type: LeastRequest\n        leastRequest:\n          choiceCount: 3\n",
            "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    rules:\n    - matches:\n      - path:\n          type: PathPrefix\n          value: /v2\n        method: GET\n        headers:\n        - type: Exact\n          name: x-version\n          value: v2\n      default:\n        filters:\n        - type: RequestHeaderModifier\n          requestHeaderModifier:\n            set:\n            - name: x-custom-header\n              value: xyz\n        backendRefs:\n        - kind: MeshService\n          name: backend-v2\n          weight: 1\n",
        ];
        for d in docs {
            crate::model::parse_one(d).unwrap_or_else(|e| panic!("{e}\n{d}"));
        }
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        let base = "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n";
        let e = errors(&format!("{base}      http:\n        requestTimeot: 1s\n"));
        assert!(e.contains("spec.to[0].default.http") && e.contains("requestTimeot"), "{e}");
        let e = errors(&format!("{base}      http:\n        requestTimeout: soon\n"));
        assert!(e.contains("spec.to[0].default.http.requestTimeout") && e.contains("duration"), "{e}");
        let e = errors(&format!("{base}      http:\n        maxStreamDuration: 10s\n"));
        assert!(e.contains("maxStreamDuration") && e.contains("not supported"), "{e}");
        let lb = "type: MeshLoadBalancingStrategy\nname: lb\nmesh: default\nspec:\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      loadBalancer:\n        type: Maglev\n";
        assert!(errors(lb).contains("spec.to[0].default.loadBalancer.type"), "{}", errors(lb));
        let retry = "type: MeshRetry\nname: r\nmesh: default\nspec:\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      http:\n        retryOn: [Sometimes]\n";
        assert!(errors(retry).contains("spec.to[0].default.http.retryOn[0]"), "{}", errors(retry));
        let route = "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  to:\n  - targetRef:\n      kind: MeshService\n      name: api\n    rules:\n    - matches:\n      - path:\n          type: RegularExpression\n          value: '(unclosed'\n";
        assert!(errors(route).contains("spec.to[0].rules[0].matches[0].path.value"), "{}", errors(route));
        let top = "type: MeshRetry\nname: r\nmesh: default\nspec:\n  targetRef:\n    kind: Dataplane\n  to:\n  - targetRef:\n      kind: Mesh\n    default: {}\n";
        assert!(errors(top).contains("spec.targetRef.kind"), "{}", errors(top));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s"), Some(15_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000));
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("15"), None, "a unit is required");
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("3 days"), None);
    }

    #[test]
    fn later_and_more_specific_policies_win() {
        let p = |name: &str, target: TargetRef, to: Vec<(Destination, u8)>| OutboundPolicy {
            name: name.into(),
            mesh: "default".into(),
            target,
            to: to.into_iter().map(|(target, conf)| To { target, conf }).collect(),
        };
        let api = || Destination::MeshService { name: "api".into() };
        let policies = vec![
            p("z-mesh", TargetRef::Mesh, vec![(api(), 3), (Destination::Mesh, 1)]),
            p("a-web", TargetRef::MeshService { name: "web".into() }, vec![(Destination::Mesh, 4)]),
            p("b-other", TargetRef::MeshService { name: "other".into() }, vec![(Destination::Mesh, 9)]),
            p("a-mesh", TargetRef::Mesh, vec![(Destination::Mesh, 2)]),
        ];
        let web: Labels = [(SERVICE_TAG.to_owned(), "web".to_owned())].into();
        let order: Vec<u8> = applicable(&policies, &[web], "api", Some("svc")).into_iter().copied().collect();
        assert_eq!(order, [2, 1, 3, 4], "Mesh policies by name, entries by destination; MeshService-targeted last");
        assert_eq!(applicable(&policies, &[], "db", None).into_iter().copied().collect::<Vec<_>>(), [2, 1]);
    }
}
