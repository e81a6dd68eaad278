//! The sidecar's certificate: asked of the issuer function with a signed
//! identity proof (see `loopmesh_shared::mtls::proof`), renewed at two
//! thirds of its life or when the mesh enables another backend, and
//! installed with the mesh's roots into [`Mtls`] without touching open
//! connections (each keeps the configuration it started with).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use loopmesh_shared::model::{MeshTrafficPermission, MtlsMode};
use loopmesh_shared::mtls::proof::SigningKeys;
use loopmesh_shared::mtls::{IssueRequest, Issued, inspect, pem_certificates, renew_at};
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::listeners::Listeners;
use crate::tls::{Identity, Mtls, MtlsStats};

/// How the sidecar reaches the issuer.
#[derive(Debug, Clone)]
pub struct IssuerClient {
    pub lambda: aws_sdk_lambda::Client,
    /// The issuer function's name or ARN.
    pub function: String,
    pub credentials: aws_credential_types::provider::SharedCredentialsProvider,
    pub region: String,
    pub sts_endpoint: String,
    /// What proofs are bound to: the stack's table name.
    pub issuer_id: String,
}

/// Why no certificate came back.
#[derive(Debug)]
pub enum IssueFailure {
    /// The issuer refused (the role's tags, the mesh): asking again soon will not help.
    Refused(String),
    Failed(String),
}

impl IssuerClient {
    pub async fn issue(&self, mesh: &str, services: &[String], public_key: &[u8]) -> Result<Issued, IssueFailure> {
        let failed = |m: String| IssueFailure::Failed(m);
        let creds =
            self.credentials.provide_credentials().await.map_err(|e| failed(format!("task credentials: {e}")))?;
        let keys = SigningKeys {
            access_key_id: creds.access_key_id().to_owned(),
            secret_access_key: creds.secret_access_key().to_owned(),
            session_token: creds.session_token().map(str::to_owned),
        };
        let signer = loopmesh_shared::mtls::proof::Signer {
            keys: &keys,
            region: &self.region,
            endpoint: &self.sts_endpoint,
            issuer: &self.issuer_id,
        };
        let request = IssueRequest::signed(mesh, services, public_key, &signer, SystemTime::now()).map_err(failed)?;
        let payload = serde_json::to_vec(&request).map_err(|e| failed(e.to_string()))?;
        let out = self
            .lambda
            .invoke()
            .function_name(&self.function)
            .payload(aws_sdk_lambda::primitives::Blob::new(payload))
            .send()
            .await
            .map_err(|e| failed(format!("invoke {}: {}", self.function, aws_smithy_error(&e))))?;
        let body = out.payload().map(|b| b.as_ref().to_vec()).unwrap_or_default();
        if let Some(kind) = out.function_error() {
            return Err(failed(format!("the issuer failed ({kind}): {}", String::from_utf8_lossy(&body))));
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| failed(format!("the issuer's answer: {e}")))?;
        if let Some(why) = answer.get("refused").and_then(|r| r.as_str()) {
            return Err(IssueFailure::Refused(why.to_owned()));
        }
        serde_json::from_value(answer.get("issued").cloned().unwrap_or_default())
            .map_err(|e| failed(format!("the issuer's answer: {e}")))
    }
}

