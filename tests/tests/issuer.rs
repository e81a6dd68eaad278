//! The issuer function's code against moto: STS says who signed the proof,
//! IAM holds the role's tags, KMS signs, the table keeps roots and used
//! proofs.

#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::time::{Duration, SystemTime};

use loopmesh_shared::identity::{MESH_TAG, SERVICE_TAG, TYPE_TAG};
use loopmesh_shared::mtls::cert::{CaSigner, LocalSigner};
use loopmesh_shared::mtls::issuer::IssueError;
use loopmesh_shared::mtls::proof::{Signer, SigningKeys, sts_endpoint};
use loopmesh_shared::mtls::{IssueRequest, inspect, pem_certificates};
use loopmesh_tests::mtls::{apply_resource, builtin_mesh, issuer, kms_key, session, task_role};
use loopmesh_tests::{dynamo_client, endpoint, fresh_table, query_prefix};

struct Bed {
    table: String,
    service: issuer::Service,
}

async fn bed(mesh: &str) -> Bed {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "issuer").await;
    apply_resource(&table, &builtin_mesh(mesh, "STRICT")).await;
    let service = issuer(&table, &kms_key().await).await;
    Bed { table, service }
}

fn request(bed: &Bed, mesh: &str, services: &[&str], key: &LocalSigner, keys: &SigningKeys) -> IssueRequest {
    let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
    let sts = sts_endpoint("us-east-1", |_| Some(endpoint()));
    IssueRequest::signed(
        mesh,
        &services,
        key.public_key(),
        &Signer { keys, region: "us-east-1", endpoint: &sts, issuer: &bed.table },
        SystemTime::now(),
    )
    .unwrap()
}

fn refused(r: Result<loopmesh_shared::mtls::Issued, IssueError>) -> String {
    match r {
        Err(IssueError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_tagged_for_the_service_gets_a_day_long_certificate_of_its_spiffe_id() {
    let bed = bed("prod").await;
    let (_, keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "prod"), (SERVICE_TAG, "redis")]).await;
    let key = LocalSigner::generate();
    let issued = bed.service.issue(&request(&bed, "prod", &["redis"], &key, &keys), SystemTime::now()).await.unwrap();
    let leaf = pem_certificates(&issued.certificate).unwrap();
    let info = inspect(&leaf[0]).unwrap();
    assert_eq!(info.identities, ["spiffe://prod/redis"]);
    let life = info.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(life > Duration::from_secs(86_000) && life <= Duration::from_secs(86_400), "{life:?}");
    assert_eq!(issued.backend, "ca-1");
    assert_eq!(issued.trust_bundle, [("ca-1".to_owned(), issued.ca.clone())].into());
    // KMS's signature verifies: the certificate chains to the root, as a peer checks it.
    let root = pem_certificates(&issued.ca).unwrap().remove(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.into()).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(leaf[0].clone());
    let parsed = rustls::server::ParsedCertificate::try_from(&cert).unwrap();
    let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        rustls::pki_types::UnixTime::now(),
        algs.all,
    )
    .expect("the leaf verifies against the KMS-signed root");
    // The root is in the mesh's partition, announced by a change item, and reused.
    let roots = query_prefix(&dynamo_client().await, &bed.table, "MESH#prod", "CA#").await;
    assert_eq!(roots.len(), 1);
    let changes = query_prefix(&dynamo_client().await, &bed.table, "MESH#prod", "CHG#").await;
    assert!(changes.iter().any(|c| format!("{c:?}").contains("CA#ca-1")), "a change item names the root");
    let again = bed
        .service
        .issue(&request(&bed, "prod", &["redis"], &LocalSigner::generate(), &keys), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(again.ca, issued.ca, "one root per backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_whose_tags_do_not_allow_the_service_get_nothing() {
    let bed = bed("prod").await;
    let key = LocalSigner::generate();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "no kuma.io/type tag"),
        (&[(TYPE_TAG, "dataplane"), (MESH_TAG, "prod"), (SERVICE_TAG, "web")], "kuma.io/service tag is \"web\""),
        (&[(TYPE_TAG, "dataplane"), (MESH_TAG, "other")], "kuma.io/mesh tag is \"other\""),
        (&[(TYPE_TAG, "ingress"), (MESH_TAG, "prod")], "only a dataplane role"),
    ];
    for (tags, words) in cases {
        let (_, keys) = task_role(tags).await;
        let why = refused(bed.service.issue(&request(&bed, "prod", &["redis"], &key, &keys), SystemTime::now()).await);
        assert!(why.contains(words), "{tags:?}: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_foreign_or_tampered_proof_is_refused() {
    let bed = bed("prod").await;
    let (_, keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "prod")]).await;
    let key = LocalSigner::generate();
    let first = request(&bed, "prod", &["redis"], &key, &keys);
    bed.service.issue(&first, SystemTime::now()).await.unwrap();
    assert!(refused(bed.service.issue(&first, SystemTime::now()).await).contains("already used"));
    // Another account's role, even one tagged right.
    let foreign = session("arn:aws:iam::111111111111:role/web").await;
    let why = refused(bed.service.issue(&request(&bed, "prod", &["redis"], &key, &foreign), SystemTime::now()).await);
    assert!(why.contains("account 111111111111"), "{why}");
    // The proof was made for another key, service, issuer or time.
    let mut other_key = request(&bed, "prod", &["redis"], &key, &keys);
    other_key.public_key = aws_smithy_types::base64::encode(LocalSigner::generate().public_key());
    assert!(refused(bed.service.issue(&other_key, SystemTime::now()).await).contains("x-loopmesh-request"));
    let mut other_service = request(&bed, "prod", &["redis"], &key, &keys);
    other_service.services = vec!["billing".into()];
    assert!(refused(bed.service.issue(&other_service, SystemTime::now()).await).contains("x-loopmesh-request"));
    let late = request(&bed, "prod", &["redis"], &key, &keys);
    let why = refused(bed.service.issue(&late, SystemTime::now() + Duration::from_secs(900)).await);
    assert!(why.contains("x-amz-date"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_without_mtls_and_malformed_requests_are_refused_with_the_field_named() {
    let bed = bed("prod").await;
    let (_, keys) = task_role(&[(TYPE_TAG, "dataplane"), (MESH_TAG, "plain")]).await;
    let key = LocalSigner::generate();
    let why = refused(bed.service.issue(&request(&bed, "plain", &["redis"], &key, &keys), SystemTime::now()).await);
    assert!(why.contains("does not enable mTLS"), "{why}");
    let mut junk = request(&bed, "plain", &["redis"], &key, &keys);
    junk.public_key = "%%%".into();
    junk.services = vec!["no spaces".into()];
    let why = refused(bed.service.issue(&junk, SystemTime::now()).await);
    assert!(why.contains("public_key: not base64") && why.contains("services[0]"), "{why}");
    let answer = issuer::handle(&bed.service, serde_json::json!({"mesh": "prod", "services": 7}), SystemTime::now())
        .await
        .unwrap();
    assert!(answer["refused"].as_str().unwrap().starts_with("services"), "{answer}");
}
