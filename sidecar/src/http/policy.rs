//! What an HTTP outbound does with each request: its timeouts, retries and
//! outlier detection. The defaults are those of the policies Kong Mesh
//! creates with every Mesh (`mesh-timeout-all-default`,
//! `mesh-retry-all-default`, `mesh-circuit-breaker-all-default`).

use std::time::Duration;

use hyper::Method;
use loopmesh_shared::model::policy::{
    CircuitBreakerConf, LoadBalancingConf, LoadBalancingType, RetryConf, TimeoutConf, applicable, merged,
};
use loopmesh_shared::model::{Labels, OutboundPolicies, Protocol};

use super::route::Routes;
use crate::balance::{Algorithm, Balancing, Outlier};

/// The effective settings of one outbound.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// From the request's start to the response's headers, retries
    /// included (MeshTimeout `http.requestTimeout`, 15 s); `None`: no limit.
    pub request_timeout: Option<Duration>,
    /// A response body or request body that moves no byte this long is
    /// ended (MeshTimeout `http.streamIdleTimeout`, 30 min).
    pub stream_idle_timeout: Option<Duration>,
    /// A client connection with no request in flight this long is closed
    /// (MeshTimeout `idleTimeout`, 1 h).
    pub idle_timeout: Duration,
    /// MeshTimeout `connectionTimeout`; `None`: the sidecar's `--connect-timeout`.
    pub connect_timeout: Option<Duration>,
    pub retry: Retry,
    /// MeshCircuitBreaker's connection limits.
    pub limits: Limits,
    /// MeshHTTPRoute rules, most specific first.
    pub routes: Routes,
}

/// What may be in flight to one outbound at once (Kuma's defaults: 1,024
/// connections and requests, 3 retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 1024, max_requests: 1024, max_retries: 3 }
    }
}

/// MeshRetry's `http` or `grpc` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Attempts after the first.
    pub num_retries: u32,
    /// Each attempt's limit (`perTryTimeout`, 16 s); when it runs out the
    /// attempt counts as a 504.
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub on: RetryOn,
}

/// The conditions a failed attempt is retried on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx (`5XX`).
    pub server_error: bool,
    /// 502, 503, 504 (`GatewayError`).
    pub gateway_error: bool,
    /// The connection to the endpoint could not be made (`ConnectFailure`).
    pub connect_failure: bool,
    /// An HTTP/2 endpoint refused the stream before reading it (`RefusedStream`).
    pub refused_stream: bool,
    /// The endpoint reset or closed before a response (`Reset`).
    pub reset: bool,
    /// These statuses (`"429"`, `"503"`).
    pub statuses: Vec<u16>,
    /// gRPC status codes in a headers-only answer (`Canceled` 1,
    /// `DeadlineExceeded` 4, `Internal` 13, `ResourceExhausted` 8, `Unavailable` 14).
    pub grpc: Vec<u32>,
    /// `HttpMethod*` conditions: the methods that may be retried. Empty:
    /// the idempotent ones (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub methods: Vec<Method>,
}

/// The default MeshRetry's numbers.
const DEFAULT_RETRIES: u32 = 5;
const DEFAULT_PER_TRY: Duration = Duration::from_secs(16);
const DEFAULT_BASE: Duration = Duration::from_millis(25);
const DEFAULT_MAX: Duration = Duration::from_millis(250);

impl Policy {
    /// What an outbound of `protocol` does with no policy but the Mesh's defaults.
    pub fn defaults(protocol: Protocol) -> Self {
        // Kuma's `HttpRetryOnDefault` and `GrpcRetryOnDefault`.
        let on = match protocol {
            Protocol::Grpc => RetryOn {
                gateway_error: true,
                connect_failure: true,
                refused_stream: true,
                reset: true,
                grpc: vec![1, 8, 14],
                ..RetryOn::default()
            },
            _ => RetryOn { gateway_error: true, connect_failure: true, refused_stream: true, ..RetryOn::default() },
        };
        Self {
            request_timeout: Some(Duration::from_secs(15)),
            stream_idle_timeout: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Duration::from_secs(3600),
            connect_timeout: None,
            limits: Limits::default(),
            routes: Routes::default(),
            retry: Retry {
                num_retries: DEFAULT_RETRIES,
                per_try_timeout: Some(DEFAULT_PER_TRY),
                base_interval: DEFAULT_BASE,
                max_interval: DEFAULT_MAX,
                on,
            },
        }
    }
}

