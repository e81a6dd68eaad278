//! A MeshExternalService's `spec.tls`: the sidecar originates TLS to the
//! external endpoint, with Kuma's verification modes. Certificates and keys
//! are taken inline (Kuma's `inlineString`, `inline` base64, or `type:
//! InsecureInline`); a `Secret` reference is refused until loopmesh reads
//! secrets for sidecars.

use serde::{Deserialize, Serialize};

use super::ValidationErrors;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    pub mode: VerificationMode,
    /// Overrides the SNI (default: the endpoint's hostname; none for an IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Names the server's certificate must carry (default: the server name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SanMatch>,
    /// The CA to verify with, PEM (default: the Mozilla roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// A client certificate and key, PEM, for endpoints that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Kuma's `verification.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerificationMode {
    /// The chain to a trusted CA, and the name.
    #[default]
    Secured,
    /// The chain only.
    SkipSAN,
    /// The name only.
    SkipCA,
    /// Neither: encryption without authentication.
    SkipAll,
}

impl VerificationMode {
    pub fn checks_ca(self) -> bool {
        matches!(self, Self::Secured | Self::SkipSAN)
    }

    pub fn checks_name(self) -> bool {
        matches!(self, Self::Secured | Self::SkipCA)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanMatch {
    pub prefix: bool,
    pub value: String,
}

impl SanMatch {
    pub fn matches(&self, name: &str) -> bool {
        if self.prefix { name.starts_with(&self.value) } else { name == self.value }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    version: Option<RawVersion>,
    #[serde(default)]
    allow_renegotiation: Option<bool>,
    #[serde(default)]
    verification: Option<RawVerification>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawVerification {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    subject_alt_names: Option<Vec<RawSan>>,
    #[serde(default)]
    ca_cert: Option<RawSource>,
    #[serde(default)]
    client_cert: Option<RawSource>,
    #[serde(default)]
    client_key: Option<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSan {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSource {
    #[serde(default)]
    inline_string: Option<String>,
    #[serde(default)]
    inline: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    insecure_inline: Option<RawInline>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_ref: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    file: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    env_var: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
struct RawInline {
    #[serde(default)]
    value: String,
}

fn version(errors: &mut ValidationErrors, path: &str, v: Option<String>) -> Option<TlsVersion> {
    match v.as_deref() {
        None | Some("TLSAuto") => None,
        Some("TLS12") => Some(TlsVersion::Tls12),
        Some("TLS13") => Some(TlsVersion::Tls13),
        Some(old @ ("TLS10" | "TLS11")) => {
            errors.push(path, format!("{old}: loopmesh speaks TLS 1.2 and 1.3 only (rustls)"));
            None
        }
        Some(other) => {
            errors.push(path, format!("{other:?} is not one of TLSAuto, TLS12, TLS13"));
            None
        }
    }
}

/// PEM text from one of Kuma's inline forms.
fn source(errors: &mut ValidationErrors, path: &str, raw: Option<RawSource>, what: &str) -> Option<String> {
    let raw = raw?;
    if raw.secret.is_some() || raw.secret_ref.is_some() || raw.kind.as_deref() == Some("Secret") {
        errors.push(
            path,
            "a Secret reference is not supported yet; give the PEM inline (inlineString, or type: InsecureInline)",
        );
        return None;
    }
    if raw.file.is_some() || raw.env_var.is_some() {
        errors
            .push(path, "file and envVar are not supported on a MeshExternalService (as in Kuma); give the PEM inline");
        return None;
    }
    let text = match (raw.inline_string, raw.inline, raw.insecure_inline) {
        (Some(s), None, None) => s,
        (None, Some(b64), None) => {
            match aws_smithy_types::base64::decode(b64.trim()).ok().and_then(|b| String::from_utf8(b).ok()) {
                Some(s) => s,
                None => {
                    errors.push(format!("{path}.inline"), "not base64 of a PEM text");
                    return None;
                }
            }
        }
        (None, None, Some(i)) => i.value,
        (None, None, None) => {
            errors.push(path, "required: inlineString, inline or insecureInline.value");
            return None;
        }
        _ => {
            errors.push(path, "exactly one of inlineString, inline, insecureInline");
            return None;
        }
    };
    // A key may be PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1/PKCS#1 (`BEGIN EC PRIVATE KEY`, ...).
    let is_pem =
        text.contains(&format!("-----BEGIN {what}")) || (what == "PRIVATE KEY" && text.contains("PRIVATE KEY-----"));
    if !is_pem {
        errors.push(path, format!("not a PEM {}", what.to_ascii_lowercase()));
        return None;
    }
    Some(text)
}

/// `None` when TLS is not enabled (Kuma's default).
pub(super) fn from_raw(errors: &mut ValidationErrors, raw: RawTls) -> Option<ExternalTls> {
    if raw.allow_renegotiation == Some(true) {
        errors.push("spec.tls.allowRenegotiation", "rustls never renegotiates; remove it or set false");
    }
    let (min_version, max_version) = match raw.version {
        Some(v) => (version(errors, "spec.tls.version.min", v.min), version(errors, "spec.tls.version.max", v.max)),
        None => (None, None),
    };
    if let (Some(TlsVersion::Tls13), Some(TlsVersion::Tls12)) = (min_version, max_version) {
        errors.push("spec.tls.version", "min is above max");
    }
    let v = raw.verification;
    let mode = match v.as_ref().and_then(|v| v.mode.as_deref()) {
        None | Some("Secured") => VerificationMode::Secured,
        Some("SkipSAN") => VerificationMode::SkipSAN,
        Some("SkipCA") => VerificationMode::SkipCA,
        Some("SkipAll") => VerificationMode::SkipAll,
        Some(other) => {
            errors.push(
                "spec.tls.verification.mode",
                format!("{other:?} is not one of Secured, SkipSAN, SkipCA, SkipAll"),
            );
            VerificationMode::Secured
        }
    };
    let (server_name, sans, ca, cert, key) = match v {
        None => (None, Vec::new(), None, None, None),
        Some(v) => {
            let mut sans = Vec::new();
            for (i, s) in v.subject_alt_names.unwrap_or_default().into_iter().enumerate() {
                let prefix = match s.kind.as_deref() {
                    None | Some("Exact") => false,
                    Some("Prefix") => true,
                    Some(other) => {
                        errors.push(
                            format!("spec.tls.verification.subjectAltNames[{i}].type"),
                            format!("{other:?} is not Exact or Prefix"),
                        );
                        false
                    }
                };
                if s.value.is_empty() {
                    errors.push(format!("spec.tls.verification.subjectAltNames[{i}].value"), "required");
                }
                sans.push(SanMatch { prefix, value: s.value });
            }
            (
                v.server_name.filter(|s| !s.is_empty()),
                sans,
                source(errors, "spec.tls.verification.caCert", v.ca_cert, "CERTIFICATE"),
                source(errors, "spec.tls.verification.clientCert", v.client_cert, "CERTIFICATE"),
                source(errors, "spec.tls.verification.clientKey", v.client_key, "PRIVATE KEY"),
            )
        }
    };
    if cert.is_some() != key.is_some() {
        errors.push("spec.tls.verification", "clientCert and clientKey go together");
    }
    if raw.enabled != Some(true) {
        return None;
    }
    Some(ExternalTls {
        min_version,
        max_version,
        mode,
        server_name,
        subject_alt_names: sans,
        ca_cert: ca,
        client_cert: cert,
        client_key: key,
    })
}
