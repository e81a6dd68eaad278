//! Adapters for the AWS services loopmesh reads (ECS task definitions, IAM
//! role tags) and what every adapter shares: SDK configuration and error mapping.

pub mod ecs;
pub mod iam;
pub mod kms;
pub mod route53;
pub mod secrets;
pub mod sqs;
pub mod sts;

use std::time::Duration;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error::{StoreError, StoreErrorKind};

/// How long one TCP connect to an AWS endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt of a call may take, from sending to the last byte of
/// the answer: an endpoint that accepts and never answers fails here.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call may take with all its retries.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The SDK configuration from the standard sources (`AWS_REGION`,
/// `AWS_ENDPOINT_URL*`, credentials chain), with the standard retry mode
/// (throttling and transient errors retried with jittered backoff, 5
/// attempts) and timeouts on every call, so no caller ever waits forever on
/// an endpoint that accepted the connection and went silent.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// Maps any SDK error to a [`StoreError`] that says which call on what
/// (a table, a task definition, a role) failed and whether a retry can help.
pub fn sdk_error<E, R>(operation: &str, target: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown");
            let kind = match code {
                "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "Throttling" => StoreErrorKind::Throttled,
                "InternalServerError" | "ServiceUnavailable" | "InternalFailure" => StoreErrorKind::Unavailable,
                "TransactionConflictException" | "TransactionInProgressException" => StoreErrorKind::Conflict,
                _ => StoreErrorKind::Rejected,
            };
            (kind, format!("{code}: {}", se.err().message().unwrap_or("no message")))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (StoreErrorKind::Unavailable, DisplayErrorContext(&err).to_string())
        }
        _ => (StoreErrorKind::Rejected, DisplayErrorContext(&err).to_string()),
    };
    StoreError::new(kind, format!("{operation} on {target}: {detail}"))
}

/// An HTTPS (and, for a local emulator, HTTP) client with the system's
/// roots, for the calls the SDK does not make: a pre-signed request sent
/// as it was signed.
pub fn https_client<B>() -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    StoreError,
>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| StoreError::new(StoreErrorKind::Rejected, format!("TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}
