//! The configuration contract: the Kong Mesh variable names an operator already
//! uses, plus loopmesh's own `LOOPMESH_` settings.
//!
//! [`Settings::from_lookup`] reads every variable through a lookup function so
//! tests never touch the process environment, and reports every violation at
//! once: an operator fixes a task definition in one round trip, not five.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::dns_name;

pub const DNS_SERVER_DOMAIN: &str = "KUMA_DNS_SERVER_DOMAIN";
pub const DNS_SERVER_CIDR: &str = "KUMA_DNS_SERVER_CIDR";
pub const DNS_SERVER_SERVICE_VIP_PORT: &str = "KUMA_DNS_SERVER_SERVICE_VIP_PORT";
pub const IPAM_MESH_SERVICE_CIDR: &str = "KUMA_IPAM_MESH_SERVICE_CIDR";
pub const IPAM_MESH_EXTERNAL_SERVICE_CIDR: &str = "KUMA_IPAM_MESH_EXTERNAL_SERVICE_CIDR";
pub const IPAM_MESH_MULTI_ZONE_SERVICE_CIDR: &str = "KUMA_IPAM_MESH_MULTI_ZONE_SERVICE_CIDR";
pub const ROUTE53_ENABLED: &str = "KMESH_RUNTIME_AWS_ROUTE53_ENABLED";
pub const ROUTE53_HOSTED_ZONE_ID: &str = "KMESH_RUNTIME_AWS_ROUTE53_HOSTED_ZONE_ID";
pub const ROUTE53_REFRESH_INTERVAL: &str = "KMESH_RUNTIME_AWS_ROUTE53_REFRESH_INTERVAL";
pub const TABLE_NAME: &str = "LOOPMESH_TABLE_NAME";
pub const RECORD_TTL: &str = "LOOPMESH_RECORD_TTL";
pub const ROUTE53_MAX_RPS: &str = "LOOPMESH_ROUTE53_MAX_RPS";
pub const SERVICE_DELETION_GRACE: &str = "LOOPMESH_SERVICE_DELETION_GRACE";
pub const VIP_QUARANTINE: &str = "LOOPMESH_VIP_QUARANTINE";
pub const CLUSTERS: &str = "LOOPMESH_CLUSTERS";
pub const DNS_FULL_AUDIT_INTERVAL: &str = "LOOPMESH_DNS_FULL_AUDIT_INTERVAL";
pub const DNS_SHORT_NAMES_MESH: &str = "LOOPMESH_DNS_SHORT_NAMES_MESH";
pub const TASK_EVENTS_FAILURE_QUEUE: &str = "LOOPMESH_TASK_EVENTS_FAILURE_QUEUE";
pub const ZONE_NAME: &str = "KUMA_MULTIZONE_ZONE_NAME";
pub const REGISTER_AT: &str = "LOOPMESH_REGISTER_AT";

/// One row of the README's configuration table: name, default, rule.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub rule: &'static str,
}

