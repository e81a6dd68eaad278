//! The SAM template's IAM: no write action on Route53 or DynamoDB may have a
//! `*` resource (least privilege).

use serde_yaml_ng::Value;

fn statements(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Mapping(m) => {
            if let Some(Value::Sequence(s)) = m.get("Statement") {
                out.extend(s.iter().cloned());
            }
            for (_, child) in m {
                statements(child, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|c| statements(c, out)),
        Value::Tagged(t) => statements(&t.value, out),
        _ => {}
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(s)) => s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

fn is_write(action: &str) -> bool {
    let (service, verb) = action.split_once(':').unwrap_or(("", action));
    match service {
        "route53" => !(verb.starts_with("Get") || verb.starts_with("List")),
        "dynamodb" => ["Put", "Update", "Delete", "BatchWrite", "TransactWrite", "Create", "*"]
            .iter()
            .any(|w| verb.starts_with(w)),
        _ => false,
    }
}

#[test]
fn no_route53_or_dynamodb_write_action_has_a_star_resource() {
    let template: Value = serde_yaml_ng::from_str(loopmesh_shared::store::table::TEMPLATE).expect("template parses");
    let mut all = Vec::new();
    statements(&template, &mut all);
    assert!(all.len() >= 4, "policies found: {}", all.len());
    let mut writes = 0;
    for st in &all {
        let actions = strings(st.get("Action"));
        let resources = strings(st.get("Resource"));
        for a in actions.iter().filter(|a| is_write(a)) {
            writes += 1;
            assert!(!resources.iter().any(|r| r == "*"), "{a} has a * resource");
            assert!(st.get("Resource").is_some(), "{a} has no resource");
        }
    }
    assert!(writes >= 5, "expected the functions' write actions, found {writes}");
}
