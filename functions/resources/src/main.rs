//! resources: the Lambda behind `Custom::LoopmeshResource`. The protocol
//! lives in the library; this file wires configuration, clients and the
//! runtime, and makes sure every request is answered.

use lambda_runtime::{LambdaEvent, service_fn};
use loopmesh_shared::aws::sdk_config;
use loopmesh_shared::config::Settings;
use loopmesh_shared::store::dynamo::{DynamoResources, DynamoVipLedger};
use resources::{Context, handle, respond};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env().inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let ctx = Context {
        store: DynamoResources::new(dynamo.clone(), &settings.table_name),
        ledger: DynamoVipLedger::new(dynamo, settings.table_name.clone()),
        pools: settings.pools,
    };
    let ctx = &ctx;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let (url, response) = handle(ctx, &event.payload).await;
        let delivered = match &url {
            Some(url) => respond(url, &response).await,
            None => Err("the request has no ResponseURL".to_owned()),
        };
        if let Err(e) = &delivered {
            tracing::error!(error = %e, "the answer did not reach CloudFormation");
        }
        Ok::<_, lambda_runtime::Error>(
            json!({"status": response.status, "reason": response.reason, "delivered": delivered.is_ok()}),
        )
    }))
    .await
}
