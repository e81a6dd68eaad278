//! MeshHTTPRoute at request time: the first rule (most specific first, by
//! the Gateway API's precedence) with a match the request meets decides
//! which service the request goes to, by weight, and which headers change.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Uri};
use loopmesh_shared::model::policy::Destination;
use loopmesh_shared::model::policy::http_route::{
    HeaderMatch, HeaderModifier, HttpRouteRules, PathMatch, QueryMatch, RouteMatch, RouteRule,
};
use regex_lite::Regex;

/// An outbound's rules, ready to match.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    source: Vec<RouteRule>,
    rules: Vec<Rule>,
}

impl PartialEq for Routes {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    matches: Vec<Match>,
    pub request_headers: Vec<HeaderModifier>,
    pub response_headers: Vec<HeaderModifier>,
    /// `None`: the outbound's own service.
    backends: Option<Vec<(Destination, u32)>>,
}

#[derive(Debug, Clone)]
struct Match {
    path: Option<Path>,
    method: Option<Method>,
    headers: Vec<Header>,
    query: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
enum Path {
    Exact(String),
    Prefix(String),
    Regex(Option<Regex>),
}

#[derive(Debug, Clone)]
enum Value {
    Exact(String),
    Prefix(String),
    Regex(Option<Regex>),
}

#[derive(Debug, Clone)]
enum Header {
    Is(HeaderName, Value),
    Present(HeaderName),
    Absent(HeaderName),
}

/// A regular expression that must match the whole value, as Envoy's do.
/// Validated at apply; one that still fails to compile (`None`) matches nothing.
fn whole(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

fn name(n: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(n.as_bytes()).ok()
}

fn compile(m: &RouteMatch) -> Match {
    Match {
        path: m.path.as_ref().map(|p| match p {
            PathMatch::Exact(v) => Path::Exact(v.clone()),
            PathMatch::PathPrefix(v) => Path::Prefix(v.clone()),
            PathMatch::RegularExpression(v) => Path::Regex(whole(v)),
        }),
        method: m.method.as_deref().and_then(|v| Method::from_bytes(v.as_bytes()).ok()),
        headers: m
            .headers
            .iter()
            .filter_map(|h| {
                Some(match h {
                    HeaderMatch::Exact { name: n, value } => Header::Is(name(n)?, Value::Exact(value.clone())),
                    HeaderMatch::Prefix { name: n, value } => Header::Is(name(n)?, Value::Prefix(value.clone())),
                    HeaderMatch::RegularExpression { name: n, value } => {
                        Header::Is(name(n)?, Value::Regex(whole(value)))
                    }
                    HeaderMatch::Present { name: n } => Header::Present(name(n)?),
                    HeaderMatch::Absent { name: n } => Header::Absent(name(n)?),
                })
            })
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| match q {
                QueryMatch::Exact { name, value } => (name.clone(), Value::Exact(value.clone())),
                QueryMatch::RegularExpression { name, value } => (name.clone(), Value::Regex(whole(value))),
            })
            .collect(),
    }
}

impl Value {
    fn accepts(&self, v: &str) -> bool {
        match self {
            Self::Exact(x) => v == x,
            Self::Prefix(x) => v.starts_with(x.as_str()),
            Self::Regex(r) => r.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

impl Match {
    fn accepts(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let path = uri.path();
        let path_ok = match &self.path {
            None => true,
            Some(Path::Exact(p)) => path == p,
            // `/v2` matches `/v2` and `/v2/x`, not `/v2x`.
            Some(Path::Prefix(p)) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/') || path.len() == p.len() || path[p.len()..].starts_with('/'))
            }
            Some(Path::Regex(r)) => r.as_ref().is_some_and(|r| r.is_match(path)),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.headers.iter().all(|h| match h {
                Header::Is(n, v) => headers.get_all(n).iter().any(|x| x.to_str().is_ok_and(|x| v.accepts(x))),
                Header::Present(n) => headers.contains_key(n),
                Header::Absent(n) => !headers.contains_key(n),
            })
            && self.query.iter().all(|(n, v)| {
                uri.query()
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .any(|(k, x)| k == n && v.accepts(x))
            })
    }
}

impl Routes {
    /// The rules of the matching `to` entries, in merge order: a later rule
    /// with the same matches replaces an earlier one (Kuma merges by
    /// matches); then the most specific first.
    pub fn build(confs: Vec<&HttpRouteRules>) -> Self {
        let mut source: Vec<RouteRule> = Vec::new();
        for rule in confs.into_iter().flat_map(|c| c.0.iter()) {
            source.retain(|r| r.matches != rule.matches);
            source.push(rule.clone());
        }
        let best = |r: &RouteRule| r.matches.iter().map(RouteMatch::specificity).max();
        // Stable: equally specific rules keep their merge order.
        source.sort_by_key(|r| std::cmp::Reverse(best(r)));
        let rules = source
            .iter()
            .map(|r| Rule {
                matches: r.matches.iter().map(compile).collect(),
                request_headers: r
                    .filters
                    .iter()
                    .filter_map(|f| match f {
                        loopmesh_shared::model::policy::http_route::Filter::RequestHeaderModifier(m) => Some(m.clone()),
                        _ => None,
                    })
                    .collect(),
                response_headers: r
                    .filters
                    .iter()
                    .filter_map(|f| match f {
                        loopmesh_shared::model::policy::http_route::Filter::ResponseHeaderModifier(m) => {
                            Some(m.clone())
                        }
                        _ => None,
                    })
                    .collect(),
                backends: r.backend_refs.as_ref().map(|b| b.iter().map(|b| (b.target.clone(), b.weight)).collect()),
            })
            .collect();
        Self { source, rules }
    }

    /// The rule a request falls under, if any.
    pub fn find(&self, parts: &Parts) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches.iter().any(|m| m.accepts(&parts.method, &parts.uri, &parts.headers)))
    }
}

impl Rule {
    /// The service this request goes to, by weight; `None`: the outbound's own.
    pub fn backend(&self) -> Option<&Destination> {
        let backends = self.backends.as_ref()?;
        let total: u64 = backends.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut at = fastrand::u64(..total.max(1));
        for (d, w) in backends {
            if at < u64::from(*w) {
                return Some(d);
            }
            at -= u64::from(*w);
        }
        backends.last().map(|(d, _)| d)
    }
}

/// Applies header modifiers in order: set replaces, add appends, remove drops.
pub fn modify(headers: &mut HeaderMap, modifiers: &[HeaderModifier]) {
    for m in modifiers {
        for (n, v) in &m.set {
            if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_str(v)) {
                headers.insert(n, v);
            }
        }
        for (n, v) in &m.add {
            if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_str(v)) {
                headers.append(n, v);
            }
        }
        for n in &m.remove {
            if let Some(n) = name(n) {
                headers.remove(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopmesh_shared::model::policy::http_route::BackendRef;

    fn rule(matches: Vec<RouteMatch>, backends: Option<Vec<(&str, u32)>>) -> RouteRule {
        RouteRule {
            matches,
            filters: Vec::new(),
            backend_refs: backends.map(|b| {
                b.into_iter()
                    .map(|(n, weight)| BackendRef { target: Destination::MeshService { name: n.into() }, weight })
                    .collect()
            }),
        }
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_most_specific_rule_wins_and_prefixes_respect_segments() {
        let prefix = |p: &str| RouteMatch { path: Some(PathMatch::PathPrefix(p.into())), ..RouteMatch::default() };
        let exact = RouteMatch { path: Some(PathMatch::Exact("/v2/health".into())), ..RouteMatch::default() };
        let header = RouteMatch {
            headers: vec![HeaderMatch::Exact { name: "x-canary".into(), value: "1".into() }],
            ..prefix("/")
        };
        let rules = HttpRouteRules(vec![
            rule(vec![prefix("/")], Some(vec![("root", 1)])),
            rule(vec![prefix("/v2")], Some(vec![("v2", 1)])),
            rule(vec![exact], Some(vec![("health", 1)])),
            rule(vec![header], Some(vec![("canary", 1)])),
        ]);
        let routes = Routes::build(vec![&rules]);
        let to = |m: &str, u: &str, h: &[(&str, &str)]| match routes.find(&parts(m, u, h)).and_then(Rule::backend) {
            Some(Destination::MeshService { name }) => name.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(to("GET", "/v2/health", &[]), "health");
        assert_eq!(to("GET", "/v2/x", &[]), "v2");
        assert_eq!(to("GET", "/v2", &[]), "v2");
        assert_eq!(to("GET", "/v2x", &[]), "root", "a prefix matches whole segments");
        assert_eq!(to("GET", "/a", &[("x-canary", "1")]), "canary", "a header match beats the bare /");
    }

    #[test]
    fn weights_split_requests() {
        let all = RouteMatch { path: Some(PathMatch::PathPrefix("/".into())), ..RouteMatch::default() };
        let rules = HttpRouteRules(vec![rule(vec![all], Some(vec![("stable", 90), ("canary", 10)]))]);
        let routes = Routes::build(vec![&rules]);
        let r = routes.find(&parts("GET", "/", &[])).unwrap();
        let canary = (0..10_000)
            .filter(|_| matches!(r.backend(), Some(Destination::MeshService { name }) if name == "canary"))
            .count();
        assert!((800..=1200).contains(&canary), "{canary} of 10,000");
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        modify(
            &mut h,
            &[HeaderModifier {
                set: vec![("x-a".into(), "2".into())],
                add: vec![("x-b".into(), "3".into())],
                remove: vec!["x-gone".into()],
            }],
        );
        assert_eq!(h["x-a"], "2");
        assert_eq!(h["x-b"], "3");
        assert!(!h.contains_key("x-gone"));
    }
}
