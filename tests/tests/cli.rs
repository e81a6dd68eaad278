//! The `loopmesh` binary against moto server: validate, apply, get, delete,
//! status, concurrent applies, and the one-line AWS error.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::process::{Command, Output};

use loopmesh_shared::model::parse_documents_with_text;
use loopmesh_shared::store::dynamo::{DynamoResources, WriteError};
use loopmesh_shared::vip::unix_now;
use loopmesh_tests::ecs::{event, registrar, role, settings, task_definition};
use loopmesh_tests::process::workspace_binary;
use loopmesh_tests::{dynamo_client, fresh_table};

const RESOURCES: &str = "type: Mesh
name: default
meshServices:
  mode: Disabled
---
type: HostnameGenerator
name: external
spec:
  selector:
    meshExternalService:
      matchLabels: {}
  template: \"{{ .DisplayName }}.extsvc.mesh.local\"
---
type: MeshExternalService
name: httpbin
mesh: default
spec:
  match:
    type: HostnameGenerator
    port: 443
    protocol: tls
  endpoints:
  - address: httpbin.org
    port: 443
";

const BAD: &str = "type: MeshExternalService
name: httpbin
mesh: default
spec:
  match:
    port: 0
    protocol: ftp
  endpoints: []
---
type: Mesh
name: Not_A_Name
";

fn loopmesh(table: &str, args: &[&str]) -> Output {
    Command::new(workspace_binary("loopmesh")).args(args).env("LOOPMESH_TABLE_NAME", table).output().unwrap()
}

