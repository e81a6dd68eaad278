//! mTLS between sidecars: identities, certificates and how a sidecar
//! proves who it is to get one. See `docs/mtls.md`.
//!
//! - [`cert`]: roots and sidecar certificates, signed by a [`cert::CaSigner`]
//!   (AWS KMS, or an operator's CA in memory).
//! - [`proof`]: the signed `sts:GetCallerIdentity` request a sidecar sends
//!   and the checks the issuer makes before sending it to STS.
//!
//! An identity is Kuma's SPIFFE form, `spiffe://<mesh>/<service>`.

pub mod cert;
pub mod issuer;
pub mod permission;
pub mod proof;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Kuma's SPIFFE ID of a service of a mesh.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// The mesh and service of a SPIFFE ID in Kuma's form.
pub fn parse_spiffe_id(uri: &str) -> Option<(&str, &str)> {
    let (mesh, service) = uri.strip_prefix("spiffe://")?.split_once('/')?;
    (!mesh.is_empty() && !service.is_empty() && !service.contains('/')).then_some((mesh, service))
}

/// What a sidecar asks the issuer for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRequest {
    pub mesh: String,
    /// The services of the Dataplane's inbounds (`kuma.io/service`).
    pub services: Vec<String>,
    /// The sidecar's public key, SubjectPublicKeyInfo DER, base64.
    pub public_key: String,
    pub proof: proof::Proof,
}

impl IssueRequest {
    /// A request with its proof signed by `signer` (the task's credentials,
    /// bound to the issuer and the STS endpoint).
    pub fn signed(
        mesh: &str,
        services: &[String],
        public_key: &[u8],
        signer: &proof::Signer<'_>,
        now: SystemTime,
    ) -> Result<Self, String> {
        let digest = proof::request_digest(mesh, services, public_key);
        let proof = proof::sign(signer, &digest, now)?;
        Ok(Self {
            mesh: mesh.to_owned(),
            services: services.to_vec(),
            public_key: aws_smithy_types::base64::encode(public_key),
            proof,
        })
    }
}

/// What the issuer answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The certificate, PEM.
    pub certificate: String,
    /// The root that signed it, PEM.
    pub ca: String,
    /// Every root of the mesh's backends, PEM by backend: what peers'
    /// certificates must chain to.
    pub trust_bundle: std::collections::BTreeMap<String, String>,
    /// The backend that signed it.
    pub backend: String,
    /// Seconds since the epoch.
    pub not_after: u64,
}

/// The most services one certificate names (a Dataplane's inbound limit).
pub const MAX_SERVICES: usize = crate::model::MAX_INBOUNDS;

/// When a certificate valid from `issued` to `not_after` is renewed: at two
/// thirds of its life, as Kuma does, so a failing issuer leaves a third of
/// the lifetime to recover in.
pub fn renew_at(issued: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(issued).unwrap_or(Duration::ZERO);
    issued + life.mul_f64(2.0 / 3.0)
}

/// What a certificate says of itself: its SPIFFE identities and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identities: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

pub fn inspect(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let identities = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let at = |t: &ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0));
    Ok(CertInfo { identities, not_before: at(&cert.validity().not_before), not_after: at(&cert.validity().not_after) })
}

/// DER of every certificate in a PEM text.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()).map_err(|e| format!("not PEM certificates: {e:?}")))
        .collect()
}

/// A certificate as PEM.
pub fn to_pem(der: &[u8]) -> String {
    let b64 = aws_smithy_types::base64::encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests;
