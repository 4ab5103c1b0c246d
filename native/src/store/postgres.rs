//! The PostgreSQL backend: one database for any number of accounts and processes.
//!
//! tokio-postgres with a deadpool-postgres pool. tokio-postgres is the async driver the
//! ecosystem's PostgreSQL crates build on, runs on the tokio runtime the addon already has,
//! and pipelines statements; deadpool-postgres adds a small pool with a per-connection cache of
//! prepared statements. sqlx was the alternative: its compile-time checked queries buy nothing
//! for a handful of fixed statements, and it would bring a second SQLite driver (libsqlite3-sys
//! of its own choosing) into a crate that may link only one.
//!
//! Each write batch is one transaction of at most two statements, whatever its size: upserts as
//! one `INSERT … SELECT FROM unnest(…)` and deletes as one `DELETE … IN (SELECT FROM unnest(…))`.
//! Leases use the server's clock, so processes on hosts whose clocks disagree still agree on
//! who holds a lease. Connections are encrypted as libpq's `sslmode` asks
//! ([`postgres_connect`](super::postgres_connect), [`postgres_tls`](super::postgres_tls)).

use std::sync::RwLock;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::{
    backend::{AccountRow, AccountSummary, Backend, Op},
    codec::Kind,
    error::{Result, StoreError},
    postgres_connect::PostgresTarget,
    postgres_tls::TlsError,
    schema,
};

/// Serialises schema migrations between processes (an arbitrary constant: "mcn-schema").
const MIGRATION_LOCK: i64 = 0x6d63_6e2d_7363_6865;

/// A PostgreSQL database.
pub struct PostgresBackend {
    target: PostgresTarget,
    max_connections: usize,
    pool: RwLock<Option<Pool>>,
    /// Engines attached (see [`Backend::attach`]).
    users: std::sync::Mutex<usize>,
}

