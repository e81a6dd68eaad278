//! task-events: ECS Task State Change events in, Dataplane registrations and
//! VIPs out; on its schedule (an EventBridge Scheduled Event, or
//! `{"reconcile": true}`), a reconciliation of the table with what ECS runs.
//! The flows live in `loopmesh_shared::registration`; this file only wires
//! configuration, clients and the Lambda runtime.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use loopmesh_shared::aws::ecs::{EcsRunningTasks, EcsTaskDefinitions};
use loopmesh_shared::aws::iam::IamRoleTags;
use loopmesh_shared::aws::sdk_config;
use loopmesh_shared::aws::sqs::SqsFailedInvocations;
use loopmesh_shared::config::Settings;
use loopmesh_shared::registration::{HandleError, Outcome, Registrar};
use loopmesh_shared::store::dynamo::{DynamoRegistry, DynamoVipLedger};
use loopmesh_shared::vip::unix_now;
use serde_json::{Value, json};

type Live = Registrar<EcsTaskDefinitions, IamRoleTags, DynamoRegistry, DynamoVipLedger>;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env().inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let config = sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let table = settings.table_name.clone();
    let failure_queue = settings.failure_queue_url.clone();
    let registrar: Live = Registrar::new(
        settings,
        EcsTaskDefinitions::new(aws_sdk_ecs::Client::new(&config)),
        IamRoleTags::new(aws_sdk_iam::Client::new(&config)),
        DynamoRegistry::new(dynamo.clone(), &table),
        DynamoVipLedger::new(dynamo, &table),
    );
    let schedule = Schedule {
        ecs: EcsRunningTasks::new(aws_sdk_ecs::Client::new(&config)),
        failures: failure_queue.map(|url| SqsFailedInvocations::new(aws_sdk_sqs::Client::new(&config), url)),
    };
    let (registrar, schedule) = (&registrar, &schedule);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Value>| async move { handle(registrar, schedule, event).await },
    ))
    .await
}

/// What the reconciliation reads besides the table.
struct Schedule {
    ecs: EcsRunningTasks,
    failures: Option<SqsFailedInvocations>,
}

async fn handle(registrar: &Live, schedule: &Schedule, event: LambdaEvent<Value>) -> Result<Value, Failure> {
    if is_reconcile(&event.payload) {
        let mut r = registrar.reconcile(&schedule.ecs, unix_now()).await.map_err(Failure)?;
        if let Some(queue) = &schedule.failures {
            r.failures_drained = registrar.drain_failures(queue).await.map_err(Failure)?;
        }
        return Ok(json!({
            "outcome": "reconciled",
            "clusters": r.clusters,
            "running": r.running,
            "registered_before": r.registered_before,
            "registered": r.registered,
            "removed": r.removed,
            "unregistered": r.unregistered,
            "malformed": r.malformed,
            "ecs_calls": r.ecs_calls,
            "failures_drained": r.failures_drained,
        }));
    }
    let outcome = registrar.handle(&event.payload, unix_now()).await.map_err(Failure)?;
    Ok(summary(&outcome))
}

/// The schedule's invocation: an EventBridge Scheduled Event, or the
/// Scheduler's input `{"reconcile": true}`.
fn is_reconcile(payload: &Value) -> bool {
    payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        || payload.get("reconcile").and_then(Value::as_bool) == Some(true)
}

/// The invocation's result, for `cargo lambda invoke` and the logs.
fn summary(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Registered { mesh, services, endpoints } => json!({
            "outcome": "registered",
            "mesh": mesh,
            "endpoints": endpoints,
            "services": services.iter().map(|(k, vip)| json!({"kind": k.kind.as_str(), "name": k.name, "vip": vip.to_string()})).collect::<Vec<_>>(),
        }),
        Outcome::Deregistered { endpoints } => json!({"outcome": "deregistered", "endpoints": endpoints}),
        Outcome::Stale => json!({"outcome": "stale", "why": "a newer state of this task is already stored"}),
        Outcome::Refused { reason } => json!({"outcome": "refused", "reason": reason}),
        Outcome::NoSidecar => json!({"outcome": "skipped", "why": "the task definition has no loopmesh sidecar"}),
        Outcome::Ignored { why } => json!({"outcome": "ignored", "why": why}),
    }
}

/// A failed invocation; its error type tells operators (and alarms) whether
/// a retry can help.
#[derive(Debug)]
struct Failure(HandleError);

impl From<Failure> for Diagnostic {
    fn from(Failure(e): Failure) -> Self {
        let error_type = match &e {
            HandleError::Malformed(_) => "MalformedEvent",
            _ if e.is_retryable() => "Retryable",
            _ => "NonRetryable",
        };
        tracing::error!(error_type, error = %e, "invocation failed");
        Diagnostic { error_type: error_type.into(), error_message: e.to_string() }
    }
}
