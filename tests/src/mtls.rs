//! The mTLS test bed: a KMS CA key, task roles with credentials, a Mesh
//! with mTLS, and the issuer function's real code behind the Lambda Invoke
//! API on loopback (what a sidecar's Lambda client calls).

use std::time::SystemTime;

use aws_sdk_iam::types::Tag;
use loopmesh_shared::mtls::proof::SigningKeys;
use serde_json::Value;

use crate::{Server, sdk_config, serve_http, unique};

/// The account moto answers for.
pub const ACCOUNT: &str = "123456789012";

/// A `kuma.io/service` service of `mesh` holding `vip`, as task-events'
/// allocation leaves it before the first registration.
pub async fn service_with_vip(client: &aws_sdk_dynamodb::Client, table: &str, mesh: &str, name: &str, vip: &str) {
    use aws_sdk_dynamodb::types::AttributeValue::{N, S};
    use loopmesh_shared::store::keys;
    client
        .put_item()
        .table_name(table)
        .item("pk", S(keys::mesh_pk(mesh)))
        .item("sk", S(keys::service_sk(loopmesh_shared::vip::ServiceKind::Service, name)))
        .item("name", S(name.into()))
        .item("mesh", S(mesh.into()))
        .item("vip", S(vip.into()))
        .item("assigned_at", N("1".into()))
        .send()
        .await
        .expect("put the service item");
}

/// A new asymmetric P-256 signing key in the emulator's KMS.
pub async fn kms_key() -> String {
    use aws_sdk_kms::types::{KeySpec, KeyUsageType};
    let kms = aws_sdk_kms::Client::new(&sdk_config().await);
    let out = kms
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .expect("create KMS key");
    out.key_metadata().expect("metadata").key_id().to_owned()
}

/// A task role with these tags, and credentials of a session in it (what
/// the task's credential endpoint hands the sidecar).
pub async fn task_role(tags: &[(&str, &str)]) -> (String, SigningKeys) {
    let iam = aws_sdk_iam::Client::new(&sdk_config().await);
    let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build().expect("tag")).collect();
    let role = iam
        .create_role()
        .role_name(format!("task-{}", unique()))
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
        .set_tags(Some(tags))
        .send()
        .await
        .expect("create role");
    let arn = role.role().expect("role").arn().to_owned();
    let keys = session(&arn).await;
    (arn, keys)
}

/// Credentials of a session in `role_arn` (any account: the emulator lets
/// a test be a caller from another account).
pub async fn session(role_arn: &str) -> SigningKeys {
    let sts = aws_sdk_sts::Client::new(&sdk_config().await);
    let out = sts.assume_role().role_arn(role_arn).role_session_name("task").send().await.expect("assume role");
    let c = out.credentials().expect("credentials");
    SigningKeys {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: c.secret_access_key().to_owned(),
        session_token: Some(c.session_token().to_owned()),
    }
}

/// Applies one resource document (a Mesh, a MeshTrafficPermission) as `loopmesh apply` does.
pub async fn apply_resource(table: &str, yaml: &str) {
    use loopmesh_shared::store::dynamo::{DynamoResources, DynamoVipLedger};
    let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let docs = loopmesh_shared::model::parse_documents_with_text(yaml);
    let (resource, text) = (docs[0].0.as_ref().expect("a valid resource"), &docs[0].1);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs();
    let pools = loopmesh_shared::config::Settings::default().pools;
    DynamoResources::new(client.clone(), table)
        .apply(&DynamoVipLedger::new(client, table), &pools, resource, text, now)
        .await
        .expect("apply the resource");
}

/// A Mesh with one builtin backend in `mode`.
pub fn builtin_mesh(mesh: &str, mode: &str) -> String {
    format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: {mode}\n"
    )
}

/// The issuer function's service for `table`, signing with `key_id`.
pub async fn issuer(table: &str, key_id: &str) -> issuer::Service {
    let config = issuer::Config {
        table: table.to_owned(),
        key_id: key_id.to_owned(),
        accounts: vec![ACCOUNT.to_owned()],
        region: "us-east-1".to_owned(),
    };
    issuer::service(&config, &sdk_config().await).await.expect("issuer service")
}

/// Serves `service` as the Lambda Invoke API does
/// (`POST /2015-03-31/functions/<name>/invocations`): the answer, or a
/// function error (`X-Amz-Function-Error: Unhandled`). Returns the URL to
/// give a Lambda client as its endpoint, and the server.
pub async fn serve_issuer(service: issuer::Service) -> (String, Server) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let service = std::sync::Arc::new(service);
    serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
        let service = service.clone();
        async move {
            let ok = request.uri().path().starts_with("/2015-03-31/functions/");
            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let response = hyper::Response::builder();
            let (response, answer) = if !ok {
                (response.status(404), serde_json::json!({"Message": "not an invocation"}))
            } else {
                match issuer::handle(&service, payload, SystemTime::now()).await {
                    Ok(v) => (response.status(200), v),
                    Err(e) => (
                        response.status(200).header("X-Amz-Function-Error", "Unhandled"),
                        serde_json::json!({"errorType": "IssueFailed", "errorMessage": e}),
                    ),
                }
            };
            Ok(response
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))
                .expect("response"))
        }
    })
    .await
}
