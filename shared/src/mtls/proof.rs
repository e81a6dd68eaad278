//! The identity proof: a sidecar signs an `sts:GetCallerIdentity` request
//! with its task's credentials and hands it to the issuer, which sends it to
//! STS itself and reads the role from STS's answer. The issuer never sees
//! the credentials, and AWS is what checks the signature. This is how Kong
//! Mesh's `--auth-type=aws` and Vault's AWS auth work.
//!
//! The signed headers bind the proof to one issuer (`x-loopmesh-issuer`)
//! and to exactly one request (`x-loopmesh-request`: a digest of the mesh,
//! the services and the public key), so a proof seen in transit cannot buy a
//! certificate for another key, service or stack; the issuer also refuses a
//! proof it has seen before or one older than [`MAX_AGE`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The only body a proof may carry.
pub const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
pub const ISSUER_HEADER: &str = "x-loopmesh-issuer";
pub const REQUEST_HEADER: &str = "x-loopmesh-request";
/// How old a proof may be (STS itself allows 15 minutes of skew).
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// A proof's headers are a few hundred bytes; anything far larger is refused unread.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// A signed, unsent `GetCallerIdentity` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Why a proof was refused; every case names the part and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofRefusal {
    #[error("proof.body: must be exactly {BODY:?}")]
    Body,
    #[error("proof.headers: {0}")]
    Header(String),
    #[error("proof.headers.x-amz-date: {0}")]
    Date(String),
    #[error("proof: this signed request was already used; sign a new one")]
    Replayed,
    #[error("proof: STS refused the signed request: {0}")]
    Sts(String),
    #[error("proof: the caller is {0}, not an assumed role (a task role)")]
    NotARole(String),
    #[error("proof: the caller's account {found} is not this stack's account {expected}")]
    ForeignAccount { found: String, expected: String },
}

/// The digest `x-loopmesh-request` carries: SHA-256 over the mesh, the
/// services and the public key, hex.
pub fn request_digest(mesh: &str, services: &[String], public_key: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(mesh.as_bytes());
    for s in services {
        ctx.update(b"\n");
        ctx.update(s.as_bytes());
    }
    ctx.update(b"\n");
    ctx.update(public_key);
    hex(ctx.finish().as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The STS endpoint a proof is signed for and sent to: `AWS_ENDPOINT_URL_STS`
/// or `AWS_ENDPOINT_URL` when set (a local emulator), else the regional one.
pub fn sts_endpoint(region: &str, env: impl Fn(&str) -> Option<String>) -> String {
    env("AWS_ENDPOINT_URL_STS")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"))
}

/// The `host` header for an endpoint URL.
pub fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// What the signer needs: the task's credentials as STS will see them.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Who signs a proof, for which issuer and STS endpoint.
#[derive(Debug, Clone)]
pub struct Signer<'a> {
    pub keys: &'a SigningKeys,
    pub region: &'a str,
    /// The STS endpoint URL the issuer sends the proof to.
    pub endpoint: &'a str,
    /// The issuer's ID (the stack's table name).
    pub issuer: &'a str,
}

/// Signs a proof of the request digest (sidecar side).
pub fn sign(signer: &Signer<'_>, digest: &str, now: SystemTime) -> Result<Proof, String> {
    let Signer { keys, region, endpoint, issuer } = *signer;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let credentials = aws_credential_types::Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.session_token.clone(),
        None,
        "loopmesh",
    );
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("signing the identity proof: {e}"))?
        .into();
    let host = host_of(endpoint).to_owned();
    let mut headers = BTreeMap::from([
        ("host".to_owned(), host),
        ("content-type".to_owned(), "application/x-www-form-urlencoded; charset=utf-8".to_owned()),
        (ISSUER_HEADER.to_owned(), issuer.to_owned()),
        (REQUEST_HEADER.to_owned(), digest.to_owned()),
    ]);
    let url = format!("{endpoint}/");
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .map_err(|e| format!("signing the identity proof: {e}"))?;
    let (instructions, _) =
        sign(signable, &params).map_err(|e| format!("signing the identity proof: {e}"))?.into_parts();
    for (name, value) in instructions.headers() {
        headers.insert(name.to_ascii_lowercase(), value.to_owned());
    }
    Ok(Proof { headers, body: BODY.to_owned() })
}

