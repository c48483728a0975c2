//! Generates the Open Inference Protocol gRPC service (server side) from
//! proto/inference.proto with protoc.

fn main() {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    // The messages REST answers too (Triton's statistics and repository
    // index): one value, written as JSON by serde or as protobuf by prost.
    let mut b = tonic_prost_build::configure();
    for m in [
        "ModelStatistics",
        "InferStatistics",
        "StatisticDuration",
        "InferBatchStatistics",
        "MemoryUsage",
        "RepositoryIndexResponse.ModelIndex",
    ] {
        b = b.type_attribute(format!("inference.{m}"), "#[derive(serde::Serialize)]");
    }
    b.build_client(false)
        .build_transport(false)
        .compile_protos(&["proto/inference.proto"], &["proto"])
        .unwrap_or_else(|e| {
            panic!("generating the gRPC service from proto/inference.proto (is protoc installed? ./setup.sh installs it): {e}")
        });
}
