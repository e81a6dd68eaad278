//! The integration-test harness: SDK clients pointed at the local AWS API
//! emulator (moto server) that `scripts/test` starts, fresh tables, and a
//! request counter that benchmarks and tests read.
//!
//! The endpoint comes from the SDK's standard `AWS_ENDPOINT_URL`; the harness
//! refuses to run without it so a test can never reach a real account.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use loopmesh_shared::store::{dynamo, table};

/// The emulator's endpoint; panics with the fix when it is missing.
pub fn endpoint() -> String {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if url.starts_with("http://127.") || url.starts_with("http://localhost") => url,
        Ok(url) => panic!("AWS_ENDPOINT_URL={url} is not a loopback emulator; run the tests through scripts/test"),
        Err(_) => panic!("AWS_ENDPOINT_URL is not set; run the tests through scripts/test, which starts moto server"),
    }
}

/// SDK configuration for the emulator, with the standard variables the script exports.
pub async fn sdk_config() -> SdkConfig {
    endpoint();
    loopmesh_shared::aws::sdk_config().await
}

/// SDK configuration for another endpoint in front of the emulator (a limit
/// proxy); set on the loader, where it wins over `AWS_ENDPOINT_URL`.
pub async fn sdk_config_at(url: &str) -> SdkConfig {
    endpoint();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(url).load().await
}

pub async fn dynamo_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

/// A DynamoDB client whose every HTTP attempt is counted by `counter`.
pub async fn counted_dynamo_client(counter: &CallCounter) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk_config().await).interceptor(counter.clone()).build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// Creates a table with a unique name from the template's definition.
pub async fn fresh_table(client: &aws_sdk_dynamodb::Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", unique());
    let def = table::definition().expect("infra/template.yaml defines the table");
    dynamo::create_table(client, &name, &def).await.expect("create table in the emulator");
    name
}

/// Every item of a table, for asserting that nothing stray was written.
pub async fn item_count(client: &aws_sdk_dynamodb::Client, table: &str) -> usize {
    let mut count = 0;
    let mut start = None;
    loop {
        let out = client.scan().table_name(table).set_exclusive_start_key(start).send().await.expect("scan");
        count += out.count() as usize;
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return count;
        }
    }
}

/// A name no other test run in this emulator has used.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // The random part keeps two runs against one emulator apart.
    format!("{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), fastrand::u32(..))
}

/// Counts HTTP attempts per operation (retries included), as AWS bills and throttles them.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CallCounter {
    pub fn total(&self) -> u64 {
        self.lock().values().sum()
    }

    pub fn get(&self, operation: &str) -> u64 {
        self.lock().get(operation).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.lock().clone()
    }

    pub fn reset(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg.load::<Metadata>().map(|m| m.name().to_owned()).unwrap_or_else(|| "unknown".into());
        *self.lock().entry(op).or_insert(0) += 1;
        Ok(())
    }
}

pub mod dns;
pub mod dynamo_proxy;
pub mod ecs;
pub mod fault_proxy;
pub mod mtls;
pub mod process;
pub mod route53_proxy;

/// Items of one partition whose sort key starts with `prefix`.
pub async fn query_prefix(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    prefix: &str,
) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
            .expression_attribute_values(":p", AttributeValue::S(prefix.to_owned()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("query");
        out.extend(page.items().iter().cloned());
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return out;
        }
    }
}

/// A string attribute of an item, or "".
pub fn attr_s(item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>, name: &str) -> String {
    item.get(name).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default()
}

/// A Mesh resource item as `loopmesh apply` stores it, with its `meshServices.mode`.
pub fn mesh_resource_item(
    mesh: &str,
    mode: &str,
) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    use aws_sdk_dynamodb::types::AttributeValue;
    use loopmesh_shared::store::keys;
    std::collections::HashMap::from([
        (keys::PK.to_owned(), AttributeValue::S(keys::mesh_pk(mesh))),
        (keys::SK.to_owned(), AttributeValue::S(keys::resource_sk("Mesh", mesh))),
        (keys::attr::MESH_SERVICES_MODE.to_owned(), AttributeValue::S(mode.to_owned())),
    ])
}

/// An HTTP server of the harness; it stops when dropped.
#[derive(Debug)]
pub struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `handle` over HTTP/1.1 on a free loopback port, for the limit
/// proxies; returns its URL and the server.
pub(crate) async fn serve_http<H, Fut>(handle: H) -> (String, Server)
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<
            Output = Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible>,
        > + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), Server(task))
}

/// Sends a request the proxies received on to `upstream`, headers and body
/// as they came, and returns the answer with its body read.
pub(crate) async fn forward(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    upstream: &str,
    parts: hyper::http::request::Parts,
    body: bytes::Bytes,
) -> Result<(hyper::http::response::Parts, bytes::Bytes), String> {
    use http_body_util::BodyExt;
    let uri = format!("{upstream}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut request = hyper::Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        request = request.header(k, v);
    }
    let request = request.body(http_body_util::Full::new(body)).map_err(|e| format!("request: {e}"))?;
    let response = client.request(request).await.map_err(|e| format!("upstream: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).map_err(|e| format!("upstream body: {e}"))?;
    Ok((parts, body))
}