/// What the issuer expects of every proof.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub host: &'a str,
    pub issuer: &'a str,
    pub digest: &'a str,
    pub now: SystemTime,
}

/// Checks a proof's form before it is sent to STS (issuer side). Returns
/// its signature, which identifies it for replay detection.
pub fn check(proof: &Proof, expected: &Expected<'_>) -> Result<String, ProofRefusal> {
    if proof.body != BODY {
        return Err(ProofRefusal::Body);
    }
    let size: usize = proof.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        return Err(ProofRefusal::Header(format!("{size} bytes; at most {MAX_HEADER_BYTES}")));
    }
    let header = |name: &str| {
        proof.headers.get(name).map(String::as_str).ok_or_else(|| ProofRefusal::Header(format!("{name} is required")))
    };
    if header("host")? != expected.host {
        return Err(ProofRefusal::Header(format!(
            "host must be {:?}, the STS endpoint this issuer calls",
            expected.host
        )));
    }
    if header(ISSUER_HEADER)? != expected.issuer {
        return Err(ProofRefusal::Header(format!(
            "{ISSUER_HEADER} must be {:?}: the proof was made for another issuer",
            expected.issuer
        )));
    }
    if header(REQUEST_HEADER)? != expected.digest {
        return Err(ProofRefusal::Header(format!(
            "{REQUEST_HEADER} does not match this request's mesh, services and public key"
        )));
    }
    let authorization = header("authorization")?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| ProofRefusal::Header("authorization must be an AWS4-HMAC-SHA256 signature".to_owned()))?;
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
            .ok_or_else(|| ProofRefusal::Header(format!("authorization has no {}", name.trim_end_matches('='))))
    };
    let signed: Vec<&str> = field("SignedHeaders=")?.split(';').collect();
    for required in ["host", "x-amz-date", ISSUER_HEADER, REQUEST_HEADER] {
        if !signed.contains(&required) {
            return Err(ProofRefusal::Header(format!("authorization must sign {required}")));
        }
    }
    let signature = field("Signature=")?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProofRefusal::Header("authorization's Signature must be 64 hex digits".to_owned()));
    }
    let date = header("x-amz-date")?;
    let at = parse_amz_date(date).ok_or_else(|| ProofRefusal::Date(format!("{date:?} is not YYYYMMDDTHHMMSSZ")))?;
    let age = expected.now.duration_since(at).unwrap_or_else(|e| e.duration());
    if age > MAX_AGE {
        return Err(ProofRefusal::Date(format!(
            "signed {}s away from the issuer's clock; at most {}s",
            age.as_secs(),
            MAX_AGE.as_secs()
        )));
    }
    Ok(signature.to_ascii_lowercase())
}

fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(text, &format).ok()?.assume_utc();
    Some(SystemTime::from(at))
}

/// The account and role name of an STS caller ARN
/// (`arn:aws:sts::<account>:assumed-role/<role>/<session>`).
pub fn assumed_role(arn: &str) -> Result<(&str, &str), ProofRefusal> {
    let not_role = || ProofRefusal::NotARole(crate::excerpt::cut(arn, crate::excerpt::VALUE_CHARS).into_owned());
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("sts"), Some(_region), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_role());
    };
    let mut path = resource.split('/');
    match (path.next(), path.next(), path.next()) {
        (Some("assumed-role"), Some(role), Some(_session)) if !role.is_empty() && !account.is_empty() => {
            Ok((account, role))
        }
        _ => Err(not_role()),
    }
}

