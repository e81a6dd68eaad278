//! Reconciliation against moto server: tasks that ECS runs (RunTask on
//! Fargate) whose events were all lost get registered; a task stopped with
//! its STOPPED event lost, and one ECS never knew, get removed.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::BTreeSet;

use loopmesh_shared::aws::ecs::EcsRunningTasks;
use loopmesh_shared::registration::Outcome;
use loopmesh_shared::store::keys;
use loopmesh_shared::vip::unix_now;
use loopmesh_tests::ecs::{event, registrar, role, run_tasks, settings, task_definition, tasks_stay_running};
use loopmesh_tests::{attr_s, dynamo_client, fresh_table, query_prefix, sdk_config, unique};

/// The task ARNs that have endpoints in `mesh`.
async fn endpoint_tasks(client: &aws_sdk_dynamodb::Client, table: &str, mesh: &str) -> BTreeSet<String> {
    query_prefix(client, table, &keys::mesh_pk(mesh), "EP#").await.iter().map(|i| attr_s(i, "task_arn")).collect()
}

#[tokio::test]
async fn lost_events_are_repaired_both_ways_by_the_reconciliation() {
    tasks_stay_running().await;
    let client = dynamo_client().await;
    let table = fresh_table(&client, "reconcile").await;
    let ecs = aws_sdk_ecs::Client::new(&sdk_config().await);
    let cluster = format!("rc-{}", unique());
    ecs.create_cluster().cluster_name(&cluster).send().await.unwrap();
    let mesh = format!("rc{}", fastrand::u32(..));
    let tags = [("kuma.io/type", "dataplane"), ("kuma.io/mesh", mesh.as_str()), ("kuma.io/service", "redis")];
    let td = task_definition(Some(&role(&tags).await), "redis", &mesh, true).await;
    let s = settings(&table, &[("LOOPMESH_CLUSTERS", &cluster)]);
    let registrar = registrar(&s).await;
    let tasks = EcsRunningTasks::new(ecs.clone());

    // Three tasks start; every event is lost.
    let started = run_tasks(&cluster, &td, 3).await;
    let arns: BTreeSet<String> = started.iter().map(|t| t.task_arn().unwrap().to_owned()).collect();
    assert_eq!(arns.len(), 3);

    let report = registrar.reconcile(&tasks, unix_now()).await.unwrap();
    assert_eq!((report.running, report.registered, report.removed), (3, 3, 0), "{report:?}");
    assert_eq!(endpoint_tasks(&client, &table, &mesh).await, arns, "every running task has its endpoint");

    // A second pass changes nothing and costs two ECS calls (no describe).
    let again = registrar.reconcile(&tasks, unix_now()).await.unwrap();
    assert_eq!((again.registered, again.removed, again.ecs_calls), (0, 0, 1), "{again:?}");

    // One task stops, and its STOPPED event is lost; a task ECS never knew
    // (an event from another account's replay, say) has an endpoint too.
    let stopped = arns.iter().next().unwrap().clone();
    ecs.stop_task().cluster(&cluster).task(&stopped).send().await.unwrap();
    let cluster_arn = format!("arn:aws:ecs:us-east-1:123456789012:cluster/{cluster}");
    let mut ghost = event("ecs-task-running.json", &td, "ghost", "10.0.9.9", 2);
    ghost["detail"]["clusterArn"] = cluster_arn.into();
    ghost["detail"]["taskArn"] = format!("arn:aws:ecs:us-east-1:123456789012:task/{cluster}/ghost").into();
    let outcome = registrar.handle(&ghost, unix_now()).await.unwrap();
    assert!(matches!(outcome, Outcome::Registered { .. }), "{outcome:?}");
    assert_eq!(endpoint_tasks(&client, &table, &mesh).await.len(), 4);

    let report = registrar.reconcile(&tasks, unix_now()).await.unwrap();
    assert_eq!((report.registered, report.removed), (0, 2), "{report:?}");
    let left = endpoint_tasks(&client, &table, &mesh).await;
    let want: BTreeSet<String> = arns.iter().filter(|a| **a != stopped).cloned().collect();
    assert_eq!(left, want, "endpoints equal the running tasks");
}

#[tokio::test]
async fn the_failure_queue_is_drained_and_each_failure_is_named() {
    let client = dynamo_client().await;
    let table = fresh_table(&client, "drain").await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let url = sqs.create_queue().queue_name(format!("failures-{}", unique())).send().await.unwrap();
    let url = url.queue_url().unwrap().to_owned();
    for i in 0..13 {
        let record = serde_json::json!({
            "requestContext": {"condition": "RetriesExhausted"},
            "requestPayload": {"detail": {"taskArn": format!("arn:aws:ecs:us-east-1:1:task/c/{i}")}},
            "responsePayload": {"errorType": "Retryable", "errorMessage": "throttled"},
        });
        sqs.send_message().queue_url(&url).message_body(record.to_string()).send().await.unwrap();
    }
    let r = registrar(&settings(&table, &[])).await;
    let queue = loopmesh_shared::aws::sqs::SqsFailedInvocations::new(sqs.clone(), &url);
    assert_eq!(r.drain_failures(&queue).await.unwrap(), 13);
    let left = sqs.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap();
    assert!(left.messages().is_empty(), "the queue is empty");
}
