//! deploy/ checked offline: every manifest against Kubernetes 1.36's
//! schemas (kubernetes-validate --strict), the example Endpoint against
//! the CRD's own openAPIV3Schema (jsonschema), and what that schema
//! refuses. No API server runs here (see README, "What was and was not
//! run").

use std::process::Command;

use super::root;

fn python(script: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn deploy_manifests_validate_for_kubernetes_1_36() {
    let files = [
        "namespace.yaml",
        "rbac.yaml",
        "operator.yaml",
        "router.yaml",
        "author.yaml",
        "crd.json",
        "example-endpoint.yaml",
    ];
    let out = Command::new(root().join(".venv/bin/kubernetes-validate"))
        .args(["--strict", "-k", "1.36.0"])
        .args(files.iter().map(|f| format!("deploy/{f}")))
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for kind in [
        "namespace/wasmscore-system",
        "serviceaccount/wasmscore-operator",
        "clusterrole/wasmscore-operator",
        "clusterrolebinding/wasmscore-operator",
        "deployment/wasmscore-operator",
        "customresourcedefinition/endpoints.wasmscore.dev",
        "role/wasmscore-author",
        "rolebinding/wasmscore-author",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind} against version 1.36")),
            "{kind}: {text}"
        );
    }
    // Custom kinds are not in its bundle: the example is checked below.
    assert!(text.contains("Couldn't find schema for kind Endpoint"), "{text}");
}

/// Validates deploy/example-endpoint.yaml, changed by a Python expression
/// over `e` (the parsed object), against the CRD's schema.
const CHECK: &str = r#"
import json, sys, yaml, jsonschema
crd = json.load(open("deploy/crd.json"))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
e = yaml.safe_load(open("deploy/example-endpoint.yaml"))
exec(sys.argv[1])
jsonschema.validate(e, schema)
print("valid")
"#;

#[test]
fn the_example_endpoint_fits_the_crd_and_the_schema_refuses_what_it_can() {
    let (ok, out) = python(CHECK, &["pass"]);
    assert!(ok && out.contains("valid"), "{out}");
    for (change, why) in [
        ("e['spec']['versions'] = e['spec']['versions'] * 7", "is too long"),
        (
            "e['spec']['versions'][0]['traffic'] = 150",
            "150 is greater than the maximum of 100",
        ),
        ("e['spec']['versions'][0]['mirror'] = 60", "60 is greater than the maximum of 50"),
        ("e['spec']['versions'][0]['artifact'] = 'registry/iris:v1'", "does not match"),
        ("e['spec']['versions'][0]['name'] = 'V_1'", "does not match"),
        ("e['spec']['auth']['mode'] = 'password'", "is not one of"),
    ] {
        let (ok, out) = python(CHECK, &[change]);
        assert!(!ok && out.contains(why), "{change}: {out}");
    }
}

/// The API server simulation the cluster tests run against
/// (tests/kube/apiserver.py) checks its wire protocol with raw HTTP.
#[test]
fn the_api_server_simulation_passes_its_own_wire_tests() {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg("tests/kube/test_apiserver.py")
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
}
