//! issuer: a sidecar's identity proof -> its certificate. The work lives in
//! the library; this file wires configuration, clients and the runtime.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use loopmesh_shared::aws::sdk_config;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = issuer::Config::from_env(|k| std::env::var(k).ok())?;
    let service = issuer::service(&config, &sdk_config().await).await?;
    let service = &service;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        issuer::handle(service, event.payload, std::time::SystemTime::now())
            .await
            .map_err(|e| Diagnostic { error_type: "IssueFailed".into(), error_message: e })
    }))
    .await
}
