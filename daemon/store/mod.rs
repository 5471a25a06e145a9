//! Durable state in SQLite (WAL) at `<state_dir>/state.db`: filesystems,
//! queued and running jobs with their chunk cursor, crawl cursors, and a
//! bounded history, each filesystem's measured fragmentation and daily
//! activity. The store only saves work: it is never the truth about
//! data (the mover re-checks every file), and redoing a chunk of a move is
//! always safe, so a damaged database is moved aside and replaced rather
//! than repaired, and a crash may lose the last cursor update.
//!
//! It must not touch the filesystems being defragmented. Times are unix
//! seconds: where a decision depends on the time (which job is due, when a
//! crawl pass began or ended) the caller passes it in; the bookkeeping
//! times (queued, updated, finished, seen) come from the store's clock,
//! which tests replace with `Store::with_clock`.

mod codec;
mod conversions;
mod crawl;
mod error;
mod filesystems;
mod fragmentation;
mod history;
mod jobs;
mod open;
mod schema;
mod settled;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::Serialize;

use crate::filesystem::FsUuid;

pub use conversions::Unfinished;
pub use crawl::CrawlCursor;
pub use error::StoreError;
pub use filesystems::Filesystem;
pub use fragmentation::{Activity, FsActivity, FsFragmentation, Measurement, Tally};
pub use history::{Finished, HistoryEntry, HistoryOutcome};
pub use jobs::{Counted, Enqueued, Job, JobState, NewJob};
pub use settled::{Settled, SettledWhy, MAX_SETTLED};

/// The database's file name inside the state directory.
pub const DB_FILE_NAME: &str = "state.db";

/// How many history rows are kept unless configured otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// A file's identity: a path is only a hint, but (filesystem UUID, inode,
/// i_generation) names one file for its whole life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FileId {
    pub fs_uuid: FsUuid,
    /// The btrfs subvolume it lives in; 0 on filesystems without them.
    pub subvolume: u64,
    pub ino: u64,
    pub generation: u32,
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inode {} (generation {}) on ", self.ino, self.generation)?;
        match self.subvolume {
            0 => write!(f, "{}", self.fs_uuid),
            id => write!(f, "{} subvolume {id}", self.fs_uuid),
        }
    }
}

/// A job's row id; ids are never reused, so a stale one cannot name a
/// newer job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Settings the service may take from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// History rows kept; the oldest are pruned past this. 0 keeps none.
    pub history_limit: usize,
    /// How long to wait for a lock held by another connection before
    /// failing with `StoreError::Locked`.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            history_limit: DEFAULT_HISTORY_LIMIT,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The open database. One per process. It is `Send` but not `Sync`: share
/// it between threads behind a mutex.
pub struct Store {
    conn: Connection,
    history_limit: usize,
    clock: Box<dyn Fn() -> i64 + Send>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("conn", &self.conn)
            .field("history_limit", &self.history_limit)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) `<state_dir>/state.db` with default options.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(state_dir, &StoreOptions::default())
    }

    /// Opens (or creates) `<state_dir>/state.db`, creating the directory
    /// (mode 0700) if needed. A corrupt file is moved aside and replaced; a
    /// file from a newer defragd is refused and left alone.
    pub fn open_with(state_dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let conn = open::open_file(state_dir, options)?;
        Store::ready(conn, options)
    }

    /// A private, empty database in memory, for tests of other modules.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::open_in_memory_with(&StoreOptions::default())
    }

    pub fn open_in_memory_with(options: &StoreOptions) -> Result<Store, StoreError> {
        let conn = open::open_memory(options)?;
        Store::ready(conn, options)
    }

    /// Applies a history limit that may have been lowered since last run.
    fn ready(conn: Connection, options: &StoreOptions) -> Result<Store, StoreError> {
        let store = Store {
            conn,
            history_limit: options.history_limit,
            clock: Box::new(crate::clock::unix_now),
        };
        store.prune_history()?;
        Ok(store)
    }

    /// Replaces the clock that stamps bookkeeping times (unix seconds).
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + 'static) -> Store {
        self.clock = Box::new(clock);
        self
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// IMMEDIATE takes the write lock up front, so a transaction that reads
    /// then writes waits on `busy_timeout` instead of failing half-way. No
    /// method leaves a transaction open, so the unchecked form cannot nest.
    fn write_tx(&self) -> rusqlite::Result<Transaction<'_>> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
