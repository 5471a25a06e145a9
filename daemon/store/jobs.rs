//! The queue: files waiting to be defragmented, the one a worker is moving,
//! and its chunk cursor. Taking a job, saving a cursor and giving a job back
//! are each one statement, so the per-chunk write stays cheap.

use std::path::PathBuf;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, OptionalExtension, Row, ToSql};
use serde::Serialize;

use super::codec::{blob_to_path, get_u64, path_to_blob, serialize_path_lossy, sql_limit, Uint};
use super::error::Doing;
use super::history::{self, Departed, Finished, HistoryOutcome};
use super::{FileId, JobId, Store, StoreError};
use crate::filesystem::FsUuid;

/// The columns `job_from_row` reads, for SELECT and RETURNING clauses.
const JOB_COLUMNS: &str =
    "id, fs_uuid, subvolume, ino, generation, path_hint, size_bytes, extents_before,
    ideal_extents, score, priority, state, next_block, attempts, requeues, space_waits,
    last_error, queued_at, updated_at, not_before";

/// Highest priority first; among equals, the one that waited longest.
const TAKE_ORDER: &str = "priority DESC, queued_at, id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
        }
    }
}

impl ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for JobState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "queued" => Ok(JobState::Queued),
            "running" => Ok(JobState::Running),
            other => Err(FromSqlError::Other(
                format!("unknown job state {other:?}").into(),
            )),
        }
    }
}

/// A file that policy decided is worth moving.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The file's identity; the path is only a hint.
    pub file: FileId,
    pub path_hint: PathBuf,
    pub size_bytes: u64,
    pub extents_before: u64,
    pub ideal_extents: u64,
    pub score: f64,
    /// Higher is taken first.
    pub priority: f64,
    /// Unix seconds before which the job is not taken (the quiet period
    /// after the last write).
    pub not_before: i64,
}

/// A queued or running job, with every column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The queue row; stable for the job's life, never reused.
    pub id: JobId,
    /// The file's identity, checked before every move.
    pub file: FileId,
    #[serde(serialize_with = "serialize_path_lossy")]
    pub path_hint: PathBuf,
    pub size_bytes: u64,
    pub extents_before: u64,
    pub ideal_extents: u64,
    pub score: f64,
    pub priority: f64,
    pub state: JobState,
    /// The chunk cursor: the first logical block not yet moved.
    pub next_block: u64,
    /// How many of its attempts failed for real: what gives a job up.
    pub attempts: u32,
    /// How many times it went back to the queue for a harmless reason
    /// (interrupted, busy, recently written, I/O pressure...).
    pub requeues: u32,
    /// How many times it waited for free space to come back.
    pub space_waits: u32,
    pub last_error: Option<String>,
    pub queued_at: i64,
    pub updated_at: i64,
    pub not_before: i64,
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: JobId(row.get("id")?),
        file: FileId {
            fs_uuid: row.get("fs_uuid")?,
            subvolume: get_u64(row, "subvolume")?,
            ino: get_u64(row, "ino")?,
            generation: row.get("generation")?,
        },
        path_hint: blob_to_path(row.get("path_hint")?),
        size_bytes: get_u64(row, "size_bytes")?,
        extents_before: get_u64(row, "extents_before")?,
        ideal_extents: get_u64(row, "ideal_extents")?,
        score: row.get("score")?,
        priority: row.get("priority")?,
        state: row.get("state")?,
        next_block: get_u64(row, "next_block")?,
        attempts: row.get("attempts")?,
        requeues: row.get("requeues")?,
        space_waits: row.get("space_waits")?,
        last_error: row.get("last_error")?,
        queued_at: row.get("queued_at")?,
        updated_at: row.get("updated_at")?,
        not_before: row.get("not_before")?,
    })
}

/// Which of a job's counters a return to the queue adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A real failure (`Job::attempts`).
    Failure,
    /// A harmless requeue (`Job::requeues`).
    Requeue,
    /// A wait for free space (`Job::space_waits`).
    SpaceWait,
}

/// What `enqueue_unless_running` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued(JobId),
    /// The file's job is running: left as it is.
    Running(JobId),
}

