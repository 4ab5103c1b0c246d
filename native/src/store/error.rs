//! The engine's error type. Every variant is a failure the caller can act on differently: a
//! wrong passphrase is retried with the right one, a newer schema needs a newer release, a
//! database failure is reported; they reach JavaScript as distinct codes (see `open.rs`).

use std::fmt;

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// SQLite refused a statement or could not open the file.
    Sqlite(rusqlite::Error),
    /// PostgreSQL refused a statement or the connection failed.
    Postgres(tokio_postgres::Error),
    /// No PostgreSQL connection could be taken from the pool.
    Pool(String),
    /// TLS to PostgreSQL failed: the server offers none where the `sslmode` demands it, or its
    /// certificate is refused (`postgres_tls.rs`). Nothing was sent in plain text.
    Tls(String),
    /// The passphrase does not open this account's key, or the account is stored with a
    /// passphrase and none was given, or the other way round. Nothing was written.
    Passphrase(String),
    /// The database was written by a newer schema than this release knows. Nothing was written.
    Schema(String),
    /// A stored value could not be decoded (corruption, or a format this release cannot read).
    Decode(String),
    /// A value could not be encoded or encrypted.
    Encode(String),
    /// The store was closed with `close()` and not reopened.
    Closed,
    /// Another process holds the account's lease now (this one did not renew it in time):
    /// this machine must not write any more.
    LeaseLost,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(e) => write!(f, "SQLite: {e}"),
            Self::Postgres(e) => {
                // tokio-postgres' Display says only "db error"; the server's message is the source.
                match e.as_db_error() {
                    Some(db) => write!(f, "PostgreSQL: {}: {}", db.code().code(), db.message()),
                    // Nor does it name the cause of other failures ("error connecting to server").
                    None => match std::error::Error::source(e) {
                        Some(cause) => write!(f, "PostgreSQL: {e}: {cause}"),
                        None => write!(f, "PostgreSQL: {e}"),
                    },
                }
            }
            Self::Pool(e) => write!(f, "PostgreSQL connection: {e}"),
            Self::Tls(e) => write!(f, "PostgreSQL TLS: {e}"),
            Self::Passphrase(e) => write!(f, "{e}"),
            Self::Schema(e) => write!(f, "{e}"),
            Self::Decode(e) => write!(f, "cannot decode a stored value: {e}"),
            Self::Encode(e) => write!(f, "cannot encode a value: {e}"),
            Self::Closed => write!(f, "the store is closed"),
            Self::LeaseLost => write!(f, "another process took over this account (its lease was not renewed in time); close this machine"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

impl From<StoreError> for matrix_sdk_crypto::store::CryptoStoreError {
    fn from(e: StoreError) -> Self {
        matrix_sdk_crypto::store::CryptoStoreError::backend(e)
    }
}

/// Results of the engine and its backends.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
