//! view-notify: when change items land in the table's stream, tells every
//! sidecar of their mesh to check the table now (one UDP datagram each, see
//! `docs/view.md`), so sidecars can poll slowly at rest and still see a
//! change within about a second.
//!
//! The stream batch is the coalescing: one invocation wakes each mesh once,
//! whatever number of changes it holds. The sidecars' addresses are those of
//! the mesh's endpoints, read at most once a minute per mesh and execution
//! environment: a task started since then reads the whole mesh at its start
//! and polls at its refresh interval until its first wake-up, so it misses
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use loopmesh_shared::error::StoreError;
use loopmesh_shared::excerpt::quoted;
use loopmesh_shared::store::dynamo::DynamoMeshView;
use loopmesh_shared::store::keys::CHANGE_PREFIX;
use loopmesh_shared::view::wake_datagram;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a mesh's sidecar addresses are reused before they are read again.
pub const MEMBERS_TTL: Duration = Duration::from_secs(60);

/// The newest change item of each mesh that a stream batch holds.
pub fn changed_meshes(payload: &serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let records = payload
        .get("Records")
        .and_then(|r| r.as_array())
        .ok_or("expected a DynamoDB stream batch: Records is missing or not a list")?;
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        let key = |name: &str| {
            record
                .pointer(&format!("/dynamodb/Keys/{name}/S"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("Records[{i}].dynamodb.Keys.{name}.S: missing; the stream must carry keys"))
        };
        let (pk, sk) = (key("pk")?, key("sk")?);
        // The event source mapping's filter passes change items only; anything
        // else that arrives is not this function's business.
        let (Some(mesh), true) = (pk.strip_prefix("MESH#"), sk.starts_with(CHANGE_PREFIX)) else {
            tracing::debug!(pk = %quoted(pk), sk = %quoted(sk), "not a change item; ignored");
            continue;
        };
        let newest = out.entry(mesh.to_owned()).or_default();
        if sk > newest.as_str() {
            *newest = sk.to_owned();
        }
    }
    Ok(out)
}

/// What one invocation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent {
    pub meshes: usize,
    pub wakeups: usize,
    pub failed: usize,
}

/// Sends wake-ups, with each mesh's sidecar addresses cached.
#[derive(Debug)]
pub struct Notifier {
    reader: DynamoMeshView,
    port: u16,
    socket: UdpSocket,
    members: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl Notifier {
    pub async fn new(reader: DynamoMeshView, port: u16) -> std::io::Result<Self> {
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        Ok(Self { reader, port, socket, members: Mutex::new(HashMap::new()) })
    }

    /// Wakes every sidecar of each mesh once.
    pub async fn notify(&self, changed: &BTreeMap<String, String>) -> Result<Sent, StoreError> {
        let mut sent = Sent { meshes: changed.len(), ..Sent::default() };
        for (mesh, change) in changed {
            let datagram = wake_datagram(mesh, change);
            for address in self.members(mesh).await? {
                match self.socket.send_to(datagram.as_bytes(), SocketAddr::new(address, self.port)).await {
                    Ok(_) => sent.wakeups += 1,
                    Err(e) => {
                        sent.failed += 1;
                        tracing::debug!(%address, error = %e, "wake-up not sent");
                    }
                }
            }
        }
        Ok(sent)
    }

    /// The distinct addresses of the mesh's endpoints: its sidecars.
    async fn members(&self, mesh: &str) -> Result<Vec<IpAddr>, StoreError> {
        let mut cache = self.members.lock().await;
        if let Some((at, addresses)) = cache.get(mesh)
            && at.elapsed() < MEMBERS_TTL
        {
            return Ok(addresses.clone());
        }
        let endpoints = self.reader.endpoints(mesh).await?;
        let addresses: BTreeSet<IpAddr> = endpoints.iter().filter_map(|(_, e)| e.address.parse().ok()).collect();
        let addresses: Vec<IpAddr> = addresses.into_iter().collect();
        cache.insert(mesh.to_owned(), (Instant::now(), addresses.clone()));
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_names_each_mesh_once_with_its_newest_change() {
        let batch = serde_json::json!({"Records": [
            {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"S": "MESH#prod"}, "sk": {"S": "CHG#0000000000002#aa"}}}},
            {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"S": "MESH#prod"}, "sk": {"S": "CHG#0000000000001#bb"}}}},
            {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"S": "MESH#dev"}, "sk": {"S": "CHG#0000000000003#cc"}}}},
            {"eventName": "MODIFY", "dynamodb": {"Keys": {"pk": {"S": "DNS"}, "sk": {"S": "STATE"}}}},
        ]});
        let meshes = changed_meshes(&batch).unwrap();
        assert_eq!(meshes.len(), 2);
        assert_eq!(meshes["prod"], "CHG#0000000000002#aa");
        let err = changed_meshes(&serde_json::json!({"Records": [{"dynamodb": {}}]})).unwrap_err();
        assert!(err.starts_with("Records[0].dynamodb.Keys.pk.S"), "{err}");
        assert!(changed_meshes(&serde_json::json!({"detail": {}})).unwrap_err().contains("Records"));
    }
}
