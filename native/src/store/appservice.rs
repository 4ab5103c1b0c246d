//! The appservice's own state, in the database that holds its devices' accounts.
//!
//! `AppserviceCrypto` keeps a journal of records (which device each bridged user has, which
//! transactions were processed, held shares, device-list positions, membership, events waiting
//! for their room key). Its records are JSON written by the TypeScript side; here they are rows
//! of `mcn_appservice_log`, numbered in the order they were appended, their values encrypted
//! with the appservice's own `StoreCipher` when a passphrase is set (the cipher, exported with
//! the passphrase, lives in the appservice's `mcn_appservices` row, as an account's does).
//!
//! Each append is one database transaction, so records written together (a transaction's
//! device-list changes and the mark that they were recorded, say) land together or not at all;
//! a compaction replaces the whole journal in one transaction.
//!
//! The `mcn_appservices` row also carries a lease: the process that serves the appservice
//! holds it and renews it; a standby takes it once it has run out. A write can be fenced by the
//! lease: it commits only while its holder still holds it, so a process that lost the lease
//! (paused past its expiry) can never record a transaction the new holder handles too.
//!
//! An account can be copied from another database (a store folder of the layout before this
//! one, a folder per device): its rows are copied as stored, with its exported cipher, so an
//! encrypted account opens with the same passphrase and nothing is decrypted on the way.

use std::sync::Arc;

use async_trait::async_trait;
use matrix_sdk_store_encryption::StoreCipher;
use rusqlite::{params, OptionalExtension};

use super::{
    backend::{Backend, Op},
    codec::{Codec, Kind},
    error::{Result, StoreError},
    postgres::PostgresBackend,
    sqlite::SqliteBackend,
};

/// An account as stored: its exported cipher and its rows `(kind, stored key, stored value)`.
pub type RawAccount = (Option<Vec<u8>>, Vec<(i16, Vec<u8>, Vec<u8>)>);

/// The appservice tables of a database (schema version 3).
#[async_trait]
pub trait AppserviceTables: Send + Sync {
    /// The appservice's row: `None` if missing, else its exported cipher (if encrypted).
    async fn find_appservice(&self, name: &str) -> Result<Option<Option<Vec<u8>>>>;
    /// Create the appservice's row with this cipher unless it exists; the stored cipher.
    async fn create_appservice(&self, name: &str, cipher: Option<Vec<u8>>) -> Result<Option<Vec<u8>>>;
    /// The journal: `(seq, stored value)` in order.
    async fn log_load(&self, name: &str) -> Result<Vec<(i64, Vec<u8>)>>;
    /// Append `rows` (with `replace`: instead of every row there) in one transaction; with
    /// `fence`, only while that holder holds the lease ([`StoreError::LeaseLost`] otherwise).
    async fn log_write(&self, name: &str, fence: Option<String>, replace: bool, rows: Vec<(i64, Vec<u8>)>) -> Result<()>;
    /// Take or renew the lease for `lease_ms`; whether `holder` holds it now.
    async fn lease(&self, name: &str, holder: &str, lease_ms: u32) -> Result<bool>;
    /// Give up `holder`'s lease now.
    async fn release(&self, name: &str, holder: &str) -> Result<()>;
    /// An account as stored, to copy it into another database.
    async fn export_account(&self, user_id: &str, device_id: &str) -> Result<Option<RawAccount>>;
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

#[async_trait]
impl AppserviceTables for SqliteBackend {
    async fn find_appservice(&self, name: &str) -> Result<Option<Option<Vec<u8>>>> {
        let name = name.to_owned();
        self.with(move |c| Ok(c.query_row("SELECT cipher FROM mcn_appservices WHERE name = ?1", [name], |r| r.get(0)).optional()?))
            .await
    }

    async fn create_appservice(&self, name: &str, cipher: Option<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let name = name.to_owned();
        self.with(move |c| {
            c.execute("INSERT INTO mcn_appservices (name, cipher) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING", params![name, cipher])?;
            Ok(c.query_row("SELECT cipher FROM mcn_appservices WHERE name = ?1", [name], |r| r.get(0))?)
        })
        .await
    }

