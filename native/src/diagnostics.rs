//! Hidden diagnostics for the reliability tests: a way to make the addon panic on purpose.
//!
//! The promise that "a Rust panic surfaces as a typed error and never aborts Node" must be tested
//! against the real addon, on the real tokio runtime and through the real napi-rs trampolines.
//! Fuzzing found no panic in this binding, and the one it found inside matrix-sdk-crypto (see the
//! docs/reliability.md) depends on the harness's state, not on one call a test could
//! make. These exports do nothing else, and exist only in debug builds (the ones the test suites
//! load; `lib.rs`), never in the release build that ships. They are not part of the TypeScript API (`src/` never re-exports them) and
//! their `__` names keep them out of the way of anyone reading the generated binding.

use napi::bindgen_prelude::*;
use napi_derive::napi;

/// Panic inside an async method, on a tokio worker, as a bug in the crate or in this binding
/// would. `owned` selects a `String` payload (`panic!("{x}")`) instead of a `&'static str` one.
#[napi(js_name = "__panicForTest")]
pub async fn panic_for_test(owned: bool) -> Result<()> {
    if owned {
        panic!("{}", String::from("deliberate panic for a test (owned message)"));
    }
    panic!("deliberate panic for a test");
}

/// Panic inside a synchronous method on the JS thread.
#[napi(js_name = "__panicForTestSync", catch_unwind)]
pub fn panic_for_test_sync() -> Result<()> {
    panic!("deliberate panic for a test (synchronous)");
}
