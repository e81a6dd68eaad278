//! The issuer: what the issuer function does with one [`IssueRequest`],
//! over ports for STS, role tags, the table and the CA keys.
//!
//! A certificate is issued only when every one of these holds: the request
//! is well formed; its proof is fresh, bound to this request and this
//! issuer, and never used before; STS says the proof was signed by an
//! assumed role of this account; that role's `kuma.io/*` tags allow the
//! mesh and every service asked for (the rule registration applies); and
//! the mesh enables mTLS. The root of every backend is made or read on the
//! way, so the answer carries the whole trust bundle.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::cert::{self, CaSigner, CertError, LeafRequest, LocalSigner};
use super::proof::{self, Proof, ProofRefusal};
use super::{IssueRequest, Issued, MAX_SERVICES, inspect, pem_certificates, to_pem};
use crate::error::StoreError;
use crate::identity;
use crate::model::{CaKind, Mesh};
use crate::registration::RoleTags;

/// Sends a proof to STS; answers the caller's ARN and account.
pub trait CallerIdentity: Send + Sync {
    fn identify(
        &self,
        proof: &Proof,
    ) -> impl Future<Output = Result<Result<(String, String), ProofRefusal>, StoreError>> + Send;
}

/// A backend's root as the table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoot {
    pub backend: String,
    /// PEM.
    pub certificate: String,
}

/// The issuer's part of the table.
pub trait CaStore: Send + Sync {
    /// The mesh's Mesh resource, if one was applied.
    fn mesh(&self, mesh: &str) -> impl Future<Output = Result<Option<Mesh>, StoreError>> + Send;
    /// The builtin roots made so far for the mesh.
    fn roots(&self, mesh: &str) -> impl Future<Output = Result<Vec<StoredRoot>, StoreError>> + Send;
    /// Stores a new root unless the backend has one; answers the one kept
    /// (another issuer may have won the race) and tells sidecars.
    fn add_root(
        &self,
        mesh: &str,
        root: &StoredRoot,
        now: SystemTime,
    ) -> impl Future<Output = Result<StoredRoot, StoreError>> + Send;
    /// Records a proof's first use; `false` when it was used before.
    fn first_use(&self, signature: &str, until: SystemTime) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The CA keys: the stack's KMS key for builtin backends, an operator's PEM
/// pair in Secrets Manager for provided ones.
pub trait CaKeys: Send + Sync {
    type Builtin: CaSigner;
    fn builtin(&self) -> &Self::Builtin;
    /// The provided CA: its certificate PEM and its key.
    fn provided(
        &self,
        cert_secret: &str,
        key_secret: &str,
    ) -> impl Future<Output = Result<(String, LocalSigner), StoreError>> + Send;
}

/// What the issuer is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The value sidecars sign into `x-loopmesh-issuer` (the stack's table name).
    pub issuer_id: String,
    /// The STS endpoint proofs must be signed for.
    pub sts_endpoint: String,
    /// The accounts whose roles may get certificates (this stack's).
    pub accounts: Vec<String>,
}

/// Why no certificate was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The caller's fault (bad request, bad proof, not allowed): retrying
    /// the same request cannot help.
    #[error("refused: {0}")]
    Refused(String),
    /// AWS or the table failed: try again.
    #[error("failed: {0}")]
    Failed(String),
}

impl IssueError {
    fn refused(e: impl ToString) -> Self {
        Self::Refused(e.to_string())
    }
}