    async fn log_load(&self, name: &str) -> Result<Vec<(i64, Vec<u8>)>> {
        let name = name.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare_cached("SELECT seq, value FROM mcn_appservice_log WHERE appservice = ?1 ORDER BY seq")?;
            let rows = stmt.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn log_write(&self, name: &str, fence: Option<String>, replace: bool, rows: Vec<(i64, Vec<u8>)>) -> Result<()> {
        let name = name.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(holder) = fence {
                let held: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM mcn_appservices WHERE name = ?1 AND holder = ?2 AND expires_us > ?3)",
                    params![name, holder, now_us()],
                    |r| r.get(0),
                )?;
                if !held {
                    return Err(StoreError::LeaseLost);
                }
            }
            if replace {
                tx.execute("DELETE FROM mcn_appservice_log WHERE appservice = ?1", [&name])?;
            }
            {
                let mut put = tx.prepare_cached("INSERT INTO mcn_appservice_log (appservice, seq, value) VALUES (?1, ?2, ?3)")?;
                for (seq, value) in &rows {
                    put.execute(params![name, seq, value])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, name: &str, holder: &str, lease_ms: u32) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            let now = now_us();
            let n = c.execute(
                "UPDATE mcn_appservices SET
                    generation = CASE WHEN holder = ?2 THEN generation ELSE generation + 1 END,
                    holder = ?2, expires_us = ?3
                 WHERE name = ?1 AND (holder = ?2 OR expires_us < ?4)",
                params![name, holder, now + i64::from(lease_ms) * 1000, now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            c.execute("UPDATE mcn_appservices SET expires_us = 0 WHERE name = ?1 AND holder = ?2", params![name, holder])?;
            Ok(())
        })
        .await
    }

    async fn export_account(&self, user_id: &str, device_id: &str) -> Result<Option<RawAccount>> {
        let (u, d) = (user_id.to_owned(), device_id.to_owned());
        self.with(move |c| {
            let Some((id, cipher)) = c
                .query_row("SELECT id, cipher FROM mcn_accounts WHERE user_id = ?1 AND device_id = ?2", params![u, d], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                })
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = c.prepare("SELECT kind, key, value FROM mcn_entries WHERE account = ?1")?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(Some((cipher, rows.collect::<rusqlite::Result<Vec<_>>>()?)))
        })
        .await
    }
}

#[async_trait]
impl AppserviceTables for PostgresBackend {
    async fn find_appservice(&self, name: &str) -> Result<Option<Option<Vec<u8>>>> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT cipher FROM mcn_appservices WHERE name = $1", &[&name]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn create_appservice(&self, name: &str, cipher: Option<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        client
            .execute("INSERT INTO mcn_appservices (name, cipher) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&name, &cipher])
            .await?;
        Ok(client.query_one("SELECT cipher FROM mcn_appservices WHERE name = $1", &[&name]).await?.get(0))
    }

