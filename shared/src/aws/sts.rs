//! AWS STS: sends a sidecar's signed `GetCallerIdentity` request as it was
//! signed and reads who signed it. The issuer never holds the credentials;
//! STS checks the signature.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;

use crate::error::{StoreError, StoreErrorKind};
use crate::mtls::issuer::CallerIdentity;
use crate::mtls::proof::{Proof, ProofRefusal, caller_from_xml};

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

#[derive(Debug, Clone)]
pub struct StsCaller {
    endpoint: String,
    client: Client<Https, Full<Bytes>>,
}

/// STS answers small documents; anything larger is not an answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl StsCaller {
    pub fn new(endpoint: &str) -> Result<Self, StoreError> {
        Ok(Self { endpoint: endpoint.to_owned(), client: super::https_client()? })
    }
}

impl CallerIdentity for StsCaller {
    async fn identify(&self, proof: &Proof) -> Result<Result<(String, String), ProofRefusal>, StoreError> {
        let failed = |m: String| StoreError::new(StoreErrorKind::Unavailable, format!("STS {}: {m}", self.endpoint));
        let mut request = hyper::Request::post(format!("{}/", self.endpoint));
        for (name, value) in &proof.headers {
            // The connection sets these itself.
            if name != "content-length" && name != "connection" {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let request = request
            .header(hyper::header::CONTENT_LENGTH, proof.body.len())
            .body(Full::new(Bytes::from(proof.body.clone())))
            .map_err(|e| StoreError::new(StoreErrorKind::Rejected, format!("proof.headers: {e}")))?;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = self.client.request(request).await.map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, StoreError>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .map_err(|_| failed("no answer in 10 s".to_owned()))??;
        let (status, body) = answer;
        if status.is_success() {
            return caller_from_xml(&body)
                .map(Ok)
                .ok_or_else(|| failed("an answer with no Arn and Account".to_owned()));
        }
        if status.is_client_error() {
            let code = between(&body, "<Code>", "</Code>").unwrap_or("unknown");
            let message = between(&body, "<Message>", "</Message>").unwrap_or("");
            let text =
                crate::excerpt::cut(&format!("{status} {code}: {message}"), crate::excerpt::RULE_CHARS).into_owned();
            return Ok(Err(ProofRefusal::Sts(text)));
        }
        Err(failed(format!("answered {status}")))
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}