/// Inserts, or refreshes a queued job for the same file. A file written
/// again must wait out its new quiet period, so the later `not_before`
/// wins; and a file found urgent once stays urgent, so the higher priority
/// wins. The cursor is kept: the mover re-checks the file before every
/// move, and blocks rewritten behind the cursor are found by the next
/// assessment. A running job is left alone (no row is returned).
const UPSERT: &str = "
    INSERT INTO jobs (fs_uuid, ino, generation, path_hint, size_bytes, extents_before,
                      ideal_extents, score, priority, state, queued_at, updated_at, not_before,
                      subvolume)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?10, ?11, ?12)
    ON CONFLICT (fs_uuid, subvolume, ino, generation) DO UPDATE SET
        path_hint = excluded.path_hint,
        size_bytes = excluded.size_bytes,
        extents_before = excluded.extents_before,
        ideal_extents = excluded.ideal_extents,
        score = excluded.score,
        priority = max(priority, excluded.priority),
        not_before = max(not_before, excluded.not_before),
        updated_at = excluded.updated_at
    WHERE state = 'queued'
    RETURNING id";

impl Store {
    /// Queues a file, or updates its queued job (see `UPSERT`). Returns the
    /// job's id, also when the file is already running and nothing changed.
    pub fn enqueue(&self, job: &NewJob) -> Result<JobId, StoreError> {
        self.enqueue_unless_running(job).map(|queued| match queued {
            Enqueued::Queued(id) | Enqueued::Running(id) => id,
        })
    }

    /// `enqueue`, saying whether the file's job is running (and so was
    /// left as it is: a write seen now must be looked at again after it).
    pub fn enqueue_unless_running(&self, job: &NewJob) -> Result<Enqueued, StoreError> {
        let doing = "queueing a job";
        let now = self.now();
        let tx = self.write_tx().doing(doing)?;
        let file = &job.file;
        let written: Option<i64> = tx
            .query_row(
                UPSERT,
                params![
                    file.fs_uuid,
                    Uint(file.ino),
                    file.generation,
                    path_to_blob(&job.path_hint),
                    Uint(job.size_bytes),
                    Uint(job.extents_before),
                    Uint(job.ideal_extents),
                    job.score,
                    job.priority,
                    now,
                    job.not_before,
                    Uint(file.subvolume),
                ],
                |row| row.get(0),
            )
            .optional()
            .doing(doing)?;
        let queued = match written {
            Some(id) => Enqueued::Queued(JobId(id)),
            None => Enqueued::Running(JobId(
                tx.query_row(
                    "SELECT id FROM jobs
                     WHERE fs_uuid = ?1 AND ino = ?2 AND generation = ?3 AND subvolume = ?4",
                    params![
                        file.fs_uuid,
                        Uint(file.ino),
                        file.generation,
                        Uint(file.subvolume)
                    ],
                    |row| row.get(0),
                )
                .doing(doing)?,
            )),
        };
        tx.commit().doing(doing)?;
        Ok(queued)
    }

    /// Takes the next job for a worker serving these filesystems: the
    /// highest priority queued one whose `not_before` has passed, oldest
    /// first among equals. It becomes running; its counters are left to
    /// `retry_later`, which knows why it came back.
    pub fn next_job(&self, fs_uuids: &[FsUuid], now: i64) -> Result<Option<Job>, StoreError> {
        if fs_uuids.is_empty() {
            return Ok(None);
        }
        let placeholders: Vec<String> =
            (0..fs_uuids.len()).map(|i| format!("?{}", i + 2)).collect();
        let sql = format!(
            "UPDATE jobs SET state = 'running', updated_at = ?1
             WHERE id = (SELECT id FROM jobs
                         WHERE state = 'queued' AND not_before <= ?1
                           AND fs_uuid IN ({})
                         ORDER BY {TAKE_ORDER} LIMIT 1)
             RETURNING {JOB_COLUMNS}",
            placeholders.join(", ")
        );
        let args = std::iter::once(&now as &dyn ToSql)
            .chain(fs_uuids.iter().map(|uuid| uuid as &dyn ToSql));
        let doing = "taking the next job";
        let mut stmt = self.conn.prepare_cached(&sql).doing(doing)?;
        stmt.query_row(params_from_iter(args), job_from_row)
            .optional()
            .doing(doing)
    }