    async fn log_load(&self, name: &str) -> Result<Vec<(i64, Vec<u8>)>> {
        let client = self.client().await?;
        let rows = client.query("SELECT seq, value FROM mcn_appservice_log WHERE appservice = $1 ORDER BY seq", &[&name]).await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn log_write(&self, name: &str, fence: Option<String>, replace: bool, rows: Vec<(i64, Vec<u8>)>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(holder) = fence {
            // Locks the row: a standby's takeover waits for this transaction, or this one sees it.
            let held = tx
                .query_opt(
                    "SELECT 1 FROM mcn_appservices WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp() FOR UPDATE",
                    &[&name, &holder],
                )
                .await?;
            if held.is_none() {
                return Err(StoreError::LeaseLost);
            }
        }
        if replace {
            tx.execute("DELETE FROM mcn_appservice_log WHERE appservice = $1", &[&name]).await?;
        }
        if !rows.is_empty() {
            let (seqs, values): (Vec<i64>, Vec<Vec<u8>>) = rows.into_iter().unzip();
            tx.execute(
                "INSERT INTO mcn_appservice_log (appservice, seq, value)
                 SELECT $1, s, v FROM unnest($2::bigint[], $3::bytea[]) AS t (s, v)",
                &[&name, &seqs, &values],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lease(&self, name: &str, holder: &str, lease_ms: u32) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE mcn_appservices SET
                    generation = CASE WHEN holder = $2 THEN generation ELSE generation + 1 END,
                    holder = $2, expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
                 WHERE name = $1 AND (holder = $2 OR expires_at < clock_timestamp())",
                &[&name, &holder, &i64::from(lease_ms)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("UPDATE mcn_appservices SET expires_at = '-infinity' WHERE name = $1 AND holder = $2", &[&name, &holder])
            .await?;
        Ok(())
    }

    async fn export_account(&self, user_id: &str, device_id: &str) -> Result<Option<RawAccount>> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt("SELECT id, cipher FROM mcn_accounts WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        let rows = client.query("SELECT kind, key, value FROM mcn_entries WHERE account = $1", &[&id]).await?;
        Ok(Some((row.get(1), rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())))
    }
}

/// Copy an account as stored into `target`, replacing a copy already there (one left by an
/// interrupted earlier copy); whether `source` had the account. The account must not be open.
pub async fn copy_account(source: &dyn AppserviceTables, target: &dyn Backend, user_id: &str, device_id: &str) -> Result<bool> {
    let Some((cipher, rows)) = source.export_account(user_id, device_id).await? else { return Ok(false) };
    let ops = rows
        .into_iter()
        .map(|(kind, key, value)| {
            let kind = Kind::from_i16(kind)
                .ok_or_else(|| StoreError::Schema(format!("the account holds rows of kind {kind}, written by a newer release")))?;
            Ok(Op::Put { kind, key, value })
        })
        .collect::<Result<Vec<_>>>()?;
    target.delete_account(user_id, device_id).await?;
    let row = target.create_account(user_id, device_id, cipher).await?;
    target.write(row.id, ops).await?;
    Ok(true)
}

/// How the appservice's passphrase is turned into a stored cipher (fast in tests, as the engine's).
fn export_cipher(cipher: &StoreCipher, passphrase: &str) -> Result<Vec<u8>> {
    #[cfg(test)]
    let exported = cipher._insecure_export_fast_for_testing(passphrase);
    #[cfg(not(test))]
    let exported = cipher.export(passphrase);
    exported.map_err(|e| StoreError::Encode(e.to_string()))
}

/// One appservice's journal in a database.
pub struct StateStore {
    backend: Arc<dyn Backend>,
    name: String,
    codec: Codec,
    /// The next sequence number; held while writing, so rows land in the order of the calls.
    next: tokio::sync::Mutex<i64>,
}

impl StateStore {
    /// Open (or create) the appservice `name` in `backend`. An existing appservice must be opened
    /// the way it was created: with its passphrase, or without one ([`StoreError::Passphrase`]).
    pub async fn open(backend: Arc<dyn Backend>, name: &str, passphrase: Option<&str>) -> Result<Self> {
        let tables = tables(&backend)?;
        let stored = match tables.find_appservice(name).await? {
            Some(stored) => stored,
            None => {
                let exported = match passphrase {
                    Some(p) => Some(export_cipher(&StoreCipher::new().map_err(|e| StoreError::Encode(e.to_string()))?, p)?),
                    None => None,
                };
                tables.create_appservice(name, exported).await?
            }
        };
        let cipher = match (stored, passphrase) {
            (Some(exported), Some(p)) => Some(
                StoreCipher::import(p, &exported)
                    .map_err(|_| StoreError::Passphrase(format!("wrong passphrase for the state of the appservice {name}")))?,
            ),
            (None, None) => None,
            (Some(_), None) => {
                return Err(StoreError::Passphrase(format!("the state of the appservice {name} is encrypted: a passphrase is required")))
            }
            (None, Some(_)) => {
                return Err(StoreError::Passphrase(format!(
                    "the state of the appservice {name} is not encrypted: open it without a passphrase"
                )))
            }
        };
        Ok(Self { backend, name: name.to_owned(), codec: Codec::new(cipher), next: tokio::sync::Mutex::new(1) })
    }

    /// The database this journal is in.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Every record, oldest first.
    pub async fn load(&self) -> Result<Vec<Vec<u8>>> {
        let mut next = self.next.lock().await;
        let rows = tables(&self.backend)?.log_load(&self.name).await?;
        *next = rows.last().map_or(1, |(seq, _)| seq + 1);
        rows.iter().map(|(_, value)| self.codec.open_bytes(value)).collect()
    }

    /// Append records in one transaction (fenced by `fence`'s lease when given).
    pub async fn append(&self, fence: Option<String>, records: Vec<Vec<u8>>) -> Result<()> {
        self.write(fence, false, records).await
    }

    /// Replace every record with `records` in one transaction (fenced by `fence`'s lease when given).
    pub async fn replace(&self, fence: Option<String>, records: Vec<Vec<u8>>) -> Result<()> {
        self.write(fence, true, records).await
    }

    async fn write(&self, fence: Option<String>, replace: bool, records: Vec<Vec<u8>>) -> Result<()> {
        let mut next = self.next.lock().await;
        let start = if replace { 1 } else { *next };
        let rows = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| Ok((start + i as i64, self.codec.seal_bytes(r)?)))
            .collect::<Result<Vec<_>>>()?;
        let end = start + rows.len() as i64;
        tables(&self.backend)?.log_write(&self.name, fence, replace, rows).await?;
        *next = end;
        Ok(())
    }

    /// Take or renew the appservice's lease; whether `holder` holds it.
    pub async fn lease(&self, holder: &str, lease_ms: u32) -> Result<bool> {
        tables(&self.backend)?.lease(&self.name, holder, lease_ms).await
    }

    /// Give up `holder`'s lease.
    pub async fn release(&self, holder: &str) -> Result<()> {
        tables(&self.backend)?.release(&self.name, holder).await
    }
}

fn tables(backend: &Arc<dyn Backend>) -> Result<&dyn AppserviceTables> {
    backend.appservice().ok_or_else(|| StoreError::Schema("this database has no appservice tables".into()))
}
