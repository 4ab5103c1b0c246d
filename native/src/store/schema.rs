//! Versioned schema migrations, one list per SQL dialect.
//!
//! The version lives in the database (`mcn_schema`); opening applies the migrations it lacks in
//! one transaction, so a database is always at one version of this list. A database at a
//! version newer than this release knows is refused before anything is written: an older
//! release would not know what the newer rows mean.
//!
//! Version 1 holds accounts and their rows; version 2 adds the leases of the crate's
//! cross-process lock, which only mattered once several processes could share a database.

/// SQLite migrations; entry `i` brings the schema from version `i` to `i + 1`.
pub const SQLITE: &[&str] = &[
    "CREATE TABLE mcn_accounts (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        cipher BLOB,
        created_ms INTEGER NOT NULL,
        UNIQUE (user_id, device_id)
    );
    CREATE TABLE mcn_entries (
        account INTEGER NOT NULL REFERENCES mcn_accounts (id),
        kind INTEGER NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (account, kind, key)
    ) WITHOUT ROWID;",
    "CREATE TABLE mcn_leases (
        account INTEGER NOT NULL REFERENCES mcn_accounts (id),
        key TEXT NOT NULL,
        holder TEXT NOT NULL,
        expires_us INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        PRIMARY KEY (account, key)
    );",
];

/// PostgreSQL migrations; entry `i` brings the schema from version `i` to `i + 1`.
pub const POSTGRES: &[&str] = &[
    "CREATE TABLE mcn_accounts (
        id BIGSERIAL PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        cipher BYTEA,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        UNIQUE (user_id, device_id)
    );
    CREATE TABLE mcn_entries (
        account BIGINT NOT NULL REFERENCES mcn_accounts (id),
        kind SMALLINT NOT NULL,
        key BYTEA NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (account, kind, key)
    );",
    "CREATE TABLE mcn_leases (
        account BIGINT NOT NULL REFERENCES mcn_accounts (id),
        key TEXT NOT NULL,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        generation BIGINT NOT NULL,
        PRIMARY KEY (account, key)
    );",
];

/// The schema version this release writes.
pub fn current() -> usize {
    debug_assert_eq!(SQLITE.len(), POSTGRES.len());
    SQLITE.len()
}

/// The refusal for a database newer than this release.
pub fn too_new(found: i64) -> super::error::StoreError {
    super::error::StoreError::Schema(format!(
        "the database is at schema version {found}, newer than the {} this release of matrix-crypto-node knows; upgrade matrix-crypto-node",
        current()
    ))
}