/// Every variable loopmesh reads, in the order the README lists them.
pub const VARIABLES: &[Variable] = &[
    Variable { name: DNS_SERVER_DOMAIN, default: "mesh.local", rule: "a DNS name, no leading dot" },
    Variable { name: DNS_SERVER_CIDR, default: "127.1.0.0/16", rule: "an IPv4 CIDR inside 127.0.0.0/8, at most /30" },
    Variable { name: DNS_SERVER_SERVICE_VIP_PORT, default: "8080", rule: "a port in 1025..65535" },
    Variable {
        name: IPAM_MESH_SERVICE_CIDR,
        default: "127.4.0.0/16",
        rule: "an IPv4 CIDR inside 127.0.0.0/8, at most /30",
    },
    Variable {
        name: IPAM_MESH_EXTERNAL_SERVICE_CIDR,
        default: "127.3.0.0/16",
        rule: "an IPv4 CIDR inside 127.0.0.0/8, at most /30",
    },
    Variable {
        name: IPAM_MESH_MULTI_ZONE_SERVICE_CIDR,
        default: "127.2.0.0/16",
        rule: "an IPv4 CIDR inside 127.0.0.0/8, at most /30",
    },
    Variable { name: ROUTE53_ENABLED, default: "false", rule: "true or false" },
    Variable {
        name: ROUTE53_HOSTED_ZONE_ID,
        default: "",
        rule: "required when Route53 is enabled; Z123 or /hostedzone/Z123",
    },
    Variable { name: ROUTE53_REFRESH_INTERVAL, default: "10s", rule: "a duration from 100ms to 5m (500ms, 10s, 1m)" },
    Variable { name: TABLE_NAME, default: "loopmesh", rule: "a DynamoDB table name: 3..255 of A-Z a-z 0-9 _ - ." },
    Variable { name: RECORD_TTL, default: "60s", rule: "a duration of whole seconds, 1s..2147483647s" },
    Variable {
        name: ROUTE53_MAX_RPS,
        default: "5",
        rule: "requests per second to Route53, a number above 0 and at most 100",
    },
    Variable { name: SERVICE_DELETION_GRACE, default: "1h", rule: "a duration" },
    Variable {
        name: VIP_QUARANTINE,
        default: "2 x TTL + refresh interval",
        rule: "a duration, at least 2 x TTL + refresh interval",
    },
    Variable {
        name: DNS_FULL_AUDIT_INTERVAL,
        default: "1h",
        rule: "a duration: how often the drift audit lists whole zones even when record counts agree",
    },
    Variable {
        name: CLUSTERS,
        default: "",
        rule: "comma-separated ECS cluster names or ARNs; empty watches every cluster",
    },
    Variable {
        name: DNS_SHORT_NAMES_MESH,
        default: "default",
        rule: "a mesh name (one DNS label): the mesh whose services get <service>.<domain>; other meshes get <service>.<mesh>.<domain>",
    },
    Variable {
        name: REGISTER_AT,
        default: "healthy",
        rule: "healthy or running: when a task whose definition has container health checks gets its endpoints",
    },
    Variable {
        name: ZONE_NAME,
        default: "",
        rule: "the Kuma zone name: the kuma.io/zone label of generated MeshServices (what {{ .Zone }} renders); empty: none",
    },
    Variable {
        name: TASK_EVENTS_FAILURE_QUEUE,
        default: "",
        rule: "the URL of task-events' on-failure SQS queue, drained by each reconciliation; empty: none",
    },
];

/// Validated settings. Construct with [`Settings::from_env`] or [`Settings::from_lookup`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub dns_domain: String,
    pub vip_port: u16,
    pub pools: Pools,
    /// `Some` when Route53 is enabled.
    pub hosted_zone_id: Option<HostedZoneId>,
    pub refresh_interval: Duration,
    pub table_name: String,
    pub record_ttl: Duration,
    pub route53_max_rps: f64,
    pub service_deletion_grace: Duration,
    pub vip_quarantine: Duration,
    /// Empty means every cluster.
    pub clusters: Vec<String>,
    pub dns_full_audit_interval: Duration,
    /// The mesh whose `kuma.io/service` services get `<service>.<domain>`;
    /// every other mesh's get `<service>.<mesh>.<domain>`.
    pub short_names_mesh: String,
    /// task-events' on-failure destination, drained by the reconciliation.
    pub failure_queue_url: Option<String>,
    /// The Kuma zone this deployment is: generated MeshServices carry it as `kuma.io/zone`.
    pub zone_name: Option<String>,
    /// Register a task with container health checks only once ECS says it is HEALTHY.
    pub register_when_healthy: bool,
}

/// The four address pools, one per kind of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    pub service: Ipv4Net,
    pub mesh_service: Ipv4Net,
    pub mesh_external_service: Ipv4Net,
    pub mesh_multi_zone_service: Ipv4Net,
}

/// A Route53 hosted zone id without the `/hostedzone/` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostedZoneId(String);

