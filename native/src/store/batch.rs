//! One transaction for the withheld layer's writes and the crate's.
//!
//! The withheld layer keeps its state (the `m.no_olm` ledger, received-notice records) as
//! custom values in the crate's store, next to what the crate saves for the same event: for
//! a suppressed `m.no_olm` notice, the crate's once-only flag on the device and our ledger
//! entry. Written as separate calls they cost a transaction each and a crash between two of
//! them leaves one without the other. Inside [`batched`], the engine does not write a custom
//! value when it is set: it holds it (reads in the same task see it) and writes it in the
//! transaction of the crate's next `save_changes` in that task, or, if the crate saves nothing
//! after it, in one transaction when the batched work ends, before [`batched`] returns. So
//! everything a batched call wrote is on disk when it returns, in as few transactions as the
//! crate makes, and a crash leaves either all of a transaction or none of it.
//!
//! Held values are per task (a tokio task-local): another task neither sees them nor writes
//! them. A batched call that fails or is dropped before its end writes nothing it still held.
//! Stores other than the engine (the crate's memory and SQLite stores) write at once, as
//! without [`batched`].

use std::{future::Future, sync::Mutex};

use matrix_sdk_crypto::store::{types::Changes, CryptoStoreError, DynCryptoStore};

tokio::task_local! {
    static HELD: Held;
}

/// A custom value held for the next transaction: the engine it belongs to, its key, and its
/// value (`None`: removed).
pub(super) struct Entry {
    pub engine: u64,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

#[derive(Default)]
struct Held {
    entries: Mutex<Vec<Entry>>,
}

fn hold(engine: u64, key: &str, value: Option<Vec<u8>>) -> std::result::Result<(), Option<Vec<u8>>> {
    let mut slot = Some(value);
    HELD.try_with(|h| {
        let mut entries = h.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !(e.engine == engine && e.key == key));
        entries.push(Entry { engine, key: key.to_owned(), value: slot.take().flatten() });
    })
    .map_err(|_| slot.take().flatten())
}

/// Hold `key = value` for `engine` if a batch is open in this task; if none is, the value is
/// given back (the caller writes it now).
pub(super) fn hold_set(engine: u64, key: &str, value: Vec<u8>) -> Option<Vec<u8>> {
    hold(engine, key, Some(value)).err().flatten()
}

/// Hold the removal of `key` for `engine` if a batch is open in this task; whether it was.
pub(super) fn hold_remove(engine: u64, key: &str) -> bool {
    hold(engine, key, None).is_ok()
}

/// The value held for `engine`'s `key` in this task: `Some(None)` if it was removed, `None` if
/// nothing is held for it.
pub(super) fn held(engine: u64, key: &str) -> Option<Option<Vec<u8>>> {
    HELD.try_with(|h| {
        let entries = h.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().find(|e| e.engine == engine && e.key == key).map(|e| e.value.clone())
    })
    .ok()
    .flatten()
}

/// Take what this task holds for `engine`, to write it in the caller's transaction.
pub(super) fn take(engine: u64) -> Vec<Entry> {
    HELD.try_with(|h| {
        let mut entries = h.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, rest): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut *entries).into_iter().partition(|e| e.engine == engine);
        *entries = rest;
        mine
    })
    .unwrap_or_default()
}

/// Put back what a failed transaction took, unless a newer value of the same key is held.
pub(super) fn restore(taken: Vec<Entry>) {
    let _ = HELD.try_with(|h| {
        let mut entries = h.entries.lock().unwrap_or_else(|e| e.into_inner());
        for e in taken.into_iter().rev() {
            if !entries.iter().any(|x| x.engine == e.engine && x.key == e.key) {
                entries.insert(0, e);
            }
        }
    });
}

fn pending() -> bool {
    HELD.try_with(|h| !h.entries.lock().unwrap_or_else(|e| e.into_inner()).is_empty()).unwrap_or(false)
}

/// Run `work` with the custom values it sets held for one transaction with the crate's next
/// save (see the module docs); what is still held when it ends is written before this returns,
/// in one transaction. Nested calls join the outer batch. `store_error` turns a failure of
/// that last write into `work`'s error type.
pub async fn batched<T, E>(
    store: &DynCryptoStore,
    work: impl Future<Output = Result<T, E>>,
    store_error: impl FnOnce(CryptoStoreError) -> E,
) -> Result<T, E> {
    if HELD.try_with(|_| ()).is_ok() {
        return work.await;
    }
    HELD.scope(Held::default(), async {
        let out = work.await?;
        if pending() {
            // Only the engine holds values, and its `save_changes` writes them: an empty save
            // is one transaction with nothing else in it.
            store.save_changes(Changes::default()).await.map_err(store_error)?;
        }
        Ok(out)
    })
    .await
}
