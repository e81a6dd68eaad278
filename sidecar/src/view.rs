//! The mesh view a sidecar serves.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub outbounds: Vec<Outbound>,
}

/// One listener: a service's VIP and port, and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub service: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl View {
    /// A view is applied whole or not at all: every VIP on loopback, each
    /// VIP:port once, every port non-zero.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for (i, o) in self.outbounds.iter().enumerate() {
            if !o.vip.is_loopback() {
                return Err(format!("outbounds[{i}].vip: {} is not a loopback address", o.vip));
            }
            if o.port == 0 {
                return Err(format!("outbounds[{i}].port: 0 is not a port"));
            }
            if !seen.insert((o.vip, o.port)) {
                return Err(format!("outbounds[{i}]: {}:{} is listed twice", o.vip, o.port));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let text = r#"{"outbounds":[{"service":"redis","vip":"127.1.0.7","port":8080,"endpoints":[{"address":"10.0.2.11:16379","zone":"us-east-1a"}]}]}"#;
        let v: View = serde_json::from_str(text).unwrap();
        assert_eq!(v.validate(), Ok(()));
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
        let mut twice = v.clone();
        twice.outbounds.push(v.outbounds[0].clone());
        assert_eq!(twice.validate(), Err("outbounds[1]: 127.1.0.7:8080 is listed twice".into()));
        let mut wide = v;
        wide.outbounds[0].vip = Ipv4Addr::new(10, 0, 0, 1);
        assert!(wide.validate().unwrap_err().contains("not a loopback"));
    }
}
