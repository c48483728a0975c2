//! End-to-end tests live in `tests/e2e.rs` (one integration binary); the
//! guest test programs in `programs/` are built for wasm32-wasip2 by
//! `build.rs`. This library is empty on purpose.
