//! Azure ML's own files, as `az ml model deploy --ic inferenceconfig.json
//! --dc deploymentconfig.json` takes them: each field we support is mapped
//! to our names, each one we do not is named with the reason, so a migrating
//! user sees exactly what carried over.

use serde_json::{Map, Value};

use crate::store::Tags;

/// A deploymentconfig.json, mapped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MappedDeployment {
    /// Our deployment config (flat, snake_case keys).
    pub config: Map<String, Value>,
    pub traffic: Option<u32>,
    pub default: Option<bool>,
    pub control: Option<bool>,
    pub description: Option<String>,
    pub tags: Option<Tags>,
    /// "azureField -> our_field" for each field carried over.
    pub mapped: Vec<String>,
    /// "azureField: reason" for each field left out.
    pub ignored: Vec<String>,
}

/// An inferenceconfig.json, mapped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MappedInference {
    /// The entry script, relative to the file's directory (joined with
    /// `sourceDirectory` when that is given).
    pub entry_script: Option<String>,
    pub mapped: Vec<String>,
    pub ignored: Vec<String>,
}

/// True when a deployment config uses Azure ML's (camelCase) fields rather
/// than ours.
pub fn is_azureml_deployment(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.keys()
            .any(|k| k.chars().any(|c| c.is_ascii_uppercase()) || k == "computeType" || k == "autoScaler")
    })
}

const GPU_IN_DEPLOYMENT: &str = "the GPU is the deployment config's: gpu_cores (or gpuCores) > 0 runs the version on device cuda";

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
}

fn autoscale_field(k: &str) -> Option<&'static str> {
    Some(match k {
        "autoscaleEnabled" => "autoscale_enabled",
        "minReplicas" => "autoscale_min_replicas",
        "maxReplicas" => "autoscale_max_replicas",
        "targetUtilization" => "autoscale_target_utilization",
        "refreshPeriodInSeconds" => "autoscale_refresh_seconds",
        _ => return None,
    })
}

