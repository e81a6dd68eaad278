//! view-notify: the table's stream (change items only) -> one wake-up per
//! sidecar of each changed mesh. The work lives in the library; this file
//! wires configuration, clients and the Lambda runtime.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use loopmesh_shared::aws::sdk_config;
use loopmesh_shared::store::dynamo::DynamoMeshView;
use serde_json::{Value, json};
use view_notify::{Notifier, changed_meshes};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let table = std::env::var("LOOPMESH_TABLE_NAME").map_err(|_| "LOOPMESH_TABLE_NAME is not set")?;
    let port = match std::env::var("LOOPMESH_WAKE_PORT") {
        Ok(p) => p.parse::<u16>().map_err(|e| format!("LOOPMESH_WAKE_PORT={p:?}: {e} (a UDP port)"))?,
        Err(_) => loopmesh_shared::view::WAKE_PORT,
    };
    let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let notifier = Notifier::new(DynamoMeshView::new(client, table), port).await?;
    let notifier = &notifier;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let changed = changed_meshes(&event.payload)
            .map_err(|e| Diagnostic { error_type: "MalformedEvent".into(), error_message: e })?;
        let sent = notifier.notify(&changed).await.map_err(|e| {
            tracing::error!(error = %e, "could not read the mesh's sidecars");
            Diagnostic { error_type: "ReadFailed".into(), error_message: e.to_string() }
        })?;
        tracing::info!(meshes = sent.meshes, wakeups = sent.wakeups, failed = sent.failed, "woke sidecars");
        Ok::<Value, Diagnostic>(json!({"meshes": sent.meshes, "wakeups": sent.wakeups, "failed": sent.failed}))
    }))
    .await
}