impl HostedZoneId {
    /// Accepts `Z123` and `/hostedzone/Z123`; Route53 ids are upper-case letters and digits.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let id = raw.trim().trim_start_matches("/hostedzone/");
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return Err("a hosted zone id is 1..32 upper-case letters and digits, optionally after /hostedzone/");
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostedZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One violated rule: which variable, the value it had, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: {}", self.variable, crate::excerpt::quoted(&self.value), self.rule)
    }
}

/// Every violation found, in the order of [`VARIABLES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        // The defaults satisfy every rule; this is covered by a unit test.
        match Self::from_lookup(|_| None) {
            Ok(s) => s,
            Err(e) => unreachable!("defaults violate the contract: {e}"),
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads each variable through `lookup`; unset and empty both mean "default".
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut r = Reader { lookup: &lookup, errors: Vec::new() };

        let dns_domain = r.read(DNS_SERVER_DOMAIN, |v| {
            let name = v.strip_suffix('.').unwrap_or(v).to_ascii_lowercase();
            if name.starts_with('.') {
                return Err("a DNS name, no leading dot".into());
            }
            dns_name::validate(&name).map_err(|e| format!("a DNS name, no leading dot: {e}"))?;
            Ok(name)
        });
        let service = r.read(DNS_SERVER_CIDR, parse_pool);
        let vip_port = r.read(DNS_SERVER_SERVICE_VIP_PORT, |v| match v.parse::<u16>() {
            Ok(p) if p >= 1025 => Ok(p),
            _ => Err("a port in 1025..65535 (Fargate sidecars cannot bind privileged ports)".into()),
        });
        let mesh_service = r.read(IPAM_MESH_SERVICE_CIDR, parse_pool);
        let mesh_external_service = r.read(IPAM_MESH_EXTERNAL_SERVICE_CIDR, parse_pool);
        let mesh_multi_zone_service = r.read(IPAM_MESH_MULTI_ZONE_SERVICE_CIDR, parse_pool);
        let enabled = r.read(ROUTE53_ENABLED, |v| match v.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("true or false".into()),
        });
        let zone_raw = (r.lookup)(ROUTE53_HOSTED_ZONE_ID).filter(|v| !v.trim().is_empty());
        let hosted_zone_id = match (enabled, zone_raw) {
            (Some(true), None) => {
                r.fail(ROUTE53_HOSTED_ZONE_ID, "", "required when KMESH_RUNTIME_AWS_ROUTE53_ENABLED=true");
                None
            }
            // Checked even when disabled, so a bad value is named now; used
            // only when enabled (false means no Route53 call at all).
            (enabled, Some(raw)) => match HostedZoneId::parse(&raw) {
                Ok(id) => Some(id).filter(|_| enabled == Some(true)),
                Err(rule) => {
                    r.fail(ROUTE53_HOSTED_ZONE_ID, &raw, rule);
                    None
                }
            },
            _ => None,
        };
        let refresh_interval = r.read(ROUTE53_REFRESH_INTERVAL, |v| {
            let d = parse_duration(v)?;
            if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
                return Err("a duration from 100ms to 5m (500ms, 10s, 1m)".into());
            }
            Ok(d)
        });
        let table_name = r.read(TABLE_NAME, |v| {
            let ok = (3..=255).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if ok { Ok(v.to_owned()) } else { Err("a DynamoDB table name: 3..255 of A-Z a-z 0-9 _ - .".into()) }
        });
        let record_ttl = r.read(RECORD_TTL, |v| {
            let d = parse_duration(v)?;
            if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > i32::MAX as u64 {
                return Err("a duration of whole seconds, 1s..2147483647s".into());
            }
            Ok(d)
        });
        let route53_max_rps = r.read(ROUTE53_MAX_RPS, |v| match v.parse::<f64>() {
            Ok(x) if x > 0.0 && x <= 100.0 => Ok(x),
            _ => Err("a number of requests per second above 0 and at most 100".into()),
        });
        let service_deletion_grace = r.read(SERVICE_DELETION_GRACE, parse_duration);
        let dns_full_audit_interval = r.read(DNS_FULL_AUDIT_INTERVAL, parse_duration);
        let quarantine_set = (r.lookup)(VIP_QUARANTINE).filter(|v| !v.trim().is_empty());
        let short_names_mesh = r.read(DNS_SHORT_NAMES_MESH, |v| {
            if !v.contains('.') && crate::dns_name::validate(v).is_ok() {
                Ok(v.to_owned())
            } else {
                Err("a mesh name that is one DNS label (letters, digits, '-', '_')".into())
            }
        });
        let register_when_healthy = r.read(REGISTER_AT, |v| match v.to_ascii_lowercase().as_str() {
            "healthy" => Ok(true),
            "running" => Ok(false),
            _ => Err("healthy or running".into()),
        });
        let zone_name = (r.lookup)(ZONE_NAME).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let failure_queue_url =
            (r.lookup)(TASK_EVENTS_FAILURE_QUEUE).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let clusters = (r.lookup)(CLUSTERS)
            .map(|v| v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();

        // Overlaps are checked among the pools that parsed, so one bad CIDR
        // does not hide an overlap between two others.
        let parsed = [
            (DNS_SERVER_CIDR, service),
            (IPAM_MESH_SERVICE_CIDR, mesh_service),
            (IPAM_MESH_EXTERNAL_SERVICE_CIDR, mesh_external_service),
            (IPAM_MESH_MULTI_ZONE_SERVICE_CIDR, mesh_multi_zone_service),
        ];
        for (i, (a, na)) in parsed.iter().enumerate() {
            for (b, nb) in &parsed[i + 1..] {
                if let (Some(na), Some(nb)) = (na, nb)
                    && (na.contains(&nb.network()) || nb.contains(&na.network()))
                {
                    r.fail(b, &lookup_or_default(&lookup, b), &format!("must not overlap {a}"));
                }
            }
        }
        let pools = match (service, mesh_service, mesh_external_service, mesh_multi_zone_service) {
            (Some(service), Some(mesh_service), Some(mesh_external_service), Some(mesh_multi_zone_service)) => {
                Some(Pools { service, mesh_service, mesh_external_service, mesh_multi_zone_service })
            }
            _ => None,
        };

        let floor = match (record_ttl, refresh_interval) {
            (Some(ttl), Some(refresh)) => Some(ttl * 2 + refresh),
            _ => None,
        };
        let vip_quarantine = match (quarantine_set, floor) {
            (None, floor) => floor,
            (Some(raw), floor) => match parse_duration(&raw) {
                Ok(d) if floor.is_none_or(|f| d >= f) => Some(d),
                Ok(_) => {
                    let f = floor.unwrap_or_default();
                    r.fail(
                        VIP_QUARANTINE,
                        &raw,
                        &format!("at least 2 x TTL + refresh interval ({})", humantime::format_duration(f)),
                    );
                    None
                }
                Err(rule) => {
                    r.fail(VIP_QUARANTINE, &raw, &rule);
                    None
                }
            },
        };

        if !r.errors.is_empty() {
            let order = |e: &ConfigError| VARIABLES.iter().position(|v| v.name == e.variable).unwrap_or(usize::MAX);
            r.errors.sort_by_key(order);
            return Err(ConfigErrors(r.errors));
        }
        match (
            dns_domain,
            vip_port,
            pools,
            refresh_interval,
            table_name,
            record_ttl,
            route53_max_rps,
            service_deletion_grace,
            vip_quarantine,
            dns_full_audit_interval,
            short_names_mesh,
            register_when_healthy,
        ) {
            (
                Some(dns_domain),
                Some(vip_port),
                Some(pools),
                Some(refresh_interval),
                Some(table_name),
                Some(record_ttl),
                Some(route53_max_rps),
                Some(service_deletion_grace),
                Some(vip_quarantine),
                Some(dns_full_audit_interval),
                Some(short_names_mesh),
                Some(register_when_healthy),
            ) => Ok(Self {
                dns_domain,
                vip_port,
                pools,
                hosted_zone_id,
                refresh_interval,
                table_name,
                record_ttl,
                route53_max_rps,
                service_deletion_grace,
                vip_quarantine,
                clusters,
                dns_full_audit_interval,
                short_names_mesh,
                failure_queue_url,
                zone_name,
                register_when_healthy,
            }),
            _ => unreachable!("every missing value recorded an error"),
        }
    }

    pub fn route53_enabled(&self) -> bool {
        self.hosted_zone_id.is_some()
    }
}

