//! A store the harness can put back as it was: the project's own store engine over a
//! [`Backend`] held in memory, whose rows are copied out once the target machine is prepared and
//! copied back whenever an input wrote anything. Every input then starts from the same state
//! (a crash reproduces from the one input that caused it), and an input that wrote nothing
//! costs no reset at all.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use async_trait::async_trait;

use crate::store::{
    backend::{AccountRow, AccountSummary, Backend, Op},
    codec::Kind,
    error::Result,
};

/// One account's rows, keyed as the engine keys them.
pub type Rows = BTreeMap<(Kind, Vec<u8>), Vec<u8>>;

#[derive(Default)]
struct State {
    account: Option<(String, String)>,
    rows: Rows,
    leases: BTreeMap<String, (String, u64)>,
}

/// A one-account database in memory.
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
    /// Set by every write; cleared by [`MemoryBackend::restore`].
    dirty: AtomicBool,
}

impl MemoryBackend {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the rows as they are now.
    pub fn snapshot(&self) -> Rows {
        self.state().rows.clone()
    }

    /// Put the rows back as `rows` and forget that anything was written.
    pub fn restore(&self, rows: &Rows) {
        let mut state = self.state();
        state.rows.clone_from(rows);
        state.leases.clear();
        self.dirty.store(false, Ordering::SeqCst);
    }

    /// Whether anything was written since the last [`MemoryBackend::restore`].
    pub fn dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }
}

const ACCOUNT_ID: i64 = 1;

#[async_trait]
impl Backend for MemoryBackend {
    async fn find_account(&self, user_id: &str, device_id: &str) -> Result<Option<AccountRow>> {
        let state = self.state();
        Ok(state
            .account
            .as_ref()
            .filter(|(u, d)| u == user_id && d == device_id)
            .map(|_| AccountRow { id: ACCOUNT_ID, cipher: None }))
    }

    async fn create_account(&self, user_id: &str, device_id: &str, _cipher: Option<Vec<u8>>) -> Result<AccountRow> {
        let mut state = self.state();
        if state.account.is_none() {
            state.account = Some((user_id.to_owned(), device_id.to_owned()));
        }
        Ok(AccountRow { id: ACCOUNT_ID, cipher: None })
    }

    async fn load(&self, _account: i64) -> Result<Vec<(Kind, Vec<u8>)>> {
        Ok(self.state().rows.iter().map(|((kind, _), value)| (*kind, value.clone())).collect())
    }

    async fn write(&self, _account: i64, ops: Vec<Op>) -> Result<()> {
        let mut state = self.state();
        for op in ops {
            match op {
                Op::Put { kind, key, value } => {
                    state.rows.insert((kind, key), value);
                }
                Op::Delete { kind, key } => {
                    state.rows.remove(&(kind, key));
                }
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn try_take_lease(&self, _account: i64, key: &str, holder: &str, _lease_ms: u32) -> Result<Option<u64>> {
        let mut state = self.state();
        let entry = state.leases.entry(key.to_owned()).or_insert_with(|| (holder.to_owned(), 1));
        if entry.0 != holder {
            *entry = (holder.to_owned(), entry.1 + 1);
        }
        Ok(Some(entry.1))
    }

    async fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        let state = self.state();
        Ok(state
            .account
            .iter()
            .map(|(u, d)| AccountSummary { user_id: u.clone(), device_id: d.clone(), rows: state.rows.len() as u64, encrypted: false })
            .collect())
    }

    async fn delete_account(&self, _user_id: &str, _device_id: &str) -> Result<bool> {
        let mut state = self.state();
        state.rows.clear();
        Ok(state.account.take().is_some())
    }

    async fn attach(&self) -> Result<()> {
        Ok(())
    }

    async fn detach(&self) -> Result<()> {
        Ok(())
    }

    async fn size(&self) -> Result<Option<usize>> {
        Ok(Some(self.state().rows.iter().map(|((_, k), v)| k.len() + v.len()).sum()))
    }
}