fn aws_smithy_error(e: &impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A certificate held, with what it was issued for.
struct Held {
    identity: Identity,
    backend: String,
    /// The roots the issuer named, by backend (a provided backend's only source).
    trust_bundle: std::collections::BTreeMap<String, String>,
    renew_at: SystemTime,
    not_after: SystemTime,
}

/// How long a sidecar waits for a new backend's root to reach the view
/// before it renews to that backend anyway.
const ROTATION_WAIT: Duration = Duration::from_secs(120);
/// Over how long the sidecars of a mesh spread the renewal that makes a
/// new backend's root.
const PREPARE_SPREAD: Duration = Duration::from_secs(20);

/// What was last installed: mesh, mode, trusted roots (PEM), the key held
/// and the permissions.
type Installed = (String, MtlsMode, Vec<String>, Option<Vec<u8>>, Vec<MeshTrafficPermission>);

/// Keeps `mtls` in line with the view's mesh settings until `stop`: gets
/// and renews the certificate, installs it with the roots.
pub async fn keep(
    client: Option<IssuerClient>,
    services: Vec<String>,
    listeners: Arc<Listeners>,
    mtls: Arc<Mtls>,
    stop: CancellationToken,
) {
    let mut held: Option<Held> = None;
    let mut installed: Option<Installed> = None;
    let mut next_try = tokio::time::Instant::now();
    let mut backoff = Duration::from_secs(1);
    // When the enabled backend was first seen to differ from the held
    // certificate's, and when this sidecar renews to have missing roots made.
    let mut switch_seen: Option<tokio::time::Instant> = None;
    let mut prepare_at: Option<tokio::time::Instant> = None;
    // A renewal made to have roots made is not repeated before ROTATION_WAIT:
    // a view that lags behind the table must not cost an issuance per pause.
    let mut prepared: Option<tokio::time::Instant> = None;
    loop {
        let view = listeners.view();
        match &view.mtls {
            None => {
                if installed.take().is_some() {
                    tracing::info!("the mesh no longer enables mTLS");
                }
                mtls.disable();
            }
            Some(want) => {
                let now = tokio::time::Instant::now();
                let switching = held.as_ref().is_some_and(|h| h.backend != want.backend);
                let since = *switch_seen.get_or_insert(now);
                if !switching {
                    switch_seen = None;
                }
                // Renew to a new backend once its root is in the view (peers
                // learn it the same way), or after ROTATION_WAIT regardless.
                let enabled_builtin = want.backends.iter().any(|b| b.name == want.backend && b.builtin);
                let switch_ready = !enabled_builtin
                    || want.roots.contains_key(&want.backend)
                    || now.duration_since(since) >= ROTATION_WAIT;
                // A listed builtin backend has no root yet: after a random
                // pause (the first sidecar's renewal makes it for everyone).
                let recently = prepared.is_some_and(|p| now.duration_since(p) < ROTATION_WAIT);
                if held.is_some() && want.builtin_roots_missing() && !recently {
                    prepare_at.get_or_insert_with(|| now + PREPARE_SPREAD.mul_f64(fastrand::f64()));
                } else {
                    prepare_at = None;
                }
                let due = held.as_ref().is_none_or(|h| SystemTime::now() >= h.renew_at)
                    || (switching && switch_ready)
                    || prepare_at.is_some_and(|at| now >= at);
                if due && tokio::time::Instant::now() >= next_try && !services.is_empty() {
                    match &client {
                        None => {
                            tracing::error!(
                                "the mesh enables mTLS but no --issuer is set: mesh connections are closed"
                            );
                            next_try = tokio::time::Instant::now() + Duration::from_secs(3600);
                        }
                        Some(c) => match obtain(c, &want.mesh, &services).await {
                            Ok(h) => {
                                MtlsStats::count(&mtls.stats.issued);
                                if prepare_at.take().is_some() {
                                    prepared = Some(tokio::time::Instant::now());
                                }
                                let not_after = h.not_after.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                                mtls.stats.not_after.store(not_after.as_secs(), std::sync::atomic::Ordering::Relaxed);
                                tracing::info!(backend = %h.backend, services = ?services, not_after_s = not_after.as_secs(), "certificate issued");
                                held = Some(h);
                                backoff = Duration::from_secs(1);
                            }
                            Err(IssueFailure::Refused(why)) => {
                                MtlsStats::count(&mtls.stats.issue_failures);
                                tracing::error!(refused = %why, "the issuer refused this task a certificate");
                                next_try = tokio::time::Instant::now() + Duration::from_secs(60);
                            }
                            Err(IssueFailure::Failed(why)) => {
                                MtlsStats::count(&mtls.stats.issue_failures);
                                tracing::warn!(error = %why, retry_s = backoff.as_secs(), "no certificate yet");
                                next_try = tokio::time::Instant::now() + backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                                backoff = (backoff * 2).min(Duration::from_secs(60));
                            }
                        },
                    }
                }
                // Every listed backend's root: from the table, else as the
                // issuer named it. A backend the Mesh no longer lists is not trusted.
                let trust: Vec<String> = want
                    .backends
                    .iter()
                    .filter_map(|b| {
                        want.roots
                            .get(&b.name)
                            .or_else(|| held.as_ref().and_then(|h| h.trust_bundle.get(&b.name)))
                            .cloned()
                    })
                    .collect();
                let wanted = (
                    want.mesh.clone(),
                    want.mode,
                    trust,
                    held.as_ref().map(|h| h.identity.key_der.clone()),
                    want.permissions.clone(),
                );
                if installed.as_ref() != Some(&wanted) {
                    let roots: Vec<Vec<u8>> =
                        wanted.2.iter().filter_map(|p| pem_certificates(p).ok()).flatten().collect();
                    let identity = held.as_ref().map(|h| h.identity.clone());
                    match mtls.install(&want.mesh, want.mode, &roots, identity, want.permissions.clone()) {
                        Ok(()) => {
                            tracing::info!(
                                mesh = %want.mesh,
                                mode = ?want.mode,
                                roots = roots.len(),
                                certificate = held.is_some(),
                                permissions = want.permissions.len(),
                                "mTLS settings installed"
                            );
                            installed = Some(wanted);
                        }
                        Err(e) => tracing::error!(error = %e, "mTLS settings not installed; the previous ones stay"),
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A new key, and a certificate for it.
async fn obtain(client: &IssuerClient, mesh: &str, services: &[String]) -> Result<Held, IssueFailure> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IssueFailure::Failed(format!("a new key: {e}")))?;
    let issued = client.issue(mesh, services, &rcgen::PublicKeyData::subject_public_key_info(&key)).await?;
    let bad = |m: String| IssueFailure::Failed(format!("the issued certificate: {m}"));
    let mut chain = pem_certificates(&issued.certificate).map_err(bad)?;
    let info = inspect(chain.first().ok_or_else(|| bad("empty".into()))?).map_err(bad)?;
    chain.extend(pem_certificates(&issued.ca).map_err(bad)?);
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    Ok(Held {
        identity: Identity { chain, key_der: key.serialize_der() },
        backend: issued.backend,
        trust_bundle: issued.trust_bundle,
        renew_at: renew_at(info.not_before + loopmesh_shared::mtls::cert::BACKDATE, info.not_after),
        not_after: info.not_after,
    })
}
