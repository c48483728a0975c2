//! Generates the Open Inference Protocol gRPC service (server side) from
//! proto/inference.proto with protoc.

fn main() {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_protos(&["proto/inference.proto"], &["proto"])
        .unwrap_or_else(|e| {
            panic!("generating the gRPC service from proto/inference.proto (is protoc installed? ./setup.sh installs it): {e}")
        });
}
