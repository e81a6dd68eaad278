//! Who this sidecar is: its Dataplane, rendered from the task definition's
//! `KUMA_DATAPLANE_RUNTIME_RESOURCE` and `--dataplane-var` values, with
//! `address`, `dpname` and the availability zone taken from the ECS task
//! metadata endpoint unless given as variables.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loopmesh_shared::model::{Dataplane, DataplaneVars, render_dataplane};
use serde::Deserialize;

use crate::listeners::InboundSpec;

/// What the ECS task metadata endpoint (v4) says of the task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMetadata {
    pub address: Option<IpAddr>,
    pub task_id: Option<String>,
    pub zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskDoc {
    #[serde(rename = "TaskARN")]
    task_arn: Option<String>,
    availability_zone: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDoc {
    #[serde(default)]
    networks: Vec<NetworkDoc>,
}

#[derive(Debug, Deserialize)]
struct NetworkDoc {
    #[serde(rename = "IPv4Addresses", default)]
    ipv4_addresses: Vec<String>,
}

/// `GET $ECS_CONTAINER_METADATA_URI_V4/task`.
pub async fn metadata(base_uri: &str) -> Result<TaskMetadata, String> {
    let uri = format!("{}/task", base_uri.trim_end_matches('/'));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = async {
        let response = client.get(uri.parse().map_err(|e| format!("{e}"))?).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice::<TaskDoc>(&body).map_err(|e| e.to_string())
    };
    let doc = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .map_err(|_| format!("ECS task metadata {uri}: no answer in 5 s"))?
        .map_err(|e| format!("ECS task metadata {uri}: {e}"))?;
    let address =
        doc.containers.iter().flat_map(|c| &c.networks).flat_map(|n| &n.ipv4_addresses).find_map(|a| a.parse().ok());
    let task_id = doc.task_arn.as_deref().and_then(|a| a.rsplit('/').next()).map(str::to_owned);
    Ok(TaskMetadata { address, task_id, zone: doc.availability_zone })
}

/// Fills `address` and `dpname` from the metadata where the variables do not
/// give them, then renders the Dataplane.
pub fn render(template: &str, mut vars: DataplaneVars, meta: &TaskMetadata) -> Result<Dataplane, String> {
    if let (false, Some(a)) = (vars.contains_key("address"), meta.address) {
        vars.insert("address".into(), a.to_string());
    }
    if let (false, Some(id)) = (vars.contains_key("dpname"), &meta.task_id) {
        vars.insert("dpname".into(), id.clone());
    }
    render_dataplane(template, &vars).map_err(|e| format!("KUMA_DATAPLANE_RUNTIME_RESOURCE: {e}"))
}

/// One listener per inbound: `address:port` forwards to the application at
/// `serviceAddress:servicePort`.
pub fn inbounds(dp: &Dataplane) -> Result<Vec<InboundSpec>, String> {
    let address: IpAddr = dp
        .address
        .parse()
        .map_err(|_| format!("networking.address: {:?} is not an IP address this task can listen on", dp.address))?;
    Ok(dp
        .inbounds
        .iter()
        .map(|ib| InboundSpec {
            service: ib.service().to_owned(),
            listen: SocketAddr::new(address, ib.port),
            forward: SocketAddr::new(ib.service_address, ib.service_port),
            tags: ib.tags.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
type: Dataplane
name: "{{ dpname }}"
mesh: default
networking:
  address: "{{ address }}"
  inbound:
    - port: 16379
      servicePort: 6379
      tags:
        kuma.io/service: redis
        kuma.io/protocol: tcp
"#;

    #[test]
    fn renders_inbounds_from_metadata_and_variables() {
        let meta = TaskMetadata {
            address: Some("10.0.2.11".parse().unwrap()),
            task_id: Some("abc123".into()),
            zone: Some("us-east-1a".into()),
        };
        let dp = render(TEMPLATE, DataplaneVars::new(), &meta).unwrap();
        assert_eq!(dp.name, "abc123");
        let ib = inbounds(&dp).unwrap();
        assert_eq!(ib[0].listen, "10.0.2.11:16379".parse().unwrap());
        assert_eq!(ib[0].forward, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(ib[0].service, "redis");
        let vars = DataplaneVars::from([("address".into(), "127.0.0.21".into()), ("dpname".into(), "r1".into())]);
        let dp = render(TEMPLATE, vars, &meta).unwrap();
        assert_eq!((dp.name.as_str(), dp.address.as_str()), ("r1", "127.0.0.21"));
    }

    #[test]
    fn says_which_variable_is_missing() {
        let err = render(TEMPLATE, DataplaneVars::new(), &TaskMetadata::default()).unwrap_err();
        assert!(err.starts_with("KUMA_DATAPLANE_RUNTIME_RESOURCE: "), "{err}");
        assert!(err.contains("dpname"), "{err}");
    }
}
