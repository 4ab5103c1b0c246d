//! The crypto store: where an `OlmMachine` keeps its keys.
//!
//! - [`engine`]: our own `CryptoStore`, every read answered from memory, one transaction per
//!   write batch, values encrypted at rest with a passphrase; over
//! - [`backend`]: what a database has to offer the engine, implemented by [`sqlite`] (one file,
//!   the default) and `postgres` (many processes), both holding any number of accounts in one
//!   database, their tables versioned by [`schema`] and their rows encoded by [`codec`];
//!   [`postgres_connect`] reads a PostgreSQL connection string and its TLS settings, and
//!   [`postgres_tls`] encrypts the connections with rustls;
//! - [`batch`]: the withheld layer's custom values written in the crate's transactions;
//! - `open`: the choice a user makes in `OlmMachine.open` (our SQLite engine, PostgreSQL,
//!   the crate's own matrix-sdk-sqlite store for folders it wrote, or memory) and the folder
//!   lock of the SQLite kinds.

pub mod appservice;
pub mod backend;
pub mod batch;
pub mod codec;
pub mod engine;
pub mod error;
pub mod outbound;
pub mod schema;
pub mod postgres;
pub mod postgres_connect;
pub mod postgres_tls;
pub mod sqlite;

#[cfg(feature = "node")]
mod open;
#[cfg(feature = "node")]
pub use open::*;
#[cfg(feature = "node")]
mod appservice_js;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod outbound_tests;
#[cfg(test)]
mod appservice_tests;
#[cfg(all(test, mcn_postgres))]
mod postgres_tests;
#[cfg(all(test, mcn_postgres_tls))]
mod postgres_tls_tests;
