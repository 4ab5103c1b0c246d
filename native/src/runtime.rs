//! The one tokio runtime every machine of the process shares, with a bounded thread count.
//!
//! napi-rs runs every async method on a process-wide tokio runtime. Its default allows up to 512
//! blocking threads, and the SQLite store runs each query on one: a bridge with a thousand
//! puppet devices syncing at once would grow the process to hundreds of threads. The same
//! runtime with a lower ceiling queues those queries instead; threads idle for ten seconds go
//! away either way.

/// Threads for blocking work (SQLite queries) across all machines.
pub const MAX_BLOCKING_THREADS: usize = 32;

#[napi_derive::module_init]
fn init() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build();
    // Without a runtime of our own napi-rs builds its default one on first use.
    if let Ok(runtime) = runtime {
        napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
    }
}
