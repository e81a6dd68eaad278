//! The resource model against the documents operators write: the seed's and
//! the reference's, each rule's error text, and random input.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::collections::BTreeMap;

use loopmesh_shared::model::{
    DataplaneVars, HostnameTarget, MeshServicesMode, Resource, ResourceKind, parse_documents, parse_one,
    render_dataplane,
};
use loopmesh_shared::template::TemplateInput;
use proptest::prelude::*;

fn vars(pairs: &[(&str, &str)]) -> DataplaneVars {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn errors_of(text: &str) -> Vec<String> {
    match parse_one(text) {
        Ok(r) => panic!("expected errors, parsed {r:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn seed_simplified_dataplane_renders_from_variables() {
    let text = include_str!("fixtures/seed-dataplane.yaml");
    let v = vars(&[
        ("dpname", "5f1c0e"),
        ("mesh", "default"),
        ("address", "10.0.1.23"),
        ("port", "15000"),
        ("servicePort", "5050"),
        ("service", "demo-app"),
        ("protocol", "http"),
    ]);
    let dp = render_dataplane(text, &v).unwrap();
    assert_eq!(dp.name, "5f1c0e");
    assert_eq!(dp.mesh, "default");
    assert_eq!(dp.address, "10.0.1.23");
    assert_eq!(dp.inbounds.len(), 1);
    assert_eq!((dp.inbounds[0].port, dp.inbounds[0].service_port), (15000, 5050));
    assert_eq!(dp.inbounds[0].service(), "demo-app");
    assert_eq!(dp.inbounds[0].protocol(), "http");
}

#[test]
fn seed_dataplane_without_variables_names_every_missing_field() {
    let err = render_dataplane(include_str!("fixtures/seed-dataplane.yaml"), &DataplaneVars::new()).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "name",
            "mesh",
            "networking.address",
            "networking.inbound[0].port",
            "networking.inbound[0].tags[\"kuma.io/service\"]"
        ]
    );
}

#[test]
fn reference_task_definition_template_renders() {
    let td: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/ecs-task-definition-sidecar.json")).unwrap();
    let template = td["containerDefinitions"][1]["environment"][0]["value"].as_str().unwrap();
    let v = vars(&[
        ("dpname", "task1"),
        ("address", "10.0.0.5"),
        ("mesh", "default"),
        ("port", "15000"),
        ("servicePort", "5050"),
        ("service", "demo-app"),
        ("protocol", "http"),
    ]);
    let dp = render_dataplane(template, &v).unwrap();
    assert_eq!(dp.inbounds[0].service(), "demo-app");
    let missing = render_dataplane(template, &vars(&[("dpname", "t")])).unwrap_err().to_string();
    assert!(missing.contains("variable {{ mesh }} has no value; pass --dataplane-var mesh=VALUE"), "{missing}");
}

#[test]
fn seed_hostname_generators_parse_and_the_lost_template_is_refused() {
    let mut docs = parse_documents(include_str!("fixtures/seed-hostname-generator.yaml"));
    assert_eq!(docs.len(), 2);
    // The product note's page lost the template's action: ".svc.mesh.local"
    // can never make a valid name, so it is refused, saying so.
    let lost = docs.remove(0).unwrap_err().to_string();
    assert!(lost.contains("spec.template: renders names like \".svc.mesh.local\""), "{lost}");
    for d in docs {
        let Resource::HostnameGenerator(g) = d.unwrap() else { panic!("not a generator") };
        assert_eq!(g.target, HostnameTarget::MeshService);
        assert_eq!(g.zones[0].hosted_zone_id.as_str(), "Z0123456789ABCDEFGHIJ");
        assert!(g.selects(HostnameTarget::MeshService, &BTreeMap::from([("kuma.io/origin".into(), "zone".into())])));
        assert!(!g.selects(HostnameTarget::MeshService, &BTreeMap::new()));
    }
}

#[test]
fn every_reference_document_parses() {
    let docs: Vec<Resource> =
        parse_documents(include_str!("fixtures/hostname-generators.yaml")).into_iter().map(Result::unwrap).collect();
    let kinds: Vec<_> = docs.iter().map(Resource::kind).collect();
    assert_eq!(
        kinds,
        [
            ResourceKind::HostnameGenerator,
            ResourceKind::HostnameGenerator,
            ResourceKind::HostnameGenerator,
            ResourceKind::MeshMultiZoneService,
            ResourceKind::Mesh
        ]
    );
    let Resource::HostnameGenerator(mzs) = &docs[1] else { unreachable!() };
    assert_eq!(
        mzs.zones.iter().map(|z| (z.name.as_str(), z.hosted_zone_id.as_str())).collect::<Vec<_>>(),
        [("ecs-us-east-2", "Z0AAAAAAAAAAAAAAAAAAA"), ("ecs-us-west-1", "Z0BBBBBBBBBBBBBBBBBBB")]
    );
    let labels = BTreeMap::from([("kuma.io/display-name".to_owned(), "kv".to_owned())]);
    let input =
        TemplateInput { name: "kv", display_name: "kv", mesh: "default", labels: Some(&labels), ..Default::default() };
    assert_eq!(mzs.template.render(&input).unwrap(), "kv.mzms.mesh.local");
    let Resource::MeshMultiZoneService(kv) = &docs[3] else { unreachable!() };
    assert_eq!(kv.match_labels, labels);
    assert_eq!(kv.ports[0].port, 15050);
    let Resource::Mesh(mesh) = &docs[4] else { unreachable!() };
    assert_eq!(mesh.mesh_services, MeshServicesMode::Exclusive);
}

#[test]
fn json_documents_parse() {
    let r = parse_one(r#"{"type":"Mesh","name":"default","meshServices":{"mode":"Everywhere"},"mtls":{}}"#).unwrap();
    assert_eq!(r.kind(), ResourceKind::Mesh);
    let many = parse_documents(r#"[{"type":"Mesh","name":"a"},{"type":"Mesh","name":"B"}]"#);
    assert!(many[0].is_ok());
    assert!(many[1].as_ref().unwrap_err().to_string().starts_with("document 2 (Mesh \"B\"): name:"));
}

#[test]
fn port_rules() {
    let dp = |port: &str| {
        format!(
            "type: Dataplane\nname: d\nmesh: m\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: {port}\n    tags:\n      kuma.io/service: s\n"
        )
    };
    assert_eq!(errors_of(&dp("0")), ["networking.inbound[0].port: \"0\" is not a port in 1..65535"]);
    assert_eq!(errors_of(&dp("65536")), ["networking.inbound[0].port: \"65536\" is not a port in 1..65535"]);
    assert_eq!(errors_of(&dp("http")), ["networking.inbound[0].port: \"http\" is not a port in 1..65535"]);
    assert!(parse_one(&dp("\"8080\"")).is_ok());
}

#[test]
fn inbound_needs_a_service_tag_and_valid_tags() {
    let text = "type: Dataplane\nname: d\nmesh: m\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 1\n    tags:\n      kuma.io/protocol: smtp\n      bad key: x\n      team: \"a b\"\n";
    assert_eq!(
        errors_of(text),
        [
            "networking.inbound[0].tags[\"kuma.io/service\"]: required, the service this inbound belongs to",
            "networking.inbound[0].tags[\"bad key\"]: tag key \"bad key\" must be non-empty and hold only letters, digits and . - _ : /",
            "networking.inbound[0].tags[\"team\"]: tag value \"a b\" must be non-empty and hold only letters, digits and . - _ :",
            "networking.inbound[0].tags[\"kuma.io/protocol\"]: \"smtp\" is not one of tcp, tls, http, http2, grpc, kafka",
        ]
    );
}

#[test]
fn unknown_top_level_field_is_named() {
    let errs = errors_of("type: Dataplane\nname: d\nmesh: m\nnetwork: {}\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("unknown field `network`"), "{}", errs[0]);
}

#[test]
fn type_errors_carry_their_path() {
    let errs = errors_of("type: MeshService\nname: redis\nspec:\n  ports:\n  - port: [1]\n");
    assert!(errs[0].starts_with("spec.ports[0].port:"), "{}", errs[0]);
}

#[test]
fn hostname_generator_rules() {
    let gen_with = |spec: &str| format!("type: HostnameGenerator\nname: g\nspec:\n{spec}");
    let both = gen_with("  selector:\n    meshService: {}\n    meshExternalService: {}\n  template: x\n");
    assert_eq!(
        errors_of(&both),
        ["spec.selector: exactly one of meshService, meshExternalService, meshMultiZoneService, found several"]
    );
    let none = gen_with("  selector: {}\n  template: x\n");
    assert_eq!(
        errors_of(&none),
        ["spec.selector: required, exactly one of meshService, meshExternalService, meshMultiZoneService"]
    );
    let bad_template = gen_with("  selector:\n    meshService: {}\n  template: \"{{ .Port }}.x\"\n");
    assert_eq!(
        errors_of(&bad_template),
        [
            "spec.template: does not parse: unknown field \".Port\" at byte 0; use .Name, .DisplayName, .Mesh, .Zone or .Namespace"
        ]
    );
    let bad_ext = gen_with(
        "  selector:\n    meshService: {}\n  template: x\n  extension:\n    type: Route53\n    config:\n      hostedZoneId: Z1\n      hostedZones: []\n",
    );
    assert_eq!(errors_of(&bad_ext), ["spec.extension.config: config needs exactly one of hostedZoneId or hostedZones"]);
    let other_ext = gen_with("  selector:\n    meshService: {}\n  template: x\n  extension:\n    type: CloudMap\n");
    assert_eq!(
        errors_of(&other_ext),
        ["spec.extension.type: \"CloudMap\" is not Route53, the only extension loopmesh knows"]
    );
}

#[test]
fn external_service_rules() {
    let text = "type: MeshExternalService\nname: httpbin\nmesh: default\nspec:\n  match:\n    type: HostnameGenerator\n    port: 443\n    protocol: ftp\n  endpoints:\n  - address: \"not a host\"\n    port: 443\n";
    assert_eq!(
        errors_of(text),
        [
            "spec.match.protocol: \"ftp\" is not one of tcp, tls, http, http2, grpc, kafka",
            "spec.endpoints[0].address: \"not a host\" is neither an IP address nor a DNS name",
        ]
    );
}

#[test]
fn bad_yaml_and_unknown_kinds() {
    let docs = parse_documents("type: Mesh\nname: a\n---\ntype: [\n");
    assert_eq!(docs.len(), 1);
    let e = docs[0].as_ref().unwrap_err();
    assert_eq!(e.document, 2);
    assert!(e.to_string().contains("invalid YAML at line"), "{e}");
    let e = parse_one("type: Gateway\nname: x\n").unwrap_err().to_string();
    assert!(e.starts_with("type: Gateway is not one of Dataplane, Mesh,"), "{e}");
}

fn kind_docs() -> Vec<&'static str> {
    vec![
        include_str!("fixtures/seed-dataplane.yaml"),
        include_str!("fixtures/seed-hostname-generator.yaml"),
        include_str!("fixtures/hostname-generators.yaml"),
        "type: MeshService\nname: redis\nmesh: default\nlabels:\n  kuma.io/origin: zone\nspec:\n  selector:\n    dataplaneTags:\n      kuma.io/service: redis\n  ports:\n  - port: 6379\n    targetPort: 6379\n    appProtocol: tcp\n",
        "type: MeshExternalService\nname: httpbin\nmesh: default\nspec:\n  match:\n    port: 443\n    protocol: http\n  endpoints:\n  - address: httpbin.org\n    port: 443\n",
        r#"{"type":"Dataplane","name":"d","mesh":"m","networking":{"address":"10.0.0.1","inbound":[{"port":1,"tags":{"kuma.io/service":"s"}}]}}"#,
        "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: api\n    rules:\n    - matches:\n      - path:\n          type: RegularExpression\n          value: /v[0-9]+/.*\n        headers:\n        - type: Present\n          name: x-canary\n      default:\n        backendRefs:\n        - kind: MeshService\n          name: api-canary\n          weight: 10\n",
        "type: MeshRetry\nname: r\nmesh: default\nspec:\n  targetRef:\n    kind: MeshSubset\n    tags:\n      team: a\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      http:\n        numRetries: 2\n        perTryTimeout: 1.5s\n        backOff:\n          baseInterval: 10ms\n        retryOn: [5xx, \"429\", HttpMethodPost]\n",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in ".{0,400}") {
        let _ = parse_documents(&text);
        let _ = render_dataplane(&text, &DataplaneVars::new());
    }

    #[test]
    fn mutated_documents_never_panic(doc in 0usize..8, at in any::<prop::sample::Index>(), cut in 0usize..40, insert in "[-:{}\\[\\],'\"&*!|>%@` \n\t0-9a-zA-Z]{0,12}") {
        let base = kind_docs()[doc];
        let mut i = at.index(base.len() + 1);
        while !base.is_char_boundary(i) { i -= 1; }
        let mut j = (i + cut).min(base.len());
        while !base.is_char_boundary(j) { j -= 1; }
        let mutated = format!("{}{}{}", &base[..i], insert, &base[j..]);
        let _ = parse_documents(&mutated);
        let _ = render_dataplane(&mutated, &vars(&[("dpname", "x"), ("mesh", "m"), ("address", "10.0.0.1"), ("port", "1"), ("service", "s")]));
    }
}

#[test]
fn what_loopmesh_does_not_do_yet_is_refused_never_ignored() {
    let refused = |text: &str, path: &str, words: &str| {
        let e = parse_one(text).unwrap_err();
        let hit = e.0.iter().find(|v| v.path == path).unwrap_or_else(|| panic!("no error at {path}: {e}"));
        assert!(hit.rule.contains(words), "{path}: {}", hit.rule);
    };
    // mTLS is enforced now: a builtin or provided backend is accepted; what is not valid is named.
    let Ok(Resource::Mesh(m)) = parse_one(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: PERMISSIVE\n    dpCert:\n      rotation:\n        expiration: 12h\n",
    ) else {
        panic!("a builtin backend is accepted")
    };
    let mtls = m.mtls.unwrap();
    assert_eq!(mtls.enabled().mode, loopmesh_shared::model::MtlsMode::Permissive);
    assert_eq!(mtls.enabled().cert_lifetime, std::time::Duration::from_secs(12 * 3600));
    refused(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-2\n  backends:\n  - name: ca-1\n    type: builtin\n",
        "mtls.enabledBackend",
        "not the name of one of mtls.backends",
    );
    refused(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: v\n  backends:\n  - name: v\n    type: vault\n",
        "mtls.backends[0].type",
        "not builtin or provided",
    );
    refused(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert:\n        file: /c.pem\n      key:\n        secret: k\n",
        "mtls.backends[0].conf.cert.file",
        "Secrets Manager",
    );
    refused(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: b\n  backends:\n  - name: b\n    type: builtin\n    mode: LAX\n",
        "mtls.backends[0].mode",
        "STRICT or PERMISSIVE",
    );
    // Backends alone enable nothing, as in Kuma.
    assert!(parse_one("type: Mesh\nname: default\nmtls:\n  backends:\n  - name: ca-1\n    type: builtin\n").is_ok());
    refused(
        "type: MeshRateLimit\nname: t\nmesh: default\nspec: {}\n",
        "type",
        "Kong Mesh policy loopmesh does not enforce yet",
    );
    // The outbound policies are enforced now; an empty `to` is named.
    refused("type: MeshTimeout\nname: t\nmesh: default\nspec: {}\n", "spec.to", "at least one entry");
    // A MeshExternalService's spec.tls is originated by the sidecar; what rustls
    // cannot do, and Secret references, are refused with the field named.
    let mes = |tls: &str| {
        format!(
            "type: MeshExternalService\nname: httpbin\nmesh: default\nspec:\n  match:\n    type: HostnameGenerator\n    port: 443\n    protocol: tcp\n  endpoints:\n  - address: httpbin.org\n    port: 443\n  tls:\n{tls}"
        )
    };
    let Ok(Resource::MeshExternalService(s)) = parse_one(&mes(
        "    enabled: true\n    version:\n      min: TLS12\n    verification:\n      mode: SkipSAN\n      serverName: httpbin.org\n      subjectAltNames:\n      - type: Prefix\n        value: httpbin\n",
    )) else {
        panic!("spec.tls is accepted")
    };
    let tls = s.tls.unwrap();
    assert_eq!(tls.mode, loopmesh_shared::model::VerificationMode::SkipSAN);
    assert_eq!(tls.server_name.as_deref(), Some("httpbin.org"));
    assert!(tls.subject_alt_names[0].prefix);
    let Ok(Resource::MeshExternalService(off)) = parse_one(&mes("    enabled: false\n")) else { panic!() };
    assert_eq!(off.tls, None, "enabled: false originates nothing, as in Kuma");
    refused(&mes("    enabled: true\n    version:\n      min: TLS10\n"), "spec.tls.version.min", "TLS 1.2 and 1.3");
    refused(
        &mes("    enabled: true\n    allowRenegotiation: true\n"),
        "spec.tls.allowRenegotiation",
        "never renegotiates",
    );
    refused(
        &mes("    enabled: true\n    verification:\n      caCert:\n        secret: my-ca\n"),
        "spec.tls.verification.caCert",
        "Secret reference",
    );
    refused(&mes("    enabled: true\n    verification:\n      mode: Lax\n"), "spec.tls.verification.mode", "Secured");
    refused(
        "type: Dataplane\nname: gw\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: edge\n",
        "networking.gateway",
        "not supported",
    );
}

#[test]
fn the_pre_2_11_outbound_list_is_read_not_ignored() {
    let text = "type: Dataplane\nname: dp\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 15000\n    servicePort: 5050\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: 10001\n    tags:\n      kuma.io/service: redis\n  - port: 10002\n    address: 127.0.0.2\n    tags:\n      kuma.io/service: api\n";
    let Resource::Dataplane(dp) = parse_one(text).unwrap() else { panic!("a Dataplane") };
    let got: Vec<(String, u16, String)> =
        dp.outbounds.iter().map(|o| (o.address.to_string(), o.port, o.service.clone())).collect();
    assert_eq!(got, [("127.0.0.1".into(), 10001, "redis".into()), ("127.0.0.2".into(), 10002, "api".into())]);
    let bad = text.replace("address: 127.0.0.2", "address: 10.9.9.9");
    let e = parse_one(&bad).unwrap_err();
    assert!(e.to_string().contains("networking.outbound[1].address"), "{e}");
}

#[test]
fn reachable_backends_is_refused_until_supported() {
    let e = parse_one("type: Mesh\nname: default\nmeshServices:\n  mode: ReachableBackends\n").unwrap_err();
    assert!(e.to_string().contains("meshServices.mode: ReachableBackends is not supported yet"), "{e}");
    assert!(parse_one("type: Mesh\nname: default\nmeshServices:\n  mode: Exclusive\n").is_ok());
}

#[test]
fn a_template_that_cannot_make_a_valid_name_is_refused_at_validate() {
    let e = parse_one("type: HostnameGenerator\nname: seed\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \".svc.mesh.local\"\n").unwrap_err();
    assert!(e.to_string().contains("spec.template: renders names like \".svc.mesh.local\""), "{e}");
    assert!(parse_one("type: HostnameGenerator\nname: ok\nspec:\n  selector:\n    meshService:\n      matchLabels: {}\n  template: \"{{ .DisplayName }}.{{ .Zone }}.svc.mesh.local\"\n").is_ok());
}

#[test]
fn a_named_target_port_is_refused_a_numbered_one_kept() {
    let ms = "type: MeshService\nname: redis\nmesh: default\nspec:\n  selector:\n    dataplaneTags:\n      kuma.io/service: redis\n  ports:\n  - port: 6379\n    targetPort: TARGET\n    appProtocol: tcp\n";
    let e = parse_one(&ms.replace("TARGET", "main")).unwrap_err();
    assert!(e.to_string().contains("spec.ports[0].targetPort: \"main\" is not a port"), "{e}");
    let Resource::MeshService(s) = parse_one(&ms.replace("TARGET", "16379")).unwrap() else { panic!("a MeshService") };
    assert_eq!(s.ports[0].target_port.as_deref(), Some("16379"));
}

#[test]
fn a_dataplane_whose_registration_cannot_fit_one_transaction_is_refused() {
    let inbound =
        |i: usize| format!("  - port: {}\n    servicePort: 80\n    tags:\n      kuma.io/service: s{i}\n", 15000 + i);
    let doc = |n: usize| {
        let inbounds: String = (0..n).map(inbound).collect();
        format!("type: Dataplane\nname: dp\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n{inbounds}")
    };
    assert!(render_dataplane(&doc(loopmesh_shared::model::MAX_INBOUNDS), &DataplaneVars::new()).is_ok());
    let err = render_dataplane(&doc(33), &DataplaneVars::new()).unwrap_err().to_string();
    assert!(err.contains("networking.inbound: at most 32 inbounds, found 33"), "{err}");
}
