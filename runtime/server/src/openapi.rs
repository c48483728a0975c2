//! The OpenAPI 3.0 document of one endpoint (`GET
//! /api/v1/service/{name}/swagger.json`, Azure ML's route): its `/score`
//! route and its Open Inference Protocol routes, with the model's inputs
//! and outputs when the version has a model signature, and every status
//! the routes answer. schemathesis checks the running server against it.

use serde_json::{json, Value};

/// The document for `endpoint`, from its Open Inference Protocol metadata
/// (`Plane::model_metadata`).
pub(crate) fn document(endpoint: &str, metadata: &Value) -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let errors = |codes: &[u16]| -> serde_json::Map<String, Value> {
        codes
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    json!({"description": "an error", "content": {"application/json": {"schema": error}}}),
                )
            })
            .collect()
    };
    let scoring_errors = [400u16, 401, 404, 413, 429, 500, 502, 503, 504];
    let with = |ok: Value, codes: &[u16]| -> Value {
        let mut m = errors(codes);
        m.insert("200".into(), ok);
        Value::Object(m)
    };
    let inputs = metadata["inputs"].as_array().cloned().unwrap_or_default();
    let input_names: Vec<Value> = inputs.iter().map(|i| i["name"].clone()).collect();
    let infer_names = input_names.clone();
    let score_body = if inputs.is_empty() {
        json!({"description": "whatever the version's module reads (JSON, usually)", "type": "object"})
    } else {
        // A model served with no module: {"inputs": {NAME: nested list}}.
        let props: serde_json::Map<String, Value> = inputs
            .iter()
            .filter_map(|i| Some((i["name"].as_str()?.to_string(), nested(i))))
            .collect();
        json!({"type": "object", "required": ["inputs"], "properties": {"inputs": {
            "type": "object", "properties": props, "required": input_names, "additionalProperties": false,
        }}})
    };
    let infer_input = {
        let mut name = json!({"type": "string"});
        if !infer_names.is_empty() {
            name["enum"] = Value::Array(infer_names);
        }
        json!({
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": name,
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"]},
                "parameters": {"type": "object"},
                "data": {"type": "array", "description": "the elements, flat or nested (row-major)"},
            },
        })
    };
    let infer_output = json!({
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    });
    let json_ok = |schema: Value| json!({"description": "OK", "content": {"application/json": {"schema": schema}}});
    let infer_ok = json!({
        "description": "the outputs; binary ones follow the JSON part (Inference-Header-Content-Length)",
        "headers": {"x-wasmscore-version": {"description": "the version that answered", "schema": {"type": "string"}}},
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    });
    let infer = json!({
        "summary": "Open Inference Protocol inference (JSON, or with the binary tensor extension)",
        "security": [{"bearer": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}},
        "responses": with(infer_ok, &scoring_errors),
    });
    let mut paths = serde_json::Map::new();
    paths.insert(
        format!("/api/v1/service/{endpoint}/score"),
        json!({"post": {
            "summary": "Azure ML scoring: the body goes to the version's module",
            "security": [{"bearer": []}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": score_body}}},
            "responses": with(json_ok(json!({})), &scoring_errors),
        }}),
    );
    paths.insert(format!("/v2/models/{endpoint}/infer"), json!({ "post": infer }));
    paths.insert(
        format!("/v2/models/{endpoint}"),
        json!({"get": {"summary": "model metadata", "responses": with(json_ok(json!({"$ref": "#/components/schemas/ModelMetadata"})), &[404])}}),
    );
    paths.insert(
        format!("/v2/models/{endpoint}/config"),
        json!({"get": {"summary": "Triton's model configuration (its extension): the tensors' data_type and dims", "responses": with(json_ok(json!({"type": "object", "required": ["name", "max_batch_size", "input", "output"]})), &[404])}}),
    );
    paths.insert(
        format!("/v2/models/{endpoint}/stats"),
        json!({"get": {
            "summary": "Triton's statistics (its extension): per version, the answers and what they took, its queue and run times",
            "security": [{"bearer": []}],
            "responses": with(json_ok(json!({"type": "object", "required": ["model_stats"]})), &[401, 404]),
        }}),
    );
    paths.insert(
        format!("/v2/models/{endpoint}/ready"),
        json!({"get": {"summary": "model readiness", "responses": with(json_ok(json!({"type": "object"})), &[404, 503])}}),
    );
    paths.insert(
        "/v2".into(),
        json!({"get": {"summary": "server metadata", "responses": with(json_ok(json!({"type": "object", "required": ["name", "version", "extensions"]})), &[])}}),
    );
    paths.insert(
        "/v2/health/live".into(),
        json!({"get": {"summary": "liveness", "responses": with(json_ok(json!({"type": "object"})), &[])}}),
    );
    paths.insert(
        "/v2/health/ready".into(),
        json!({"get": {"summary": "readiness", "responses": with(json_ok(json!({"type": "object"})), &[503])}}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": format!("{endpoint} (wasmscore)"),
            "version": metadata["versions"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")).unwrap_or_default(),
            "description": "Scoring for one endpoint: Azure ML's /score and the Open Inference Protocol (v2) routes.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "the endpoint's key or token"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {}}},
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "minItems": 1, "items": infer_input},
                        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": infer_output},
                    },
                },
                "ModelMetadata": {
                    "type": "object",
                    "required": ["name", "versions", "platform", "inputs", "outputs"],
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {"type": "array"},
                        "outputs": {"type": "array"},
                    },
                },
            },
        },
    })
}

/// An input's value on the built-in module's `/score` route: lists nested
/// as its shape (a fixed dimension fixes the length; -1 is at least one),
/// of elements of its datatype.
fn nested(input: &Value) -> Value {
    let leaf = match input["datatype"].as_str().unwrap_or_default() {
        "BOOL" => json!({"type": "boolean"}),
        "BYTES" => json!({"type": "string"}),
        "FP32" | "FP64" => json!({"type": "number"}),
        int => {
            let (min, max): (i128, i128) = match int {
                "INT8" => (i8::MIN.into(), i8::MAX.into()),
                "INT16" => (i16::MIN.into(), i16::MAX.into()),
                "INT32" => (i32::MIN.into(), i32::MAX.into()),
                "UINT8" => (0, u8::MAX.into()),
                "UINT16" => (0, u16::MAX.into()),
                "UINT32" => (0, u32::MAX.into()),
                "UINT64" => (0, u64::MAX.into()),
                _ => (i64::MIN.into(), i64::MAX.into()),
            };
            json!({"type": "integer", "minimum": min as f64, "maximum": max as f64})
        }
    };
    let dims: Vec<i64> = input["shape"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
    dims.iter().rev().fold(leaf, |items, &d| {
        if d > 0 {
            json!({"type": "array", "items": items, "minItems": d, "maxItems": d})
        } else {
            json!({"type": "array", "items": items, "minItems": 1})
        }
    })
}
