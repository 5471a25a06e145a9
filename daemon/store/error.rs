//! The store's errors: one variant per thing an operator can act on, each
//! message saying what happened and what to do about it.

use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

use super::JobId;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the state directory {path}: {source}; create it (mode 0700, owned by \
         the service's user) or point the state directory at a writable place"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot open the state database {path}: {source}; check that the state directory is \
         writable by the service and that its filesystem is mounted read-write"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the state database {path} is corrupt and could not be moved aside to {aside}: \
         {source}; remove {path} and its -wal and -shm files by hand and restart (it only \
         saves work: the crawl rediscovers it)"
    )]
    MoveAside {
        path: PathBuf,
        aside: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the state database {path} is still unreadable after the corrupt one was moved aside \
         ({reason}); check the disk and filesystem that hold the state directory"
    )]
    StillCorrupt { path: PathBuf, reason: String },

    #[error(
        "the state database {path} has schema version {found}, but this defragd knows only \
         versions up to {known}: a newer defragd wrote it. It was left untouched; run the newer \
         defragd, or move the file aside to start afresh (the crawl rediscovers queued work)"
    )]
    FromNewerVersion {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    #[error(
        "upgrading the state database {path} to schema version {version} failed: {source}; it \
         was left at the version it had. Move it aside to start afresh (the crawl rediscovers \
         queued work)"
    )]
    Migration {
        path: PathBuf,
        version: usize,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the disk holding the state database is full (while {doing}): progress is not being \
         saved; free space on it"
    )]
    DiskFull {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the state database cannot be written (while {doing}): {source}; check the permissions \
         of the state directory and that its filesystem is mounted read-write"
    )]
    ReadOnly {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the state database is locked by another process (while {doing}); is a second defragd \
         running with the same state directory?"
    )]
    Locked {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the state database is corrupt (found while {doing}): {source}; restart defragd: it \
         moves the damaged file aside, starts afresh, and the crawl rediscovers the work"
    )]
    Corrupt {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the state database failed while {doing}: {source}; if this repeats, it is a bug in \
         defragd: please report it with this message"
    )]
    Sql {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "job {0} is no longer running in the queue (it finished, was dropped, or its \
         filesystem was forgotten); stop working on it"
    )]
    JobGone(JobId),

    #[error(
        "no crawl pass was started on filesystem {0}, so there is no cursor to save; start a \
         pass first"
    )]
    NoCrawlPass(crate::filesystem::FsUuid),
}

/// Whether SQLite says the file itself is damaged (as opposed to locked,
/// unwritable or full, which moving it aside would not cure).
pub(super) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Attaches what the store was doing to a SQLite error and sorts it into the
/// variant an operator can act on.
pub(super) trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for rusqlite::Result<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| classify(doing, source))
    }
}

fn classify(doing: &'static str, source: rusqlite::Error) -> StoreError {
    match source.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { doing, source },
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            StoreError::ReadOnly { doing, source }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Locked { doing, source }
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt { doing, source }
        }
        _ => StoreError::Sql { doing, source },
    }
}
