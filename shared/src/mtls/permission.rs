//! Which MeshTrafficPermission decides a connection, as Kuma decides it.
//!
//! Every `from` entry of every policy whose `targetRef` selects the inbound
//! and whose `from[].targetRef` selects the client is a candidate. They are
//! ordered by Kuma's priority, lowest first:
//!
//! 1. the `from` entry's targetRef (Mesh < MeshSubset < MeshService);
//! 2. the policy's targetRef, by the same order;
//! 3. the policy's name, in inverted lexicographic order (`aaa` over `zzz`);
//! 4. the entry's place in its policy (a later entry over an earlier one).
//!
//! The last one decides, as Kuma's merge of `default`s does. When none
//! applies the connection is denied: Kuma's default under mTLS.

use std::cmp::Reverse;

use crate::model::{Action, Labels, MeshTrafficPermission, SERVICE_TAG};

/// What happens to a connection, and which policy said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        policy: String,
    },
    /// Allowed; logged and counted as a denial would be.
    ShadowDeny {
        policy: String,
    },
    Deny {
        policy: String,
    },
    /// No policy applies: denied.
    NoPolicy,
}

impl Decision {
    pub fn allows(&self) -> bool {
        matches!(self, Self::Allow { .. } | Self::ShadowDeny { .. })
    }
}

/// The decision for `client` (its `kuma.io/service`) connecting to an
/// inbound with `inbound_tags`.
pub fn decide(policies: &[MeshTrafficPermission], inbound_tags: &Labels, client: &str) -> Decision {
    let client_tags = Labels::from([(SERVICE_TAG.to_owned(), client.to_owned())]);
    let winner = policies
        .iter()
        .filter(|p| p.target.selects(inbound_tags))
        .flat_map(|p| {
            p.from
                .iter()
                .enumerate()
                .filter(|(_, f)| f.target.selects(&client_tags))
                .map(move |(i, f)| ((f.target.rank(), p.target.rank(), Reverse(p.name.as_str()), i), p, f.action))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    match winner {
        None => Decision::NoPolicy,
        Some((_, p, Action::Allow)) => Decision::Allow { policy: p.name.clone() },
        Some((_, p, Action::AllowWithShadowDeny)) => Decision::ShadowDeny { policy: p.name.clone() },
        Some((_, p, Action::Deny)) => Decision::Deny { policy: p.name.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Resource, parse_one};

    fn mtp(yaml: &str) -> MeshTrafficPermission {
        match parse_one(yaml) {
            Ok(Resource::MeshTrafficPermission(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    fn policy(name: &str, target: &str, from: &[(&str, &str)]) -> MeshTrafficPermission {
        let from: String =
            from.iter().map(|(t, a)| format!("  - targetRef: {t}\n    default:\n      action: {a}\n")).collect();
        mtp(&format!(
            "type: MeshTrafficPermission\nname: {name}\nmesh: default\nspec:\n  targetRef: {target}\n  from:\n{from}"
        ))
    }

    fn inbound(service: &str) -> Labels {
        Labels::from([(SERVICE_TAG.to_owned(), service.to_owned()), ("version".to_owned(), "v2".to_owned())])
    }

    const MESH: &str = "{kind: Mesh}";

    #[test]
    fn none_applies_then_deny() {
        assert_eq!(decide(&[], &inbound("payments"), "orders"), Decision::NoPolicy);
        let other = policy("p", "{kind: MeshService, name: billing}", &[(MESH, "Allow")]);
        assert_eq!(decide(&[other], &inbound("payments"), "orders"), Decision::NoPolicy);
        assert!(!Decision::NoPolicy.allows());
    }

    #[test]
    fn the_more_specific_client_selector_wins_whatever_the_policy() {
        let allow_all = policy("allow-all", MESH, &[(MESH, "Allow")]);
        let deny_orders = policy("zzz-deny", MESH, &[("{kind: MeshService, name: orders}", "Deny")]);
        let p = [deny_orders, allow_all];
        assert_eq!(decide(&p, &inbound("payments"), "orders"), Decision::Deny { policy: "zzz-deny".into() });
        assert_eq!(decide(&p, &inbound("payments"), "web"), Decision::Allow { policy: "allow-all".into() });
        let subset =
            policy("s", MESH, &[("{kind: MeshSubset, tags: {kuma.io/service: orders}}", "AllowWithShadowDeny")]);
        let p = [subset.clone(), policy("m", MESH, &[(MESH, "Deny")])];
        assert_eq!(decide(&p, &inbound("payments"), "orders"), Decision::ShadowDeny { policy: "s".into() });
        assert!(decide(&p, &inbound("payments"), "orders").allows());
    }

    #[test]
    fn then_the_more_specific_target_then_the_smaller_name_then_the_later_entry() {
        let mesh_wide = policy("a", MESH, &[(MESH, "Deny")]);
        let for_payments = policy("z", "{kind: MeshService, name: payments}", &[(MESH, "Allow")]);
        let subset = policy("b", "{kind: MeshSubset, tags: {version: v2}}", &[(MESH, "Deny")]);
        let p = [for_payments.clone(), mesh_wide.clone(), subset.clone()];
        assert_eq!(decide(&p, &inbound("payments"), "x"), Decision::Allow { policy: "z".into() });
        let p = [mesh_wide.clone(), subset];
        assert_eq!(decide(&p, &inbound("payments"), "x"), Decision::Deny { policy: "b".into() });
        // Same target kind: `aaa` outranks `bbb`.
        let p = [policy("bbb", MESH, &[(MESH, "Deny")]), policy("aaa", MESH, &[(MESH, "Allow")])];
        assert_eq!(decide(&p, &inbound("payments"), "x"), Decision::Allow { policy: "aaa".into() });
        // Within one policy, the later entry.
        let p = [policy("one", MESH, &[(MESH, "Allow"), (MESH, "Deny")])];
        assert_eq!(decide(&p, &inbound("payments"), "x"), Decision::Deny { policy: "one".into() });
    }

    #[test]
    fn client_selectors_on_tags_a_certificate_does_not_carry_are_refused() {
        let e = parse_one("type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: MeshSubset, tags: {version: v1}}\n    default: {action: Allow}\n").unwrap_err();
        assert!(e.to_string().contains("spec.from[0].targetRef.tags"), "{e}");
        let e = parse_one("type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Maybe}\n").unwrap_err();
        assert!(e.to_string().contains("spec.from[0].default.action"), "{e}");
        let e = parse_one(
            "type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  targetRef: {kind: Dataplane}\n  from: []\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.targetRef.kind") && e.to_string().contains("spec.from"), "{e}");
    }
}
