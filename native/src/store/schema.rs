//! Versioned schema migrations, one list written out in each SQL dialect.
//!
//! The version lives in the database (`mcn_schema`); opening applies the migrations it lacks in
//! one transaction, so a database is always at one version of this list. A database at a
//! version newer than this release knows is refused before anything is written: an older
//! release would not know what the newer rows mean.
//!
//! Version 1 holds accounts and their rows; version 2 adds the leases of the crate's
//! cross-process lock, which only mattered once several processes could share a database.
//! Version 3 adds the appservice state (`store/appservice.rs`): one row per appservice (its
//! cipher and the lease of the process that serves it) and its journal of records.

/// The SQL dialect a migration is written out in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The migrations, written once for both dialects; entry `i` brings the schema from version
/// `i` to `i + 1`. The `{...}` words are what the dialects spell differently, filled in by
/// [`migrations`]. Never edit an entry that shipped: databases were created by it; add one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE mcn_accounts (
        id {id},
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        cipher {bytes},
        {created},
        UNIQUE (user_id, device_id)
    );
    CREATE TABLE mcn_entries (
        account {bigint} NOT NULL REFERENCES mcn_accounts (id),
        kind {smallint} NOT NULL,
        key {bytes} NOT NULL,
        value {bytes} NOT NULL,
        PRIMARY KEY (account, kind, key)
    ){without_rowid};",
    "CREATE TABLE mcn_leases (
        account {bigint} NOT NULL REFERENCES mcn_accounts (id),
        key TEXT NOT NULL,
        holder TEXT NOT NULL,
        {expires},
        generation {bigint} NOT NULL,
        PRIMARY KEY (account, key)
    );",
    "CREATE TABLE mcn_appservices (
        name TEXT PRIMARY KEY,
        cipher {bytes},
        holder TEXT NOT NULL DEFAULT '',
        {as_expires},
        generation {bigint} NOT NULL DEFAULT 0
    );
    CREATE TABLE mcn_appservice_log (
        appservice TEXT NOT NULL REFERENCES mcn_appservices (name),
        seq {bigint} NOT NULL,
        value {bytes} NOT NULL,
        PRIMARY KEY (appservice, seq)
    ){without_rowid};",
];

/// How each dialect spells the `{...}` words of [`MIGRATIONS`].
fn words(dialect: Dialect) -> [(&'static str, &'static str); 8] {
    match dialect {
        Dialect::Sqlite => [
            ("{id}", "INTEGER PRIMARY KEY"),
            ("{bytes}", "BLOB"),
            ("{bigint}", "INTEGER"),
            ("{smallint}", "INTEGER"),
            ("{created}", "created_ms INTEGER NOT NULL"),
            ("{expires}", "expires_us INTEGER NOT NULL"),
            ("{without_rowid}", " WITHOUT ROWID"),
            ("{as_expires}", "expires_us INTEGER NOT NULL DEFAULT 0"),
        ],
        Dialect::Postgres => [
            ("{id}", "BIGSERIAL PRIMARY KEY"),
            ("{bytes}", "BYTEA"),
            ("{bigint}", "BIGINT"),
            ("{smallint}", "SMALLINT"),
            ("{created}", "created_at TIMESTAMPTZ NOT NULL DEFAULT now()"),
            ("{expires}", "expires_at TIMESTAMPTZ NOT NULL"),
            ("{without_rowid}", ""),
            ("{as_expires}", "expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'"),
        ],
    }
}

/// The migrations in `dialect`'s SQL; entry `i` brings the schema from version `i` to `i + 1`.
pub fn migrations(dialect: Dialect) -> Vec<String> {
    MIGRATIONS
        .iter()
        .map(|sql| words(dialect).iter().fold((*sql).to_owned(), |sql, (word, spelled)| sql.replace(word, spelled)))
        .collect()
}

/// The schema version this release writes.
pub fn current() -> usize {
    MIGRATIONS.len()
}

/// The refusal for a database newer than this release.
pub fn too_new(found: i64) -> super::error::StoreError {
    super::error::StoreError::Schema(format!(
        "the database is at schema version {found}, newer than the {} this release of matrix-crypto-node knows; upgrade matrix-crypto-node",
        current()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_filled_in_for_both_dialects() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for sql in migrations(dialect) {
                assert!(!sql.contains('{') && !sql.contains('}'), "{dialect:?}: {sql}");
            }
        }
    }
}
