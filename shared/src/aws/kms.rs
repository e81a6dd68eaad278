//! AWS KMS: the builtin CA's key. It is an asymmetric ECC_NIST_P256 key that
//! never leaves KMS; certificates are signed with `kms:Sign` (ECDSA_SHA_256).

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};

use crate::error::StoreError;
use crate::mtls::cert::{CaSigner, CertError};

/// The largest message `kms:Sign` takes as is.
const RAW_LIMIT: usize = 4096;

#[derive(Debug, Clone)]
pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    key_id: String,
    public_key: Vec<u8>,
}

impl KmsSigner {
    /// Reads the key's public half once (`kms:GetPublicKey`) and checks the
    /// key can sign with ECDSA P-256.
    pub async fn load(client: aws_sdk_kms::Client, key_id: &str) -> Result<Self, StoreError> {
        let out = client
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| super::sdk_error("GetPublicKey", key_id, e))?;
        if !out.signing_algorithms().contains(&SigningAlgorithmSpec::EcdsaSha256) {
            return Err(StoreError::new(
                crate::error::StoreErrorKind::Rejected,
                format!("KMS key {key_id}: not an ECC_NIST_P256 signing key (it cannot sign with ECDSA_SHA_256)"),
            ));
        }
        let public_key = out.public_key().map(|b| b.as_ref().to_vec()).unwrap_or_default();
        Ok(Self { client, key_id: key_id.to_owned(), public_key })
    }
}

impl CaSigner for KmsSigner {
    fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, CertError> {
        // KMS takes the message itself up to 4 KiB (a certificate's bytes
        // are well under), and its SHA-256 digest beyond.
        let (message, kind) = if tbs.len() <= RAW_LIMIT {
            (tbs.to_vec(), MessageType::Raw)
        } else {
            (aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, tbs).as_ref().to_vec(), MessageType::Digest)
        };
        let out = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(kind)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| CertError::Signer(super::sdk_error("Sign", &self.key_id, e).to_string()))?;
        out.signature()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| CertError::Signer(format!("KMS key {}: Sign answered no signature", self.key_id)))
    }
}
