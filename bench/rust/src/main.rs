//! The Rust sides of `npm run bench`:
//!
//! - `fixtures`: the recipient devices every implementation is measured against (`fixtures.rs`);
//! - `crate`: the mass-recipient scenario on matrix-sdk-crypto's `OlmMachine` directly, with the
//!   fixtures the Node driver wrote, to show what the binding costs;
//! - `floor`: the cryptographic primitives alone, per device, on one core and on all cores.
//!
//! Both print a JSON array of runs (the `runs` schema of `bench/results/latest.json`) on stdout.

mod fixtures;
mod floor;
mod scenario;

use std::{fs, path::PathBuf, time::Duration};

use serde::Serialize;

/// One figure set, as the Node driver merges it into `latest.json`.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub store: String,
    pub n: usize,
    pub devices_per_user: usize,
    pub phase: &'static str,
    pub wall_ms: f64,
    pub us_per_device: f64,
    pub peak_rss_mb: f64,
    pub rss_base_mb: f64,
    pub to_device_bytes: u64,
    /// No event loop on this side.
    pub max_event_loop_delay_ms: Option<f64>,
    pub reps: usize,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Wall time of each repetition, in the order they ran.
    pub rep_ms: Vec<f64>,
    pub devices: usize,
    pub cores: usize,
}

/// Median, min and max of repeated wall times.
pub fn summarise(times: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    let median = if ms.len() % 2 == 1 { ms[mid] } else { (ms[mid - 1] + ms[mid]) / 2.0 };
    (median, ms[0], ms[ms.len() - 1])
}

/// Resident memory of this process: the current value and the peak since the last reset.
pub mod rss {
    use std::fs;

    fn status_kb(field: &str) -> f64 {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
            })
            .unwrap_or(0.0)
    }

    /// Reset the peak (VmHWM) to the current RSS, so the next `peak_mb` covers one phase.
    pub fn reset_peak() {
        let _ = fs::write("/proc/self/clear_refs", "5");
    }

    pub fn peak_mb() -> f64 {
        status_kb("VmHWM:") / 1024.0
    }

    pub fn current_mb() -> f64 {
        status_kb("VmRSS:") / 1024.0
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn required(args: &[String], name: &str) -> String {
    arg(args, name).unwrap_or_else(|| {
        eprintln!("missing {name}");
        std::process::exit(2)
    })
}

fn number(args: &[String], name: &str) -> usize {
    required(args, name).parse().unwrap_or_else(|_| {
        eprintln!("{name} must be a number");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = match args.get(1).map(String::as_str) {
        Some("fixtures") => {
            let out = PathBuf::from(required(&args, "--out"));
            let server = required(&args, "--server");
            if let Err(e) = fixtures::write(number(&args, "--devices"), number(&args, "--devices-per-user"), &server, &out) {
                eprintln!("fixtures: {e}");
                std::process::exit(1)
            }
            return;
        }
        Some("floor") => floor::run(number(&args, "--devices"), number(&args, "--reps"), number(&args, "--devices-per-user")),
        Some("crate") => {
            let fixtures = PathBuf::from(required(&args, "--fixtures"));
            let work = PathBuf::from(required(&args, "--workdir"));
            let setup = scenario::Setup {
                store: required(&args, "--store"),
                n: number(&args, "--n"),
                devices_per_user: number(&args, "--devices-per-user"),
                reps: number(&args, "--reps"),
                work,
                until: arg(&args, "--until").and_then(|p| scenario::PHASES.iter().copied().find(|&q| q == p)),
            };
            let text = fs::read_to_string(&fixtures).unwrap_or_else(|e| {
                eprintln!("cannot read {}: {e}", fixtures.display());
                std::process::exit(2)
            });
            // The addon's runtime, and the scenario spawned onto one of its workers as napi-rs
            // spawns every async call: the two runs then differ by the binding alone.
            let runtime = matrix_crypto_node::runtime::build().expect("tokio runtime");
            let task = runtime.spawn(async move { scenario::run(&text, &setup).await.map_err(|e| e.to_string()) });
            runtime.block_on(task).expect("scenario task").unwrap_or_else(|e| {
                eprintln!("crate scenario failed: {e}");
                std::process::exit(1)
            })
        }
        _ => {
            eprintln!("usage: matrix-crypto-node-bench fixtures --devices N --devices-per-user K --server NAME --out FILE\n       matrix-crypto-node-bench floor --devices N --devices-per-user K --reps R\n       matrix-crypto-node-bench crate --fixtures FILE --store memory|sqlite --n N --devices-per-user K --reps R --workdir DIR");
            std::process::exit(2)
        }
    };
    println!("{}", serde_json::to_string(&runs).expect("runs serialise"));
}