impl Pools {
    /// The pool that holds the VIPs of one kind of service.
    pub fn for_kind(&self, kind: crate::vip::ServiceKind) -> Ipv4Net {
        use crate::vip::ServiceKind::*;
        match kind {
            Service => self.service,
            MeshService => self.mesh_service,
            MeshExternalService => self.mesh_external_service,
            MeshMultiZoneService => self.mesh_multi_zone_service,
        }
    }
}

struct Reader<'a, F> {
    lookup: &'a F,
    errors: Vec<ConfigError>,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    /// Parses the variable, or its default when unset or empty; records a failure.
    fn read<T>(&mut self, name: &'static str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let raw = lookup_or_default(self.lookup, name);
        match parse(raw.trim()) {
            Ok(v) => Some(v),
            Err(rule) => {
                self.fail(name, &raw, &rule);
                None
            }
        }
    }

    fn fail(&mut self, variable: &'static str, value: &str, rule: &str) {
        self.errors.push(ConfigError { variable, value: value.to_owned(), rule: rule.to_owned() });
    }
}

fn lookup_or_default(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> String {
    lookup(name)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| VARIABLES.iter().find(|v| v.name == name).map(|v| v.default.to_owned()).unwrap_or_default())
}

fn parse_pool(v: &str) -> Result<Ipv4Net, String> {
    let loopback: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default();
    let net: Ipv4Net = v.parse().map_err(|_| "an IPv4 CIDR such as 127.1.0.0/16".to_owned())?;
    if !loopback.contains(&net) {
        return Err("inside 127.0.0.0/8 (the VIPs are loopback addresses the sidecar binds)".into());
    }
    if net.prefix_len() > 30 {
        return Err("at most /30, so the pool has usable addresses besides network and broadcast".into());
    }
    // Store the canonical network so 127.1.2.3/16 and 127.1.0.0/16 are one pool.
    Ok(net.trunc())
}

