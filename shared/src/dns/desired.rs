//! The source: which records the mesh wants, from services with VIPs and the
//! HostnameGenerators that name them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::Record;
use crate::config::HostedZoneId;
use crate::dns_name;
use crate::model::{HostnameGenerator, HostnameTarget, Labels};
use crate::template::TemplateInput;
use crate::vip::{ServiceKey, ServiceKind, UnixSeconds};

/// A service that holds a VIP, as the table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedService {
    pub key: ServiceKey,
    pub vip: Ipv4Addr,
    pub labels: Labels,
    /// When it got its VIP: the older of two services keeps a contested name.
    pub assigned_at: UnixSeconds,
}

/// Two services that render one name: the older keeps it, never an overwrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub zone: HostedZoneId,
    pub name: String,
    pub kept: ServiceKey,
    pub refused: ServiceKey,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub records: Vec<Record>,
    pub owners: BTreeMap<(HostedZoneId, String), ServiceKey>,
    pub collisions: Vec<Collision>,
    /// Names that could not be made, with why (a missing label, an invalid name).
    pub errors: Vec<(ServiceKey, String)>,
}

/// What the settings say about names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSettings {
    pub domain: String,
    /// `KMESH_RUNTIME_AWS_ROUTE53_HOSTED_ZONE_ID`: the zone of `<service>.<domain>`
    /// names and of generators that name no zone.
    pub default_zone: Option<HostedZoneId>,
    pub ttl: u32,
    /// The mesh whose services get `<service>.<domain>` (see [`names_of`]).
    pub short_names_mesh: String,
}

/// Every record the services want.
pub fn desired(services: &[NamedService], generators: &[HostnameGenerator], settings: &NameSettings) -> Desired {
    let mut candidates: Vec<(HostedZoneId, String, &NamedService)> = Vec::new();
    let mut out = Desired::default();
    let mut ordered: Vec<&NamedService> = services.iter().collect();
    ordered.sort_by(|a, b| (a.assigned_at, &a.key).cmp(&(b.assigned_at, &b.key)));
    for svc in ordered {
        for (zone, name) in names_of(svc, generators, settings, &mut out.errors) {
            match dns_name::validate(&name) {
                Ok(()) => candidates.push((zone, name, svc)),
                Err(e) => out.errors.push((
                    svc.key.clone(),
                    format!("name {} is not a valid DNS name: {e}", crate::excerpt::quoted(&name)),
                )),
            }
        }
    }
    for (zone, name, svc) in candidates {
        let id = (zone.clone(), name.clone());
        if let Some(kept) = out.owners.get(&id) {
            if *kept != svc.key {
                out.collisions.push(Collision { zone, name, kept: kept.clone(), refused: svc.key.clone() });
            }
            continue;
        }
        out.owners.insert(id, svc.key.clone());
        out.records.push(Record { zone, name, value: svc.vip, ttl: settings.ttl });
    }
    out.records.sort();
    out
}