    /// When the next queued job on these filesystems becomes due (its
    /// `not_before`), if any is queued: how long an idle worker may sleep.
    pub fn next_due(&self, fs_uuids: &[FsUuid]) -> Result<Option<i64>, StoreError> {
        if fs_uuids.is_empty() {
            return Ok(None);
        }
        let placeholders: Vec<String> = (1..=fs_uuids.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT min(not_before) FROM jobs WHERE state = 'queued' AND fs_uuid IN ({})",
            placeholders.join(", ")
        );
        let doing = "finding when the next job is due";
        let mut stmt = self.conn.prepare_cached(&sql).doing(doing)?;
        stmt.query_row(params_from_iter(fs_uuids.iter()), |row| {
            row.get::<_, Option<i64>>(0)
        })
        .doing(doing)
    }

    /// Records that every block before `next_block` is moved: the one write
    /// made after each chunk.
    pub fn save_cursor(&self, job: JobId, next_block: u64) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET next_block = ?2, updated_at = ?3
                 WHERE id = ?1 AND state = 'running'",
            )
            .doing("saving a job's cursor")?;
        let changed = stmt
            .execute(params![job.0, Uint(next_block), self.now()])
            .doing("saving a job's cursor")?;
        gone_unless_changed(job, changed)
    }

    /// Gives a running job back to the queue, to be taken again no sooner
    /// than `not_before`; it keeps its cursor, and the counter of `counted`
    /// goes up by one.
    pub fn retry_later(
        &self,
        job: JobId,
        error: &str,
        not_before: i64,
        counted: Counted,
    ) -> Result<(), StoreError> {
        let one_if = |c: Counted| i64::from(counted == c);
        let changed = self
            .conn
            .execute(
                "UPDATE jobs SET state = 'queued', last_error = ?2, not_before = ?3,
                                 updated_at = ?4, attempts = attempts + ?5,
                                 requeues = requeues + ?6, space_waits = space_waits + ?7
                 WHERE id = ?1 AND state = 'running'",
                params![
                    job.0,
                    error,
                    not_before,
                    self.now(),
                    one_if(Counted::Failure),
                    one_if(Counted::Requeue),
                    one_if(Counted::SpaceWait)
                ],
            )
            .doing("putting a job back in the queue")?;
        gone_unless_changed(job, changed)
    }

    /// At start: jobs a crash left running go back to the queue with their
    /// cursor, so the move resumes where it stopped. Returns them by id.
    pub fn requeue_interrupted(&self) -> Result<Vec<Job>, StoreError> {
        let doing = "requeueing interrupted jobs";
        let sql = format!(
            "UPDATE jobs SET state = 'queued' WHERE state = 'running' RETURNING {JOB_COLUMNS}"
        );
        let mut stmt = self.conn.prepare(&sql).doing(doing)?;
        let rows = stmt.query_map([], job_from_row).doing(doing)?;
        let mut jobs = rows.collect::<rusqlite::Result<Vec<Job>>>().doing(doing)?;
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }

    /// Removes a finished job and records how it ended.
    pub fn finish_job(&self, job: JobId, finished: &Finished) -> Result<(), StoreError> {
        let doing = "recording a finished job";
        let now = self.now();
        let tx = self.write_tx().doing(doing)?;
        let departed = tx
            .query_row(
                &format!(
                    "DELETE FROM jobs WHERE id = ?1 RETURNING {}",
                    Departed::COLUMNS
                ),
                [job.0],
                Departed::from_row,
            )
            .optional()
            .doing(doing)?
            .ok_or(StoreError::JobGone(job))?;
        history::append(&tx, &departed, finished, now).doing(doing)?;
        history::prune(&tx, self.history_limit).doing(doing)?;
        tx.commit().doing(doing)
    }

    /// Removes a job, queued or running, without finishing it; history
    /// records it as dropped for this reason.
    pub fn drop_job(&self, job: JobId, reason: &str) -> Result<(), StoreError> {
        self.finish_job(job, &dropped(None, reason))
    }

    /// Jobs queued or running.
    pub fn queue_len(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |row| row.get::<_, Uint>(0))
            .map(|n| n.0)
            .doing("counting jobs")
    }

    /// The first `limit` jobs in the order workers take them (running ones
    /// included, in their place).
    pub fn top_jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let doing = "listing the queue";
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY {TAKE_ORDER} LIMIT ?1");
        let mut stmt = self.conn.prepare_cached(&sql).doing(doing)?;
        let rows = stmt
            .query_map([sql_limit(limit)], job_from_row)
            .doing(doing)?;
        rows.collect::<rusqlite::Result<_>>().doing(doing)
    }

    /// One job by id, if it is still queued or running.
    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let doing = "reading a job";
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        let mut stmt = self.conn.prepare_cached(&sql).doing(doing)?;
        stmt.query_row([id.0], job_from_row).optional().doing(doing)
    }
}

