//! The `Custom::LoopmeshResource` CloudFormation custom resource: a Mesh,
//! HostnameGenerator, MeshExternalService (or any appliable kind) declared in
//! the operator's stack, its YAML in the `Resource` property.
//!
//! Create and Update apply it; Delete removes it. Whatever happens, malformed
//! request included, the answer goes to the pre-signed `ResponseURL` with a
//! reason CloudFormation shows, so a stack never waits for a timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use loopmesh_shared::config::Pools;
use loopmesh_shared::model::{ResourceKind, parse_one};
use loopmesh_shared::resources::home_mesh;
use loopmesh_shared::store::dynamo::{DynamoResources, DynamoVipLedger, WriteError, declared_key};
use loopmesh_shared::vip::unix_now;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// CloudFormation allows a response body of 4 KiB; the reason is cut to fit.
const MAX_REASON: usize = 2_000;
/// The work must finish well before the function's timeout so the answer goes out.
pub const WORK_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Request {
    request_type: String,
    #[serde(rename = "ResponseURL")]
    response_url: String,
    stack_id: String,
    request_id: String,
    logical_resource_id: String,
    physical_resource_id: Option<String>,
    #[serde(default)]
    resource_properties: Value,
}

/// The body PUT to the pre-signed URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Response {
    pub status: String,
    pub reason: String,
    pub physical_resource_id: String,
    pub stack_id: String,
    pub request_id: String,
    pub logical_resource_id: String,
    #[serde(default)]
    pub data: Value,
}

/// What the function needs: the table and the VIP pools.
#[derive(Debug, Clone)]
pub struct Context {
    pub store: DynamoResources,
    pub ledger: DynamoVipLedger,
    pub pools: Pools,
}

/// `<Kind>/<mesh or ->/<name>`: the id CloudFormation keeps and hands back on Delete.
fn physical_id(kind: ResourceKind, mesh: Option<&str>, name: &str) -> String {
    format!("{kind}/{}/{name}", mesh.unwrap_or("-"))
}

fn parse_physical_id(id: &str) -> Option<(ResourceKind, Option<&str>, &str)> {
    let mut parts = id.splitn(3, '/');
    let kind = ResourceKind::parse(parts.next()?)?;
    let mesh = parts.next().filter(|m| *m != "-");
    Some((kind, mesh, parts.next().filter(|n| !n.is_empty())?))
}

/// Handles one request and returns the answer, and the URL to PUT it to
/// (`None` when the request has none: nobody waits for it).
pub async fn handle(ctx: &Context, raw: &Value) -> (Option<String>, Response) {
    let request: Request = match serde_json::from_value(raw.clone()) {
        Ok(r) => r,
        Err(e) => {
            // Without a ResponseURL nobody can be told; with one, say why.
            let field = |f: &str| raw.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
            let url = raw.get("ResponseURL").and_then(Value::as_str).map(str::to_owned);
            let response = Response {
                status: "FAILED".into(),
                reason: format!("malformed custom resource request: {e}"),
                physical_resource_id: raw
                    .get("PhysicalResourceId")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("invalid-{}", field("RequestId")), str::to_owned),
                stack_id: field("StackId"),
                request_id: field("RequestId"),
                logical_resource_id: field("LogicalResourceId"),
                data: Value::Null,
            };
            return (url, response);
        }
    };
    let work = tokio::time::timeout(WORK_LIMIT, act(ctx, &request)).await;
    let outcome = work.unwrap_or_else(|_| Err(format!("no answer from the table within {WORK_LIMIT:?}")));
    let fallback_id = request.physical_resource_id.clone().unwrap_or_else(|| format!("failed-{}", request.request_id));
    let (status, reason, id, data) = match outcome {
        Ok((id, data)) => ("SUCCESS", "applied".to_owned(), id, data),
        Err(reason) => ("FAILED", reason, fallback_id, Value::Null),
    };
    let mut reason = reason;
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON).rev().find(|i| reason.is_char_boundary(*i)).unwrap_or(0);
        reason.truncate(cut);
    }
    tracing::info!(request_type = %request.request_type, logical = %request.logical_resource_id, status, %reason, "custom resource");
    let response = Response {
        status: status.into(),
        reason,
        physical_resource_id: id,
        stack_id: request.stack_id,
        request_id: request.request_id,
        logical_resource_id: request.logical_resource_id,
        data,
    };
    (Some(request.response_url), response)
}

