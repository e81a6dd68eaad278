//! The `Custom::LoopmeshResource` function against moto server, answering a
//! local HTTP server that stands in for CloudFormation's pre-signed URL.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::sync::{Arc, Mutex};

use loopmesh_shared::model::ResourceKind;
use loopmesh_shared::store::dynamo::{DynamoResources, DynamoVipLedger};
use loopmesh_tests::ecs::settings;
use loopmesh_tests::{dynamo_client, fresh_table};
use resources::{Context, Response, handle, respond};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server that records the body of every PUT and answers 200.
async fn presigned_url() -> (String, Arc<Mutex<Vec<(String, Response)>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cfn-response?X-Amz-Signature=abc", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_owned(), body.to_owned());
                        }
                    }
                    if n == 0 {
                        return;
                    }
                };
                let method = head.split(' ').next().unwrap_or_default().to_owned();
                s.lock().unwrap().push((method, serde_json::from_str(&body).unwrap()));
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            });
        }
    });
    (url, seen)
}

fn request(kind: &str, url: &str, physical: Option<&str>, resource: Option<&str>) -> Value {
    let mut r = json!({
        "RequestType": kind,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/demo/guid",
        "RequestId": format!("req-{kind}"),
        "ResourceType": "Custom::LoopmeshResource",
        "LogicalResourceId": "LocalHostnames",
        "ResourceProperties": {"ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:resources"},
    });
    if let Some(p) = physical {
        r["PhysicalResourceId"] = p.into();
    }
    if let Some(doc) = resource {
        r["ResourceProperties"]["Resource"] = doc.into();
    }
    r
}

const GENERATOR: &str = "type: HostnameGenerator\nname: local\nspec:\n  selector:\n    meshService:\n      matchLabels:\n        kuma.io/origin: zone\n  template: \"{{ .DisplayName }}.svc.mesh.local\"\n";

async fn call(ctx: &Context, event: Value) -> Response {
    let (url, response) = handle(ctx, &event).await;
    respond(&url.unwrap(), &response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_and_failures_always_answer_the_presigned_url() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "cfn").await;
    let s = settings(&table, &[]);
    let ctx = Context {
        store: DynamoResources::new(client.clone(), &table),
        ledger: DynamoVipLedger::new(client.clone(), &table),
        pools: s.pools,
    };
    let (url, seen) = presigned_url().await;

    let created = call(&ctx, request("Create", &url, None, Some(GENERATOR))).await;
    assert_eq!(
        (created.status.as_str(), created.physical_resource_id.as_str()),
        ("SUCCESS", "HostnameGenerator/-/local")
    );
    assert_eq!(created.data["Version"], 1);
    let stored = ctx.store.get(ResourceKind::HostnameGenerator, None, "local").await.unwrap().unwrap();
    assert!(stored.doc.contains(".svc.mesh.local"));

    let updated_doc = GENERATOR.replace(".svc.mesh.local", ".services.mesh.local");
    let updated = call(&ctx, request("Update", &url, Some("HostnameGenerator/-/local"), Some(&updated_doc))).await;
    assert_eq!((updated.status.as_str(), updated.data["Version"].as_u64()), ("SUCCESS", Some(2)));

    // A bad resource: FAILED with the field and the rule, still answered.
    let bad = call(
        &ctx,
        request("Create", &url, None, Some("type: HostnameGenerator\nname: x\nspec:\n  template: \"{{ .Nope }}\"\n")),
    )
    .await;
    assert_eq!(bad.status, "FAILED");
    assert!(bad.reason.starts_with("property Resource: "), "{}", bad.reason);
    assert_eq!(bad.physical_resource_id, "failed-req-Create");
    let missing = call(&ctx, request("Create", &url, None, None)).await;
    assert_eq!(missing.status, "FAILED");
    assert!(missing.reason.contains("property Resource: required"), "{}", missing.reason);
    // The rollback deletes what never existed: success.
    let rollback = call(&ctx, request("Delete", &url, Some("failed-req-Create"), None)).await;
    assert_eq!(rollback.status, "SUCCESS");

    let deleted = call(&ctx, request("Delete", &url, Some("HostnameGenerator/-/local"), None)).await;
    assert_eq!(deleted.status, "SUCCESS");
    assert!(ctx.store.get(ResourceKind::HostnameGenerator, None, "local").await.unwrap().is_none());
    let again = call(&ctx, request("Delete", &url, Some("HostnameGenerator/-/local"), None)).await;
    assert_eq!(again.status, "SUCCESS", "deleting twice is fine: {}", again.reason);

    // A malformed request that still names its URL is answered too.
    let (u, r) = handle(&ctx, &json!({"ResponseURL": url, "RequestId": "r9", "StackId": "s"})).await;
    assert_eq!(r.status, "FAILED");
    assert!(r.reason.starts_with("malformed custom resource request"), "{}", r.reason);
    respond(&u.unwrap(), &r).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 8, "every request answered once");
    assert!(seen.iter().all(|(method, _)| method == "PUT"));
    assert_eq!(seen[0].1, created);
}
