use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;

use rcgen::PublicKeyData;

use super::cert::{self, CaSigner, CertError, LeafRequest, LocalSigner};
use super::*;

const DAY: Duration = Duration::from_secs(86_400);

/// Whether `leaf` chains to `root` at `at`, as a peer's rustls checks it.
fn verifies(leaf: &[u8], root: &[u8], at: SystemTime) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let leaf = CertificateDer::from(leaf.to_vec());
    let parsed = ParsedCertificate::try_from(&leaf)?;
    let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    let now = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], now, algs.all)
}

fn sidecar_key() -> LocalSigner {
    LocalSigner::generate()
}

#[tokio::test]
async fn a_sidecar_certificate_names_its_services_and_chains_to_the_mesh_root() {
    let ca = LocalSigner::generate();
    let now = SystemTime::now();
    let root = cert::root(&ca, "prod", "ca-1", now, 3650 * DAY).await.unwrap();
    let key = sidecar_key();
    let services = vec!["redis".to_owned(), "redis-admin".to_owned()];
    let request = LeafRequest { mesh: "prod", services: &services, public_key: key.public_key(), lifetime: DAY };
    let leaf = cert::leaf(&ca, &root, &request, now).await.unwrap();
    verifies(&leaf, &root, now).unwrap();
    let info = inspect(&leaf).unwrap();
    assert_eq!(info.identities, ["spiffe://prod/redis", "spiffe://prod/redis-admin"]);
    let life = info.not_after.duration_since(now).unwrap();
    assert!(life <= DAY && life > DAY - Duration::from_secs(2), "{life:?}");
    assert_eq!(inspect(&root).unwrap().identities, ["spiffe://prod"]);
    // Expired a day later; another CA's root does not vouch for it.
    assert!(verifies(&leaf, &root, now + 2 * DAY).is_err());
    let other = cert::root(&LocalSigner::generate(), "prod", "ca-1", now, 3650 * DAY).await.unwrap();
    assert!(verifies(&leaf, &other, now).is_err());
}

/// A signer that signs with one key and claims another: what a KMS key
/// confused with another would do. The certificate must not verify.
struct WrongKey(LocalSigner, LocalSigner);

impl CaSigner for WrongKey {
    fn public_key(&self) -> &[u8] {
        self.1.public_key()
    }
    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, CertError> {
        self.0.sign(tbs).await
    }
}

#[tokio::test]
async fn a_signature_from_the_wrong_key_does_not_verify() {
    let now = SystemTime::now();
    let wrong = WrongKey(LocalSigner::generate(), LocalSigner::generate());
    let root = cert::root(&wrong, "m", "b", now, 3650 * DAY).await.unwrap();
    let services = vec!["s".to_owned()];
    let key = sidecar_key();
    let leaf = cert::leaf(
        &wrong,
        &root,
        &LeafRequest { mesh: "m", services: &services, public_key: key.public_key(), lifetime: DAY },
        now,
    )
    .await
    .unwrap();
    assert!(verifies(&leaf, &root, now).is_err());
}

#[tokio::test]
async fn bad_public_keys_are_refused_with_the_field_named() {
    let ca = LocalSigner::generate();
    let now = SystemTime::now();
    let root = cert::root(&ca, "m", "b", now, 3650 * DAY).await.unwrap();
    let services = vec!["s".to_owned()];
    let err = cert::leaf(
        &ca,
        &root,
        &LeafRequest { mesh: "m", services: &services, public_key: b"junk", lifetime: DAY },
        now,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("public_key:"), "{err}");
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    if let Ok(rsa) = rsa {
        let spki = rsa.subject_public_key_info();
        let err = cert::leaf(
            &ca,
            &root,
            &LeafRequest { mesh: "m", services: &services, public_key: &spki, lifetime: DAY },
            now,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("P-256 or Ed25519"), "{err}");
    }
}

#[test]
fn spiffe_ids_round_trip_and_renewal_is_at_two_thirds() {
    assert_eq!(parse_spiffe_id(&spiffe_id("default", "redis_svc_6379")), Some(("default", "redis_svc_6379")));
    assert_eq!(parse_spiffe_id("spiffe://default"), None);
    assert_eq!(parse_spiffe_id("spiffe://a/b/c"), None);
    assert_eq!(parse_spiffe_id("https://a/b"), None);
    let t0 = SystemTime::UNIX_EPOCH + DAY;
    assert_eq!(renew_at(t0, t0 + DAY), t0 + Duration::from_secs(57_600));
}

#[test]
fn pem_round_trips() {
    let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
    assert_eq!(pem_certificates(&(to_pem(&der) + &to_pem(&der))).unwrap(), vec![der.clone(), der]);
}