fn names_of(
    svc: &NamedService,
    generators: &[HostnameGenerator],
    settings: &NameSettings,
    errors: &mut Vec<(ServiceKey, String)>,
) -> Vec<(HostedZoneId, String)> {
    let target = match svc.key.kind {
        ServiceKind::Service => {
            let Some(zone) = &settings.default_zone else { return Vec::new() };
            // One zone holds every mesh's names, but a VIP means something
            // only inside its mesh. The short `<service>.<domain>` belongs to
            // one configured mesh (Kuma's `default`, Kong's example's mesh);
            // every other mesh publishes `<service>.<mesh>.<domain>`. So two
            // meshes never contend for a name on arrival order.
            let domain = if settings.short_names_mesh == svc.key.mesh {
                settings.domain.clone()
            } else {
                format!("{}.{}", svc.key.mesh, settings.domain)
            };
            let mut names = vec![(zone.clone(), format!("{}.{domain}", svc.key.name).to_ascii_lowercase())];
            if svc.key.name.contains('_') {
                let dotted = format!("{}.{domain}", svc.key.name.replace('_', "."));
                names.push((zone.clone(), dotted.to_ascii_lowercase()));
            }
            return names;
        }
        ServiceKind::MeshService => HostnameTarget::MeshService,
        ServiceKind::MeshExternalService => HostnameTarget::MeshExternalService,
        ServiceKind::MeshMultiZoneService => HostnameTarget::MeshMultiZoneService,
    };
    let display = crate::model::display_name(&svc.key.name, &svc.labels);
    // As Kuma: .Zone and .Namespace come from the resource's labels.
    let label = |k: &str| svc.labels.get(k).map(String::as_str).unwrap_or_default();
    let input = TemplateInput {
        name: &svc.key.name,
        display_name: display,
        mesh: &svc.key.mesh,
        zone: label("kuma.io/zone"),
        namespace: label("k8s.kuma.io/namespace"),
        labels: Some(&svc.labels),
    };
    let mut out = Vec::new();
    for g in generators.iter().filter(|g| g.selects(target, &svc.labels)) {
        let name = match g.template.render(&input) {
            Ok(n) => n,
            Err(e) => {
                errors.push((svc.key.clone(), format!("HostnameGenerator {:?}: {e}", g.name)));
                continue;
            }
        };
        let zones: Vec<HostedZoneId> = if g.zones.is_empty() {
            settings.default_zone.iter().cloned().collect()
        } else {
            g.zones.iter().map(|z| z.hosted_zone_id.clone()).collect()
        };
        if zones.is_empty() {
            errors.push((
                svc.key.clone(),
                format!("HostnameGenerator {:?} names no hosted zone and Route53 has no default zone", g.name),
            ));
        }
        out.extend(zones.into_iter().map(|z| (z, name.clone())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Resource, parse_one};

    fn settings() -> NameSettings {
        NameSettings {
            domain: "mesh.local".into(),
            default_zone: Some(HostedZoneId::parse("ZDEF").unwrap()),
            ttl: 60,
            short_names_mesh: "default".into(),
        }
    }

    #[test]
    fn two_meshes_with_one_service_name_get_distinct_names() {
        let mut prod = svc(ServiceKind::Service, "redis", 7, 0, &[]);
        let mut dev = svc(ServiceKind::Service, "redis", 7, 0, &[]);
        prod.key = ServiceKey::new("default", ServiceKind::Service, "redis");
        dev.key = ServiceKey::new("dev", ServiceKind::Service, "redis");
        // Whichever registers first, the short name is the short-names mesh's.
        for order in [vec![dev.clone(), prod.clone()], vec![prod.clone(), dev.clone()]] {
            let d = desired(&order, &[], &settings());
            let names: Vec<_> = d.records.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["redis.dev.mesh.local", "redis.mesh.local"]);
            assert!(d.collisions.is_empty(), "{:?}", d.collisions);
        }
        let other = NameSettings { short_names_mesh: "prod".into(), ..settings() };
        let d = desired(&[prod], &[], &other);
        assert_eq!(d.records[0].name, "redis.default.mesh.local");
    }

    fn svc(kind: ServiceKind, name: &str, last: u8, at: UnixSeconds, labels: &[(&str, &str)]) -> NamedService {
        NamedService {
            key: ServiceKey::new("default", kind, name),
            vip: Ipv4Addr::new(127, 1, 0, last),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            assigned_at: at,
        }
    }

    fn generator(text: &str) -> HostnameGenerator {
        match parse_one(text).unwrap() {
            Resource::HostnameGenerator(g) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kuma_service_names_and_the_dot_variant() {
        let d = desired(&[svc(ServiceKind::Service, "my_svc", 7, 0, &[])], &[], &settings());
        let names: Vec<_> = d.records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["my.svc.mesh.local", "my_svc.mesh.local"]);
        assert!(d.records.iter().all(|r| r.value == Ipv4Addr::new(127, 1, 0, 7) && r.zone.as_str() == "ZDEF"));
    }

    #[test]
    fn generators_name_mesh_services_in_their_zones() {
        let g = generator(include_str!("../../tests/fixtures/hostname-generators.yaml").split("---").nth(2).unwrap());
        let kv = svc(ServiceKind::MeshMultiZoneService, "kv", 2, 0, &[("kuma.io/origin", "global")]);
        let d = desired(&[kv], &[g], &settings());
        let got: Vec<_> = d.records.iter().map(|r| (r.zone.as_str(), r.name.as_str())).collect();
        assert_eq!(
            got,
            [("Z0AAAAAAAAAAAAAAAAAAA", "kv.mzms.mesh.local"), ("Z0BBBBBBBBBBBBBBBBBBB", "kv.mzms.mesh.local")]
        );
    }

    #[test]
    fn two_services_one_name_the_older_keeps_it() {
        let g = generator(
            "type: HostnameGenerator\nname: g\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ label \\\"team\\\" }}.svc.mesh.local\"\n",
        );
        let old = svc(ServiceKind::MeshService, "a", 1, 10, &[("team", "x")]);
        let new = svc(ServiceKind::MeshService, "b", 2, 20, &[("team", "x")]);
        let d = desired(&[new.clone(), old.clone()], &[g], &settings());
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0].value, old.vip);
        assert_eq!(
            d.collisions,
            [Collision {
                zone: HostedZoneId::parse("ZDEF").unwrap(),
                name: "x.svc.mesh.local".into(),
                kept: old.key,
                refused: new.key
            }]
        );
    }

    #[test]
    fn bad_renders_are_reported_not_published() {
        let g = generator(
            "type: HostnameGenerator\nname: lbl\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ label \\\"nope\\\" }}.x\"\n",
        );
        let zoned = generator(
            "type: HostnameGenerator\nname: zoned\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ .DisplayName }}.{{ .Zone }}.svc.mesh.local\"\n",
        );
        let d = desired(&[svc(ServiceKind::MeshService, "a", 1, 0, &[])], &[g, zoned], &settings());
        assert!(d.records.is_empty());
        assert_eq!(d.errors.len(), 2);
        assert!(
            d.errors[0].1.contains("HostnameGenerator \"lbl\": the resource has no label \"nope\""),
            "{:?}",
            d.errors
        );
        assert!(d.errors[1].1.contains(".Zone (the kuma.io/zone label) is empty"), "{:?}", d.errors);
    }

    #[test]
    fn zone_and_namespace_come_from_labels_as_in_kuma() {
        let zoned = generator(
            "type: HostnameGenerator\nname: zoned\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ .DisplayName }}.{{ .Zone }}.{{ .Namespace }}.svc.mesh.local\"\n",
        );
        let kv =
            svc(ServiceKind::MeshService, "kv", 1, 0, &[("kuma.io/zone", "East"), ("k8s.kuma.io/namespace", "shop")]);
        let d = desired(&[kv], &[zoned], &settings());
        assert_eq!(d.records[0].name, "kv.east.shop.svc.mesh.local");
    }
}
