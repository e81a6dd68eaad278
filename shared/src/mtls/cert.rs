//! The certificates of a mesh: a root per CA backend and short-lived
//! sidecar certificates whose URI SAN is Kuma's `spiffe://<mesh>/<service>`.
//!
//! The CA key may live where signing is a network call (AWS KMS), so a
//! certificate is built in two passes over the same parameters: the first
//! records the bytes to be signed, the signer signs them asynchronously, and
//! the second places the signature. Both passes serialize identical
//! parameters, so the bytes are identical; [`Sealed`] checks it.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey, SubjectPublicKeyInfo,
};

use super::spiffe_id;

/// A CA key: its public half and a signature over certificate bytes (DER
/// ECDSA for an EC key, as X.509 wants).
pub trait CaSigner: Send + Sync {
    /// The key as an X.509 SubjectPublicKeyInfo, DER.
    fn public_key(&self) -> &[u8];
    fn sign(&self, tbs: &[u8]) -> impl Future<Output = Result<Vec<u8>, CertError>> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("public_key: {0}")]
    PublicKey(String),
    #[error("the CA key: {0}")]
    Signer(String),
    #[error("the CA certificate: {0}")]
    Ca(String),
    #[error("building the certificate: {0}")]
    Build(String),
}

/// Clock skew tolerated between the issuer and the peers verifying.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// A mesh backend's self-signed root.
pub async fn root(
    signer: &impl CaSigner,
    mesh: &str,
    backend: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Vec<u8>, CertError> {
    let params = root_params(mesh, backend, now, lifetime)?;
    let key = ca_key(signer)?;
    two_pass(signer, &key, |sealed| params.self_signed(sealed).map(|c| c.der().to_vec())).await
}

fn root_params(mesh: &str, backend: &str, now: SystemTime, lifetime: Duration) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "loopmesh");
    dn.push(DnType::CommonName, format!("loopmesh {mesh} {backend}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names = vec![uri(&format!("spiffe://{mesh}"))?];
    params.serial_number = Some(serial());
    validity(&mut params, now, lifetime);
    Ok(params)
}

/// What a sidecar certificate says: the mesh, the services it serves, and
/// how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest<'a> {
    pub mesh: &'a str,
    pub services: &'a [String],
    /// The sidecar's key, SubjectPublicKeyInfo DER.
    pub public_key: &'a [u8],
    pub lifetime: Duration,
}

/// A sidecar certificate signed by the root `ca_der` (whose key `signer` holds).
pub async fn leaf(
    signer: &impl CaSigner,
    ca_der: &[u8],
    request: &LeafRequest<'_>,
    now: SystemTime,
) -> Result<Vec<u8>, CertError> {
    let subject = spki(request.public_key)?;
    let ca_key = ca_key(signer)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        request.services.iter().map(|s| uri(&spiffe_id(request.mesh, s))).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyAgreement];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, now, request.lifetime);
    two_pass(signer, &ca_key, |sealed| {
        let issuer = Issuer::from_ca_cert_der(&ca_der.into(), sealed)?;
        params.signed_by(&subject, &issuer).map(|c| c.der().to_vec())
    })
    .await
    .map_err(|e| match e {
        CertError::Build(m) if m.contains("parse") => CertError::Ca(m),
        e => e,
    })
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    let at = |t: SystemTime| time::OffsetDateTime::from(t);
    params.not_before = at(now - BACKDATE);
    params.not_after = at(now + lifetime);
}

/// 16 random bytes, the top bit clear so the DER integer stays positive.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn uri(text: &str) -> Result<SanType, CertError> {
    text.try_into().map(SanType::URI).map_err(|_| CertError::Build(format!("{text:?} is not an IA5 string")))
}

fn ca_key(signer: &impl CaSigner) -> Result<SubjectPublicKeyInfo, CertError> {
    SubjectPublicKeyInfo::from_der(signer.public_key()).map_err(|e| CertError::Signer(format!("its public key: {e}")))
}

/// A sidecar's key: P-256 or Ed25519, what rustls with aws-lc-rs offers.
fn spki(der: &[u8]) -> Result<SubjectPublicKeyInfo, CertError> {
    let key =
        SubjectPublicKeyInfo::from_der(der).map_err(|e| CertError::PublicKey(format!("not a public key: {e}")))?;
    let alg = key.algorithm();
    if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
        return Err(CertError::PublicKey("an ECDSA P-256 or Ed25519 key is required".to_owned()));
    }
    Ok(key)
}

/// A signing key for rcgen that records the bytes to sign (first pass) or
/// hands back a signature made for exactly those bytes (second pass).
struct Sealed<'a> {
    key: &'a SubjectPublicKeyInfo,
    tbs: Mutex<Option<Vec<u8>>>,
    signature: Option<Vec<u8>>,
}

impl PublicKeyData for Sealed<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl SigningKey for Sealed<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut tbs = self.tbs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&self.signature, tbs.as_deref()) {
            (Some(sig), Some(signed)) if signed == msg => Ok(sig.clone()),
            (Some(_), _) => Err(rcgen::Error::RemoteKeyError),
            (None, _) => {
                *tbs = Some(msg.to_vec());
                // A placeholder of a DER signature's size; this pass is thrown away.
                Ok(vec![0; 72])
            }
        }
    }
}

async fn two_pass(
    signer: &impl CaSigner,
    key: &SubjectPublicKeyInfo,
    build: impl Fn(&Sealed<'_>) -> Result<Vec<u8>, rcgen::Error>,
) -> Result<Vec<u8>, CertError> {
    let mut sealed = Sealed { key, tbs: Mutex::new(None), signature: None };
    build(&sealed).map_err(|e| CertError::Build(e.to_string()))?;
    let tbs = sealed.tbs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let tbs = tbs.ok_or_else(|| CertError::Build("nothing was signed".to_owned()))?;
    sealed.signature = Some(signer.sign(&tbs).await?);
    build(&sealed).map_err(|e| CertError::Build(e.to_string()))
}

/// A CA key held in memory: an operator's provided CA, and tests.
#[derive(Debug)]
pub struct LocalSigner {
    key: rcgen::KeyPair,
    public: Vec<u8>,
}

impl LocalSigner {
    pub fn generate() -> Self {
        #[allow(clippy::unwrap_used)] // P-256 generation fails only without a system RNG
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self::from_key(key)
    }

    /// From a PKCS#8 (or SEC1) PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        rcgen::KeyPair::from_pem(pem)
            .map(Self::from_key)
            .map_err(|e| CertError::Signer(format!("not a private key: {e}")))
    }

    fn from_key(key: rcgen::KeyPair) -> Self {
        let public = key.subject_public_key_info();
        Self { key, public }
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
}

impl CaSigner for LocalSigner {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, CertError> {
        self.key.sign(tbs).map_err(|e| CertError::Signer(e.to_string()))
    }
}
