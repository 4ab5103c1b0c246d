//! matrix-crypto-node: napi-rs bindings over matrix-sdk-crypto. Module wiring only.
//!
//! The `node` feature (default) builds the binding; the withheld logic is plain Rust so its
//! unit tests run with `cargo test --no-default-features`.
#![deny(clippy::all)]

// napi-rs turns a panic into a rejected promise (async methods) or a thrown error (methods marked
// `catch_unwind`) only if it unwinds; with `panic = "abort"` any panic would kill Node.
#[cfg(panic = "abort")]
compile_error!("build matrix-crypto-node with panic = \"unwind\": panics must unwind to become typed JS errors");

#[cfg(feature = "node")]
mod backup;
#[cfg(feature = "node")]
mod compat;
pub mod core_machine;
#[cfg(feature = "node")]
mod devices;
// Test-only exports (a deliberate panic): compiled into debug builds, the ones the test suites
// load, and never into a release build, the one that ships.
#[cfg(all(feature = "node", debug_assertions))]
mod diagnostics;
#[cfg(feature = "node")]
mod errors;
#[cfg(feature = "node")]
mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod hostile;
#[cfg(feature = "node")]
mod ids;
#[cfg(feature = "node")]
mod keys;
#[cfg(feature = "node")]
mod logging;
#[cfg(feature = "node")]
mod machine;
#[cfg(feature = "node")]
mod requests;
#[cfg(feature = "node")]
mod rooms;
// The store engine is plain Rust (its conformance tests run without `node`, bench/rust runs the
// crate on it); only its `OlmMachine.open` glue is part of the binding.
pub mod store;
#[cfg(feature = "node")]
mod trust;
#[cfg(feature = "node")]
mod withheld_js;
#[cfg(feature = "node")]
mod withheld_bundle_js;

pub mod json_input;
pub mod key_file;
pub mod locks;
pub mod runtime;
pub mod to_device;
pub mod withheld;
