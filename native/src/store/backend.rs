//! What the engine needs from a database, and nothing more: every read the crate makes is
//! answered from the engine's cache, so a backend only scans one account's rows (at open and
//! after a takeover), applies one batch of writes per `save_changes` in one transaction, keeps
//! accounts and leases, and reports its schema version.

use async_trait::async_trait;

use super::{codec::Kind, error::Result};

/// One write in a batch. The engine sends at most one operation per `(kind, key)` per batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put { kind: Kind, key: Vec<u8>, value: Vec<u8> },
    Delete { kind: Kind, key: Vec<u8> },
}

/// An account's row: its id in the database and its exported cipher, if it is encrypted.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: i64,
    pub cipher: Option<Vec<u8>>,
}

/// An account as listed: the user and device it belongs to and how many rows it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub user_id: String,
    pub device_id: String,
    pub rows: u64,
    pub encrypted: bool,
}

/// A database holding any number of accounts.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The account of `user_id`/`device_id`, if the database has it.
    async fn find_account(&self, user_id: &str, device_id: &str) -> Result<Option<AccountRow>>;

    /// Create the account with this exported cipher (or none), unless another opener created it
    /// first: either way, return the row that is now stored.
    async fn create_account(&self, user_id: &str, device_id: &str, cipher: Option<Vec<u8>>) -> Result<AccountRow>;

    /// Every row of the account: `(kind, stored value)`. Rows of kinds this release does not
    /// know are an error (a newer release wrote them), not silently skipped.
    async fn load(&self, account: i64) -> Result<Vec<(Kind, Vec<u8>)>>;

    /// Apply `ops` in one transaction: all or nothing.
    async fn write(&self, account: i64, ops: Vec<Op>) -> Result<()>;

    /// The crate's leased lock (`CryptoStore::try_take_leased_lock`), kept in the database so
    /// every process sharing it sees the same holder and generation.
    async fn try_take_lease(&self, account: i64, key: &str, holder: &str, lease_ms: u32) -> Result<Option<u64>>;

    /// Every account in the database.
    async fn list_accounts(&self) -> Result<Vec<AccountSummary>>;

    /// Delete an account and all its rows; whether it existed.
    async fn delete_account(&self, user_id: &str, device_id: &str) -> Result<bool>;

    /// One more engine uses the backend: connect if no engine did.
    async fn attach(&self) -> Result<()>;

    /// One engine is done with the backend. When none is left, connections are released (and
    /// with them SQLite's write-ahead log files); several machines share one backend.
    async fn detach(&self) -> Result<()>;

    /// The database's size in bytes, if the backend can tell.
    async fn size(&self) -> Result<Option<usize>>;

    /// The appservice tables of this database (`store/appservice.rs`), if it has them.
    fn appservice(&self) -> Option<&dyn super::appservice::AppserviceTables> {
        None
    }
}
