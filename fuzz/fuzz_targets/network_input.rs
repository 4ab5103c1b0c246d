//! Every parser of network data, driven by libFuzzer: see `native/src/hostile.rs`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use matrix_crypto_node::hostile::Harness;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).run(data);
});