/// What the mesh's policies make of one outbound of this sidecar: the
/// outbound's settings and its balancer's.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub policy: Policy,
    pub balancing: Balancing,
    /// MeshLoadBalancingStrategy's `localityAwareness.disabled`.
    pub ignore_zones: bool,
    /// MeshRetry `tcp.maxConnectAttempt`.
    pub connect_attempts: Option<u32>,
    /// MeshTimeout `idleTimeout`, when a policy sets it (TCP outbounds).
    pub idle_timeout: Option<Duration>,
}

/// Resolves the policies that apply to the outbound `service` (of view kind
/// `kind`) of a sidecar whose inbounds carry `inbounds`: each kind's
/// matching `to` confs merged in Kuma's order over the Mesh's defaults.
pub fn resolve(
    protocol: Protocol,
    policies: &OutboundPolicies,
    inbounds: &[Labels],
    service: &str,
    kind: Option<&str>,
) -> Resolved {
    let mut policy = Policy::defaults(protocol);
    let ms = |v: u64| Duration::from_millis(v);
    // Kuma: zero disables a timeout.
    let limit = |v: u64| (v > 0).then(|| ms(v));

    let timeout: TimeoutConf = merged(&policies.timeouts, inbounds, service, kind);
    if let Some(v) = timeout.connection_timeout_ms {
        policy.connect_timeout = limit(v);
    }
    if let Some(v) = timeout.idle_timeout_ms {
        policy.idle_timeout = limit(v).unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
    }
    if let Some(v) = timeout.request_timeout_ms {
        policy.request_timeout = limit(v);
    }
    if let Some(v) = timeout.stream_idle_timeout_ms {
        policy.stream_idle_timeout = limit(v);
    }

    let retry: RetryConf = merged(&policies.retries, inbounds, service, kind);
    let section = if protocol == Protocol::Grpc { retry.grpc.as_ref() } else { retry.http.as_ref() };
    if let Some(s) = section {
        let r = &mut policy.retry;
        if let Some(n) = s.num_retries {
            r.num_retries = n;
        }
        if let Some(t) = s.per_try_timeout_ms {
            r.per_try_timeout = limit(t);
        }
        if let Some(b) = s.base_interval_ms {
            r.base_interval = ms(b.max(1));
            // Kuma: the maximum defaults to ten times the base.
            r.max_interval = ms(s.max_interval_ms.unwrap_or(b.saturating_mul(10)).max(b));
        } else if let Some(m) = s.max_interval_ms {
            r.max_interval = ms(m).max(r.base_interval);
        }
        if let Some(list) = &s.retry_on {
            r.on = retry_on(list);
        }
    }

    let breaker: CircuitBreakerConf = merged(&policies.circuit_breakers, inbounds, service, kind);
    let l = &mut policy.limits;
    l.max_connections = breaker.max_connections.unwrap_or(l.max_connections);
    l.max_requests = breaker.max_requests.unwrap_or(l.max_requests);
    l.max_retries = breaker.max_retries.unwrap_or(l.max_retries);
    let mut outlier = Outlier::default();
    let detectors = [breaker.consecutive_total, breaker.consecutive_gateway, breaker.consecutive_local];
    if detectors.iter().any(Option::is_some) {
        // The detectors a policy lists are the ones on.
        let split = breaker.split_external_and_local_errors.unwrap_or(false);
        outlier.total = breaker.consecutive_total;
        outlier.gateway = breaker.consecutive_gateway;
        outlier.local = if split { breaker.consecutive_local } else { None };
        outlier.split = split;
    }
    outlier.disabled = breaker.outlier_disabled.unwrap_or(false);
    if let Some(b) = breaker.base_ejection_time_ms {
        outlier.base_ejection = ms(b.max(1));
    }
    outlier.max_ejection_percent = breaker.max_ejection_percent;

    let lb: LoadBalancingConf = merged(&policies.load_balancing, inbounds, service, kind);
    let algorithm = match lb.algorithm {
        None => Algorithm::default(),
        Some(LoadBalancingType::LeastRequest { choice_count }) => Algorithm::LeastRequest(choice_count),
        Some(LoadBalancingType::Random) => Algorithm::Random,
        Some(LoadBalancingType::RoundRobin) => Algorithm::RoundRobin,
    };

    policy.routes = Routes::build(applicable(&policies.http_routes, inbounds, service, kind));
    Resolved {
        policy,
        balancing: Balancing { algorithm, outlier },
        ignore_zones: lb.locality_disabled.unwrap_or(false),
        connect_attempts: retry.tcp_max_connect_attempt,
        idle_timeout: timeout.idle_timeout_ms.map(|v| limit(v).unwrap_or(Duration::from_secs(u64::from(u32::MAX)))),
    }
}