/// The `<Arn>` and `<Account>` of a GetCallerIdentity answer.
pub fn caller_from_xml(xml: &str) -> Option<(String, String)> {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = xml.find(&open)? + open.len();
        let end = xml[start..].find(&format!("</{name}>"))? + start;
        Some(xml[start..end].trim().to_owned())
    };
    xml.contains("<GetCallerIdentityResult>").then_some(())?;
    Some((element("Arn")?, element("Account")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SigningKeys {
        SigningKeys {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("tok".into()),
        }
    }

    fn signed(now: SystemTime) -> Proof {
        let keys = keys();
        let signer = Signer {
            keys: &keys,
            region: "us-east-1",
            endpoint: "https://sts.us-east-1.amazonaws.com",
            issuer: "stack-table",
        };
        sign(&signer, "abc", now).unwrap()
    }

    fn expected(now: SystemTime) -> Expected<'static> {
        Expected { host: "sts.us-east-1.amazonaws.com", issuer: "stack-table", digest: "abc", now }
    }

    #[test]
    fn a_fresh_proof_passes_and_is_identified_by_its_signature() {
        let now = SystemTime::now();
        let proof = signed(now);
        let sig = check(&proof, &expected(now)).unwrap();
        assert_eq!(sig.len(), 64);
        assert!(proof.headers["authorization"].contains(&sig));
        assert_eq!(proof.headers["x-amz-security-token"], "tok");
    }

    #[test]
    fn every_bound_part_is_checked() {
        let now = SystemTime::now();
        let proof = signed(now);
        let refused = |p: &Proof, e: Expected<'_>| check(p, &e).unwrap_err().to_string();
        assert!(refused(&proof, Expected { issuer: "other", ..expected(now) }).contains("another issuer"));
        assert!(refused(&proof, Expected { digest: "xyz", ..expected(now) }).contains("public key"));
        assert!(refused(&proof, Expected { host: "evil.example", ..expected(now) }).contains("host must be"));
        let late = Expected { now: now + Duration::from_secs(600), ..expected(now) };
        assert!(refused(&proof, late).contains("x-amz-date"));
        let mut body = proof.clone();
        body.body = "Action=AssumeRole".into();
        assert_eq!(check(&body, &expected(now)), Err(ProofRefusal::Body));
        let mut unsigned = proof.clone();
        let auth = unsigned.headers["authorization"].replace("x-loopmesh-issuer;", "");
        unsigned.headers.insert("authorization".into(), auth);
        assert!(refused(&unsigned, expected(now)).contains("must sign x-loopmesh-issuer"));
        let mut big = proof;
        big.headers.insert("x-pad".into(), "a".repeat(MAX_HEADER_BYTES));
        assert!(refused(&big, expected(now)).contains("at most"));
    }

    #[test]
    fn only_assumed_roles_are_callers() {
        assert_eq!(assumed_role("arn:aws:sts::123456789012:assumed-role/web/task-1").unwrap(), ("123456789012", "web"));
        assert!(assumed_role("arn:aws:sts::123456789012:user/moto").is_err());
        assert!(assumed_role("arn:aws:iam::123456789012:role/web").is_err());
        assert!(assumed_role("nonsense").is_err());
    }

    #[test]
    fn the_sts_answer_is_read() {
        let xml = "<GetCallerIdentityResponse><GetCallerIdentityResult><UserId>X:t</UserId><Account>123</Account><Arn>arn:aws:sts::123:assumed-role/r/t</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(caller_from_xml(xml), Some(("arn:aws:sts::123:assumed-role/r/t".into(), "123".into())));
        assert_eq!(caller_from_xml("<Error><Arn>x</Arn></Error>"), None);
    }

    #[test]
    fn endpoints() {
        assert_eq!(sts_endpoint("eu-west-1", |_| None), "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(
            sts_endpoint("eu-west-1", |k| (k == "AWS_ENDPOINT_URL").then(|| "http://127.0.0.1:5000/".into())),
            "http://127.0.0.1:5000"
        );
        assert_eq!(host_of("http://127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
