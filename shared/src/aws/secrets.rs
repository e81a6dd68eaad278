//! AWS Secrets Manager: an operator's CA for a `provided` backend, its
//! certificate and its private key as PEM secrets.

use crate::error::{StoreError, StoreErrorKind};
use crate::mtls::cert::LocalSigner;
use crate::mtls::pem_certificates;

#[derive(Debug, Clone)]
pub struct ProvidedCa {
    client: aws_sdk_secretsmanager::Client,
}

impl ProvidedCa {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }

    async fn secret(&self, id: &str) -> Result<String, StoreError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| super::sdk_error("GetSecretValue", id, e))?;
        out.secret_string().map(str::to_owned).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("secret {id}: no SecretString (the PEM must be stored as text)"),
            )
        })
    }

    /// The CA certificate PEM and its key; both checked to be what they claim.
    pub async fn load(&self, cert_secret: &str, key_secret: &str) -> Result<(String, LocalSigner), StoreError> {
        let bad = |m: String| StoreError::new(StoreErrorKind::Rejected, m);
        let cert = self.secret(cert_secret).await?;
        let der = pem_certificates(&cert).map_err(|e| bad(format!("secret {cert_secret}: {e}")))?;
        if der.len() != 1 {
            return Err(bad(format!(
                "secret {cert_secret}: holds {} certificates; one CA certificate is required",
                der.len()
            )));
        }
        let key = LocalSigner::from_pem(&self.secret(key_secret).await?)
            .map_err(|e| bad(format!("secret {key_secret}: {e}")))?;
        Ok((cert, key))
    }
}
