fn main() {
    if std::env::var_os("CARGO_FEATURE_NODE").is_some() {
        napi_build::setup();
    }
    // `getVersions()` of the compat layer reports the crate versions actually compiled in.
    let lock_path = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    for (krate, var) in [("vodozemac", "MCN_VODOZEMAC_VERSION"), ("matrix-sdk-crypto", "MCN_MATRIX_SDK_CRYPTO_VERSION")] {
        println!("cargo:rustc-env={var}={}", locked_version(&lock, krate).unwrap_or("unknown"));
    }
    // The store's PostgreSQL tests need a server: `scripts/postgres.sh run cargo test ...`
    // starts one and names it in MCN_TEST_POSTGRES. Without it they are left out, and said so.
    println!("cargo::rustc-check-cfg=cfg(mcn_postgres)");
    println!("cargo:rerun-if-env-changed=MCN_TEST_POSTGRES");
    if std::env::var_os("MCN_TEST_POSTGRES").is_some() {
        println!("cargo:rustc-cfg=mcn_postgres");
    } else if std::env::var_os("CARGO_FEATURE_NODE").is_none() {
        println!("cargo:warning=the store's PostgreSQL tests are not compiled: MCN_TEST_POSTGRES is not set (scripts/postgres.sh run cargo test ... sets it)");
    }
    // Its TLS tests need the TLS server and the one without TLS that the same run starts.
    println!("cargo::rustc-check-cfg=cfg(mcn_postgres_tls)");
    println!("cargo:rerun-if-env-changed=MCN_TEST_POSTGRES_TLS");
    if std::env::var_os("MCN_TEST_POSTGRES_TLS").is_some() {
        println!("cargo:rustc-cfg=mcn_postgres_tls");
    } else if std::env::var_os("CARGO_FEATURE_NODE").is_none() {
        println!("cargo:warning=the store's PostgreSQL TLS tests are not compiled: MCN_TEST_POSTGRES_TLS is not set (scripts/postgres.sh run cargo test ... sets it)");
    }
}

/// The version of `krate` in Cargo.lock (`name = "..."` followed by `version = "..."`).
fn locked_version<'a>(lock: &'a str, krate: &str) -> Option<&'a str> {
    let marker = format!("name = \"{krate}\"\nversion = \"");
    let start = lock.find(&marker)? + marker.len();
    let len = lock[start..].find('"')?;
    Some(&lock[start..start + len])
}