impl From<StoreError> for IssueError {
    fn from(e: StoreError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<CertError> for IssueError {
    fn from(e: CertError) -> Self {
        match e {
            CertError::PublicKey(_) => Self::Refused(e.to_string()),
            _ => Self::Failed(e.to_string()),
        }
    }
}

/// The largest public key accepted (a P-256 SubjectPublicKeyInfo is 91 bytes).
pub const MAX_PUBLIC_KEY_BYTES: usize = 1024;

#[derive(Debug)]
pub struct Issuer<C, T, S, K> {
    pub caller: C,
    pub tags: T,
    pub store: S,
    pub keys: K,
    pub settings: Settings,
}

impl<C: CallerIdentity, T: RoleTags, S: CaStore, K: CaKeys> Issuer<C, T, S, K> {
    pub async fn issue(&self, request: &IssueRequest, now: SystemTime) -> Result<Issued, IssueError> {
        let public_key = validate(request)?;
        let digest = proof::request_digest(&request.mesh, &request.services, &public_key);
        let expected = proof::Expected {
            host: proof::host_of(&self.settings.sts_endpoint),
            issuer: &self.settings.issuer_id,
            digest: &digest,
            now,
        };
        let signature = proof::check(&request.proof, &expected).map_err(IssueError::refused)?;
        if !self.store.first_use(&signature, now + 2 * proof::MAX_AGE).await? {
            return Err(IssueError::refused(ProofRefusal::Replayed));
        }
        let (arn, account) = self.caller.identify(&request.proof).await?.map_err(IssueError::refused)?;
        let (arn_account, role) = proof::assumed_role(&arn).map_err(IssueError::refused)?;
        if arn_account != account || !self.settings.accounts.contains(&account) {
            let expected = self.settings.accounts.join(" or ");
            return Err(IssueError::refused(ProofRefusal::ForeignAccount { found: account.clone(), expected }));
        }
        let role_arn = format!("arn:aws:iam::{account}:role/{role}");
        let tags = self
            .tags
            .tags(&role_arn)
            .await?
            .ok_or_else(|| IssueError::Refused(format!("the task role {role_arn} does not exist")))?;
        identity::check_services(&tags, &request.mesh, request.services.iter().map(String::as_str))
            .map_err(|r| IssueError::Refused(format!("role {role}: {r}")))?;
        let mesh = self.store.mesh(&request.mesh).await?;
        let mtls = mesh.and_then(|m| m.mtls).ok_or_else(|| {
            IssueError::Refused(format!(
                "mesh {:?} does not enable mTLS (no Mesh with mtls.enabledBackend)",
                request.mesh
            ))
        })?;
        let roots = self.roots(&request.mesh, &mtls, now).await?;
        let enabled = mtls.enabled();
        let ca_pem = roots.get(&enabled.name).cloned().unwrap_or_default();
        let ca_der = pem_certificates(&ca_pem).map_err(IssueError::Failed)?.into_iter().next().unwrap_or_default();
        let leaf_request = LeafRequest {
            mesh: &request.mesh,
            services: &request.services,
            public_key: &public_key,
            lifetime: enabled.cert_lifetime,
        };
        let leaf = match &enabled.kind {
            CaKind::Builtin => cert::leaf(self.keys.builtin(), &ca_der, &leaf_request, now).await?,
            CaKind::Provided { cert_secret, key_secret } => {
                let (_, key) = self.keys.provided(cert_secret, key_secret).await?;
                cert::leaf(&key, &ca_der, &leaf_request, now).await?
            }
        };
        let not_after = inspect(&leaf).map_err(IssueError::Failed)?.not_after;
        tracing::info!(mesh = %request.mesh, services = ?request.services, role, backend = %enabled.name, "certificate issued");
        Ok(Issued {
            certificate: to_pem(&leaf),
            ca: ca_pem,
            trust_bundle: roots,
            backend: enabled.name.clone(),
            not_after: not_after.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs(),
        })
    }

    /// Every backend's root, PEM by backend name: builtin roots from the
    /// table (made with the KMS key the first time), provided ones from
    /// their secrets.
    async fn roots(
        &self,
        mesh: &str,
        mtls: &crate::model::Mtls,
        now: SystemTime,
    ) -> Result<BTreeMap<String, String>, IssueError> {
        let stored = self.store.roots(mesh).await?;
        let mut roots = BTreeMap::new();
        for backend in &mtls.backends {
            let pem = match &backend.kind {
                CaKind::Builtin => match stored.iter().find(|r| r.backend == backend.name) {
                    Some(r) => r.certificate.clone(),
                    None => {
                        let der =
                            cert::root(self.keys.builtin(), mesh, &backend.name, now, backend.ca_lifetime).await?;
                        let root = StoredRoot { backend: backend.name.clone(), certificate: to_pem(&der) };
                        tracing::info!(mesh, backend = %backend.name, "root certificate made");
                        self.store.add_root(mesh, &root, now).await?.certificate
                    }
                },
                CaKind::Provided { cert_secret, key_secret } => {
                    let (pem, _) = self.keys.provided(cert_secret, key_secret).await?;
                    pem
                }
            };
            roots.insert(backend.name.clone(), pem);
        }
        Ok(roots)
    }
}

/// The request's own rules (every broken one named); answers the public key's DER.
fn validate(request: &IssueRequest) -> Result<Vec<u8>, IssueError> {
    let mut errors = crate::model::ValidationErrors::default();
    crate::model::validate_resource_name(&mut errors, "mesh", &request.mesh);
    if request.services.is_empty() || request.services.len() > MAX_SERVICES {
        errors.push("services", format!("1 to {MAX_SERVICES} services, got {}", request.services.len()));
    }
    for (i, s) in request.services.iter().take(MAX_SERVICES).enumerate() {
        crate::model::validate_tag_value(&mut errors, &format!("services[{i}]"), s);
    }
    let key = if request.public_key.len() > MAX_PUBLIC_KEY_BYTES * 2 {
        errors.push("public_key", format!("at most {MAX_PUBLIC_KEY_BYTES} bytes"));
        Vec::new()
    } else {
        aws_smithy_types::base64::decode(&request.public_key).unwrap_or_else(|_| {
            errors.push("public_key", "not base64");
            Vec::new()
        })
    };
    errors.into_result(key).map_err(IssueError::refused)
}
