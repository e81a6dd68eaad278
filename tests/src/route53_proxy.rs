//! A Route53 limit proxy in front of moto server, which enforces none of
//! Route53's limits: a request rate answered with Route53's real `Throttling`
//! error, `PriorRequestNotComplete` for a change to a zone whose previous
//! change is too young, optional injected throttling, and a log of every
//! call so tests and benchmarks count calls and check the rate.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// What the proxy enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per second; more in any one-second window are throttled.
    pub max_rps: usize,
    /// A change to a zone younger than this makes the next one fail.
    pub prior_change: Duration,
    /// Throttle every other request that passes the rate check.
    pub throttle_every_other: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_rps: 5, prior_change: Duration::ZERO, throttle_every_other: false }
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub operation: &'static str,
    pub status: u16,
    /// The Route53 error code the proxy answered with itself, if any.
    pub refused: Option<&'static str>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    last_change: HashMap<String, Instant>,
    passed: u64,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct Route53Proxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    _server: crate::Server,
}

impl Route53Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (moto's URL).
    pub async fn start(upstream: &str, limits: Limits) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let st = state.clone();
        let (url, server) =
            crate::serve_http(move |req| handle(req, st.clone(), client.clone(), upstream.clone(), limits.clone()))
                .await;
        Self { url, state, _server: server }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).calls.clone()
    }

    pub fn clear(&self) {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).calls.clear();
    }

    /// Calls of one operation that reached moto.
    pub fn count(&self, operation: &str) -> usize {
        self.calls().iter().filter(|c| c.operation == operation && c.refused.is_none()).count()
    }

    /// The most requests that arrived within any one second.
    pub fn max_in_one_second(&self) -> usize {
        let calls = self.calls();
        (0..calls.len())
            .map(|i| calls[i..].iter().filter(|c| c.at < calls[i].at + Duration::from_secs(1)).count())
            .max()
            .unwrap_or(0)
    }
}

/// The Route53 operation a REST path names.
fn operation(method: &hyper::Method, path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", [_, "hostedzone", _]) => "GetHostedZone",
        ("GET", [_, "hostedzone", _, "rrset"]) => "ListResourceRecordSets",
        ("POST", [_, "hostedzone", _, "rrset"]) => "ChangeResourceRecordSets",
        ("POST", [_, "hostedzone"]) => "CreateHostedZone",
        ("GET", [_, "change", _]) => "GetChange",
        _ => "Other",
    }
}

fn route53_error(code: &'static str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
    );
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    limits: Limits,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = Instant::now();
    let op = operation(req.method(), req.uri().path());
    let zone = req.uri().path().split('/').nth(3).unwrap_or_default().to_owned();
    let refused = {
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = s.calls.iter().rev().take_while(|c| now.duration_since(c.at) < Duration::from_secs(1)).count();
        let refused = if recent >= limits.max_rps {
            Some("Throttling")
        } else if op == "ChangeResourceRecordSets"
            && s.last_change.get(&zone).is_some_and(|t| now.duration_since(*t) < limits.prior_change)
        {
            Some("PriorRequestNotComplete")
        } else if limits.throttle_every_other {
            s.passed += 1;
            s.passed.is_multiple_of(2).then_some("Throttling")
        } else {
            None
        };
        s.calls.push(Call { at: now, operation: op, status: if refused.is_some() { 400 } else { 0 }, refused });
        if refused.is_none() && op == "ChangeResourceRecordSets" {
            s.last_change.insert(zone, now);
        }
        refused
    };
    if let Some(code) = refused {
        let message = if code == "Throttling" {
            "Rate exceeded"
        } else {
            "The request was rejected because Route 53 was still processing a prior request."
        };
        return Ok(route53_error(code, message));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (parts, body) = match crate::forward(&client, &upstream, parts, body).await {
        Ok(answer) => answer,
        Err(e) => return Ok(route53_error("InternalFailure", &e)),
    };
    let status = parts.status.as_u16();
    {
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = s.calls.iter_mut().rev().find(|c| c.at == now && c.operation == op) {
            c.status = status;
        }
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}
