//! A fault-injecting HTTP proxy in front of moto server: with a fixed seed,
//! a share of DynamoDB, Route53, ECS and IAM calls is dropped before it
//! reaches the emulator, answered only after a long silence, refused with
//! the service's real throttling error or a 500, or applied and then its
//! answer lost (the case that leaves a caller not knowing what happened).
//! `stop` turns faults off; every fault is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The share of calls that meet each fault (0.0..1.0).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop_request: f64,
    pub hang: f64,
    pub throttle: f64,
    pub server_error: f64,
    pub drop_response: f64,
}

impl Faults {
    /// A few percent of calls, each fault alike.
    pub fn few_percent() -> Self {
        Self { drop_request: 0.01, hang: 0.01, throttle: 0.015, server_error: 0.015, drop_response: 0.01 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    DynamoDb,
    Route53,
    Ecs,
    Iam,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    DropRequest,
    Hang,
    Throttle,
    ServerError,
    DropResponse,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    faults: Faults,
    on: AtomicBool,
    rng: Mutex<fastrand::Rng>,
    counts: Mutex<BTreeMap<String, u64>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, faults: Faults, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fault proxy");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            faults,
            on: AtomicBool::new(true),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counts: Mutex::new(BTreeMap::new()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let mut tasks = JoinSet::new();
        let s = shared.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, shared, tasks }
    }

    /// No more faults from here on.
    pub fn stop(&self) {
        self.shared.on.store(false, Ordering::SeqCst);
    }

    /// How many calls met each fault, as `service/fault`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.shared.counts.lock().expect("counts").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn service_of(req: &Request<Incoming>) -> Service {
    let target = req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if target.starts_with("DynamoDB_") {
        Service::DynamoDb
    } else if target.starts_with("AmazonEC2ContainerService") {
        Service::Ecs
    } else if req.uri().path().starts_with("/2013-04-01/") {
        Service::Route53
    } else if auth.contains("/iam/") {
        Service::Iam
    } else {
        Service::Other
    }
}

/// The service's own error for a fault, as its SDK expects to parse it.
fn error(service: Service, fault: Fault) -> Response<Full<Bytes>> {
    let throttle = fault == Fault::Throttle;
    let (status, content_type, body) = match service {
        Service::DynamoDb => (
            if throttle { 400 } else { 500 },
            "application/x-amz-json-1.0",
            if throttle {
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#.to_owned()
            } else {
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error"}"#
                    .to_owned()
            },
        ),
        Service::Ecs => (
            if throttle { 400 } else { 500 },
            "application/x-amz-json-1.1",
            if throttle {
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned()
            } else {
                r#"{"__type":"ServerException","message":"Internal error"}"#.to_owned()
            },
        ),
        Service::Route53 | Service::Iam | Service::Other => {
            let ns = if service == Service::Route53 {
                "https://route53.amazonaws.com/doc/2013-04-01/"
            } else {
                "https://iam.amazonaws.com/doc/2010-05-08/"
            };
            let (code, kind) = if throttle { ("Throttling", "Sender") } else { ("ServiceUnavailable", "Receiver") };
            (
                if throttle { 400 } else { 503 },
                "text/xml",
                format!(
                    "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"{ns}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>injected</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
                ),
            )
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A connection closed with no answer: the service returns an error and
/// hyper drops the connection.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

async fn handle(req: Request<Incoming>, s: Arc<Shared>) -> Result<Response<Full<Bytes>>, Dropped> {
    let service = service_of(&req);
    let fault = if s.on.load(Ordering::SeqCst) && service != Service::Other {
        let roll = s.rng.lock().expect("rng").f64();
        let f = s.faults;
        let mut edge = 0.0;
        [
            (f.drop_request, Fault::DropRequest),
            (f.hang, Fault::Hang),
            (f.throttle, Fault::Throttle),
            (f.server_error, Fault::ServerError),
            (f.drop_response, Fault::DropResponse),
        ]
        .into_iter()
        .find(|(p, _)| {
            edge += p;
            roll < edge
        })
        .map(|(_, fault)| fault)
    } else {
        None
    };
    if let Some(fault) = fault {
        *s.counts.lock().expect("counts").entry(format!("{service:?}/{fault:?}")).or_default() += 1;
    }
    match fault {
        Some(Fault::DropRequest) => return Err(Dropped),
        // Longer than any client's attempt timeout in the tests.
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(20)).await;
            return Err(Dropped);
        }
        Some(f @ (Fault::Throttle | Fault::ServerError)) => return Ok(error(service, f)),
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (parts, body) = crate::forward(&s.client, &s.upstream, parts, body).await.map_err(|_| Dropped)?;
    if fault == Some(Fault::DropResponse) {
        // Applied upstream; the caller never learns it.
        return Err(Dropped);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}