async fn act(ctx: &Context, request: &Request) -> Result<(String, Value), String> {
    match request.request_type.as_str() {
        "Create" | "Update" => {
            let doc = request
                .resource_properties
                .get("Resource")
                .and_then(Value::as_str)
                .ok_or("property Resource: required, the resource as YAML or JSON text")?;
            let resource = parse_one(doc).map_err(|e| format!("property Resource: {e}"))?;
            let applied = ctx
                .store
                .apply(&ctx.ledger, &ctx.pools, &resource, doc, unix_now())
                .await
                .map_err(|e| e.to_string())?;
            let id = physical_id(applied.kind, home_mesh(&resource).as_deref(), &applied.name);
            let data = json!({
                "Kind": applied.kind.as_str(),
                "Name": applied.name,
                "Version": applied.version,
                "Vip": applied.vip.map(|v| v.to_string()).unwrap_or_default(),
            });
            Ok((id, data))
        }
        "Delete" => {
            let id = request.physical_resource_id.clone().unwrap_or_default();
            // A Create that failed left an id we never stored: nothing to remove.
            let Some((kind, mesh, name)) = parse_physical_id(&id) else {
                return Ok((id, Value::Null));
            };
            let declared = declared_key(kind, mesh, name);
            match ctx.store.delete(kind, mesh, name, declared.as_ref(), unix_now()).await {
                Ok(()) | Err(WriteError::Missing { .. }) => Ok((id, Value::Null)),
                Err(e) => Err(e.to_string()),
            }
        }
        other => Err(format!("RequestType: {other:?} is not Create, Update or Delete")),
    }
}

/// PUTs the answer to the pre-signed URL, retrying transient failures.
pub async fn respond(url: &str, response: &Response) -> Result<(), String> {
    let body = serde_json::to_vec(response).map_err(|e| e.to_string())?;
    let client = loopmesh_shared::aws::https_client::<Full<Bytes>>().map_err(|e| e.to_string())?;
    // A 4xx is final (the URL expired or is wrong); no answer or a 5xx is retried.
    let attempt = || async {
        // S3 pre-signed URLs are signed without a content type: send none.
        let request = hyper::Request::put(url)
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| (false, format!("ResponseURL {url:?}: {e}")))?;
        match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) if r.status().is_client_error() => Err((false, format!("ResponseURL answered {}", r.status()))),
            Ok(Ok(r)) => Err((true, format!("ResponseURL answered {}", r.status()))),
            Ok(Err(e)) => Err((true, format!("ResponseURL: {e}"))),
            Err(_) => Err((true, "ResponseURL: no answer in 10 s".into())),
        }
    };
    use backon::Retryable;
    attempt
        .retry(loopmesh_shared::retry::http_answer())
        .sleep(tokio::time::sleep)
        .when(|(retry, _)| *retry)
        .await
        .map_err(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_ids_round_trip() {
        let id = physical_id(ResourceKind::HostnameGenerator, None, "local");
        assert_eq!(id, "HostnameGenerator/-/local");
        assert_eq!(parse_physical_id(&id), Some((ResourceKind::HostnameGenerator, None, "local")));
        let id = physical_id(ResourceKind::MeshExternalService, Some("default"), "httpbin");
        assert_eq!(parse_physical_id(&id), Some((ResourceKind::MeshExternalService, Some("default"), "httpbin")));
        assert_eq!(parse_physical_id("failed-123"), None);
    }
}