pub fn map_deployment(v: &Value) -> Result<MappedDeployment, String> {
    let obj = v.as_object().ok_or("a deployment config is a JSON object")?;
    let mut m = MappedDeployment::default();
    let put = |m: &mut MappedDeployment, from: &str, to: &str, value: Value| {
        m.mapped.push(format!("{from} -> {to}"));
        m.config.insert(to.into(), value);
    };
    for (k, val) in obj {
        match k.as_str() {
            "scoringTimeoutMs" => put(&mut m, k, "scoring_timeout_ms", val.clone()),
            "maxConcurrentRequestsPerContainer" => put(&mut m, k, "replica_max_concurrent_requests", val.clone()),
            "maxQueueWaitMs" => put(&mut m, k, "max_request_wait_time", val.clone()),
            "numReplicas" if !val.is_null() => put(&mut m, k, "num_replicas", val.clone()),
            "memoryGb" | "memoryInGB" => put(&mut m, k, "memory_gb", val.clone()),
            "containerResourceRequirements" => {
                for (rk, rv) in val.as_object().into_iter().flatten() {
                    let name = format!("{k}.{rk}");
                    match rk.as_str() {
                        "memoryInGB" if !rv.is_null() => put(&mut m, &name, "memory_gb", rv.clone()),
                        "gpu" if as_u64(rv).unwrap_or(0) > 0 => put(&mut m, &name, "gpu_cores", rv.clone()),
                        "cpu" if !rv.is_null() => put(&mut m, &name, "cpu_cores", rv.clone()),
                        "cpuLimit" | "cpu_limit" if rv.as_f64().unwrap_or(0.0) > 0.0 => put(&mut m, &name, "cpu_cores_limit", rv.clone()),
                        "memoryInGB_limit" => m.ignored.push(format!("{name}: memory_gb is both the request and the limit")),
                        _ if rv.is_null() || as_u64(rv) == Some(0) => {}
                        _ => m.ignored.push(format!("{name}: not a field wasmscore knows")),
                    }
                }
            }
            "trafficPercentile" => {
                m.traffic = Some(as_u64(val).ok_or(format!("{k} must be a whole percentage, got {val}"))? as u32);
                m.mapped.push(format!("{k} -> traffic"));
            }
            "isDefault" => {
                m.default = val.as_bool();
                m.mapped.push(format!("{k} -> default"));
            }
            "isControlVersion" => {
                m.control = val.as_bool();
                m.mapped.push(format!("{k} -> control"));
            }
            "description" if !val.is_null() => {
                m.description = val.as_str().map(str::to_string);
                m.mapped.push(format!("{k} -> description"));
            }
            "tags" if !val.is_null() => {
                let tags: Tags = serde_json::from_value(val.clone()).map_err(|e| format!("tags: {e}"))?;
                m.tags = Some(tags);
                m.mapped.push(format!("{k} -> tags"));
            }
            "computeType" => m
                .ignored
                .push(format!("{k}: wasmscore runs the version itself (locally or through its operator)")),
            "autoScaler" => {
                for (ak, av) in val.as_object().into_iter().flatten() {
                    let name = format!("{k}.{ak}");
                    match autoscale_field(ak) {
                        Some(to) if !av.is_null() => put(&mut m, &name, to, av.clone()),
                        Some(_) => {}
                        None => m.ignored.push(format!("{name}: not a field wasmscore knows")),
                    }
                }
            }
            "autoscaleEnabled" | "minReplicas" | "maxReplicas" | "targetUtilization" | "refreshPeriodInSeconds" if !val.is_null() => {
                put(&mut m, k, autoscale_field(k).expect("listed"), val.clone())
            }
            "livenessProbeRequirements" => {
                for (pk, pv) in val.as_object().into_iter().flatten() {
                    let name = format!("{k}.{pk}");
                    let to = match pk.as_str() {
                        "periodSeconds" => "period_seconds",
                        "initialDelaySeconds" => "initial_delay_seconds",
                        "timeoutSeconds" => "timeout_seconds",
                        "successThreshold" => "success_threshold",
                        "failureThreshold" => "failure_threshold",
                        _ => {
                            m.ignored.push(format!("{name}: not a field wasmscore knows"));
                            continue;
                        }
                    };
                    if !pv.is_null() {
                        put(&mut m, &name, to, pv.clone());
                    }
                }
            }
            "authEnabled" if !val.is_null() => put(&mut m, k, "auth_enabled", val.clone()),
            "tokenAuthEnabled" if !val.is_null() => put(&mut m, k, "token_auth_enabled", val.clone()),
            "primaryKey" if !val.is_null() => put(&mut m, k, "primary_key", val.clone()),
            "secondaryKey" if !val.is_null() => put(&mut m, k, "secondary_key", val.clone()),
            "keys" => m
                .ignored
                .push(format!("{k}: give primaryKey and secondaryKey, or let wasmscore generate them")),
            "gpuCores" if as_u64(val).unwrap_or(0) > 0 => put(&mut m, k, "gpu_cores", val.clone()),
            "cpuCores" | "cpu" if !val.is_null() => put(&mut m, k, "cpu_cores", val.clone()),
            "appInsightsEnabled" | "enableAppInsights" => m
                .ignored
                .push(format!("{k}: no Application Insights; module logs are in `wasmscore service logs`")),
            "collectModelData" if !val.is_null() => put(&mut m, k, "collect_model_data", val.clone()),
            "dataCollection" => {
                for (dk, dv) in val.as_object().into_iter().flatten() {
                    let name = format!("{k}.{dk}");
                    match dk.as_str() {
                        "storageEnabled" if !dv.is_null() => put(&mut m, &name, "collect_model_data", dv.clone()),
                        "storageEnabled" => {}
                        _ => m.ignored.push(format!("{name}: not a field wasmscore knows")),
                    }
                }
            }
            "namespace" | "computeTargetName" | "name" | "properties" | "location" | "sslEnabled" | "sslCertificate" | "sslKey"
            | "cname" | "dnsNameLabel" => m.ignored.push(format!("{k}: not used by wasmscore")),
            _ if val.is_null() => {}
            "gpuCores" | "numReplicas" => {}
            _ => m.ignored.push(format!("{k}: not a field wasmscore knows")),
        }
    }
    Ok(m)
}

