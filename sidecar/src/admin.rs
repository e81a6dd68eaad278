//! The admin endpoint (HTTP on 127.0.0.1:9901 by default): `/ready` for the
//! ECS container health check, `/metrics` in the Prometheus text format,
//! `/config` with the listeners and endpoints as JSON.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listeners::{InboundSpec, Listeners};
use crate::proxy::Route;
use crate::source::ViewStatus;
use crate::view::View;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one admin connection may live, slow readers included.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Admin {
    pub listeners: Arc<Listeners>,
    pub status: Arc<ViewStatus>,
}

/// `/config`: the applied view (the form `--view-file` reads) and the inbounds.
#[derive(Debug, Serialize)]
struct ConfigDoc<'a> {
    #[serde(flatten)]
    view: &'a View,
    inbounds: Vec<InboundSpec>,
}

impl Admin {
    /// Ready once the first view is applied, the inbounds listen (they are
    /// bound before the admin starts) and every VIP of the view listens;
    /// not while draining. A VIP that cannot bind is retried every tick.
    pub fn ready(&self) -> bool {
        self.listeners.applied.load(Ordering::Relaxed)
            && !self.listeners.draining.load(Ordering::Relaxed)
            && self.listeners.unbound.load(Ordering::Relaxed) == 0
    }

    /// The body of a 200 `/ready`: ready, and whether the view is current.
    /// A view that cannot be refreshed keeps serving (invariant 8), so it
    /// does not fail the health check, which would make ECS replace a task
    /// that carries traffic fine; it is said here and in `/metrics`.
    fn readiness(&self) -> String {
        match self.status.failing.load(Ordering::Relaxed) {
            0 => "ready\n".to_owned(),
            n => format!(
                "ready; view stale: {n} refreshes failed in a row ({} timed out in all), last current {:.1} s ago\n",
                self.status.refresh_timeouts.load(Ordering::Relaxed),
                self.status.age().unwrap_or(-1.0)
            ),
        }
    }

    /// The body of a 503 `/ready`: why.
    fn not_ready(&self) -> String {
        let l = &self.listeners;
        if l.draining.load(Ordering::Relaxed) {
            "not ready: draining\n".to_owned()
        } else if !l.applied.load(Ordering::Relaxed) {
            "not ready: no view applied yet\n".to_owned()
        } else {
            format!(
                "not ready: {} VIP listeners cannot bind (retried every refresh; see the log and loopmesh_listener_bind_errors_total)\n",
                l.unbound.load(Ordering::Relaxed)
            )
        }
    }

