//! TLS to PostgreSQL against the servers `scripts/postgres.sh run` starts (compiled only when
//! MCN_TEST_POSTGRES_TLS names one): its TLS server (certificate from a test CA, files in
//! MCN_TEST_POSTGRES_TLS_DIR) and its server without TLS (MCN_TEST_POSTGRES_TCP).
//!
//! Every target is resolved without `$HOME`, so a `~/.postgresql/root.crt` of whoever runs the
//! tests cannot change what they check.

use super::{
    error::StoreError,
    postgres::PostgresBackend,
    postgres_connect::{parse_connection_string, resolve, PostgresTarget, SettingError, SslSettings},
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/postgres.sh run"))
}

/// A file of the TLS server's folder (ca.crt, other-ca.crt, client.crt, client.key).
fn file(name: &str) -> String {
    format!("{}/{name}", env("MCN_TEST_POSTGRES_TLS_DIR"))
}

/// The TCP port of a server's connection string.
fn port(connection: &str) -> u16 {
    let text: tokio_postgres::Config = connection.parse().unwrap();
    text.get_ports()[0]
}

fn target(text: &str) -> Result<PostgresTarget, SettingError> {
    let (config, settings) = parse_connection_string(text)?;
    resolve(config, settings, SslSettings::default(), None)
}

/// Connect to `text` and say whether the connection is encrypted, as the server sees it.
async fn encrypted(text: &str) -> Result<bool, StoreError> {
    let backend = PostgresBackend::connect(target(text).expect("a valid connection string"), 1).await?;
    backend.connection_encrypted().await
}

fn tls(extra: &str) -> String {
    format!("{} {extra}", env("MCN_TEST_POSTGRES_TLS"))
}

#[tokio::test]
async fn verify_full_with_the_test_ca_connects_encrypted() {
    let text = tls(&format!("sslmode=verify-full sslrootcert={}", file("ca.crt")));
    assert_eq!(encrypted(&text).await.unwrap(), true);
}

#[tokio::test]
async fn the_url_form_carries_the_same_settings() {
    let root = file("ca.crt").replace('/', "%2F");
    let url = format!("postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={root}", port(&env("MCN_TEST_POSTGRES_TLS")));
    assert_eq!(encrypted(&url).await.unwrap(), true);
}

#[tokio::test]
async fn verify_full_with_another_ca_is_refused() {
    let text = tls(&format!("sslmode=verify-full sslrootcert={}", file("other-ca.crt")));
    let err = encrypted(&text).await.unwrap_err();
    assert!(matches!(&err, StoreError::Tls(m) if m.contains("not signed by a certificate authority of sslrootcert")), "{err}");
}

#[tokio::test]
async fn require_with_a_root_certificate_checks_the_chain() {
    let text = tls(&format!("sslmode=require sslrootcert={}", file("other-ca.crt")));
    let err = encrypted(&text).await.unwrap_err();
    assert!(matches!(&err, StoreError::Tls(m) if m.contains("not signed")), "{err}");
}

/// The server's certificate names localhost, 127.0.0.1 and ::1; here the same server is reached
/// at 127.0.0.1 under another name.
fn under_another_name(mode: &str) -> String {
    format!(
        "host=db.example.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode} sslrootcert={}",
        port(&env("MCN_TEST_POSTGRES_TLS")),
        file("ca.crt")
    )
}

#[tokio::test]
async fn verify_full_against_a_name_not_in_the_certificate_is_refused() {
    let err = encrypted(&under_another_name("verify-full")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Tls(m) if m.contains("does not name the host \"db.example.invalid\"")), "{err}");
}

#[tokio::test]
async fn verify_ca_does_not_check_the_name() {
    assert_eq!(encrypted(&under_another_name("verify-ca")).await.unwrap(), true);
}

#[tokio::test]
async fn the_ip_address_in_the_certificate_is_checked_as_a_name() {
    let text = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        port(&env("MCN_TEST_POSTGRES_TLS")),
        file("ca.crt")
    );
    assert_eq!(encrypted(&text).await.unwrap(), true);
}

#[tokio::test]
async fn require_and_prefer_encrypt_without_a_root_certificate() {
    assert_eq!(encrypted(&tls("sslmode=require")).await.unwrap(), true);
    assert_eq!(encrypted(&tls("sslmode=prefer")).await.unwrap(), true);
    // Nothing given: libpq's default, prefer.
    assert_eq!(encrypted(&tls("")).await.unwrap(), true);
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let text = format!("{} sslmode={mode} sslrootcert={}", env("MCN_TEST_POSTGRES_TCP"), file("ca.crt"));
        let err = encrypted(&text).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Tls(m) if m == &format!("the server does not offer TLS, and sslmode {mode} refuses to connect without it")),
            "{mode}: {err}"
        );
    }
}

#[tokio::test]
async fn prefer_against_a_server_without_tls_connects_unencrypted() {
    let text = format!("{} sslmode=prefer", env("MCN_TEST_POSTGRES_TCP"));
    assert_eq!(encrypted(&text).await.unwrap(), false);
    assert_eq!(encrypted(&format!("{} sslmode=disable", env("MCN_TEST_POSTGRES_TLS"))).await.unwrap(), false);
}

#[tokio::test]
async fn a_client_certificate_logs_in_where_the_server_demands_one() {
    let base = format!(
        "host=localhost port={} user=mcn_client dbname=mcn_client sslmode=verify-full sslrootcert={}",
        port(&env("MCN_TEST_POSTGRES_TLS")),
        file("ca.crt")
    );
    let with = format!("{base} sslcert={} sslkey={}", file("client.crt"), file("client.key"));
    assert_eq!(encrypted(&with).await.unwrap(), true);
    let err = encrypted(&base).await.unwrap_err();
    assert!(matches!(&err, StoreError::Postgres(e) if e.as_db_error().is_some()), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}