/// A duration as `500ms`, `10s`, `1m`, `1h30m`; a bare number is seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|_| "a duration such as 500ms, 10s, 1m or 1h".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    fn violations(vars: &[(&str, &str)]) -> Vec<ConfigError> {
        settings(vars).expect_err("expected a violation").0
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.dns_domain, "mesh.local");
        assert_eq!(s.pools.service.to_string(), "127.1.0.0/16");
        assert_eq!(s.pools.mesh_multi_zone_service.to_string(), "127.2.0.0/16");
        assert_eq!(s.pools.mesh_external_service.to_string(), "127.3.0.0/16");
        assert_eq!(s.pools.mesh_service.to_string(), "127.4.0.0/16");
        assert_eq!(s.vip_port, 8080);
        assert!(!s.route53_enabled());
        assert_eq!(s.refresh_interval, Duration::from_secs(10));
        assert_eq!(s.table_name, "loopmesh");
        assert_eq!(s.record_ttl, Duration::from_secs(60));
        assert_eq!(s.route53_max_rps, 5.0);
        assert_eq!(s.service_deletion_grace, Duration::from_secs(3600));
        assert_eq!(s.vip_quarantine, Duration::from_secs(130));
        assert!(s.clusters.is_empty());
    }

    #[test]
    fn cidr_outside_loopback_names_variable_value_and_rule() {
        let errs = violations(&[(DNS_SERVER_CIDR, "10.1.0.0/16")]);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].variable, DNS_SERVER_CIDR);
        assert_eq!(errs[0].value, "10.1.0.0/16");
        assert!(errs[0].rule.contains("127.0.0.0/8"), "{}", errs[0].rule);
    }

    #[test]
    fn unparsable_cidr_is_reported() {
        let errs = violations(&[(IPAM_MESH_SERVICE_CIDR, "127.4.0.0/33")]);
        assert_eq!(errs[0].variable, IPAM_MESH_SERVICE_CIDR);
        assert!(errs[0].rule.contains("CIDR"));
    }

    #[test]
    fn overlapping_cidrs_are_reported() {
        let errs = violations(&[(IPAM_MESH_SERVICE_CIDR, "127.1.128.0/17")]);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].variable, IPAM_MESH_SERVICE_CIDR);
        assert!(errs[0].rule.contains("must not overlap KUMA_DNS_SERVER_CIDR"), "{}", errs[0].rule);
    }

    #[test]
    fn an_overlap_is_reported_even_when_another_cidr_is_invalid() {
        let errs =
            violations(&[(IPAM_MESH_SERVICE_CIDR, "127.1.128.0/17"), (IPAM_MESH_EXTERNAL_SERVICE_CIDR, "10.0.0.0/8")]);
        let vars: Vec<&str> = errs.iter().map(|e| e.variable).collect();
        assert_eq!(vars, [IPAM_MESH_SERVICE_CIDR, IPAM_MESH_EXTERNAL_SERVICE_CIDR], "{errs:?}");
        assert!(errs[0].rule.contains("must not overlap"), "{}", errs[0].rule);
    }

    #[test]
    fn route53_disabled_means_disabled_even_with_a_zone_id() {
        let s = settings(&[(ROUTE53_ENABLED, "false"), (ROUTE53_HOSTED_ZONE_ID, "Z123ABC")]).unwrap();
        assert!(!s.route53_enabled());
        assert_eq!(s.hosted_zone_id, None);
        let errs = violations(&[(ROUTE53_ENABLED, "false"), (ROUTE53_HOSTED_ZONE_ID, "not a zone!")]);
        assert_eq!(errs[0].variable, ROUTE53_HOSTED_ZONE_ID, "a bad value is named even when disabled");
    }

    #[test]
    fn vip_port_must_be_unprivileged() {
        for bad in ["80", "1024", "0", "65536", "http"] {
            let errs = violations(&[(DNS_SERVER_SERVICE_VIP_PORT, bad)]);
            assert_eq!(errs[0].variable, DNS_SERVER_SERVICE_VIP_PORT, "{bad}");
            assert!(errs[0].rule.contains("1025..65535"));
        }
        assert_eq!(settings(&[(DNS_SERVER_SERVICE_VIP_PORT, "1025")]).unwrap().vip_port, 1025);
    }

    #[test]
    fn unparsable_duration_is_reported() {
        let errs = violations(&[(ROUTE53_REFRESH_INTERVAL, "soon")]);
        assert_eq!(errs[0].variable, ROUTE53_REFRESH_INTERVAL);
        assert!(errs[0].rule.contains("duration"));
        // The contract's own example.
        assert_eq!(
            settings(&[(ROUTE53_REFRESH_INTERVAL, "500ms")]).unwrap().refresh_interval,
            Duration::from_millis(500)
        );
        assert_eq!(
            settings(&[(ROUTE53_REFRESH_INTERVAL, "10ms")]).map(|s| s.refresh_interval),
            Err(ConfigErrors(vec![ConfigError {
                variable: ROUTE53_REFRESH_INTERVAL,
                value: "10ms".into(),
                rule: "a duration from 100ms to 5m (500ms, 10s, 1m)".into(),
            }]))
        );
        assert_eq!(settings(&[(ROUTE53_REFRESH_INTERVAL, "1m")]).unwrap().refresh_interval, Duration::from_secs(60));
    }

    #[test]
    fn route53_enabled_needs_a_zone_id() {
        let errs = violations(&[(ROUTE53_ENABLED, "true")]);
        assert_eq!(errs[0].variable, ROUTE53_HOSTED_ZONE_ID);
        assert!(errs[0].rule.contains("required"));
        let s = settings(&[(ROUTE53_ENABLED, "true"), (ROUTE53_HOSTED_ZONE_ID, "/hostedzone/Z123ABC")]).unwrap();
        assert_eq!(s.hosted_zone_id.unwrap().as_str(), "Z123ABC");
    }

    #[test]
    fn malformed_zone_id_and_flag_are_reported() {
        let errs = violations(&[(ROUTE53_ENABLED, "yes"), (ROUTE53_HOSTED_ZONE_ID, "z-lower")]);
        let vars: Vec<_> = errs.iter().map(|e| e.variable).collect();
        assert_eq!(vars, [ROUTE53_ENABLED, ROUTE53_HOSTED_ZONE_ID]);
    }

    #[test]
    fn domain_rules() {
        for bad in [".mesh.local", "mesh..local", "me sh.local", "mesh_local!", "-mesh.local"] {
            let errs = violations(&[(DNS_SERVER_DOMAIN, bad)]);
            assert_eq!(errs[0].variable, DNS_SERVER_DOMAIN, "{bad}");
            assert!(errs[0].rule.starts_with("a DNS name, no leading dot"), "{}", errs[0].rule);
        }
        assert_eq!(settings(&[(DNS_SERVER_DOMAIN, "Mesh.Local.")]).unwrap().dns_domain, "mesh.local");
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let errs = violations(&[
            (DNS_SERVER_DOMAIN, ".bad"),
            (DNS_SERVER_CIDR, "10.0.0.0/8"),
            (DNS_SERVER_SERVICE_VIP_PORT, "80"),
            (ROUTE53_ENABLED, "true"),
            (ROUTE53_REFRESH_INTERVAL, "often"),
            (ROUTE53_MAX_RPS, "0"),
        ]);
        let vars: Vec<_> = errs.iter().map(|e| e.variable).collect();
        assert_eq!(
            vars,
            [
                DNS_SERVER_DOMAIN,
                DNS_SERVER_CIDR,
                DNS_SERVER_SERVICE_VIP_PORT,
                ROUTE53_HOSTED_ZONE_ID,
                ROUTE53_REFRESH_INTERVAL,
                ROUTE53_MAX_RPS
            ]
        );
        let text = ConfigErrors(errs).to_string();
        assert!(text.contains("KUMA_DNS_SERVER_CIDR=\"10.0.0.0/8\""), "{text}");
    }

    #[test]
    fn quarantine_has_a_floor() {
        let errs = violations(&[(VIP_QUARANTINE, "1m")]);
        assert_eq!(errs[0].variable, VIP_QUARANTINE);
        assert!(errs[0].rule.contains("2m 10s"), "{}", errs[0].rule);
        let s = settings(&[(VIP_QUARANTINE, "10m"), (RECORD_TTL, "30")]).unwrap();
        assert_eq!(s.vip_quarantine, Duration::from_secs(600));
        assert_eq!(s.record_ttl, Duration::from_secs(30));
    }

    #[test]
    fn clusters_are_a_list() {
        let s = settings(&[(CLUSTERS, "prod, arn:aws:ecs:us-east-1:1:cluster/stage,")]).unwrap();
        assert_eq!(s.clusters, ["prod", "arn:aws:ecs:us-east-1:1:cluster/stage"]);
    }

    #[test]
    fn the_short_names_mesh_is_one_label() {
        assert_eq!(settings(&[]).unwrap().short_names_mesh, "default");
        assert_eq!(settings(&[(DNS_SHORT_NAMES_MESH, "prod")]).unwrap().short_names_mesh, "prod");
        let errs = violations(&[(DNS_SHORT_NAMES_MESH, "a.b")]);
        assert_eq!((errs[0].variable, errs[0].value.as_str()), (DNS_SHORT_NAMES_MESH, "a.b"));
        assert!(errs[0].rule.contains("one DNS label"), "{}", errs[0].rule);
    }
}