    pub fn config(&self) -> String {
        let view = self.listeners.view();
        let inbounds = self.listeners.inbounds().into_iter().map(|(spec, _)| spec).collect();
        serde_json::to_string_pretty(&ConfigDoc { view: &view, inbounds }).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        let outbounds = self.listeners.outbounds();
        let inbounds: Vec<Arc<Route>> = self.listeners.inbounds().into_iter().map(|(_, r)| r).collect();
        type Read = fn(&Route) -> u64;
        let series: [(&str, &str, &str, Read); 11] = [
            ("connections_active", "gauge", "open connections", |r| r.stats.active.load(Ordering::Relaxed)),
            ("connections_total", "counter", "accepted connections", |r| r.stats.total.load(Ordering::Relaxed)),
            ("bytes_sent_total", "counter", "bytes from the client to the endpoint", |r| {
                r.stats.bytes_sent.load(Ordering::Relaxed)
            }),
            ("bytes_received_total", "counter", "bytes from the endpoint to the client", |r| {
                r.stats.bytes_received.load(Ordering::Relaxed)
            }),
            ("connect_failures_total", "counter", "failed connects to an endpoint", |r| {
                r.stats.connect_failures.load(Ordering::Relaxed)
            }),
            ("ejections_total", "counter", "endpoints ejected by passive health", |r| {
                r.stats.ejections.load(Ordering::Relaxed)
            }),
            ("no_endpoint_total", "counter", "connections closed because no endpoint was healthy", |r| {
                r.stats.no_endpoint.load(Ordering::Relaxed)
            }),
            ("idle_closed_total", "counter", "connections closed by the idle timeout", |r| {
                r.stats.idle_closed.load(Ordering::Relaxed)
            }),
            ("upstream_failures_total", "counter", "connections the endpoint's side ended with an error", |r| {
                r.stats.upstream_failures.load(Ordering::Relaxed)
            }),
            ("client_aborts_total", "counter", "connections the client's side ended with an error", |r| {
                r.stats.client_aborts.load(Ordering::Relaxed)
            }),
            ("endpoints", "gauge", "endpoints in the view (healthy or not)", |r| {
                r.balancer.load().endpoints().len() as u64
            }),
        ];
        for (direction, routes) in [("outbound", &outbounds), ("inbound", &inbounds)] {
            for (name, kind, help, read) in &series {
                let _ = writeln!(out, "# HELP loopmesh_{direction}_{name} {help}, per {direction}");
                let _ = writeln!(out, "# TYPE loopmesh_{direction}_{name} {kind}");
                for r in routes.iter() {
                    let _ = writeln!(
                        out,
                        "loopmesh_{direction}_{name}{{service=\"{}\",listener=\"{}\"}} {}",
                        escape(&r.service),
                        r.listen,
                        read(r)
                    );
                }
            }
        }
        http_metrics(&mut out, &outbounds);
        let s = &self.status;
        let m = &self.listeners.mtls.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let mtls = |name, kind, help, value: u64| (name, kind, help, value.to_string());
        let gauges = [
            (
                "loopmesh_view_age_seconds",
                "gauge",
                "seconds since the view was last confirmed current (-1 before the first)",
                format!("{:.3}", s.age().unwrap_or(-1.0)),
            ),
            (
                "loopmesh_view_generation",
                "gauge",
                "the table's view generation applied",
                s.generation.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_refresh_errors_total",
                "counter",
                "failed view refreshes",
                s.refresh_errors.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_refresh_timeouts_total",
                "counter",
                "view refreshes that got no answer within the fetch timeout",
                s.refresh_timeouts.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_refresh_failing",
                "gauge",
                "consecutive failed view refreshes (0 while the view is current)",
                s.failing.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_reads_total",
                "counter",
                "DynamoDB requests the view has cost",
                s.reads.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_read_units_total",
                "counter",
                "DynamoDB read units the view has cost, as DynamoDB reports them",
                format!("{:.1}", s.read_milli_units.load(Ordering::Relaxed) as f64 / 1000.0),
            ),
            (
                "loopmesh_view_wakeups_total",
                "counter",
                "wake-ups received for this mesh",
                s.wakes.received.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_wakeups_ignored_total",
                "counter",
                "datagrams on the wake-up port that were not a wake-up for this mesh",
                s.wakes.ignored.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_wakeups_trusted",
                "gauge",
                "1 while wake-ups arrive and the view is polled at the safety interval",
                u8::from(s.wakes.trusted()).to_string(),
            ),
            (
                "loopmesh_view_rejected_total",
                "counter",
                "views rejected by validation",
                s.rejected.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_view_changes_total",
                "counter",
                "applied views that changed a listener",
                self.listeners.view_changes.load(Ordering::Relaxed).to_string(),
            ),
            (
                "loopmesh_listener_bind_errors_total",
                "counter",
                "VIP listeners that could not be bound",
                self.listeners.bind_errors.load(Ordering::Relaxed).to_string(),
            ),
            ("loopmesh_outbound_listeners", "gauge", "VIP listeners open", outbounds.len().to_string()),
            mtls(
                "loopmesh_mtls_enabled",
                "gauge",
                "1 while the mesh enables mTLS",
                u64::from(self.listeners.mtls.active().is_some()),
            ),
            mtls(
                "loopmesh_mtls_certificate_expiry_seconds",
                "gauge",
                "when the sidecar's certificate expires, seconds since the epoch (0: none held)",
                load(&m.not_after),
            ),
            mtls(
                "loopmesh_mtls_certificates_issued_total",
                "counter",
                "certificates the issuer signed for this sidecar",
                load(&m.issued),
            ),
            mtls(
                "loopmesh_mtls_issue_failures_total",
                "counter",
                "certificate requests refused or failed",
                load(&m.issue_failures),
            ),
            mtls(
                "loopmesh_mtls_inbound_handshakes_total",
                "counter",
                "inbound connections accepted with a mesh client certificate",
                load(&m.inbound_handshakes),
            ),
            mtls(
                "loopmesh_mtls_inbound_refused_total",
                "counter",
                "inbound handshakes refused (no, expired, foreign or other-mesh certificate)",
                load(&m.inbound_refused),
            ),
            mtls(
                "loopmesh_mtls_plain_refused_total",
                "counter",
                "plain-text inbound connections refused (STRICT)",
                load(&m.plain_refused),
            ),
            mtls(
                "loopmesh_mtls_plain_accepted_total",
                "counter",
                "plain-text inbound connections accepted (PERMISSIVE)",
                load(&m.plain_accepted),
            ),
            mtls(
                "loopmesh_mtls_outbound_handshakes_total",
                "counter",
                "outbound connections that proved the peer's identity",
                load(&m.outbound_handshakes),
            ),
            mtls(
                "loopmesh_mtls_outbound_resumed_total",
                "counter",
                "outbound handshakes that resumed a session of the same peer",
                load(&m.outbound_resumed),
            ),
            mtls(
                "loopmesh_mtls_outbound_refused_total",
                "counter",
                "outbound handshakes that failed (the peer is not the service expected)",
                load(&m.outbound_refused),
            ),
            mtls(
                "loopmesh_mtls_no_certificate_total",
                "counter",
                "mesh connections closed because no certificate is held yet",
                load(&m.no_certificate),
            ),
            (
                "loopmesh_outbound_listeners_unbound",
                "gauge",
                "VIP listeners of the view that could not bind (retried every refresh)",
                self.listeners.unbound.load(Ordering::Relaxed).to_string(),
            ),
            ("loopmesh_ready", "gauge", "1 when /ready answers 200", u8::from(self.ready()).to_string()),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        let denials = m.denials();
        for (name, help, shadow) in [
            (
                "loopmesh_mtls_denied_total",
                "inbound connections denied by MeshTrafficPermission, per source service",
                false,
            ),
            (
                "loopmesh_mtls_shadow_denied_total",
                "inbound connections AllowWithShadowDeny let through, per source service",
                true,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (source, denied, shadowed) in &denials {
                let value = if shadow { shadowed } else { denied };
                let _ = writeln!(out, "{name}{{source=\"{}\"}} {value}", escape(source));
            }
        }
        out
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/ready") if self.ready() => (StatusCode::OK, "text/plain", self.readiness()),
            (&Method::GET, "/ready") => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", self.not_ready()),
            (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", self.metrics()),
            (&Method::GET, "/config") => (StatusCode::OK, "application/json", self.config()),
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found: /ready, /metrics, /config\n".to_owned()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        response
    }

    /// Serves until `stop`.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
            };
            let admin = self.clone();
            // The admin endpoint is local, but a client that connects and
            // sends nothing must not hold a descriptor forever: headers must
            // arrive within HEADER_TIMEOUT, and a connection lives at most
            // CONNECTION_TIMEOUT.
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = admin.answer(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    }
}

/// A label value as the text format wants it.
/// The request-level series of HTTP outbounds (`loopmesh_http_*`).
fn http_metrics(out: &mut String, outbounds: &[Arc<Route>]) {
    use crate::http::stats::{BUCKETS_MS, LocalReason};
    let http: Vec<(&Arc<Route>, Arc<crate::http::HttpOutbound>)> =
        outbounds.iter().filter_map(|r| Some((r, r.http.load_full()?))).collect();
    if http.is_empty() {
        return;
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let labels = |r: &Route, h: &crate::http::HttpOutbound| {
        format!("service=\"{}\",listener=\"{}\",protocol=\"{}\"", escape(&r.service), r.listen, h.protocol.as_str())
    };
    let mut family = |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, String)>| {
        let _ = writeln!(out, "# HELP loopmesh_http_{name} {help}");
        let _ = writeln!(out, "# TYPE loopmesh_http_{name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "loopmesh_http_{name}{{{labels}}} {value}");
        }
    };
    family(
        "requests_total",
        "counter",
        "responses to the application, by status class (the sidecar's own included)",
        &mut http.iter().flat_map(|(r, h)| {
            (0..5).map(move |i| {
                (format!("{},class=\"{}xx\"", labels(r, h), i + 1), load(&h.stats.by_class[i]).to_string())
            })
        }),
    );
    family(
        "requests_active",
        "gauge",
        "requests sent to an endpoint whose response has not ended",
        &mut http.iter().map(|(r, h)| {
            let outstanding: usize =
                r.balancer.load().endpoints().iter().map(|e| e.active.load(Ordering::Relaxed)).sum();
            (labels(r, h), outstanding.to_string())
        }),
    );
    family(
        "retries_total",
        "counter",
        "requests sent again after a failed attempt",
        &mut http.iter().map(|(r, h)| (labels(r, h), load(&h.stats.retries).to_string())),
    );
    family(
        "retries_overflow_total",
        "counter",
        "retries not made because MeshCircuitBreaker's maxRetries were in flight",
        &mut http.iter().map(|(r, h)| (labels(r, h), load(&h.stats.retries_overflow).to_string())),
    );
    family(
        "resends_total",
        "counter",
        "requests sent again because an HTTP/2 endpoint did not process them (REFUSED_STREAM, or past a GOAWAY); not retries",
        &mut http.iter().map(|(r, h)| (labels(r, h), load(&h.stats.resends).to_string())),
    );
    family(
        "timeouts_total",
        "counter",
        "requests ended by the request timeout",
        &mut http.iter().map(|(r, h)| (labels(r, h), load(&h.stats.timeouts).to_string())),
    );
    family(
        "local_replies_total",
        "counter",
        "responses the sidecar made itself, by reason (x-loopmesh-reason)",
        &mut http.iter().flat_map(|(r, h)| {
            LocalReason::ALL.iter().enumerate().map(move |(i, reason)| {
                (format!("{},reason=\"{}\"", labels(r, h), reason.as_str()), load(&h.stats.local[i]).to_string())
            })
        }),
    );
    family(
        "ejections_total",
        "counter",
        "endpoints ejected, by reason: consecutive 5xx answers or connect failures",
        &mut http.iter().flat_map(|(r, h)| {
            [("5xx", load(&h.stats.ejections_5xx)), ("connect", load(&r.stats.ejections))]
                .into_iter()
                .map(move |(reason, n)| (format!("{},reason=\"{reason}\"", labels(r, h)), n.to_string()))
        }),
    );
    family(
        "upgrades_total",
        "counter",
        "Upgrade and CONNECT requests carried as bytes",
        &mut http.iter().map(|(r, h)| (labels(r, h), load(&h.stats.upgrades).to_string())),
    );
    family(
        "upstream_connections",
        "gauge",
        "connections to endpoints open now (pooled or in use)",
        &mut http.iter().map(|(r, h)| (labels(r, h), load(&h.pool.open).to_string())),
    );
    family(
        "upstream_connections_idle",
        "gauge",
        "HTTP/1.1 connections to endpoints waiting for a request",
        &mut http.iter().map(|(r, h)| (labels(r, h), h.pool.idle().to_string())),
    );
    let _ = writeln!(out, "# HELP loopmesh_http_request_duration_seconds request start to response end, per outbound");
    let _ = writeln!(out, "# TYPE loopmesh_http_request_duration_seconds histogram");
    for (r, h) in &http {
        let labels = labels(r, h);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            cumulative += load(&h.stats.latency[i]);
            let le = if bound.is_infinite() { "+Inf".to_owned() } else { format!("{}", bound / 1000.0) };
            let _ = writeln!(out, "loopmesh_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = load(&h.stats.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "loopmesh_http_request_duration_seconds_sum{{{labels}}} {sum:.6}");
        let _ = writeln!(out, "loopmesh_http_request_duration_seconds_count{{{labels}}} {cumulative}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
