//! Two of Triton's extensions to the protocol, as REST and gRPC both
//! state them (tritonclient's calls in brackets).
//!
//! The model repository's index (`get_model_repository_index`): every
//! endpoint's versions, READY or UNAVAILABLE with the reason (the plane's
//! `versions`). Models are deployed with `wasmscore
//! deploy` (or an Endpoint resource), so the repository's load and unload
//! are refused, as Triton refuses them when it does not control its models.
//!
//! Statistics (`get_inference_statistics`, what perf_analyzer reads from
//! the server): per version, the requests it answered and what they took,
//! as REST's `/v2/models/{m}/stats` and gRPC's ModelStatistics state them.
//! From wasmscore's own figures: `success` and `fail` are the version's
//! answers (2xx, and any other status) with their time from routing to
//! answer; `queue` (waiting for a free instance) and `compute_infer` (the
//! module's `run()`, host calls included) are its pool's, for versions in
//! this process (a router's versions run on nodes, whose own `/v2/.../stats`
//! have them). `inference_count` counts the answered requests (2xx);
//! `execution_count` the module's runs, a refused request's too (on a
//! router, the 2xx answers). Batching merges model runs inside `run()`, not
//! requests, so every request is one inference.

use std::sync::atomic::Ordering;

use wasmscore_router::{Endpoint, Replicas, Router, Version};

use crate::errors::ApiError;
use crate::grpc::proto::repository_index_response::ModelIndex;
use crate::grpc::proto::{InferStatistics, ModelStatistics, StatisticDuration};

/// Triton's extensions this server has, in its server metadata.
pub(crate) const EXTENSIONS: [&str; 6] = [
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "system_shared_memory",
    "logging",
    "trace",
];

/// The statistics of `endpoint`'s versions (or of `version` alone) after
/// the request's `Authorization` passed its policy; with no endpoint
/// (`""`), of every endpoint's, for the admin token only (`admin`: it was
/// given).
pub(crate) fn stats(
    router: &Router,
    endpoint: &str,
    version: Option<&str>,
    authorization: Option<&[u8]>,
    admin: bool,
) -> Result<Vec<ModelStatistics>, ApiError> {
    let endpoints = if endpoint.is_empty() {
        if !admin {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "the statistics of every model need `Authorization: Bearer <admin token>`; one model's take its key or token",
            ));
        }
        router.endpoints()
    } else {
        vec![router.authorize(endpoint, authorization)?]
    };
    let mut stats = Vec::new();
    for ep in &endpoints {
        match version {
            Some(v) => {
                let found = ep
                    .version(v)
                    .ok_or_else(|| ApiError::new(404, "not_found", format!("{} has no version {v} serving", ep.name)))?;
                stats.push(of(ep, found));
            }
            None => stats.extend(ep.versions().map(|v| of(ep, v))),
        }
    }
    Ok(stats)
}

/// The repository index, for the admin token only (`admin`: it was
/// given): every version of every endpoint, READY or UNAVAILABLE with the
/// reason, as Triton lists its models; only the READY ones when `ready`.
pub(crate) fn index(versions: Vec<(String, String, Option<String>)>, admin: bool, ready: bool) -> Result<Vec<ModelIndex>, ApiError> {
    crate::http::admin_only(admin, "the repository index")?;
    Ok(versions
        .into_iter()
        .filter(|(_, _, why)| !ready || why.is_none())
        .map(|(name, version, why)| ModelIndex {
            name,
            version,
            state: if why.is_none() { "READY" } else { "UNAVAILABLE" }.into(),
            reason: why.unwrap_or_default(),
        })
        .collect())
}

/// The answer to the repository's load and unload.
pub(crate) fn not_loadable(model: &str) -> ApiError {
    ApiError::new(
        501,
        "not_implemented",
        format!("{model}: models are deployed with `wasmscore deploy` (or an Endpoint resource on a cluster); the repository's load and unload are not served"),
    )
}

fn of(ep: &Endpoint, v: &Version) -> ModelStatistics {
    let s = &v.stats;
    let (ok, failed) = s.ok_and_failed();
    let duration = |count: u64, ns: u64| Some(StatisticDuration { count, ns });
    // A version on nodes: what the router saw, one execution per answer.
    let (queue, compute, executions) = match &v.replicas {
        Replicas::Local(pool) => {
            let p = pool.stats();
            (
                duration(p.queue_wait.count(), p.queue_wait.sum_nanos()),
                duration(p.run_time.count(), p.run_time.sum_nanos()),
                p.run_time.count(),
            )
        }
        Replicas::Remote(_) => (duration(0, 0), duration(0, 0), ok),
    };
    ModelStatistics {
        name: ep.name.clone(),
        version: v.name.clone(),
        last_inference: s.last_ms.load(Ordering::Relaxed),
        inference_count: ok,
        execution_count: executions,
        inference_stats: Some(InferStatistics {
            success: duration(ok, s.ok_ns.load(Ordering::Relaxed)),
            fail: duration(failed, s.failed_ns.load(Ordering::Relaxed)),
            queue,
            compute_input: duration(0, 0),
            compute_infer: compute,
            compute_output: duration(0, 0),
            cache_hit: duration(0, 0),
            cache_miss: duration(0, 0),
        }),
        batch_stats: Vec::new(),
        memory_usage: Vec::new(),
    }
}