/// A MeshRetry `retryOn` list as conditions. `5xx` also covers failed
/// connects, refused streams and resets, as in Envoy.
fn retry_on(list: &[loopmesh_shared::model::policy::retry::RetryOn]) -> RetryOn {
    use loopmesh_shared::model::policy::retry::RetryOn as On;
    let mut on = RetryOn::default();
    for c in list {
        match c {
            On::ServerError => {
                on.server_error = true;
                on.connect_failure = true;
                on.refused_stream = true;
                on.reset = true;
            }
            On::GatewayError => on.gateway_error = true,
            On::Reset => on.reset = true,
            On::ConnectFailure => on.connect_failure = true,
            On::RefusedStream => on.refused_stream = true,
            On::Status(s) => on.statuses.push(*s),
            On::Method(m) => on.methods.extend(Method::from_bytes(m.as_bytes()).ok()),
            On::Grpc(g) => on.grpc.push(*g),
        }
    }
    on
}

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: the request never left.
    Connect,
    /// The endpoint refused the stream unread (HTTP/2 REFUSED_STREAM).
    Refused,
    /// The endpoint reset or closed before answering.
    Reset,
    /// The attempt's own timeout ran out (counts as a 504).
    PerTryTimeout,
    /// An answer with this status (and a gRPC status in its headers, if any).
    Status(u16, Option<u32>),
}

impl Retry {
    /// Whether a request of `method` may be sent again after `failure`.
    /// A request that never left may always be; one the endpoint may have
    /// read only if its method is idempotent, or the policy names it (a gRPC
    /// call is retried on gRPC's conditions, which mean it was not served).
    pub fn allows(&self, method: &Method, grpc: bool, failure: Failure) -> bool {
        let on = &self.on;
        let method_ok = || self.method_may_resend(method, grpc);
        match failure {
            Failure::Connect => on.connect_failure,
            Failure::Refused => on.refused_stream,
            Failure::Reset => on.reset && method_ok(),
            Failure::PerTryTimeout => {
                (on.gateway_error || on.server_error || on.statuses.contains(&504)) && method_ok()
            }
            Failure::Status(status, grpc_status) => {
                let by_status = (on.server_error && (500..600).contains(&status))
                    || (on.gateway_error && matches!(status, 502..=504))
                    || on.statuses.contains(&status);
                let by_grpc = grpc_status.is_some_and(|g| on.grpc.contains(&g));
                (by_status || by_grpc) && method_ok()
            }
        }
    }

    /// Whether a request of `method` that reached the endpoint could ever be
    /// sent again (some failure after sending allows it): if not, its head
    /// need not be kept for a retry. Only an HTTP/2 endpoint (`h2`) refuses
    /// streams.
    pub fn may_resend(&self, method: &Method, grpc: bool, h2: bool) -> bool {
        let on = &self.on;
        let by_answer = on.server_error || on.gateway_error || !on.statuses.is_empty() || (grpc && !on.grpc.is_empty());
        self.num_retries > 0
            && ((h2 && on.refused_stream) || ((on.reset || by_answer) && self.method_may_resend(method, grpc)))
    }

