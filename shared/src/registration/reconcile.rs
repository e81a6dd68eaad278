//! Reconciliation: the table compared with what ECS actually runs, repaired
//! both ways. Events are an optimisation; this pass is what makes the mesh
//! correct in the end (level-triggered): a lost RUNNING leaves a task
//! unregistered only until the next pass, a lost STOPPED leaves a dead
//! endpoint only until the next pass.
//!
//! Order matters: the table is read before ECS, so a task registered after
//! the table read is not in `registered`, and a task that starts after the
//! ECS listing is left to its own event or the next pass. A registered task
//! missing from the listing is removed only once DescribeTasks confirms it
//! stopped or ECS no longer knows it.
//!
//! Cost per pass: one ListTasks per 100 running tasks per cluster, one
//! DescribeTasks per 100 tasks that differ, one DynamoDB query page per
//! 1 MB of endpoints (see `bench/src/bin/reconcile.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use super::event::{EcsTaskStateChange, TaskState, from_detail};
use super::{HandleError, Outcome, Registrar, Registry, RoleTags, TaskDefinitions};
use crate::error::StoreError;
use crate::vip::{UnixSeconds, VipLedger};

/// ECS as the reconciliation reads it.
pub trait EcsTasks: Send + Sync {
    /// The ARNs of every cluster in the account and region.
    fn clusters(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// The ARNs of the tasks whose desired status is RUNNING in `cluster`, all pages.
    fn running(&self, cluster: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Up to 100 tasks of `cluster` as ECS describes them; a task ECS no
    /// longer knows is absent from the answer.
    fn describe(
        &self,
        cluster: &str,
        task_arns: &[String],
    ) -> impl Future<Output = Result<Vec<EcsTaskStateChange>, StoreError>> + Send;
}

/// One task-events invocation that failed after Lambda's retries, as its
/// on-failure destination received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedInvocation {
    /// What deletes it from the queue.
    pub receipt: String,
    /// The task the event was about, when the record says.
    pub task_arn: Option<String>,
    /// The function's last error (`errorType: errorMessage`), bounded.
    pub error: String,
}

impl FailedInvocation {
    /// Reads Lambda's destination record (`requestPayload`, `responsePayload`,
    /// `requestContext.condition`); an unreadable body is kept as its prefix.
    pub fn from_record(receipt: String, body: &str) -> Self {
        let record: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        let task_arn = record["requestPayload"]["detail"]["taskArn"].as_str().map(str::to_owned);
        let error = match (
            record["responsePayload"]["errorType"].as_str(),
            record["responsePayload"]["errorMessage"].as_str(),
            record["requestContext"]["condition"].as_str(),
        ) {
            (Some(t), Some(m), _) => format!("{t}: {m}"),
            (_, _, Some(condition)) => condition.to_owned(),
            _ => format!("unreadable record: {}", crate::excerpt::cut(body, crate::excerpt::VALUE_CHARS)),
        };
        Self { receipt, task_arn, error: crate::excerpt::cut(&error, crate::excerpt::RULE_CHARS).into_owned() }
    }
}

/// The on-failure destination of task-events (an SQS queue).
pub trait FailedInvocations: Send + Sync {
    /// Up to 10 records, hidden from other readers for a while.
    fn receive(&self) -> impl Future<Output = Result<Vec<FailedInvocation>, StoreError>> + Send;
    fn delete(&self, receipts: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// At most this many failure records are drained per pass, so one pass
/// stays short even after a long outage; the rest wait for the next.
const DRAIN_PER_PASS: usize = 500;

/// What one pass found and did, for the log line and the invocation's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub clusters: u64,
    pub running: u64,
    pub registered_before: u64,
    /// Running tasks that had no endpoint and now have one.
    pub registered: u64,
    /// Registered tasks that ECS says stopped (or no longer knows), now removed.
    pub removed: u64,
    /// Running tasks left unregistered: no sidecar, refused, or not running yet.
    pub unregistered: u64,
    /// Tasks ECS described in a shape loopmesh cannot read.
    pub malformed: u64,
    pub ecs_calls: u64,
    /// Failed invocations read from the on-failure queue, logged and deleted:
    /// the pass has just repaired whatever they were about.
    pub failures_drained: u64,
}

/// Whether ECS says the task stopped or is on its way there.
fn is_stopped(t: &EcsTaskStateChange) -> bool {
    t.last_status == "STOPPED" || t.desired_status == "STOPPED"
}

/// The cluster of a task ARN (`arn:aws:ecs:r:a:task/<cluster>/<id>`), when it says.
fn cluster_of(task_arn: &str) -> Option<&str> {
    let rest = task_arn.split_once(":task/")?.1;
    rest.split_once('/').map(|(cluster, _)| cluster)
}

impl<T: TaskDefinitions, R: RoleTags, G: Registry, L: VipLedger> Registrar<T, R, G, L> {
    /// One reconciliation pass over the watched clusters (all when
    /// `LOOPMESH_CLUSTERS` is empty).
    pub async fn reconcile<E: EcsTasks>(&self, ecs: &E, now: UnixSeconds) -> Result<ReconcileReport, HandleError> {
        let mut report = ReconcileReport::default();
        let registered: BTreeSet<String> = self.registry.registered_tasks().await?.into_iter().collect();
        report.registered_before = registered.len() as u64;
        let clusters = if self.settings.clusters.is_empty() {
            report.ecs_calls += 1;
            ecs.clusters().await?
        } else {
            self.settings.clusters.clone()
        };
        report.clusters = clusters.len() as u64;
        let mut running: BTreeMap<String, String> = BTreeMap::new();
        for cluster in &clusters {
            let arns = ecs.running(cluster).await?;
            report.ecs_calls += (arns.len() as u64).div_ceil(100).max(1);
            running.extend(arns.into_iter().map(|a| (a, cluster.clone())));
        }
        report.running = running.len() as u64;

        // Running, not registered: describe and register.
        let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (arn, cluster) in running.iter().filter(|(arn, _)| !registered.contains(*arn)) {
            missing.entry(cluster.as_str()).or_default().push(arn.clone());
        }
        for (cluster, arns) in missing {
            for chunk in arns.chunks(100) {
                report.ecs_calls += 1;
                for task in ecs.describe(cluster, chunk).await? {
                    match self.repair(task, now).await? {
                        Some(Outcome::Registered { .. }) => report.registered += 1,
                        Some(_) => report.unregistered += 1,
                        None => report.malformed += 1,
                    }
                }
            }
        }

        // Registered, not running: remove once ECS confirms.
        let mut gone: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for arn in registered.iter().filter(|arn| !running.contains_key(*arn)) {
            let cluster = cluster_of(arn).map(str::to_owned).or_else(|| clusters.first().cloned());
            if let Some(cluster) = cluster {
                gone.entry(cluster).or_default().push(arn.clone());
            }
        }
        for (cluster, arns) in gone {
            for chunk in arns.chunks(100) {
                report.ecs_calls += 1;
                let described = ecs.describe(&cluster, chunk).await?;
                for arn in chunk {
                    let stopped = match described.iter().find(|t| &t.task_arn == arn).cloned() {
                        // ECS no longer knows it: long stopped.
                        None => forgotten(arn, &cluster),
                        Some(t) if is_stopped(&t) => t,
                        // Still starting or running after all: its own events decide.
                        Some(_) => continue,
                    };
                    if let Some(Outcome::Deregistered { .. }) = self.repair(stopped, now).await? {
                        report.removed += 1;
                    }
                }
            }
        }
        tracing::info!(
            clusters = report.clusters,
            running = report.running,
            registered_before = report.registered_before,
            registered = report.registered,
            removed = report.removed,
            unregistered = report.unregistered,
            malformed = report.malformed,
            ecs_calls = report.ecs_calls,
            "reconciled with ECS"
        );
        Ok(report)
    }

