//! matrix-crypto-node: napi-rs bindings over matrix-sdk-crypto. Module wiring only.
//!
//! The `node` feature (default) builds the binding; the withheld logic is plain Rust so its
//! unit tests run with `cargo test --no-default-features`.
#![deny(clippy::all)]

#[cfg(feature = "node")]
mod backup;
#[cfg(feature = "node")]
mod bench;
#[cfg(feature = "node")]
mod compat;
#[cfg(feature = "node")]
mod devices;
#[cfg(feature = "node")]
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
mod store;
#[cfg(feature = "node")]
mod trust;

pub mod key_file;
pub mod runtime;
pub mod withheld;