fn build_pool(target: &PostgresTarget, max_connections: usize) -> Result<Pool> {
    let manager =
        Manager::from_config(target.config.clone(), target.tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(max_connections).build().map_err(|e| StoreError::Pool(e.to_string()))
}

impl PostgresBackend {
    /// Connect to `target` (at most `max_connections` at once) and migrate the schema.
    pub async fn connect(target: PostgresTarget, max_connections: usize) -> Result<Self> {
        Self::connect_at(target, max_connections, schema::current()).await
    }

    /// [`PostgresBackend::connect`], migrating only up to `version` (tests of the upgrade path).
    pub async fn connect_at(target: PostgresTarget, max_connections: usize, version: usize) -> Result<Self> {
        let pool = build_pool(&target, max_connections.max(1))?;
        let backend = Self { target, max_connections: max_connections.max(1), pool: RwLock::new(Some(pool)), users: std::sync::Mutex::new(0) };
        backend.migrate(version).await?;
        Ok(backend)
    }

    /// Give up `holder`'s lease now (on close), so another process need not wait for it to run out.
    pub async fn release_lease(&self, account: i64, key: &str, holder: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mcn_leases SET expires_at = clock_timestamp() - interval '1 millisecond'
                 WHERE account = $1 AND key = $2 AND holder = $3",
                &[&account, &key, &holder],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client> {
        let pool = self.pool.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(StoreError::Closed)?;
        pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<TlsError>()) {
                Some(tls) => StoreError::Tls(tls.to_string()),
                None => StoreError::Postgres(e),
            },
            other => StoreError::Pool(other.to_string()),
        })
    }

    /// Whether a connection of the pool is encrypted, as the server sees it.
    #[cfg(test)]
    pub(crate) async fn connection_encrypted(&self) -> Result<bool> {
        let client = self.client().await?;
        let row = client.query_one("SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)", &[]).await?;
        Ok(row.get(0))
    }

    /// The schema version the database is at (0: none yet).
    pub async fn version(&self) -> Result<i64> {
        let client = self.client().await?;
        version(pg(&client)).await
    }

    async fn migrate(&self, target: usize) -> Result<()> {
        let mut client = self.client().await?;
        let found = version(pg(&client)).await?;
        if found as usize > schema::current() {
            return Err(schema::too_new(found));
        }
        if found as usize >= target {
            return Ok(());
        }
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS mcn_schema (version INTEGER NOT NULL)").await?;
        let found: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM mcn_schema", &[]).await?.get(0);
        for (i, sql) in schema::migrations(schema::Dialect::Postgres).iter().enumerate().take(target).skip(found as usize) {
            tx.batch_execute(sql).await?;
            tx.execute("DELETE FROM mcn_schema", &[]).await?;
            tx.execute("INSERT INTO mcn_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The driver's client under the pool's wrapper.
fn pg(client: &deadpool_postgres::Client) -> &tokio_postgres::Client {
    client
}

async fn version(client: &tokio_postgres::Client) -> Result<i64> {
    let exists: bool = client.query_one("SELECT to_regclass('mcn_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(0);
    }
    let v: i32 = client.query_one("SELECT COALESCE(MAX(version), 0) FROM mcn_schema", &[]).await?.get(0);
    Ok(v.into())
}

async fn find(client: &impl tokio_postgres::GenericClient, user_id: &str, device_id: &str) -> Result<Option<AccountRow>> {
    let row = client
        .query_opt("SELECT id, cipher FROM mcn_accounts WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])
        .await?;
    Ok(row.map(|r| AccountRow { id: r.get(0), cipher: r.get(1) }))
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn find_account(&self, user_id: &str, device_id: &str) -> Result<Option<AccountRow>> {
        let client = self.client().await?;
        find(pg(&client), user_id, device_id).await
    }

    async fn create_account(&self, user_id: &str, device_id: &str, cipher: Option<Vec<u8>>) -> Result<AccountRow> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO mcn_accounts (user_id, device_id, cipher) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, device_id) DO NOTHING",
                &[&user_id, &device_id, &cipher],
            )
            .await?;
        find(pg(&client), user_id, device_id).await?.ok_or_else(|| StoreError::Decode("the account row vanished after creation".into()))
    }

    async fn load(&self, account: i64) -> Result<Vec<(Kind, Vec<u8>)>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT kind, value FROM mcn_entries WHERE account = $1").await?;
        let rows = client.query(&stmt, &[&account]).await?;
        rows.into_iter()
            .map(|r| {
                let kind: i16 = r.get(0);
                let kind = Kind::from_i16(kind)
                    .ok_or_else(|| StoreError::Schema(format!("the database holds rows of kind {kind}, written by a newer release")))?;
                Ok((kind, r.get(1)))
            })
            .collect()
    }

    async fn write(&self, account: i64, ops: Vec<Op>) -> Result<()> {
        let (mut put_kinds, mut put_keys, mut put_values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_kinds, mut del_keys) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Put { kind, key, value } => {
                    put_kinds.push(kind as i16);
                    put_keys.push(key);
                    put_values.push(value);
                }
                Op::Delete { kind, key } => {
                    del_kinds.push(kind as i16);
                    del_keys.push(key);
                }
            }
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !put_kinds.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO mcn_entries (account, kind, key, value)
                     SELECT $1, k, y, v FROM unnest($2::smallint[], $3::bytea[], $4::bytea[]) AS t (k, y, v)
                     ON CONFLICT (account, kind, key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await?;
            tx.execute(&stmt, &[&account, &put_kinds, &put_keys, &put_values]).await?;
        }
        if !del_kinds.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM mcn_entries WHERE account = $1
                     AND (kind, key) IN (SELECT k, y FROM unnest($2::smallint[], $3::bytea[]) AS t (k, y))",
                )
                .await?;
            tx.execute(&stmt, &[&account, &del_kinds, &del_keys]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn try_take_lease(&self, account: i64, key: &str, holder: &str, lease_ms: u32) -> Result<Option<u64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO mcn_leases (account, key, holder, expires_at, generation)
                 VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond', 1)
                 ON CONFLICT (account, key) DO UPDATE SET
                    generation = CASE WHEN mcn_leases.holder = EXCLUDED.holder
                                      THEN mcn_leases.generation ELSE mcn_leases.generation + 1 END,
                    holder = EXCLUDED.holder,
                    expires_at = EXCLUDED.expires_at
                 WHERE mcn_leases.holder = EXCLUDED.holder OR mcn_leases.expires_at < clock_timestamp()
                 RETURNING generation",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&account, &key, &holder, &i64::from(lease_ms)]).await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT a.user_id, a.device_id, a.cipher IS NOT NULL,
                        (SELECT COUNT(*) FROM mcn_entries e WHERE e.account = a.id)
                 FROM mcn_accounts a ORDER BY a.user_id, a.device_id",
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| AccountSummary { user_id: r.get(0), device_id: r.get(1), encrypted: r.get(2), rows: r.get::<_, i64>(3) as u64 })
            .collect())
    }

    async fn delete_account(&self, user_id: &str, device_id: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inner: &tokio_postgres::Transaction = &tx;
        let Some(row) = find(inner, user_id, device_id).await? else { return Ok(false) };
        tx.execute("DELETE FROM mcn_entries WHERE account = $1", &[&row.id]).await?;
        tx.execute("DELETE FROM mcn_leases WHERE account = $1", &[&row.id]).await?;
        tx.execute("DELETE FROM mcn_accounts WHERE id = $1", &[&row.id]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn detach(&self) -> Result<()> {
        {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            *users = users.saturating_sub(1);
            if *users > 0 {
                return Ok(());
            }
        }
        if let Some(pool) = self.pool.write().unwrap_or_else(|e| e.into_inner()).take() {
            pool.close();
        }
        Ok(())
    }

    async fn attach(&self) -> Result<()> {
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let mut guard = self.pool.write().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(build_pool(&self.target, self.max_connections)?);
        }
        Ok(())
    }

    fn appservice(&self) -> Option<&dyn super::appservice::AppserviceTables> {
        Some(self)
    }

    async fn size(&self) -> Result<Option<usize>> {
        let client = self.client().await?;
        let bytes: i64 = client
            .query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(c)), 0)::bigint FROM unnest(ARRAY['mcn_accounts', 'mcn_entries', 'mcn_leases']::regclass[]) AS c",
                &[],
            )
            .await?
            .get(0);
        Ok(Some(bytes.try_into().unwrap_or(0)))
    }
}
