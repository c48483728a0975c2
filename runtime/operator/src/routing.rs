//! What a router serves for an Endpoint on a cluster, with no I/O: the
//! router.json entry (`fleet::config::EndpointSpec`'s format) made from the
//! Endpoint, its keys Secret and its versions' EndpointSlices. The router's
//! Kubernetes discovery watches those three kinds and feeds this to the
//! same fleet that `router.json` feeds.
//!
//! Nodes are the slices' endpoints that are ready (a terminating pod is not
//! ready: it drains what it has, and gets nothing new); a version with
//! none is listed with no nodes, so its share goes to the default.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::crd::{AuthMode, Endpoint};
use crate::desired::{object_name, LABEL_ENDPOINT, LABEL_VERSION};

/// The label EndpointSlices carry: the Service they list.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The router.json entry for `ep`, or why it cannot be served yet.
pub fn router_endpoint(ep: &Endpoint, secret: Option<&Secret>, slices: &[EndpointSlice]) -> Result<serde_json::Value, String> {
    let name = ep.name_any();
    let auth = router_auth(ep, secret)?;
    let versions: Vec<serde_json::Value> = ep
        .spec
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.name,
                "traffic": v.traffic,
                "default": v.default,
                "control": v.control,
                "mirror": v.mirror,
                "nodes": ready_nodes(&name, &v.name, slices),
                "config": v.config,
            })
        })
        .collect();
    Ok(serde_json::json!({"name": name, "auth": auth, "versions": versions}))
}

/// The router.json `auth` of `ep`: its mode, with the keys from its Secret.
/// The auth an Endpoint's Secret gives now, for a router that serves the
/// Endpoint's last good spec. A Secret that does not read (gone, a key
/// too short, signing keys that do not parse) lets no request in, with
/// why: not the credentials it gave before, so a key revoked by an edit
/// that went wrong stays revoked.
pub fn router_auth_now(ep: &Endpoint, secret: Option<&Secret>) -> Result<wasmscore_fleet::AuthSpec, (wasmscore_fleet::AuthSpec, String)> {
    router_auth(ep, secret)
        .and_then(wasmscore_fleet::AuthSpec::parse)
        .map_err(|why| (wasmscore_fleet::AuthSpec::Token { signing_keys: Vec::new() }, why))
}

pub fn router_auth(ep: &Endpoint, secret: Option<&Secret>) -> Result<serde_json::Value, String> {
    let name = ep.name_any();
    Ok(match ep.spec.auth.mode {
        AuthMode::None => serde_json::json!({"mode": "none"}),
        mode => {
            let secret = secret.ok_or_else(|| format!("endpoint {name}: its Secret {name}-keys is not there yet"))?;
            let field = |k: &str| -> Result<String, String> {
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|b| b.0.clone())
                    .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).map(|s| s.clone().into_bytes()))
                    .ok_or_else(|| format!("endpoint {name}: its Secret has no {k}"))?;
                String::from_utf8(bytes).map_err(|_| format!("endpoint {name}: {k} in its Secret is not text"))
            };
            if mode == AuthMode::Key {
                serde_json::json!({"mode": "key", "primary_key": field("primaryKey")?, "secondary_key": field("secondaryKey")?})
            } else {
                let keys: serde_json::Value =
                    serde_json::from_str(&field("signingKeys")?).map_err(|e| format!("endpoint {name}: signingKeys in its Secret: {e}"))?;
                serde_json::json!({"mode": "token", "signing_keys": keys})
            }
        }
    })
}

