//! taskexec-local: the embedded adapters of taskexec. [`SqliteStore`] implements the task,
//! control and breaker ports over one SQLite file (WAL, group commit through one writer thread),
//! and [`RunnerLock`] keeps a second runner off a database that one is already using.
//!
//! Every store method returns after its write is committed: a claim is durable before the
//! provider call, and results and audit events survive a killed process. Many calls share one
//! commit, which is what makes this fast.
#![warn(missing_docs)]

mod control;
mod error;
mod lock;
mod queries;
mod row;
mod schema;
mod store;
mod tasks;
mod worker;

pub use error::SqliteStoreError;
pub use lock::{LockError, RunnerLock};
pub use store::SqliteStore;
