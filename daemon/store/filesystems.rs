//! The filesystems defragd has seen, and forgetting a filesystem's queued
//! work when it goes away (unmounted, or remounted read-only).

use std::path::{Path, PathBuf};

use rusqlite::{params, Row};
use serde::Serialize;

use super::codec::{blob_to_path, path_to_blob, serialize_path_lossy};
use super::error::Doing;
use super::history::{self, Departed};
use super::jobs::dropped;
use super::{Store, StoreError};
use crate::filesystem::FsUuid;

/// A filesystem as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub uuid: FsUuid,
    #[serde(serialize_with = "serialize_path_lossy")]
    pub mount_point: PathBuf,
    pub first_seen: i64,
    pub last_seen: i64,
}

fn filesystem_from_row(row: &Row<'_>) -> rusqlite::Result<Filesystem> {
    Ok(Filesystem {
        uuid: row.get("uuid")?,
        mount_point: blob_to_path(row.get("mount_point")?),
        first_seen: row.get("first_seen")?,
        last_seen: row.get("last_seen")?,
    })
}

impl Store {
    /// Records that a filesystem is mounted at `mount_point` now.
    pub fn upsert_filesystem(&self, uuid: FsUuid, mount_point: &Path) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO filesystems (uuid, mount_point, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (uuid) DO UPDATE SET
                     mount_point = excluded.mount_point,
                     last_seen = excluded.last_seen",
                params![uuid, path_to_blob(mount_point), self.now()],
            )
            .doing("recording a filesystem")?;
        Ok(())
    }

    /// Every filesystem seen, by UUID.
    pub fn filesystems(&self) -> Result<Vec<Filesystem>, StoreError> {
        let doing = "listing filesystems";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT * FROM filesystems ORDER BY uuid")
            .doing(doing)?;
        let rows = stmt.query_map([], filesystem_from_row).doing(doing)?;
        rows.collect::<rusqlite::Result<_>>().doing(doing)
    }

    /// Drops the filesystem's queued jobs, recording each as dropped, and
    /// returns how many. A running job is left to its worker, whose move
    /// fails and reports through `finish_job` or `retry_later`. The crawl
    /// cursor is kept so a remount resumes the pass; where the pass was
    /// over and jobs were dropped, the next one is due at once, so that a
    /// remount finds their files again.
    pub fn forget_filesystem(&self, uuid: FsUuid) -> Result<u64, StoreError> {
        let doing = "forgetting a filesystem's jobs";
        let now = self.now();
        let tx = self.write_tx().doing(doing)?;
        let departed = {
            let sql = format!(
                "DELETE FROM jobs WHERE fs_uuid = ?1 AND state = 'queued' RETURNING {}",
                Departed::COLUMNS
            );
            let mut stmt = tx.prepare(&sql).doing(doing)?;
            let rows = stmt.query_map([uuid], Departed::from_row).doing(doing)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().doing(doing)?
        };
        let why = dropped(Some("filesystem_unmounted"), "filesystem unmounted");
        for job in &departed {
            history::append(&tx, job, &why, now).doing(doing)?;
        }
        if !departed.is_empty() {
            tx.execute(
                "UPDATE crawl_cursors SET pass_started_at = 0
                 WHERE fs_uuid = ?1 AND pass_finished_at IS NOT NULL",
                [uuid],
            )
            .doing(doing)?;
        }
        history::prune(&tx, self.history_limit).doing(doing)?;
        tx.commit().doing(doing)?;
        Ok(departed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::HistoryOutcome;
    use super::super::testutil::{filesystems, memory_store, new_job, FS_A, FS_B};
    use super::super::JobId;
    use super::*;

    #[test]
    fn a_filesystem_keeps_its_first_sighting_and_updates_the_rest() {
        let (store, clock) = memory_store(100);
        store.upsert_filesystem(FS_A, Path::new("/srv")).unwrap();
        clock.set(200);
        store
            .upsert_filesystem(FS_A, Path::new("/mnt/data"))
            .unwrap();
        store.upsert_filesystem(FS_B, Path::new("/")).unwrap();
        let seen = store.filesystems().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0],
            Filesystem {
                uuid: FS_A.to_owned(),
                mount_point: PathBuf::from("/mnt/data"),
                first_seen: 100,
                last_seen: 200,
            }
        );
    }

    #[test]
    fn forgetting_drops_only_that_filesystems_queued_jobs() {
        let (store, clock) = memory_store(100);
        let running = store.enqueue(&new_job(FS_A, 1, 9.0)).unwrap();
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        store.enqueue(&new_job(FS_A, 2, 1.0)).unwrap();
        store.enqueue(&new_job(FS_A, 3, 1.0)).unwrap();
        let other = store.enqueue(&new_job(FS_B, 4, 1.0)).unwrap();

        clock.set(500);
        assert_eq!(store.forget_filesystem(FS_A).unwrap(), 2);

        let left: Vec<JobId> = store.top_jobs(10).unwrap().iter().map(|j| j.id).collect();
        assert_eq!(left, [running, other]);
        let history = store.recent_history(10).unwrap();
        assert_eq!(history.len(), 2);
        for entry in &history {
            assert_eq!(entry.outcome, HistoryOutcome::Dropped);
            assert_eq!(entry.reason_code.as_deref(), Some("filesystem_unmounted"));
            assert_eq!(entry.reason.as_deref(), Some("filesystem unmounted"));
            assert_eq!(entry.finished_at, 500);
            assert_eq!(entry.file.fs_uuid, FS_A);
        }
    }

    #[test]
    fn forgetting_dropped_jobs_makes_a_finished_crawl_due_again() {
        let (store, _) = memory_store(100);
        store.start_pass(FS_A, 100).unwrap();
        store.finish_pass(FS_A, 150).unwrap();
        store.start_pass(FS_B, 100).unwrap();
        store.finish_pass(FS_B, 150).unwrap();
        // Nothing queued on FS_B: nothing lost, its next pass stays due later.
        assert_eq!(store.forget_filesystem(FS_B).unwrap(), 0);
        assert_eq!(
            store.crawl_cursor(FS_B).unwrap().unwrap().pass_started_at,
            100
        );

        store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        assert_eq!(store.forget_filesystem(FS_A).unwrap(), 1);
        let cursor = store.crawl_cursor(FS_A).unwrap().unwrap();
        assert_eq!(cursor.pass_started_at, 0, "the next pass is due at once");
        assert!(cursor.is_finished());

        // A pass under way is resumed where it was, whatever was dropped.
        store.start_pass(FS_A, 200).unwrap();
        store.enqueue(&new_job(FS_A, 2, 1.0)).unwrap();
        store.forget_filesystem(FS_A).unwrap();
        assert_eq!(
            store.crawl_cursor(FS_A).unwrap().unwrap().pass_started_at,
            200
        );
    }
}
