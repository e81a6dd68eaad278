//! In-memory fakes of registration's ports, for unit tests: task
//! definitions, role tags, and a registry that keeps the DynamoDB adapter's
//! conditions (writes ordered by the task's version, a stop is final).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::sidecar_spec::TaskDefinitionDoc;
use super::{
    Endpoint, RefusalRecord, Registration, Registry, RoleTags, ServiceUpsert, TaskDefinitions, TaskRecord, WriteOutcome,
};
use crate::error::{StoreError, StoreErrorKind};
use crate::model::MeshServicesMode;
use crate::vip::{ServiceKey, UnixSeconds};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Task definitions by ARN, with the number of reads.
#[derive(Debug, Default)]
pub struct MemoryTaskDefinitions {
    docs: Mutex<BTreeMap<String, TaskDefinitionDoc>>,
    reads: Mutex<usize>,
}

impl MemoryTaskDefinitions {
    pub fn insert(&self, doc: TaskDefinitionDoc) {
        lock(&self.docs).insert(doc.arn.clone(), doc);
    }

    pub fn reads(&self) -> usize {
        *lock(&self.reads)
    }
}

impl TaskDefinitions for MemoryTaskDefinitions {
    async fn describe(&self, arn: &str) -> Result<TaskDefinitionDoc, StoreError> {
        *lock(&self.reads) += 1;
        lock(&self.docs)
            .get(arn)
            .cloned()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Rejected, format!("no task definition {arn}")))
    }
}

/// Roles' tags by ARN, with the number of reads.
#[derive(Debug, Default)]
pub struct MemoryRoleTags {
    roles: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    reads: Mutex<usize>,
}

impl MemoryRoleTags {
    pub fn insert(&self, arn: &str, tags: &[(&str, &str)]) {
        let tags = tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        lock(&self.roles).insert(arn.to_owned(), tags);
    }

    pub fn reads(&self) -> usize {
        *lock(&self.reads)
    }
}

impl RoleTags for MemoryRoleTags {
    async fn tags(&self, role_arn: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        *lock(&self.reads) += 1;
        Ok(lock(&self.roles).get(role_arn).cloned())
    }
}

/// The table's task, endpoint and service items in memory.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    tasks: BTreeMap<String, TaskRecord>,
    endpoints: BTreeMap<String, Vec<Endpoint>>,
    services: BTreeMap<ServiceKey, ServiceUpsert>,
    refusals: Vec<RefusalRecord>,
    skipped: Vec<RefusalRecord>,
    modes: BTreeMap<String, MeshServicesMode>,
    /// Registrations that told dns-sync it has work.
    dns_changes: usize,
}

impl MemoryRegistry {
    pub fn set_mode(&self, mesh: &str, mode: MeshServicesMode) {
        lock(&self.state).modes.insert(mesh.to_owned(), mode);
    }

    /// The endpoints the table holds for a task.
    pub fn endpoints(&self, task_arn: &str) -> Vec<Endpoint> {
        lock(&self.state).endpoints.get(task_arn).cloned().unwrap_or_default()
    }

    pub fn services(&self) -> Vec<ServiceKey> {
        lock(&self.state).services.keys().cloned().collect()
    }

    pub fn refusals(&self) -> Vec<RefusalRecord> {
        lock(&self.state).refusals.clone()
    }

    pub fn skipped(&self) -> Vec<RefusalRecord> {
        lock(&self.state).skipped.clone()
    }

    pub fn dns_changes(&self) -> usize {
        lock(&self.state).dns_changes
    }
}

impl Registry for MemoryRegistry {
    async fn task(&self, task_arn: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(lock(&self.state).tasks.get(task_arn).cloned())
    }

    async fn register(&self, reg: &Registration) -> Result<WriteOutcome, StoreError> {
        let mut st = lock(&self.state);
        if st.tasks.get(&reg.task_arn).is_some_and(|t| t.stopped || t.version >= reg.version) {
            return Ok(WriteOutcome::Stale);
        }
        let record = TaskRecord {
            version: reg.version,
            stopped: false,
            mesh: Some(reg.mesh.clone()),
            endpoints: reg.endpoints.iter().map(|e| format!("EP#{}#{}#{}", e.service, reg.task_id, e.port)).collect(),
            services: reg.services.iter().map(|s| s.key.to_string()).collect(),
        };
        st.tasks.insert(reg.task_arn.clone(), record);
        st.endpoints.insert(reg.task_arn.clone(), reg.endpoints.clone());
        for s in &reg.services {
            st.services.insert(s.key.clone(), s.clone());
        }
        st.dns_changes += usize::from(reg.dns_changed);
        Ok(WriteOutcome::Applied)
    }

    async fn deregister(
        &self,
        task_arn: &str,
        seen: &TaskRecord,
        version: u64,
        _now: UnixSeconds,
    ) -> Result<WriteOutcome, StoreError> {
        let mut st = lock(&self.state);
        // Conditional on the task being as it was read.
        let Some(task) = st.tasks.get_mut(task_arn).filter(|t| *t == seen) else { return Ok(WriteOutcome::Stale) };
        task.stopped = true;
        task.version = version;
        task.endpoints.clear();
        st.endpoints.remove(task_arn);
        Ok(WriteOutcome::Applied)
    }

    async fn tombstone(&self, task_arn: &str, version: u64, _now: UnixSeconds) -> Result<WriteOutcome, StoreError> {
        let mut st = lock(&self.state);
        if st.tasks.contains_key(task_arn) {
            return Ok(WriteOutcome::Stale);
        }
        let record = TaskRecord { version, stopped: true, mesh: None, endpoints: Vec::new(), services: Vec::new() };
        st.tasks.insert(task_arn.to_owned(), record);
        Ok(WriteOutcome::Applied)
    }

    async fn record_refusal(&self, refusal: &RefusalRecord) -> Result<(), StoreError> {
        lock(&self.state).refusals.push(refusal.clone());
        Ok(())
    }

    async fn record_skipped(&self, skipped: &RefusalRecord) -> Result<(), StoreError> {
        lock(&self.state).skipped.push(skipped.clone());
        Ok(())
    }

    async fn mesh_mode(&self, mesh: &str) -> Result<MeshServicesMode, StoreError> {
        Ok(lock(&self.state).modes.get(mesh).copied().unwrap_or_default())
    }

    async fn registered_tasks(&self) -> Result<Vec<String>, StoreError> {
        Ok(lock(&self.state).endpoints.iter().filter(|(_, e)| !e.is_empty()).map(|(arn, _)| arn.clone()).collect())
    }
}