pub(super) fn dropped(reason_code: Option<&str>, reason: &str) -> Finished {
    Finished {
        outcome: HistoryOutcome::Dropped,
        reason_code: reason_code.map(str::to_owned),
        reason: Some(reason.to_owned()),
        extents_before: None,
        extents_after: None,
        bytes_moved: 0,
    }
}

/// An update that matched no row means the job is no longer running.
fn gone_unless_changed(job: JobId, changed: usize) -> Result<(), StoreError> {
    if changed == 0 {
        Err(StoreError::JobGone(job))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{
        defragmented, file, filesystems, memory_store, new_job, FS_A, FS_B,
    };
    use super::*;

    #[test]
    fn enqueueing_the_same_file_refreshes_its_queued_job() {
        let (store, clock) = memory_store(100);
        let first = store.enqueue(&new_job(FS_A, 1, 5.0)).unwrap();
        let mut again = new_job(FS_A, 1, 2.0);
        again.extents_before = 90;
        again.path_hint = PathBuf::from("moved/here");
        again.not_before = 500;
        clock.set(200);
        let second = store.enqueue(&again).unwrap();

        assert_eq!(first, second);
        assert_eq!(store.queue_len().unwrap(), 1);
        let job = store.job(first).unwrap().unwrap();
        assert_eq!(job.priority, 5.0, "the higher priority is kept");
        assert_eq!(job.not_before, 500, "a file written again is pushed back");
        assert_eq!(job.extents_before, 90);
        assert_eq!(job.path_hint, PathBuf::from("moved/here"));
        assert_eq!((job.queued_at, job.updated_at), (100, 200));
    }

    #[test]
    fn a_file_whose_job_runs_is_said_to_be_running_and_left_as_it_is() {
        let (store, _) = memory_store(100);
        let id = match store
            .enqueue_unless_running(&new_job(FS_A, 1, 5.0))
            .unwrap()
        {
            Enqueued::Queued(id) => id,
            other => panic!("{other:?}"),
        };
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        let mut again = new_job(FS_A, 1, 9.0);
        again.extents_before = 77;
        assert_eq!(
            store.enqueue_unless_running(&again).unwrap(),
            Enqueued::Running(id)
        );
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Running);
        assert_ne!(job.extents_before, 77, "a running job is left as it is");
    }

    #[test]
    fn next_due_is_the_earliest_queued_not_before() {
        let (store, _) = memory_store(100);
        let a = vec![FS_A];
        assert_eq!(store.next_due(&a).unwrap(), None);
        let mut job = new_job(FS_A, 1, 1.0);
        job.not_before = 900;
        store.enqueue(&job).unwrap();
        let mut job = new_job(FS_A, 2, 1.0);
        job.not_before = 400;
        store.enqueue(&job).unwrap();
        let mut other = new_job(FS_B, 3, 1.0);
        other.not_before = 10;
        store.enqueue(&other).unwrap();
        assert_eq!(store.next_due(&a).unwrap(), Some(400));
    }

    #[test]
    fn an_earlier_not_before_does_not_pull_a_job_forward() {
        let (store, _) = memory_store(100);
        let mut job = new_job(FS_A, 1, 1.0);
        job.not_before = 900;
        let id = store.enqueue(&job).unwrap();
        job.not_before = 300;
        job.priority = 8.0;
        store.enqueue(&job).unwrap();
        let stored = store.job(id).unwrap().unwrap();
        assert_eq!((stored.not_before, stored.priority), (900, 8.0));
    }

    #[test]
    fn a_new_generation_of_an_inode_is_another_file() {
        let (store, _) = memory_store(100);
        let old = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let mut reused = new_job(FS_A, 1, 1.0);
        reused.file.generation += 1;
        let new = store.enqueue(&reused).unwrap();
        assert_ne!(old, new);
        assert_eq!(store.queue_len().unwrap(), 2);
    }

    #[test]
    fn a_running_job_is_not_modified_by_enqueue() {
        let (store, _) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let taken = store.next_job(&filesystems(&[FS_A]), 100).unwrap().unwrap();
        let mut again = new_job(FS_A, 1, 9.0);
        again.not_before = 10_000;
        assert_eq!(store.enqueue(&again).unwrap(), id);
        assert_eq!(store.job(id).unwrap().unwrap(), taken);
    }

    #[test]
    fn jobs_are_taken_by_priority_then_by_age() {
        let (store, clock) = memory_store(100);
        let low = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        clock.set(300);
        let young = store.enqueue(&new_job(FS_A, 2, 5.0)).unwrap();
        clock.set(200);
        let old = store.enqueue(&new_job(FS_A, 3, 5.0)).unwrap();
        let fs = filesystems(&[FS_A]);
        let order: Vec<JobId> = std::iter::from_fn(|| store.next_job(&fs, 1000).unwrap())
            .map(|job| job.id)
            .collect();
        assert_eq!(order, [old, young, low]);
    }

    #[test]
    fn top_jobs_lists_in_take_order() {
        let (store, _) = memory_store(100);
        let low = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let high = store.enqueue(&new_job(FS_B, 2, 3.0)).unwrap();
        let ids: Vec<JobId> = store.top_jobs(5).unwrap().iter().map(|j| j.id).collect();
        assert_eq!(ids, [high, low]);
        assert_eq!(store.top_jobs(1).unwrap().len(), 1);
    }

    #[test]
    fn a_job_waits_for_its_not_before_and_its_filesystem() {
        let (store, _) = memory_store(100);
        let mut quiet = new_job(FS_A, 1, 9.0);
        quiet.not_before = 500;
        let quiet = store.enqueue(&quiet).unwrap();
        let other_fs = store.enqueue(&new_job(FS_B, 2, 5.0)).unwrap();

        assert_eq!(store.next_job(&[], 1000).unwrap(), None);
        assert_eq!(store.next_job(&filesystems(&[FS_A]), 499).unwrap(), None);
        let taken = store.next_job(&filesystems(&[FS_A]), 500).unwrap().unwrap();
        assert_eq!(taken.id, quiet);
        let taken = store
            .next_job(&filesystems(&[FS_A, FS_B]), 500)
            .unwrap()
            .unwrap();
        assert_eq!(taken.id, other_fs);
    }

    #[test]
    fn taking_a_job_marks_it_running_and_counts_nothing() {
        let (store, _) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let fs = filesystems(&[FS_A]);
        let job = store.next_job(&fs, 150).unwrap().unwrap();
        assert_eq!(
            (job.id, job.state, job.updated_at),
            (id, JobState::Running, 150)
        );
        assert_eq!(
            (job.attempts, job.requeues, job.space_waits),
            (0, 0, 0),
            "only the return to the queue knows what to count"
        );
        assert_eq!(
            store.next_job(&fs, 150).unwrap(),
            None,
            "a running job is not taken twice"
        );
    }

    #[test]
    fn the_cursor_is_saved_only_for_a_running_job() {
        let (store, clock) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        assert!(matches!(store.save_cursor(id, 8), Err(StoreError::JobGone(gone)) if gone == id));
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        clock.set(102);
        store.save_cursor(id, 8).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!((job.next_block, job.updated_at), (8, 102));
        assert!(matches!(
            store.save_cursor(JobId(999), 8),
            Err(StoreError::JobGone(_))
        ));
    }

    #[test]
    fn retry_later_requeues_with_the_error_and_a_backoff() {
        let (store, _) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let fs = filesystems(&[FS_A]);
        store.next_job(&fs, 100).unwrap();
        store.save_cursor(id, 64).unwrap();
        store
            .retry_later(id, "file is busy", 400, Counted::Requeue)
            .unwrap();

        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.last_error.as_deref(), Some("file is busy"));
        assert_eq!(job.next_block, 64, "the cursor survives a retry");
        assert_eq!(store.next_job(&fs, 399).unwrap(), None);
        let again = store.next_job(&fs, 400).unwrap().unwrap();
        assert_eq!(
            (again.attempts, again.requeues, again.space_waits),
            (0, 1, 0)
        );
        assert!(matches!(
            store.retry_later(JobId(999), "x", 0, Counted::Failure),
            Err(StoreError::JobGone(_))
        ));
    }

    #[test]
    fn each_return_to_the_queue_counts_in_its_own_counter() {
        let (store, _) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let fs = filesystems(&[FS_A]);
        for counted in [
            Counted::Failure,
            Counted::SpaceWait,
            Counted::Requeue,
            Counted::Failure,
            Counted::Requeue,
            Counted::Requeue,
        ] {
            store.next_job(&fs, 100).unwrap().unwrap();
            store.retry_later(id, "why", 100, counted).unwrap();
        }
        let job = store.job(id).unwrap().unwrap();
        assert_eq!((job.attempts, job.requeues, job.space_waits), (2, 3, 1));
    }

    #[test]
    fn requeue_interrupted_returns_running_jobs_with_their_cursor() {
        let (store, _) = memory_store(100);
        let a = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        let b = store.enqueue(&new_job(FS_B, 2, 1.0)).unwrap();
        store.enqueue(&new_job(FS_A, 3, 0.5)).unwrap();
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        store.next_job(&filesystems(&[FS_B]), 100).unwrap();
        store.save_cursor(b, 32).unwrap();

        let resumed = store.requeue_interrupted().unwrap();
        let got: Vec<(JobId, u64, JobState)> = resumed
            .iter()
            .map(|j| (j.id, j.next_block, j.state))
            .collect();
        assert_eq!(got, [(a, 0, JobState::Queued), (b, 32, JobState::Queued)]);
        assert!(store.requeue_interrupted().unwrap().is_empty());
    }

    #[test]
    fn finishing_moves_the_job_to_history() {
        let (store, clock) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        clock.set(130);
        store.finish_job(id, &defragmented(1 << 20)).unwrap();

        assert_eq!(store.queue_len().unwrap(), 0);
        let entry = &store.recent_history(10).unwrap()[0];
        assert_eq!(entry.file, file(FS_A, 1));
        assert_eq!(entry.outcome, HistoryOutcome::Defragmented);
        assert_eq!((entry.extents_before, entry.extents_after), (40, Some(1)));
        assert_eq!((entry.bytes_moved, entry.finished_at), (1 << 20, 130));
        assert!(matches!(
            store.finish_job(id, &defragmented(0)),
            Err(StoreError::JobGone(_))
        ));
    }

    #[test]
    fn history_keeps_the_extents_the_move_measured_not_the_queued_ones() {
        // Queued with 40 extents; by the time the move started the file
        // had 96 (written meanwhile), and it ended in 191.
        let (store, _) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        let finished = Finished {
            outcome: HistoryOutcome::Failed,
            reason_code: Some("writer_outpaced".into()),
            reason: Some("a writer appended".into()),
            extents_before: Some(96),
            extents_after: Some(191),
            bytes_moved: 1 << 20,
        };
        store.finish_job(id, &finished).unwrap();
        let entry = &store.recent_history(1).unwrap()[0];
        assert_eq!((entry.extents_before, entry.extents_after), (96, Some(191)));
    }

    #[test]
    fn dropping_records_the_reason() {
        let (store, _) = memory_store(100);
        let id = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        store.drop_job(id, "failed 5 times").unwrap();
        assert_eq!(store.queue_len().unwrap(), 0);
        let entry = &store.recent_history(1).unwrap()[0];
        assert_eq!(entry.outcome, HistoryOutcome::Dropped);
        assert_eq!(entry.reason_code, None);
        assert_eq!(entry.reason.as_deref(), Some("failed 5 times"));
        assert_eq!(entry.extents_after, None);
    }
}
