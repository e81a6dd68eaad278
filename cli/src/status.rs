//! `loopmesh status` and `loopmesh get services|endpoints`: what the table
//! says of each mesh, gathered in one place and printed as a table or data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use loopmesh_shared::config::Settings;
use loopmesh_shared::dns::sync::{DnsStore, Ledgered};
use loopmesh_shared::error::StoreError;
use loopmesh_shared::resources::backing_service;
use loopmesh_shared::store::dynamo::{ConflictRow, DynamoDnsStore, DynamoMeshView, DynamoStatus, RefusalRow};
use loopmesh_shared::vip::{ServiceKind, VipPool, unix_now};
use serde::Serialize;

use crate::output::table;

#[derive(Debug, Serialize)]
pub struct Status {
    pub meshes: Vec<MeshStatus>,
    pub refusals: Vec<RefusalRow>,
    /// Tasks whose definition has no loopmesh sidecar.
    pub skipped: Vec<RefusalRow>,
    pub conflicts: Vec<ConflictRow>,
    /// The counts of the last dns-sync run.
    pub last_sync: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct MeshStatus {
    pub mesh: String,
    pub services: Vec<ServiceStatus>,
    pub endpoints: Vec<EndpointStatus>,
    pub pools: Vec<PoolUse>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub kind: String,
    pub name: String,
    pub vip: Option<Ipv4Addr>,
    pub names: Vec<String>,
    pub zones: Vec<String>,
    pub endpoints: usize,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub service: String,
    pub address: String,
    pub port: u16,
    pub zone: Option<String>,
    pub task: Option<String>,
}

/// VIPs of one pool in one mesh: held by a service, resting in quarantine, and the pool's size.
#[derive(Debug, Serialize)]
pub struct PoolUse {
    pub kind: String,
    pub cidr: String,
    pub used: usize,
    pub quarantined: usize,
    pub size: u32,
}

/// Reads the meshes' services and endpoints; with `full`, also the pools,
/// refusals, conflicts and last sync (`get services|endpoints` needs none of these).
pub async fn gather(
    client: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    only_mesh: Option<&str>,
    full: bool,
) -> Result<Status, StoreError> {
    let table_name = &settings.table_name;
    let dns = DynamoDnsStore::new(client.clone(), table_name);
    let view = DynamoMeshView::new(client.clone(), table_name);
    let status = DynamoStatus::new(client.clone(), table_name);
    let meshes: Vec<String> = match only_mesh {
        Some(m) => vec![m.to_owned()],
        None => dns.state().await?.meshes,
    };
    // Published names per VIP, from the ownership ledger.
    let mut names: BTreeMap<Ipv4Addr, Vec<(String, String)>> = BTreeMap::new();
    for entry in dns.ledger().await? {
        // A name whose change is unsettled shows under each record it may hold.
        let records = match entry {
            Ledgered::Owned(r) => vec![r],
            Ledgered::Intent(rs) => rs,
        };
        for r in records {
            names.entry(r.value).or_default().push((r.name, r.zone.as_str().to_owned()));
        }
    }
    let now = unix_now();
    let mut out = Vec::new();
    for mesh in meshes {
        let (services, endpoints) = view.read(&mesh).await?;
        let mut rows = Vec::new();
        for s in &services {
            let backing = backing_service(&s.name, &s.match_labels);
            let count = match s.kind {
                ServiceKind::MeshExternalService => s.external.len(),
                _ => endpoints.iter().filter(|e| e.service == backing).count(),
            };
            let published = s.vip.and_then(|v| names.get(&v)).cloned().unwrap_or_default();
            let mut zones: Vec<String> = published.iter().map(|(_, z)| z.clone()).collect();
            zones.sort();
            zones.dedup();
            rows.push(ServiceStatus {
                kind: s.kind.code().to_owned(),
                name: s.name.clone(),
                vip: s.vip,
                names: published.into_iter().map(|(n, _)| n).collect(),
                zones,
                endpoints: count,
            });
        }
        let leases = if full { status.leases(&mesh).await? } else { Vec::new() };
        let pools = ServiceKind::ALL
            .into_iter()
            .filter(|_| full)
            .map(|kind| {
                let cidr = settings.pools.for_kind(kind);
                let size = VipPool::new(cidr).map(|p| p.size()).unwrap_or(0);
                let mine: Vec<_> = leases.iter().filter(|l| cidr.contains(&l.vip)).collect();
                let quarantined = mine.iter().filter(|l| l.quarantined_until.is_some_and(|q| q > now)).count();
                let used = mine.iter().filter(|l| l.quarantined_until.is_none()).count();
                PoolUse { kind: kind.code().to_owned(), cidr: cidr.to_string(), used, quarantined, size }
            })
            .collect();
        out.push(MeshStatus {
            mesh,
            services: rows,
            endpoints: endpoints
                .into_iter()
                .map(|e| EndpointStatus {
                    service: e.service,
                    address: e.address,
                    port: e.port,
                    zone: e.zone,
                    task: e.task_arn,
                })
                .collect(),
            pools,
        });
    }
    if !full {
        return Ok(Status {
            meshes: out,
            refusals: Vec::new(),
            skipped: Vec::new(),
            conflicts: Vec::new(),
            last_sync: None,
        });
    }
    let refusals = status
        .refusals()
        .await?
        .into_iter()
        .filter(|r| only_mesh.is_none_or(|m| r.mesh == m || r.mesh.is_empty()))
        .collect();
    Ok(Status {
        meshes: out,
        refusals,
        skipped: status.skipped().await?,
        conflicts: status.conflicts().await?,
        last_sync: status.last_sync().await?,
    })
}

fn or_dash(v: &[String]) -> String {
    if v.is_empty() { "-".into() } else { v.join(",") }
}

pub fn services_table(status: &Status) -> String {
    let rows: Vec<Vec<String>> = status
        .meshes
        .iter()
        .flat_map(|m| {
            m.services.iter().map(|s| {
                vec![
                    m.mesh.clone(),
                    s.kind.clone(),
                    s.name.clone(),
                    s.vip.map_or("-".into(), |v| v.to_string()),
                    or_dash(&s.names),
                    or_dash(&s.zones),
                    s.endpoints.to_string(),
                ]
            })
        })
        .collect();
    table(&["MESH", "KIND", "SERVICE", "VIP", "NAMES", "HOSTED ZONES", "ENDPOINTS"], &rows)
}

pub fn endpoints_table(status: &Status) -> String {
    let rows: Vec<Vec<String>> = status
        .meshes
        .iter()
        .flat_map(|m| {
            m.endpoints.iter().map(|e| {
                vec![
                    m.mesh.clone(),
                    e.service.clone(),
                    e.address.clone(),
                    e.port.to_string(),
                    e.zone.clone().unwrap_or_else(|| "-".into()),
                    e.task.clone().unwrap_or_else(|| "-".into()),
                ]
            })
        })
        .collect();
    table(&["MESH", "SERVICE", "ADDRESS", "PORT", "AZ", "TASK"], &rows)
}

pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "SERVICES\n{}", services_table(status));
    let _ = writeln!(out, "ENDPOINTS\n{}", endpoints_table(status));
    let pools: Vec<Vec<String>> = status
        .meshes
        .iter()
        .flat_map(|m| {
            m.pools.iter().filter(|p| p.used + p.quarantined > 0).map(|p| {
                vec![
                    m.mesh.clone(),
                    p.kind.clone(),
                    p.cidr.clone(),
                    format!("{} / {}", p.used, p.size),
                    p.quarantined.to_string(),
                ]
            })
        })
        .collect();
    let _ = writeln!(out, "VIP POOLS\n{}", table(&["MESH", "KIND", "CIDR", "USED", "QUARANTINED"], &pools));
    let refusals: Vec<Vec<String>> =
        status.refusals.iter().map(|r| vec![r.task_arn.clone(), r.mesh.clone(), r.reason.clone()]).collect();
    let _ = writeln!(out, "IDENTITY REFUSALS\n{}", table(&["TASK", "MESH", "REASON"], &refusals));
    let skipped: Vec<Vec<String>> = status.skipped.iter().map(|r| vec![r.task_arn.clone(), r.reason.clone()]).collect();
    let _ = writeln!(out, "TASKS WITHOUT A SIDECAR\n{}", table(&["TASK", "WHY"], &skipped));
    let conflicts: Vec<Vec<String>> =
        status.conflicts.iter().map(|c| vec![c.zone.clone(), c.name.clone(), c.reason.clone()]).collect();
    let _ = writeln!(out, "DNS CONFLICTS\n{}", table(&["ZONE", "NAME", "REASON"], &conflicts));
    let last = status.last_sync.as_ref().map_or_else(|| "never".to_owned(), |v| v.to_string());
    let _ = writeln!(out, "LAST DNS SYNC\n{last}");
    out
}
