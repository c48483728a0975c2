//! The project's one `bindgen!` for the scoring world.

pub use crate::host::{ModelRes, TensorRes};

/// What host imports return when they fail: an error the guest sees as the
/// WIT `error` variant, or (only for host bugs) a trap.
#[derive(Debug)]
pub enum HostError {
    Guest(wasmscore_tensor::TensorError),
    Trap(wasmtime::Error),
}

impl From<wasmscore_tensor::TensorError> for HostError {
    fn from(e: wasmscore_tensor::TensorError) -> Self {
        HostError::Guest(e)
    }
}

impl From<wasmtime::component::ResourceTableError> for HostError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        HostError::Trap(wasmtime::Error::new(e))
    }
}

// The host provides `scorer-nn`, the scoring world plus wasi:nn; a module
// built for `scorer` imports a subset of it and links the same way.
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "scorer-nn",
    imports: { default: trappable },
    trappable_error_type: {
        "wasmscore:scoring/types.error" => HostError,
    },
    with: {
        "wasmscore:scoring/tensors.tensor": TensorRes,
        "wasmscore:scoring/inference.model": ModelRes,
        "wasi:nn/graph.graph": crate::nn::NnGraph,
        "wasi:nn/tensor.tensor": crate::nn::NnTensor,
        "wasi:nn/inference.graph-execution-context": crate::nn::NnContext,
        "wasi:nn/errors.error": crate::nn::NnError,
    },
});

pub use self::{ScorerNn as Scorer, ScorerNnPre as ScorerPre};
pub use wasi::nn;
pub use wasmscore::scoring::{
    byte_strings, data_collection, half_floats, inference, log, metrics, ops, responses, scoring_types, tensors, types,
};