/// host:port of the ready endpoints in the slices of the version's
/// Service, sorted. The slices carry the Service's labels: they must name
/// this endpoint and version too, since two endpoints can name one Service
/// (`a` with version `b-c`, `a-b` with `c`) and only one owns it.
pub fn ready_nodes(endpoint: &str, version: &str, slices: &[EndpointSlice]) -> Vec<String> {
    let service = object_name(endpoint, version);
    let mut out = Vec::new();
    for s in slices {
        let label = |k: &str| s.labels().get(k).map(String::as_str);
        if label(SERVICE_NAME_LABEL) != Some(service.as_str())
            || label(LABEL_ENDPOINT) != Some(endpoint)
            || label(LABEL_VERSION) != Some(version)
        {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("internal"))
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            // A terminating pod drains what it has and gets nothing new.
            // Otherwise `serving` (its readiness, whatever
            // publishNotReadyAddresses does to `ready`), else `ready`;
            // unknown counts as ready, as kube-proxy reads it.
            let c = e.conditions.clone().unwrap_or_default();
            if c.terminating == Some(true) || !c.serving.or(c.ready).unwrap_or(true) {
                continue;
            }
            for a in &e.addresses {
                let host = if a.contains(':') { format!("[{a}]") } else { a.clone() };
                out.push(format!("{host}:{port}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{secret, Keys};
    use crate::fixtures::{endpoint, version};
    use serde_json::json;

    /// A slice of SERVICE (ENDPOINT-VERSION), with the labels the slice
    /// controller copies from it.
    fn slice(service: &str, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
        let (endpoint, version) = service.split_once('-').unwrap();
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": format!("{service}-abc"), "namespace": "models",
                         "labels": {SERVICE_NAME_LABEL: service, LABEL_ENDPOINT: endpoint, LABEL_VERSION: version}},
            "ports": [{"name": "internal", "port": 8081, "protocol": "TCP"}],
            "endpoints": endpoints.iter().map(|(ip, ready)| {
                let mut e = json!({"addresses": [ip]});
                if let Some(r) = ready { e["conditions"] = json!({"ready": r}); }
                e
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// A Secret as the API server returns it: `data`, base64 in JSON.
    fn stored(s: Secret) -> Secret {
        let mut v = serde_json::to_value(&s).unwrap();
        let data: serde_json::Map<String, serde_json::Value> = v["stringData"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, val)| {
                let bytes = k8s_openapi::ByteString(val.as_str().unwrap().as_bytes().to_vec());
                (k.clone(), serde_json::to_value(bytes).unwrap())
            })
            .collect();
        v["data"] = json!(data);
        v.as_object_mut().unwrap().remove("stringData");
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ready_pods_of_each_version_become_its_nodes() {
        let ep = endpoint(vec![
            version("v1", 20, false, json!({})),
            version("v2", 40, true, json!({"num_replicas": 2})),
        ]);
        let keys = Keys::generate();
        let slices = [
            slice("iris-v1", &[("10.0.0.5", Some(true)), ("10.0.0.6", Some(false))]),
            slice("iris-v2", &[("10.0.1.7", None), ("10.0.1.8", Some(true))]),
            slice("other-v1", &[("10.9.9.9", Some(true))]),
        ];
        // A terminating pod, and one whose readiness failed where `ready`
        // is forced (publishNotReadyAddresses): neither takes requests.
        let mut slices = slices.to_vec();
        let v1 = slices[0].endpoints.as_mut().unwrap();
        for (ip, serving, terminating) in [("10.0.0.7", true, true), ("10.0.0.8", false, false)] {
            let mut e = v1[0].clone();
            e.addresses = vec![ip.into()];
            e.conditions = Some(serde_json::from_value(json!({"ready": true, "serving": serving, "terminating": terminating})).unwrap());
            v1.push(e);
        }
        let got = router_endpoint(&ep, Some(&stored(secret(&ep, &keys))), &slices).unwrap();
        assert_eq!(
            got["auth"],
            json!({"mode": "key", "primary_key": keys.primary, "secondary_key": keys.secondary})
        );
        assert_eq!(got["versions"][0]["nodes"], json!(["10.0.0.5:8081"]));
        assert_eq!(got["versions"][1]["nodes"], json!(["10.0.1.7:8081", "10.0.1.8:8081"]));
        assert_eq!(got["versions"][1]["config"], json!({"num_replicas": 2}));
        assert_eq!(
            (got["versions"][1]["default"].as_bool(), got["versions"][1]["traffic"].as_u64()),
            (Some(true), Some(40))
        );
        // A Service of that name that another endpoint owns (endpoint
        // "ir", version "is-v1"): not this endpoint's nodes.
        let mut theirs = slice("iris-v1", &[("10.7.7.7", Some(true))]);
        theirs.metadata.labels = Some(
            [(SERVICE_NAME_LABEL, "iris-v1"), (LABEL_ENDPOINT, "ir"), (LABEL_VERSION, "is-v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        slices.push(theirs);
        let got = router_endpoint(&ep, Some(&stored(secret(&ep, &keys))), &slices).unwrap();
        assert_eq!(got["versions"][0]["nodes"], json!(["10.0.0.5:8081"]));
        // What the router's fleet reads, checked by its own parser.
        let spec = wasmscore_fleet::config::FleetSpec::parse(json!({"endpoints": [got]}).to_string().as_bytes()).unwrap();
        assert_eq!(spec.endpoints[0].versions[1].nodes.len(), 2);
    }

    #[test]
    fn token_auth_reads_the_signing_keys_and_a_missing_secret_waits() {
        let mut ep = endpoint(vec![version("v1", 0, true, json!({}))]);
        ep.spec.auth.mode = AuthMode::Token;
        let keys = Keys::generate();
        let got = router_endpoint(&ep, Some(&stored(secret(&ep, &keys))), &[]).unwrap();
        assert_eq!(got["auth"]["signing_keys"][0]["secret"], keys.signing_secret.as_str());
        wasmscore_fleet::config::FleetSpec::parse(json!({"endpoints": [got]}).to_string().as_bytes()).unwrap();
        assert_eq!(got["versions"][0]["nodes"], json!([]));
        let e = router_endpoint(&ep, None, &[]).unwrap_err();
        assert!(e.contains("iris-keys is not there yet"), "{e}");
        // A rotated-out key in the Secret says when it was retired, as in
        // router.json: tokens it signed after that are refused.
        let mut s = secret(&ep, &keys);
        let rotated = json!([{"kid": "old", "secret": "ab".repeat(32), "retired_at": 1_700_000_000u64},
                             {"kid": keys.signing_kid, "secret": keys.signing_secret}]);
        s.string_data.as_mut().unwrap().insert("signingKeys".into(), rotated.to_string());
        let got = router_endpoint(&ep, Some(&stored(s)), &[]).unwrap();
        let spec = wasmscore_fleet::config::FleetSpec::parse(json!({"endpoints": [got]}).to_string().as_bytes()).unwrap();
        let wasmscore_fleet::AuthSpec::Token { signing_keys } = &spec.endpoints[0].auth else {
            panic!("token auth")
        };
        let retired: Vec<Option<u64>> = signing_keys.iter().map(|k| k.key().retired_at).collect();
        assert_eq!(retired, [Some(1_700_000_000), None]);
        ep.spec.auth.mode = AuthMode::None;
        assert_eq!(router_endpoint(&ep, None, &[]).unwrap()["auth"], json!({"mode": "none"}));
    }

    #[test]
    fn a_secret_that_does_not_read_lets_no_request_in() {
        let ep = endpoint(vec![version("v1", 0, true, json!({}))]);
        let keys = Keys::generate();
        let good = router_auth_now(&ep, Some(&stored(secret(&ep, &keys)))).unwrap();
        assert!(matches!(good, wasmscore_fleet::AuthSpec::Key { .. }));
        // A revocation that went wrong (a key too short), and a Secret gone.
        let mut short = secret(&ep, &keys);
        short.string_data.as_mut().unwrap().insert("primaryKey".into(), "short".into());
        for s in [Some(stored(short)), None] {
            let (auth, why) = router_auth_now(&ep, s.as_ref()).unwrap_err();
            assert!(
                matches!(&auth, wasmscore_fleet::AuthSpec::Token { signing_keys } if signing_keys.is_empty()),
                "{auth:?} ({why})"
            );
        }
    }
}
