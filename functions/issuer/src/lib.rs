//! issuer: one signed identity proof in, one sidecar certificate out. The
//! rules live in `loopmesh_shared::mtls::issuer`; this crate wires the AWS
//! adapters and turns the event into a request and the outcome into an
//! answer.
//!
//! The answer is `{"issued": {...}}` or `{"refused": "<field>: <rule>"}`; a
//! refusal is final for that request (the sidecar fixes nothing by asking
//! again at once). A failure of AWS or the table is a function error, which
//! the sidecar retries with backoff.

use std::time::SystemTime;

use loopmesh_shared::aws::iam::IamRoleTags;
use loopmesh_shared::aws::kms::KmsSigner;
use loopmesh_shared::aws::secrets::ProvidedCa;
use loopmesh_shared::aws::sts::StsCaller;
use loopmesh_shared::error::StoreError;
use loopmesh_shared::mtls::IssueRequest;
use loopmesh_shared::mtls::cert::LocalSigner;
use loopmesh_shared::mtls::issuer::{CaKeys, IssueError, Issuer, Settings};
use loopmesh_shared::store::dynamo::DynamoCaStore;
use serde_json::{Value, json};

/// The stack's keys: the KMS key for builtin backends, Secrets Manager for provided ones.
#[derive(Debug)]
pub struct StackKeys {
    pub kms: KmsSigner,
    pub provided: ProvidedCa,
}

impl CaKeys for StackKeys {
    type Builtin = KmsSigner;

    fn builtin(&self) -> &KmsSigner {
        &self.kms
    }

    async fn provided(&self, cert_secret: &str, key_secret: &str) -> Result<(String, LocalSigner), StoreError> {
        self.provided.load(cert_secret, key_secret).await
    }
}

pub type Service = Issuer<StsCaller, IamRoleTags, DynamoCaStore, StackKeys>;

/// What the function is configured with (environment variables).
#[derive(Debug, Clone)]
pub struct Config {
    pub table: String,
    pub key_id: String,
    pub accounts: Vec<String>,
    pub region: String,
}

impl Config {
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let need = |k: &str| env(k).filter(|v| !v.is_empty()).ok_or_else(|| format!("{k} is not set"));
        let accounts: Vec<String> =
            need("LOOPMESH_ACCOUNT_IDS")?.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        if let Some(bad) = accounts.iter().find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("LOOPMESH_ACCOUNT_IDS: {bad:?} is not a 12-digit account ID"));
        }
        Ok(Self {
            table: need("LOOPMESH_TABLE_NAME")?,
            key_id: need("LOOPMESH_CA_KEY_ID")?,
            accounts,
            region: env("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
        })
    }
}

/// Builds the service from `sdk` (reads the KMS key's public half once).
pub async fn service(config: &Config, sdk: &aws_config::SdkConfig) -> Result<Service, StoreError> {
    let sts_endpoint = loopmesh_shared::mtls::proof::sts_endpoint(&config.region, |k| std::env::var(k).ok());
    Ok(Issuer {
        caller: StsCaller::new(&sts_endpoint)?,
        tags: IamRoleTags::new(aws_sdk_iam::Client::new(sdk)),
        store: DynamoCaStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table),
        keys: StackKeys {
            kms: KmsSigner::load(aws_sdk_kms::Client::new(sdk), &config.key_id).await?,
            provided: ProvidedCa::new(aws_sdk_secretsmanager::Client::new(sdk)),
        },
        settings: Settings { issuer_id: config.table.clone(), sts_endpoint, accounts: config.accounts.clone() },
    })
}

/// One invocation: the answer, or the failure to report as a function error.
pub async fn handle(service: &Service, payload: Value, now: SystemTime) -> Result<Value, String> {
    let request: IssueRequest = match serde_path_to_error::deserialize(payload) {
        Ok(r) => r,
        Err(e) => return Ok(json!({ "refused": format!("{}: {}", e.path(), e.inner()) })),
    };
    match service.issue(&request, now).await {
        Ok(issued) => Ok(json!({ "issued": issued })),
        Err(IssueError::Refused(why)) => {
            tracing::warn!(mesh = %request.mesh, services = ?request.services, refused = %why, "no certificate");
            Ok(json!({ "refused": why }))
        }
        Err(IssueError::Failed(why)) => {
            tracing::error!(mesh = %request.mesh, error = %why, "issuing failed");
            Err(why)
        }
    }
}
