//! The one tokio runtime every machine of the process shares, with a bounded thread count.
//!
//! napi-rs runs every async method on a process-wide tokio runtime. Its default allows up to 512
//! blocking threads, and the SQLite store runs each query on one: a bridge with a thousand
//! puppet devices syncing at once would grow the process to hundreds of threads. The same
//! runtime with a lower ceiling queues those queries instead; threads idle for ten seconds go
//! away either way.
//!
//! The benchmark's pure-Rust run (`bench/rust`) builds its runtime with [`build`] too, so the
//! figures it is compared with differ by the binding alone, not by the runtime's settings.

/// Threads for blocking work (SQLite queries) across all machines: twice the cores, at least 4
/// and at most 32.
///
/// More threads than cores buy nothing for queries that are CPU work on cached pages, and each
/// thread that allocates can take its own glibc malloc arena, which keeps freed memory: sharing
/// a room key with 10,000 devices on SQLite peaked at ~960 MB RSS with 32 threads and ~690 MB
/// with 4 on a 2-core machine, at the same speed.
pub fn max_blocking_threads() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    (2 * cores).clamp(4, 32)
}

/// The runtime the addon runs every async call on: multi-threaded (one worker per core, tokio's
/// default), timers and I/O enabled, [`max_blocking_threads`] blocking threads.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(max_blocking_threads()).build()
}

#[cfg(feature = "node")]
#[napi_derive::module_init]
fn init() {
    // Without a runtime of our own napi-rs builds its default one on first use.
    if let Ok(runtime) = build() {
        napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
    }
}
