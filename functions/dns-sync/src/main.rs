//! dns-sync: the desired records in the table, applied to Route53 in as few
//! calls as its limits allow and never faster than the configured rate. The
//! run lives in `loopmesh_shared::dns::sync`; this file wires configuration,
//! clients and the Lambda runtime, reads what started an invocation
//! (`trigger`) and prints the run as metrics (`emf`).

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use loopmesh_shared::aws::route53::{Route53, client_config};
use loopmesh_shared::aws::sdk_config;
use loopmesh_shared::config::Settings;
use loopmesh_shared::dns::sync::{SyncSettings, Syncer};
use loopmesh_shared::store::dynamo::DynamoDnsStore;
use loopmesh_shared::vip::unix_now;
use serde_json::{Value, json};

mod emf;
mod trigger;

use trigger::trigger_of;

type Live = Syncer<Route53, DynamoDnsStore>;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env().inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = sdk_config().await;
    let enabled = settings.route53_enabled();
    let syncer: Live = Syncer::new(
        Route53::new(aws_sdk_route53::Client::from_conf(client_config(&sdk))),
        DynamoDnsStore::new(aws_sdk_dynamodb::Client::new(&sdk), &settings.table_name),
        SyncSettings::from_settings(&settings),
    );
    let syncer = &syncer;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Value>| async move { handle(syncer, enabled, event).await },
    ))
    .await
}

async fn handle(syncer: &Live, enabled: bool, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let trigger =
        trigger_of(&event.payload).map_err(|e| Diagnostic { error_type: "MalformedEvent".into(), error_message: e })?;
    if !enabled {
        return Ok(json!({"outcome": "disabled", "why": "KMESH_RUNTIME_AWS_ROUTE53_ENABLED is false"}));
    }
    let report = syncer.run(trigger, unix_now()).await.map_err(|e| {
        tracing::error!(error = %e, "sync failed");
        Diagnostic { error_type: "SyncFailed".into(), error_message: e.to_string() }
    })?;
    tracing::info!(
        trigger = ?trigger,
        planned = report.planned,
        applied = report.applied,
        conflicts = report.conflicts,
        failed = report.failed,
        collected = report.collected,
        repaired = report.repaired,
        route53_calls = report.calls,
        throttles = report.throttles,
        adopted = report.adopted,
        zones_failed = report.zones_failed,
        skipped = report.skipped.as_deref().unwrap_or(""),
        "sync"
    );
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    println!("{}", emf::emf(&report, timestamp));
    Ok(json!({
        "outcome": if report.skipped.is_some() { "skipped" } else { "synced" },
        "why": report.skipped,
        "planned": report.planned,
        "applied": report.applied,
        "conflicts": report.conflicts,
        "failed": report.failed,
        "collected": report.collected,
        "repaired": report.repaired,
        "adopted": report.adopted,
        "zones_failed": report.zones_failed,
        "route53_calls": report.calls,
        "throttles": report.throttles,
    }))
}