pub fn map_inference(v: &Value) -> Result<MappedInference, String> {
    let obj = v.as_object().ok_or("an inference config is a JSON object")?;
    let mut m = MappedInference::default();
    let source_dir = obj.get("sourceDirectory").and_then(Value::as_str);
    for (k, val) in obj {
        match k.as_str() {
            "entryScript" => {
                let script = val.as_str().ok_or("entryScript must be a file name")?;
                m.entry_script = Some(match source_dir {
                    Some(d) => format!("{}/{script}", d.trim_end_matches('/')),
                    None => script.to_string(),
                });
                m.mapped.push(format!("{k} -> module"));
            }
            "sourceDirectory" => m.mapped.push(format!(
                "{k}: where entryScript is found (only the entry script is built into the module)"
            )),
            "runtime" => match val.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("python") | None => m.mapped.push(format!("{k}: python (componentize-py)")),
                Some(other) => return Err(format!("runtime {other:?} is not supported; score.py modules run as Python")),
            },
            "condaFile" | "environment" | "extraDockerfileSteps" | "baseImage" | "baseImageRegistry" | "cudaVersion" => {
                if !val.is_null() {
                    m.ignored.push(format!(
                        "{k}: there is no container image; a module may import only the Python standard library and the wasmscore helper"
                    ))
                }
            }
            "enableGpu" if val.as_bool() == Some(true) => m.ignored.push(format!("{k}: {GPU_IN_DEPLOYMENT}")),
            "enableGpu" | "description" | "schemaFile" | "dependencies" | "sourceDirectoryName" => {}
            _ if val.is_null() => {}
            _ => m.ignored.push(format!("{k}: not a field wasmscore knows")),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn azure_mls_deployment_config_maps_and_names_what_it_leaves_out() {
        let dc = json!({
            "computeType": "aks",
            "autoScaler": {"autoscaleEnabled": false, "minReplicas": null, "maxReplicas": null, "refreshPeriodInSeconds": 2},
            "containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1.0, "cpuLimit": 1.0},
            "livenessProbeRequirements": {"periodSeconds": 5, "failureThreshold": 4, "somethingElse": 1},
            "scoringTimeoutMs": 5000,
            "maxConcurrentRequestsPerContainer": 2,
            "maxQueueWaitMs": 300,
            "numReplicas": 2,
            "authEnabled": true,
            "isDefault": true,
            "trafficPercentile": 20,
            "description": "first",
            "tags": {"team": "fraud"},
            "dataCollection": {"storageEnabled": true},
            "somethingNew": 1
        });
        assert!(is_azureml_deployment(&dc));
        let m = map_deployment(&dc).unwrap();
        assert_eq!(m.config["scoring_timeout_ms"], 5000);
        assert_eq!(m.config["replica_max_concurrent_requests"], 2);
        assert_eq!(m.config["max_request_wait_time"], 300);
        assert_eq!(m.config["num_replicas"], 2);
        assert_eq!(m.config["memory_gb"], 1.0);
        assert_eq!(m.config["cpu_cores"], 0.5);
        assert_eq!(m.config["cpu_cores_limit"], 1.0);
        assert_eq!(m.config["auth_enabled"], true);
        assert_eq!(m.config["autoscale_enabled"], false);
        assert_eq!(m.config["autoscale_refresh_seconds"], 2);
        assert_eq!(m.config["collect_model_data"], true);
        assert!(!m.config.contains_key("autoscale_min_replicas"));
        assert_eq!(
            (m.config["period_seconds"].clone(), m.config["failure_threshold"].clone()),
            (json!(5), json!(4))
        );
        assert_eq!((m.traffic, m.default), (Some(20), Some(true)));
        assert_eq!(m.tags.unwrap()["team"], "fraud");
        let ignored = m.ignored.join("\n");
        for k in ["computeType", "livenessProbeRequirements.somethingElse", "somethingNew"] {
            assert!(ignored.contains(k), "{k} not named in {ignored}");
        }
        // A zero limit is Azure ML's "none", not a limit of nothing.
        let none = map_deployment(&json!({"containerResourceRequirements": {"cpu": 0.5, "cpuLimit": 0}})).unwrap();
        assert!(!none.config.contains_key("cpu_cores_limit"));
        // Our own flat keys are not Azure ML's.
        assert!(!is_azureml_deployment(&json!({"scoring_timeout_ms": 5})));
    }

    #[test]
    fn azure_mls_inference_config_gives_the_entry_script() {
        let m = map_inference(&json!({"entryScript": "score.py", "sourceDirectory": "src", "runtime": "python", "condaFile": "env.yml"}))
            .unwrap();
        assert_eq!(m.entry_script.as_deref(), Some("src/score.py"));
        assert!(m.ignored.iter().any(|i| i.starts_with("condaFile")));
        assert!(map_inference(&json!({"entryScript": "x.sh", "runtime": "spark-py"})).is_err());
    }
}