fn file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("loopmesh-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn validate_names_file_document_field_and_rule_offline() {
    let good = file("good.yaml", RESOURCES);
    let bad = file("bad.yaml", BAD);
    let ok = Command::new(workspace_binary("loopmesh"))
        .args(["validate", "-f", &good])
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("MeshExternalService \"httpbin\" is valid"));
    let out = Command::new(workspace_binary("loopmesh")).args(["validate", "-f", &good, "-f", &bad]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{bad}: document 1 (MeshExternalService \"httpbin\"): spec.match.port:")), "{err}");
    assert!(err.contains("spec.match.protocol: \"ftp\" is not one of tcp, tls, http, http2, grpc, kafka"), "{err}");
    assert!(err.contains(&format!("{bad}: document 2 (Mesh \"Not_A_Name\"): name:")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_status_delete_round_trip() {
    let table = fresh_table(&dynamo_client().await, "cli").await;
    let resources = file("resources.yaml", RESOURCES);
    let out = loopmesh(&table, &["apply", "-f", &resources, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let applied: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(applied.as_array().unwrap().len(), 3);
    assert!(applied.as_array().unwrap().iter().all(|a| a["change"] == "created" && a["version"] == 1));
    let vip = applied[2]["vip"].as_str().unwrap().to_owned();
    assert!(vip.starts_with("127.3."), "a MeshExternalService VIP comes from 127.3/16: {vip}");

    // Applying the same again changes nothing; a changed document is version 2.
    let again = loopmesh(&table, &["apply", "-f", &resources]);
    assert_eq!(stdout(&again).matches("unchanged").count(), 3, "{}", stdout(&again));
    let changed = file("changed.yaml", &RESOURCES.replace("mode: Disabled", "mode: Exclusive"));
    let out = loopmesh(&table, &["apply", "-f", &changed]);
    assert!(stdout(&out).contains("Mesh \"default\" updated: version 2"), "{}", stdout(&out));

    let got = loopmesh(&table, &["get", "meshexternalservice", "httpbin", "-o", "json"]);
    let got: serde_json::Value = serde_json::from_str(&stdout(&got)).unwrap();
    assert_eq!(got[0]["resource"]["spec"]["endpoints"][0]["address"], "httpbin.org");
    let yaml = stdout(&loopmesh(&table, &["get", "mesh", "default", "-o", "yaml"]));
    assert!(yaml.contains("mode: Exclusive"), "{yaml}");
    let meshes = stdout(&loopmesh(&table, &["get", "meshes"]));
    assert!(meshes.lines().any(|l| l.starts_with("default") && l.trim_end().ends_with('2')), "{meshes}");

    let status = loopmesh(&table, &["status", "--mesh", "default", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    let services = &status["meshes"][0]["services"];
    assert_eq!(services[0]["name"], "httpbin");
    assert_eq!(services[0]["vip"], vip.as_str());
    assert_eq!(services[0]["endpoints"], 1);
    let mes_pool =
        status["meshes"][0]["pools"].as_array().unwrap().iter().find(|p| p["kind"] == "mes").unwrap().clone();
    assert_eq!((mes_pool["used"].as_u64(), mes_pool["size"].as_u64()), (Some(1), Some(65_534)));

    let out = loopmesh(&table, &["delete", "meshexternalservice", "httpbin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let missing = loopmesh(&table, &["get", "meshexternalservice", "httpbin"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("MeshExternalService \"httpbin\" not found in mesh \"default\""),
        "{}",
        stderr(&missing)
    );
    let twice = loopmesh(&table, &["delete", "meshexternalservice", "httpbin"]);
    assert!(stderr(&twice).contains("MeshExternalService \"httpbin\" does not exist"), "{}", stderr(&twice));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_applies_one_wins_and_the_other_is_told() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "cli-race").await;
    let store = DynamoResources::new(client, &table);
    let docs = parse_documents_with_text("type: Mesh\nname: raced\nmeshServices:\n  mode: Exclusive\n");
    let (resource, yaml) = (docs[0].0.as_ref().unwrap(), &docs[0].1);
    let other = yaml.replace("Exclusive", "Disabled");
    // Both read "absent" (version 0), then both write.
    let now = unix_now();
    let mesh = Some("raced");
    let (a, b) =
        tokio::join!(store.put(resource, mesh, yaml, 0, None, now), store.put(resource, mesh, &other, 0, None, now));
    let (won, lost) = match (a, b) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("expected one winner: {other:?}"),
    };
    assert_eq!(won, 1);
    assert!(matches!(lost, WriteError::Stale { expected: 0, found: 1, .. }), "{lost:?}");
    assert!(lost.to_string().contains("changed since it was read"), "{lost}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_identical_applies_all_succeed() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "cli-same").await;
    let ledger = loopmesh_shared::store::dynamo::DynamoVipLedger::new(client.clone(), &table);
    let store = DynamoResources::new(client, &table);
    let pools = loopmesh_shared::config::Settings::default().pools;
    let docs = parse_documents_with_text("type: Mesh\nname: same\nmeshServices:\n  mode: Exclusive\n");
    let (resource, yaml) = (docs[0].0.as_ref().unwrap(), &docs[0].1);
    let now = unix_now();
    let applies = (0..8).map(|_| store.apply(&ledger, &pools, resource, yaml, now));
    let results = futures::future::join_all(applies).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of 8 failed: {failed:?}", failed.len());
    let stored = store.get(resource.kind(), Some("same"), "same").await.unwrap().unwrap();
    assert_eq!(stored.version, 1, "written once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_registrations_and_shows_refusals() {
    let table = fresh_table(&dynamo_client().await, "cli-status").await;
    let settings = settings(&table, &[]);
    let registrar = registrar(&settings).await;
    let good = role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "default"), ("kuma.io/service", "redis")]).await;
    let td = task_definition(Some(&good), "redis", "default", true).await;
    for (i, id) in ["r1", "r2"].iter().enumerate() {
        registrar
            .handle(&event("ecs-task-running.json", &td, id, &format!("10.0.9.{}", i + 1), 2), unix_now())
            .await
            .unwrap();
    }
    let wrong = role(&[("kuma.io/type", "dataplane"), ("kuma.io/mesh", "other")]).await;
    let refused_td = task_definition(Some(&wrong), "redis", "default", true).await;
    registrar.handle(&event("ecs-task-running.json", &refused_td, "bad1", "10.0.9.9", 2), unix_now()).await.unwrap();

    let out = loopmesh(&table, &["status", "--mesh", "default", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mesh = &status["meshes"][0];
    assert_eq!(mesh["services"][0]["name"], "redis");
    assert_eq!(mesh["services"][0]["endpoints"], 2);
    assert_eq!(mesh["endpoints"].as_array().unwrap().len(), 2);
    assert!(mesh["endpoints"][0]["task"].as_str().unwrap().ends_with("/r1"));
    let refusals = status["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1);
    assert!(refusals[0]["task_arn"].as_str().unwrap().ends_with("/bad1"));
    assert!(refusals[0]["reason"].as_str().unwrap().contains("other"), "{}", refusals[0]["reason"]);
    let svc_pool = mesh["pools"].as_array().unwrap().iter().find(|p| p["kind"] == "svc").unwrap().clone();
    assert_eq!(svc_pool["used"], 1);
    // The human form has the same rows.
    let text = stdout(&loopmesh(&table, &["status"]));
    assert!(
        text.contains("IDENTITY REFUSALS") && text.lines().any(|l| l.starts_with("default") && l.contains("redis"))
    );
    let yaml = stdout(&loopmesh(&table, &["get", "endpoints", "-o", "yaml"]));
    assert_eq!(yaml.matches("address: 10.0.9.").count(), 2, "{yaml}");
}

#[test]
fn an_aws_error_is_one_line_that_says_what_to_check() {
    let out = loopmesh("no-such-table", &["status"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("check LOOPMESH_TABLE_NAME (now \"no-such-table\")"), "{err}");
}