    /// Reads the failed invocations this pass made moot, logs each (task and
    /// last error) and deletes it. Runs after the comparison with ECS: the
    /// table now agrees with what runs, whatever those events said.
    pub async fn drain_failures<Q: FailedInvocations>(&self, queue: &Q) -> Result<u64, HandleError> {
        let mut drained = 0;
        while drained < DRAIN_PER_PASS {
            let batch = queue.receive().await?;
            if batch.is_empty() {
                break;
            }
            for f in &batch {
                tracing::warn!(
                    task = f.task_arn.as_deref().unwrap_or("unknown"),
                    error = %f.error,
                    "a task-events invocation failed after Lambda's retries; the reconciliation repaired its task"
                );
            }
            let receipts: Vec<String> = batch.iter().map(|f| f.receipt.clone()).collect();
            queue.delete(&receipts).await?;
            drained += batch.len();
        }
        Ok(drained as u64)
    }

    /// Acts on one described task as on its event; `None` when ECS described
    /// it in a shape that does not parse (logged, counted, the pass goes on).
    async fn repair(&self, task: EcsTaskStateChange, now: UnixSeconds) -> Result<Option<Outcome>, HandleError> {
        let arn = task.task_arn.clone();
        match from_detail(task) {
            Ok(ev) if ev.state == TaskState::Starting => Ok(Some(Outcome::Ignored { why: "not running yet" })),
            Ok(ev) => self.handle_task(&ev, now).await.map(Some),
            Err(e) => {
                tracing::warn!(task = %arn, error = %e, "ECS described a task loopmesh cannot read; skipped");
                Ok(None)
            }
        }
    }
}

/// A stopped state for a registered task ECS no longer describes (a stop
/// applies at any version: the registrar treats STOPPED as final).
fn forgotten(arn: &str, cluster: &str) -> EcsTaskStateChange {
    let prefix = arn.split_once(":task/").map_or("", |(p, _)| p);
    let cluster_arn =
        if cluster.starts_with("arn:") { cluster.to_owned() } else { format!("{prefix}:cluster/{cluster}") };
    EcsTaskStateChange {
        task_arn: arn.to_owned(),
        cluster_arn,
        task_definition_arn: format!("{prefix}:task-definition/gone:0"),
        last_status: "STOPPED".into(),
        desired_status: "STOPPED".into(),
        stopped_reason: Some("ECS no longer knows this task".into()),
        ..EcsTaskStateChange::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_record_names_its_task_and_error() {
        let body = r#"{"requestContext":{"condition":"RetriesExhausted"},"requestPayload":{"detail":{"taskArn":"arn:aws:ecs:r:1:task/c/t"}},"responsePayload":{"errorType":"Retryable","errorMessage":"throttled"}}"#;
        let f = FailedInvocation::from_record("r1".into(), body);
        assert_eq!(f.task_arn.as_deref(), Some("arn:aws:ecs:r:1:task/c/t"));
        assert_eq!(f.error, "Retryable: throttled");
        let junk = FailedInvocation::from_record("r2".into(), &"x".repeat(10_000));
        assert!(junk.error.starts_with("unreadable record: xxx") && junk.error.len() < 120, "{}", junk.error);
    }

    #[test]
    fn the_cluster_comes_from_a_long_task_arn() {
        assert_eq!(cluster_of("arn:aws:ecs:us-east-1:1:task/prod/abc"), Some("prod"));
        assert_eq!(cluster_of("arn:aws:ecs:us-east-1:1:task/abc"), None);
    }
}
