//! A DynamoDB limit proxy in front of moto server, which enforces none of
//! DynamoDB's limits: it counts every call with the read and write units
//! DynamoDB would charge (from item sizes: 4 KB read units, halved for
//! eventually consistent reads; 1 KB write units, doubled in transactions),
//! per partition key, and answers DynamoDB's real
//! `ProvisionedThroughputExceededException` when a partition has already
//! spent its units in the current second (3,000 read and 1,000 write units
//! by default, as DynamoDB's per-partition ceiling).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

/// Per-partition capacity per second.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub read_units: f64,
    pub write_units: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { read_units: 3_000.0, write_units: 1_000.0 }
    }
}

/// What the proxy counted, in total or for one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub calls: u64,
    pub read_units: f64,
    pub write_units: f64,
    /// Calls answered with ProvisionedThroughputExceededException.
    pub throttled: u64,
}

#[derive(Debug, Default)]
struct State {
    by_op: HashMap<&'static str, Usage>,
    /// (partition key, second since start) -> (read units, write units).
    windows: HashMap<(String, u64), (f64, f64)>,
    start: Option<Instant>,
    /// Every request is throttled, as during a burst of another client.
    throttle_all: bool,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct DynamoProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    _server: crate::Server,
}

impl DynamoProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (moto's URL).
    pub async fn start(upstream: &str, limits: Limits) -> Self {
        let state = Arc::new(Mutex::new(State { start: Some(Instant::now()), ..State::default() }));
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let st = state.clone();
        let (url, server) =
            crate::serve_http(move |req| handle(req, st.clone(), client.clone(), upstream.clone(), limits)).await;
        Self { url, state, _server: server }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything counted so far.
    pub fn total(&self) -> Usage {
        self.lock().by_op.values().fold(Usage::default(), |a, u| Usage {
            calls: a.calls + u.calls,
            read_units: a.read_units + u.read_units,
            write_units: a.write_units + u.write_units,
            throttled: a.throttled + u.throttled,
        })
    }

    /// One operation's usage (`GetItem`, `Query`, `BatchGetItem`, ...).
    pub fn usage(&self, op: &str) -> Usage {
        self.lock().by_op.get(op).copied().unwrap_or_default()
    }

    /// The most read units one partition spent in any one second.
    pub fn peak_partition_read_units(&self) -> f64 {
        self.lock().windows.values().map(|(r, _)| *r).fold(0.0, f64::max)
    }

    /// Throttles every request until called with `false`.
    pub fn throttle_all(&self, on: bool) {
        self.lock().throttle_all = on;
    }

    pub fn reset(&self) {
        let mut s = self.lock();
        s.by_op.clear();
        s.windows.clear();
    }
}

/// The DynamoDB size of an attribute value in its JSON wire form: strings
/// and binaries by length, numbers by about one byte per two digits, plus
/// a few bytes for lists and maps, as DynamoDB's item size rules say.
fn value_size(v: &Value) -> usize {
    let Some(obj) = v.as_object() else { return 0 };
    obj.iter()
        .map(|(t, x)| match t.as_str() {
            "S" => x.as_str().map_or(0, str::len),
            "N" => x.as_str().map_or(0, |n| n.len().div_ceil(2) + 1),
            "B" => x.as_str().map_or(0, |b| b.len() * 3 / 4),
            "BOOL" | "NULL" => 1,
            "SS" | "NS" | "BS" => x.as_array().map_or(0, |a| a.iter().map(|e| e.as_str().map_or(0, str::len)).sum()),
            "L" => 3 + x.as_array().map_or(0, |a| a.iter().map(|e| 1 + value_size(e)).sum()),
            "M" => 3 + x.as_object().map_or(0, |m| m.iter().map(|(k, e)| 1 + k.len() + value_size(e)).sum()),
            _ => 0,
        })
        .sum()
}

/// An item's size: attribute names and values.
pub fn item_size(item: &Value) -> usize {
    item.as_object().map_or(0, |m| m.iter().map(|(k, v)| k.len() + value_size(v)).sum())
}

fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

fn pk_of(key: &Value) -> String {
    key.get("pk").and_then(|v| v.get("S")).and_then(Value::as_str).unwrap_or("?").to_owned()
}

/// Read and write units per partition key for one call: reads from the
/// answer's items, writes from the request's.
fn units(op: &str, request: &Value, response: &Value) -> Vec<(String, f64, f64)> {
    let consistent = request.get("ConsistentRead").and_then(Value::as_bool).unwrap_or(false);
    match op {
        "GetItem" => {
            let size = response.get("Item").map_or(0, item_size);
            vec![(pk_of(&request["Key"]), read_units(size, consistent), 0.0)]
        }
        "Query" | "Scan" => {
            let pk =
                request.pointer("/ExpressionAttributeValues/:pk/S").and_then(Value::as_str).unwrap_or("?").to_owned();
            let size: usize =
                response.get("Items").and_then(Value::as_array).map_or(0, |items| items.iter().map(item_size).sum());
            vec![(pk, read_units(size, consistent), 0.0)]
        }
        "BatchGetItem" => {
            let mut out = Vec::new();
            for (table, req) in request.get("RequestItems").and_then(Value::as_object).into_iter().flatten() {
                let consistent = req.get("ConsistentRead").and_then(Value::as_bool).unwrap_or(false);
                let found: Vec<&Value> = response
                    .pointer(&format!("/Responses/{table}"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                for key in req.get("Keys").and_then(Value::as_array).into_iter().flatten() {
                    let item = found.iter().find(|i| i.get("pk") == key.get("pk") && i.get("sk") == key.get("sk"));
                    out.push((pk_of(key), read_units(item.map_or(0, |i| item_size(i)), consistent), 0.0));
                }
            }
            out
        }
        "PutItem" => vec![(pk_of(&request["Item"]), 0.0, write_units(item_size(&request["Item"])))],
        "UpdateItem" | "DeleteItem" => {
            let size = item_size(&request["Key"]) + request.get("ExpressionAttributeValues").map_or(0, item_size);
            vec![(pk_of(&request["Key"]), 0.0, write_units(size))]
        }
        "TransactWriteItems" => request
            .get("TransactItems")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let (kind, body) = t.as_object()?.iter().next()?;
                let (key, size) = match kind.as_str() {
                    "Put" => (&body["Item"], item_size(&body["Item"])),
                    _ => (
                        &body["Key"],
                        item_size(&body["Key"]) + body.get("ExpressionAttributeValues").map_or(0, item_size),
                    ),
                };
                // Transactions cost two units per unit.
                Some((pk_of(key), 0.0, 2.0 * write_units(size)))
            })
            .collect(),
        "BatchWriteItem" => request
            .get("RequestItems")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|w| {
                let put = w.pointer("/PutRequest/Item");
                let del = w.pointer("/DeleteRequest/Key");
                let key = put.or(del)?;
                Some((pk_of(key), 0.0, write_units(put.map_or(item_size(key), item_size))))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn operation(target: &str) -> &'static str {
    const OPS: [&str; 12] = [
        "GetItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "TransactWriteItems",
        "BatchWriteItem",
        "CreateTable",
        "DescribeTable",
        "TransactGetItems",
    ];
    let op = target.rsplit('.').next().unwrap_or_default();
    OPS.iter().find(|o| **o == op).copied().unwrap_or("Other")
}

fn throttled() -> Response<Full<Bytes>> {
    let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."}"#;
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The partition keys a request touches, before it is sent.
fn partitions(request: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ptr in ["/Key", "/Item"] {
        if let Some(k) = request.pointer(ptr) {
            out.push(pk_of(k));
        }
    }
    if let Some(pk) = request.pointer("/ExpressionAttributeValues/:pk/S").and_then(Value::as_str) {
        out.push(pk.to_owned());
    }
    for t in request.get("TransactItems").and_then(Value::as_array).into_iter().flatten() {
        if let Some((_, body)) = t.as_object().and_then(|o| o.iter().next()) {
            out.push(pk_of(body.get("Key").or(body.get("Item")).unwrap_or(&Value::Null)));
        }
    }
    for req in request.get("RequestItems").and_then(Value::as_object).into_iter().flat_map(|m| m.values()) {
        for key in req.get("Keys").and_then(Value::as_array).into_iter().flatten() {
            out.push(pk_of(key));
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    limits: Limits,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let op = operation(req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default());
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let second = |s: &State| s.start.map_or(0, |t| t.elapsed().as_secs());
    {
        // A partition that spent its units this second refuses more work.
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = second(&s);
        let over = s.throttle_all
            || partitions(&request).into_iter().any(|pk| {
                let (r, w) = s.windows.get(&(pk, now)).copied().unwrap_or_default();
                r >= limits.read_units || w >= limits.write_units
            });
        let usage = s.by_op.entry(op).or_default();
        usage.calls += 1;
        if over {
            usage.throttled += 1;
            return Ok(throttled());
        }
    }
    let (rparts, rbody) = match crate::forward(&client, &upstream, parts, body).await {
        Ok(answer) => answer,
        Err(_) => {
            return Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Full::new(Bytes::new()))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))));
        }
    };
    if rparts.status.is_success() {
        let answer: Value = serde_json::from_slice(&rbody).unwrap_or(Value::Null);
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = second(&s);
        for (pk, r, w) in units(op, &request, &answer) {
            let usage = s.by_op.entry(op).or_default();
            usage.read_units += r;
            usage.write_units += w;
            let window = s.windows.entry((pk, now)).or_default();
            window.0 += r;
            window.1 += w;
        }
    }
    Ok(Response::from_parts(rparts, Full::new(rbody)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_dynamodb_sizes() {
        let item = serde_json::json!({"pk": {"S": "MESH#default"}, "sk": {"S": "VIEW"}, "generation": {"N": "12"}});
        assert_eq!(item_size(&item), 2 + 12 + 2 + 4 + 10 + 2);
        let req = serde_json::json!({"Key": {"pk": {"S": "MESH#default"}, "sk": {"S": "VIEW"}}});
        let got = units("GetItem", &req, &serde_json::json!({"Item": item}));
        assert_eq!(got, [("MESH#default".to_owned(), 0.5, 0.0)]);
        let big = serde_json::json!({"Items": [{"pk": {"S": "x".repeat(5000)}}]});
        let q = serde_json::json!({"ConsistentRead": true, "ExpressionAttributeValues": {":pk": {"S": "MESH#m"}}});
        assert_eq!(units("Query", &q, &big), [("MESH#m".to_owned(), 2.0, 0.0)]);
        let tx = serde_json::json!({"TransactItems": [{"Put": {"Item": {"pk": {"S": "MESH#m"}, "d": {"S": "y".repeat(1500)}}}}]});
        assert_eq!(units("TransactWriteItems", &tx, &Value::Null), [("MESH#m".to_owned(), 0.0, 4.0)]);
    }
}
