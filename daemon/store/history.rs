//! What happened to finished jobs, newest first, bounded to a configured
//! number of rows so the database stays small on a server that runs for
//! years. Rows are only ever appended and pruned from the oldest end.

use std::path::PathBuf;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, Row, ToSql};
use serde::Serialize;

use super::codec::{
    blob_to_path, get_opt_u64, get_u64, path_to_blob, serialize_path_lossy, sql_limit, Uint,
};
use super::error::Doing;
use super::{FileId, Store, StoreError};
use crate::filesystem::FsUuid;

/// How a job left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryOutcome {
    Defragmented,
    /// Nothing was wrong; there was nothing safe or worthwhile to do.
    Skipped,
    Failed,
    /// Removed from the queue without being attempted to the end.
    Dropped,
}

impl HistoryOutcome {
    /// The stable word stored in the database and shown to scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOutcome::Defragmented => "defragmented",
            HistoryOutcome::Skipped => "skipped",
            HistoryOutcome::Failed => "failed",
            HistoryOutcome::Dropped => "dropped",
        }
    }

    fn parse(word: &str) -> Option<HistoryOutcome> {
        [
            HistoryOutcome::Defragmented,
            HistoryOutcome::Skipped,
            HistoryOutcome::Failed,
            HistoryOutcome::Dropped,
        ]
        .into_iter()
        .find(|o| o.as_str() == word)
    }
}

impl ToSql for HistoryOutcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for HistoryOutcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let word = value.as_str()?;
        HistoryOutcome::parse(word)
            .ok_or_else(|| FromSqlError::Other(format!("unknown outcome {word:?}").into()))
    }
}

/// What the worker reports when a job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub outcome: HistoryOutcome,
    /// A stable code for scripts, e.g. `SkipReason::code()`.
    pub reason_code: Option<String>,
    /// The sentence an operator reads.
    pub reason: Option<String>,
    /// The file's extents as the attempt found them at its start; `None`
    /// when it was not measured (the count the job was queued with is
    /// recorded then).
    pub extents_before: Option<u64>,
    /// `None` when the file was not measured after the attempt.
    pub extents_after: Option<u64>,
    pub bytes_moved: u64,
}

/// One finished job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The history row, increasing in the order jobs finished.
    pub id: i64,
    /// The file's identity.
    pub file: FileId,
    /// The path the job knew the file by; only a hint.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub path: PathBuf,
    pub outcome: HistoryOutcome,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub extents_before: u64,
    pub extents_after: Option<u64>,
    pub bytes_moved: u64,
    pub finished_at: i64,
}

/// What is left of a job once it is deleted: the part history keeps.
pub(super) struct Departed {
    pub file: FileId,
    pub path: PathBuf,
    pub extents_before: u64,
}

impl Departed {
    /// The columns `from_row` reads, for a `RETURNING` clause.
    pub const COLUMNS: &'static str =
        "fs_uuid, subvolume, ino, generation, path_hint, extents_before";

    pub fn from_row(row: &Row<'_>) -> rusqlite::Result<Departed> {
        Ok(Departed {
            file: FileId {
                fs_uuid: row.get("fs_uuid")?,
                subvolume: get_u64(row, "subvolume")?,
                ino: get_u64(row, "ino")?,
                generation: row.get("generation")?,
            },
            path: blob_to_path(row.get("path_hint")?),
            extents_before: get_u64(row, "extents_before")?,
        })
    }
}

pub(super) fn append(
    conn: &Connection,
    departed: &Departed,
    finished: &Finished,
    now: i64,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO history (fs_uuid, ino, generation, path, outcome, reason_code, reason,
                              extents_before, extents_after, bytes_moved, finished_at, subvolume)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    stmt.execute(params![
        departed.file.fs_uuid,
        Uint(departed.file.ino),
        departed.file.generation,
        path_to_blob(&departed.path),
        finished.outcome,
        finished.reason_code,
        finished.reason,
        Uint(finished.extents_before.unwrap_or(departed.extents_before)),
        finished.extents_after.map(Uint),
        Uint(finished.bytes_moved),
        now,
        Uint(departed.file.subvolume),
    ])?;
    Ok(())
}

/// Keeps the newest `limit` rows. The subquery finds the newest row that
/// must go; with fewer rows it is NULL and nothing is deleted.
pub(super) fn prune(conn: &Connection, limit: usize) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM history
         WHERE id <= (SELECT id FROM history ORDER BY id DESC LIMIT 1 OFFSET ?1)",
    )?;
    stmt.execute([sql_limit(limit)])?;
    Ok(())
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<HistoryEntry> {
    Ok(HistoryEntry {
        id: row.get("id")?,
        file: FileId {
            fs_uuid: row.get("fs_uuid")?,
            subvolume: get_u64(row, "subvolume")?,
            ino: get_u64(row, "ino")?,
            generation: row.get("generation")?,
        },
        path: blob_to_path(row.get("path")?),
        outcome: row.get("outcome")?,
        reason_code: row.get("reason_code")?,
        reason: row.get("reason")?,
        extents_before: get_u64(row, "extents_before")?,
        extents_after: get_opt_u64(row, "extents_after")?,
        bytes_moved: get_u64(row, "bytes_moved")?,
        finished_at: row.get("finished_at")?,
    })
}