    /// The methods a request that may have been read can be sent again with.
    fn method_may_resend(&self, method: &Method, grpc: bool) -> bool {
        if self.on.methods.is_empty() { grpc || is_idempotent(method) } else { self.on.methods.contains(method) }
    }

    /// The wait before retry `n` (1-based): Envoy's fully jittered
    /// exponential back-off, `[0, base * 2^(n-1))` capped at `max`.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.base_interval.saturating_mul(1u32 << (n.saturating_sub(1)).min(16)).min(self.max_interval);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(..nanos.max(1)))
    }
}

/// RFC 9110's idempotent methods.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_a_post_is_retried_only_when_it_never_left() {
        let r = Policy::defaults(Protocol::Http).retry;
        assert!(r.allows(&Method::GET, false, Failure::Status(503, None)));
        assert!(!r.allows(&Method::POST, false, Failure::Status(503, None)));
        assert!(r.allows(&Method::POST, false, Failure::Connect));
        assert!(!r.allows(&Method::GET, false, Failure::Status(500, None)), "500 is not a gateway error");
        assert!(!r.allows(&Method::GET, false, Failure::Reset), "reset is not an HTTP default");
    }

    #[test]
    fn a_head_is_kept_for_a_retry_only_when_some_failure_after_sending_allows_one() {
        let mut r = Policy::defaults(Protocol::Http).retry;
        assert!(r.may_resend(&Method::GET, false, false));
        assert!(!r.may_resend(&Method::POST, false, false), "a POST that left is never sent again by default");
        assert!(r.may_resend(&Method::POST, false, true), "unless an HTTP/2 endpoint refuses it unread");
        assert!(Policy::defaults(Protocol::Grpc).retry.may_resend(&Method::POST, true, true), "gRPC's conditions");
        r.on.methods = vec![Method::POST];
        assert!(r.may_resend(&Method::POST, false, false));
        assert!(!r.may_resend(&Method::GET, false, false), "the policy names the methods");
        r.num_retries = 0;
        assert!(!r.may_resend(&Method::POST, false, true));
        // Wherever `allows` lets a sent request go again, its head was kept.
        let failures = [Failure::Refused, Failure::Reset, Failure::PerTryTimeout, Failure::Status(503, Some(14))];
        for protocol in [Protocol::Http, Protocol::Http2, Protocol::Grpc] {
            let r = Policy::defaults(protocol).retry;
            let (grpc, h2) = (protocol == Protocol::Grpc, protocol != Protocol::Http);
            for method in [Method::GET, Method::POST, Method::PATCH] {
                // An HTTP/1.1 endpoint never refuses a stream.
                for f in failures.into_iter().filter(|f| h2 || *f != Failure::Refused) {
                    assert!(
                        !r.allows(&method, grpc, f) || r.may_resend(&method, grpc, h2),
                        "{protocol:?} {method} {f:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn grpc_calls_are_retried_on_grpc_conditions() {
        let r = Policy::defaults(Protocol::Grpc).retry;
        assert!(r.allows(&Method::POST, true, Failure::Status(200, Some(14))));
        assert!(!r.allows(&Method::POST, true, Failure::Status(200, Some(2))), "UNKNOWN is not retried");
    }

    #[test]
    fn named_methods_replace_the_idempotent_default() {
        let mut r = Policy::defaults(Protocol::Http).retry;
        r.on.methods = vec![Method::POST];
        assert!(r.allows(&Method::POST, false, Failure::Status(503, None)));
        assert!(!r.allows(&Method::GET, false, Failure::Status(503, None)));
    }

    #[test]
    fn backoff_is_jittered_under_its_ceiling() {
        let r = Policy::defaults(Protocol::Http).retry;
        assert!((0..100).all(|_| r.backoff(1) < Duration::from_millis(25)));
        assert!((0..100).all(|_| r.backoff(9) < Duration::from_millis(250)));
    }
}
