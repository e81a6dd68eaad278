//! What an HTTP outbound does with each request: its timeouts, retries and
//! outlier detection. The defaults are those of the policies Kong Mesh
//! creates with every Mesh (`mesh-timeout-all-default`,
//! `mesh-retry-all-default`, `mesh-circuit-breaker-all-default`).

use std::time::Duration;

use hyper::Method;
use loopmesh_shared::model::Protocol;

/// The effective settings of one outbound.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub retry: Retry,
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
        let method_ok = || {
            if self.on.methods.is_empty() { grpc || is_idempotent(method) } else { self.on.methods.contains(method) }
        };
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