impl Store {
    /// The newest `limit` entries, newest first (in the order they were
    /// recorded, whatever clock the callers passed).
    pub fn recent_history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let doing = "reading the history";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT * FROM history ORDER BY id DESC LIMIT ?1")
            .doing(doing)?;
        let rows = stmt
            .query_map([sql_limit(limit)], entry_from_row)
            .doing(doing)?;
        rows.collect::<rusqlite::Result<_>>().doing(doing)
    }

    /// Records a file the policy left alone without queueing it (so with
    /// no job), for the operator to see in the history.
    pub fn record_left(
        &self,
        file: &FileId,
        path: &std::path::Path,
        extents: u64,
        finished: &Finished,
    ) -> Result<(), StoreError> {
        let doing = "recording a file left alone";
        let departed = Departed {
            file: file.clone(),
            path: path.to_path_buf(),
            extents_before: extents,
        };
        let tx = self.write_tx().doing(doing)?;
        append(&tx, &departed, finished, self.now()).doing(doing)?;
        prune(&tx, self.history_limit).doing(doing)?;
        tx.commit().doing(doing)
    }

    /// Bytes moved on the filesystems `uuids` by jobs that finished at or
    /// after `since`, counting only the history still kept.
    pub fn bytes_moved_since_on(&self, since: i64, uuids: &[FsUuid]) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(bytes_moved), 0) FROM history
                 WHERE finished_at >= ?1 AND fs_uuid = ?2",
            )
            .doing("adding up today's moves")?;
        for uuid in uuids {
            let bytes = stmt
                .query_row(params![since, uuid], |row| row.get::<_, Uint>(0))
                .doing("adding up today's moves")?;
            total = total.saturating_add(bytes.0);
        }
        Ok(total)
    }

    /// Bytes moved by jobs that finished at or after `since` (unix seconds),
    /// counting only the history still kept.
    pub fn bytes_moved_since(&self, since: i64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(bytes_moved), 0) FROM history WHERE finished_at >= ?1",
                [since],
                |row| row.get::<_, Uint>(0),
            )
            .map(|sum| sum.0)
            .doing("adding up bytes moved")
    }

    pub(super) fn prune_history(&self) -> Result<(), StoreError> {
        prune(&self.conn, self.history_limit).doing("pruning the history")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{defragmented, new_job, TestClock, FS_A};
    use super::super::StoreOptions;
    use super::*;

    fn store_keeping(history_limit: usize) -> (Store, TestClock) {
        let options = StoreOptions {
            history_limit,
            ..StoreOptions::default()
        };
        let clock = TestClock::default();
        (
            clock.drive(Store::open_in_memory_with(&options).unwrap()),
            clock,
        )
    }

    /// Finishes one job per entry of `moves`: (bytes moved, finished at).
    fn finish_jobs(store: &Store, clock: &TestClock, moves: &[(u64, i64)]) {
        for (ino, &(bytes, at)) in moves.iter().enumerate() {
            clock.set(at);
            let id = store.enqueue(&new_job(FS_A, ino as u64, 1.0)).unwrap();
            store.finish_job(id, &defragmented(bytes)).unwrap();
        }
    }

    #[test]
    fn only_the_newest_rows_are_kept_newest_first() {
        let (store, clock) = store_keeping(3);
        finish_jobs(
            &store,
            &clock,
            &[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)],
        );
        let history = store.recent_history(10).unwrap();
        let kept: Vec<(u64, i64)> = history
            .iter()
            .map(|e| (e.bytes_moved, e.finished_at))
            .collect();
        assert_eq!(kept, [(5, 50), (4, 40), (3, 30)]);
        assert_eq!(store.recent_history(2).unwrap().len(), 2);
    }

    #[test]
    fn a_limit_of_zero_keeps_no_history() {
        let (store, clock) = store_keeping(0);
        finish_jobs(&store, &clock, &[(1, 10)]);
        assert!(store.recent_history(10).unwrap().is_empty());
    }

    #[test]
    fn bytes_moved_are_summed_from_a_time_on() {
        let (store, clock) = store_keeping(100);
        assert_eq!(store.bytes_moved_since(0).unwrap(), 0);
        finish_jobs(&store, &clock, &[(100, 10), (20, 20), (3, 30)]);
        assert_eq!(store.bytes_moved_since(20).unwrap(), 23);
        assert_eq!(store.bytes_moved_since(31).unwrap(), 0);
    }

    #[test]
    fn outcomes_round_trip_as_their_words() {
        for outcome in [
            HistoryOutcome::Defragmented,
            HistoryOutcome::Skipped,
            HistoryOutcome::Failed,
            HistoryOutcome::Dropped,
        ] {
            assert_eq!(HistoryOutcome::parse(outcome.as_str()), Some(outcome));
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{}\"", outcome.as_str()));
        }
    }
}
