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

#[test]
fn every_function_has_its_own_role_and_logs_only_to_its_own_group() {
    let template: Value = serde_yaml_ng::from_str(loopmesh_shared::store::table::TEMPLATE).expect("template parses");
    let resources = template.get("Resources").and_then(Value::as_mapping).expect("Resources");
    let mut functions = 0;
    for (name, r) in resources {
        if r.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        let props = r.get("Properties").expect("Properties");
        // Without a Role, SAM adds AWSLambdaBasicExecutionRole: logs on every group.
        assert!(props.get("Role").is_some(), "{name:?} has no Role of its own");
        assert!(props.get("Policies").is_none(), "{name:?}: policies belong on its role");
        assert!(props.get("LoggingConfig").is_some(), "{name:?} names its log group");
    }
    assert_eq!(functions, 5);
    let mut all = Vec::new();
    statements(&template, &mut all);
    let logs: Vec<&Value> =
        all.iter().filter(|st| strings(st.get("Action")).iter().any(|a| a.starts_with("logs:"))).collect();
    assert_eq!(logs.len(), 5, "one logs statement per function");
    for st in logs {
        assert!(!strings(st.get("Resource")).iter().any(|r| r == "*"), "logs on *: {st:?}");
    }
}

#[test]
fn route53_writes_are_limited_to_a_records() {
    let template: Value = serde_yaml_ng::from_str(loopmesh_shared::store::table::TEMPLATE).expect("template parses");
    let mut all = Vec::new();
    statements(&template, &mut all);
    let writes: Vec<&Value> = all
        .iter()
        .filter(|st| strings(st.get("Action")).iter().any(|a| a == "route53:ChangeResourceRecordSets"))
        .collect();
    assert_eq!(writes.len(), 1);
    let condition = writes[0].get("Condition").expect("a condition on Route53 writes");
    let types = condition
        .get("ForAllValues:StringEquals")
        .and_then(|c| c.get("route53:ChangeResourceRecordSetsRecordTypes"))
        .expect("record types");
    assert_eq!(strings(Some(types)), ["A"]);
    assert!(
        condition
            .get("ForAllValues:StringLike")
            .and_then(|c| c.get("route53:ChangeResourceRecordSetsNormalizedRecordNames"))
            .is_some(),
        "names limited to the mesh domain"
    );
}

/// Every read the sidecar's view code makes (`DynamoMeshView`) is allowed,
/// only on the table, and only in the partition of the task role's mesh tag.
#[test]
fn the_sidecar_policy_allows_the_view_reads_in_its_own_mesh_only() {
    let template: Value = serde_yaml_ng::from_str(loopmesh_shared::store::table::TEMPLATE).expect("template parses");
    let policy = &template["Resources"]["SidecarReadPolicy"]["Properties"]["PolicyDocument"];
    let mut all = Vec::new();
    statements(policy, &mut all);
    assert_eq!(all.len(), 2);
    let actions = strings(all[0].get("Action"));
    assert_eq!(actions, ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchGetItem"]);
    let leading = strings(all[0]["Condition"]["ForAllValues:StringEquals"].get("dynamodb:LeadingKeys"));
    assert_eq!(leading, ["MESH#${aws:PrincipalTag/kuma.io/mesh}"]);
    let source = include_str!("../../shared/src/store/dynamo/mesh_view.rs");
    for call in [".get_item()", ".query()", ".batch_get_item()"] {
        assert!(source.contains(call), "the view no longer calls {call}: update this test and the policy");
    }
    assert!(!source.contains(".scan()") && !source.contains("put_item"), "the view must only read");
    // And the certificate: invoking the issuer function, nothing else.
    assert_eq!(strings(all[1].get("Action")), ["lambda:InvokeFunction"]);
    assert!(format!("{:?}", all[1]["Resource"]).contains("IssuerFunction.Arn"), "{:?}", all[1]);
}

/// The issuer signs with the CA key and can do nothing else with it; its
/// other grants are the role tags, the table and `loopmesh/` secrets.
#[test]
fn the_issuer_only_signs_with_the_ca_key() {
    let template: Value = serde_yaml_ng::from_str(loopmesh_shared::store::table::TEMPLATE).expect("template parses");
    let key = &template["Resources"]["CaKey"]["Properties"];
    assert_eq!(key["KeySpec"], Value::from("ECC_NIST_P256"));
    assert_eq!(key["KeyUsage"], Value::from("SIGN_VERIFY"));
    let mut all = Vec::new();
    statements(&template["Resources"]["IssuerRole"], &mut all);
    let kms: Vec<&Value> =
        all.iter().filter(|st| strings(st.get("Action")).iter().any(|a| a.starts_with("kms:"))).collect();
    assert_eq!(kms.len(), 1);
    assert_eq!(strings(kms[0].get("Action")), ["kms:Sign", "kms:GetPublicKey"]);
    assert!(format!("{:?}", kms[0]["Resource"]).contains("CaKey.Arn"), "{:?}", kms[0]);
    for st in &all {
        assert!(!strings(st.get("Resource")).iter().any(|r| r == "*"), "a grant on *: {st:?}");
    }
}
