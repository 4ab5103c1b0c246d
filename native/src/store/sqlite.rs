//! The SQLite backend: one file holding any number of accounts.
//!
//! rusqlite 0.40 with libsqlite3-sys 0.38, the versions matrix-sdk-sqlite 0.19 links (a
//! process may link only one sqlite3), on one connection behind a mutex. Reads never reach it
//! (the engine answers them from memory), so there is nothing for a pool to parallelise; each
//! write batch is one transaction with cached prepared statements, run on tokio's blocking pool.
//! Write-ahead logging with `synchronous = NORMAL`: a committed transaction survives the
//! process being killed (the log is in the kernel's page cache); power loss may lose the last
//! transactions but never corrupts the file.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    backend::{AccountRow, AccountSummary, Backend, Op},
    codec::Kind,
    error::{Result, StoreError},
    schema,
};

/// A SQLite database file.
pub struct SqliteBackend {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
    /// Engines attached (see [`Backend::attach`]).
    users: Mutex<usize>,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Open the file, creating it and migrating its schema as needed.
fn connect(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn, schema::current())?;
    Ok(conn)
}

/// The schema version the database is at (0: none yet).
pub fn version(conn: &Connection) -> Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mcn_schema')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    Ok(conn.query_row("SELECT COALESCE(MAX(version), 0) FROM mcn_schema", [], |r| r.get(0))?)
}

/// Bring the schema to version `target` (the current one outside tests) in one transaction.
pub fn migrate(conn: &mut Connection, target: usize) -> Result<()> {
    let found = version(conn)?;
    if found as usize > schema::current() {
        return Err(schema::too_new(found));
    }
    if found as usize >= target {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another connection may have migrated between the check and the lock.
    let found = version(&tx)? as usize;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS mcn_schema (version INTEGER NOT NULL)")?;
    for (i, sql) in schema::migrations(schema::Dialect::Sqlite).iter().enumerate().take(target).skip(found) {
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM mcn_schema", [])?;
        tx.execute("INSERT INTO mcn_schema (version) VALUES (?1)", [i as i64 + 1])?;
    }
    tx.commit()?;
    Ok(())
}

impl SqliteBackend {
    /// Open (or create) the database file at `path`.
    pub async fn open(path: PathBuf) -> Result<Self> {
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || connect(&p)).await.map_err(|e| StoreError::Pool(e.to_string()))??;
        Ok(Self { path, conn: Arc::new(Mutex::new(Some(conn))), users: Mutex::new(0) })
    }

    /// Run `f` on the connection on the blocking pool.
    pub(super) async fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            let conn = guard.as_mut().ok_or(StoreError::Closed)?;
            f(conn)
        })
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?
    }
}

fn find(conn: &Connection, user_id: &str, device_id: &str) -> Result<Option<AccountRow>> {
    Ok(conn
        .query_row(
            "SELECT id, cipher FROM mcn_accounts WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device_id],
            |r| Ok(AccountRow { id: r.get(0)?, cipher: r.get(1)? }),
        )
        .optional()?)
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn find_account(&self, user_id: &str, device_id: &str) -> Result<Option<AccountRow>> {
        let (u, d) = (user_id.to_owned(), device_id.to_owned());
        self.with(move |c| find(c, &u, &d)).await
    }

    async fn create_account(&self, user_id: &str, device_id: &str, cipher: Option<Vec<u8>>) -> Result<AccountRow> {
        let (u, d) = (user_id.to_owned(), device_id.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT INTO mcn_accounts (user_id, device_id, cipher, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id) DO NOTHING",
                params![u, d, cipher, now_us() / 1000],
            )?;
            find(c, &u, &d)?.ok_or_else(|| StoreError::Decode("the account row vanished after creation".into()))
        })
        .await
    }

    async fn load(&self, account: i64) -> Result<Vec<(Kind, Vec<u8>)>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached("SELECT kind, value FROM mcn_entries WHERE account = ?1")?;
            let rows = stmt.query_map([account], |r| Ok((r.get::<_, i16>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, value) = row?;
                let kind = Kind::from_i16(kind)
                    .ok_or_else(|| StoreError::Schema(format!("the database holds rows of kind {kind}, written by a newer release")))?;
                out.push((kind, value));
            }
            Ok(out)
        })
        .await
    }

    async fn write(&self, account: i64, ops: Vec<Op>) -> Result<()> {
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT INTO mcn_entries (account, kind, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (account, kind, key) DO UPDATE SET value = excluded.value",
                )?;
                let mut delete = tx.prepare_cached("DELETE FROM mcn_entries WHERE account = ?1 AND kind = ?2 AND key = ?3")?;
                for op in &ops {
                    match op {
                        Op::Put { kind, key, value } => put.execute(params![account, *kind as i16, key, value])?,
                        Op::Delete { kind, key } => delete.execute(params![account, *kind as i16, key])?,
                    };
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn try_take_lease(&self, account: i64, key: &str, holder: &str, lease_ms: u32) -> Result<Option<u64>> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.with(move |c| {
            let now = now_us();
            let generation: Option<i64> = c
                .query_row(
                    "INSERT INTO mcn_leases (account, key, holder, expires_us, generation) VALUES (?1, ?2, ?3, ?4, 1)
                     ON CONFLICT (account, key) DO UPDATE SET
                        generation = CASE WHEN mcn_leases.holder = excluded.holder
                                          THEN mcn_leases.generation ELSE mcn_leases.generation + 1 END,
                        holder = excluded.holder,
                        expires_us = excluded.expires_us
                     WHERE mcn_leases.holder = excluded.holder OR mcn_leases.expires_us < ?5
                     RETURNING generation",
                    params![account, key, holder, now + i64::from(lease_ms) * 1000, now],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(generation.map(|g| g as u64))
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT a.user_id, a.device_id, a.cipher IS NOT NULL,
                        (SELECT COUNT(*) FROM mcn_entries e WHERE e.account = a.id)
                 FROM mcn_accounts a ORDER BY a.user_id, a.device_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(AccountSummary { user_id: r.get(0)?, device_id: r.get(1)?, encrypted: r.get(2)?, rows: r.get::<_, i64>(3)? as u64 })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_account(&self, user_id: &str, device_id: &str) -> Result<bool> {
        let (u, d) = (user_id.to_owned(), device_id.to_owned());
        self.with(move |c| {
            let tx = c.transaction()?;
            let Some(row) = find(&tx, &u, &d)? else { return Ok(false) };
            tx.execute("DELETE FROM mcn_entries WHERE account = ?1", [row.id])?;
            tx.execute("DELETE FROM mcn_leases WHERE account = ?1", [row.id])?;
            tx.execute("DELETE FROM mcn_accounts WHERE id = ?1", [row.id])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn detach(&self) -> Result<()> {
        {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            *users = users.saturating_sub(1);
            if *users > 0 {
                return Ok(());
            }
        }
        let conn = self.conn.clone();
        // Dropping the last connection checkpoints the log and removes the -wal/-shm files.
        tokio::task::spawn_blocking(move || conn.lock().unwrap_or_else(|e| e.into_inner()).take())
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(())
    }

    async fn attach(&self) -> Result<()> {
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let (conn, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(connect(&path)?);
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?
    }

    fn appservice(&self) -> Option<&dyn super::appservice::AppserviceTables> {
        Some(self)
    }

    async fn size(&self) -> Result<Option<usize>> {
        self.with(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(Some((pages * size) as usize))
        })
        .await
    }
}
