//! Where each filesystem's background crawl is. The crawl visits entries in
//! byte order, so one path is enough to say "everything up to here is
//! assessed"; after a restart the pass resumes past it instead of starting
//! over.

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::codec::{blob_to_path, get_u64, path_to_blob, serialize_path_lossy, Uint};
use super::error::Doing;
use super::fragmentation::{add_to_pass, record_pass, Tally};
use super::{Store, StoreError};
use crate::filesystem::FsUuid;

const CURSOR_COLUMNS: &str =
    "fs_uuid, pass_id, pass_started_at, cursor, files_assessed, pass_finished_at";

/// A filesystem's crawl progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrawlCursor {
    pub fs_uuid: FsUuid,
    /// Counts passes over this filesystem, from 1.
    pub pass_id: u64,
    pub pass_started_at: i64,
    /// The last file assessed, relative to the mount point; empty before
    /// the first one.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub cursor: PathBuf,
    pub files_assessed: u64,
    /// `None` while the pass runs.
    pub pass_finished_at: Option<i64>,
}

impl CrawlCursor {
    pub fn is_finished(&self) -> bool {
        self.pass_finished_at.is_some()
    }
}

fn cursor_from_row(row: &Row<'_>) -> rusqlite::Result<CrawlCursor> {
    Ok(CrawlCursor {
        fs_uuid: row.get("fs_uuid")?,
        pass_id: get_u64(row, "pass_id")?,
        pass_started_at: row.get("pass_started_at")?,
        cursor: blob_to_path(row.get("cursor")?),
        files_assessed: get_u64(row, "files_assessed")?,
        pass_finished_at: row.get("pass_finished_at")?,
    })
}

impl Store {
    /// The filesystem's current or last pass, if it was ever crawled.
    pub fn crawl_cursor(&self, fs_uuid: FsUuid) -> Result<Option<CrawlCursor>, StoreError> {
        let doing = "reading a crawl cursor";
        let sql = format!("SELECT {CURSOR_COLUMNS} FROM crawl_cursors WHERE fs_uuid = ?1");
        let mut stmt = self.conn.prepare_cached(&sql).doing(doing)?;
        stmt.query_row([fs_uuid], cursor_from_row)
            .optional()
            .doing(doing)
    }

    /// Begins a new pass from the start of the filesystem.
    pub fn start_pass(&self, fs_uuid: FsUuid, now: i64) -> Result<CrawlCursor, StoreError> {
        let sql = format!(
            "INSERT INTO crawl_cursors ({CURSOR_COLUMNS}) VALUES (?1, 1, ?2, x'', 0, NULL)
             ON CONFLICT (fs_uuid) DO UPDATE SET
                 pass_id = pass_id + 1,
                 pass_started_at = excluded.pass_started_at,
                 cursor = x'',
                 files_assessed = 0,
                 pass_finished_at = NULL,
                 files_measured = 0,
                 extents = 0,
                 ideal_extents = 0
             RETURNING {CURSOR_COLUMNS}"
        );
        self.conn
            .query_row(&sql, params![fs_uuid, now], cursor_from_row)
            .doing("starting a crawl pass")
    }

    /// Records that everything up to `cursor_path` (inclusive) is assessed,
    /// and adds what was mapped of it to the pass's tally.
    pub fn save_crawl_cursor(
        &self,
        fs_uuid: FsUuid,
        cursor_path: &Path,
        files_assessed: u64,
        measured: &Tally,
    ) -> Result<(), StoreError> {
        let doing = "saving a crawl cursor";
        let tx = self.write_tx().doing(doing)?;
        let changed = tx
            .prepare_cached(
                "UPDATE crawl_cursors SET cursor = ?2, files_assessed = ?3 WHERE fs_uuid = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    fs_uuid,
                    path_to_blob(cursor_path),
                    Uint(files_assessed)
                ])
            })
            .doing(doing)?;
        pass_must_exist(fs_uuid, changed)?;
        if measured.files > 0 {
            add_to_pass(&tx, fs_uuid, measured).doing(doing)?;
        }
        tx.commit().doing(doing)
    }

    /// Ends the pass and records what it measured.
    pub fn finish_pass(&self, fs_uuid: FsUuid, now: i64) -> Result<(), StoreError> {
        let doing = "finishing a crawl pass";
        let tx = self.write_tx().doing(doing)?;
        let changed = tx
            .execute(
                "UPDATE crawl_cursors SET pass_finished_at = ?2 WHERE fs_uuid = ?1",
                params![fs_uuid, now],
            )
            .doing(doing)?;
        pass_must_exist(fs_uuid, changed)?;
        record_pass(&tx, fs_uuid, now).doing(doing)?;
        tx.commit().doing(doing)
    }
}

fn pass_must_exist(fs_uuid: FsUuid, changed: usize) -> Result<(), StoreError> {
    if changed == 0 {
        Err(StoreError::NoCrawlPass(fs_uuid))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{memory_store, FS_A, FS_B};
    use super::*;

    #[test]
    fn passes_are_numbered_and_start_from_the_beginning() {
        let (store, _) = memory_store(0);
        assert_eq!(store.crawl_cursor(FS_A).unwrap(), None);

        let first = store.start_pass(FS_A, 100).unwrap();
        assert_eq!((first.pass_id, first.pass_started_at), (1, 100));
        assert_eq!(
            (first.cursor.as_os_str().len(), first.files_assessed),
            (0, 0)
        );
        assert!(!first.is_finished());

        store
            .save_crawl_cursor(FS_A, Path::new("home/a/b.log"), 42, &Tally::default())
            .unwrap();
        store.finish_pass(FS_A, 900).unwrap();
        let done = store.crawl_cursor(FS_A).unwrap().unwrap();
        assert_eq!(done.cursor, Path::new("home/a/b.log"));
        assert_eq!(
            (done.files_assessed, done.pass_finished_at),
            (42, Some(900))
        );

        let second = store.start_pass(FS_A, 1000).unwrap();
        assert_eq!((second.pass_id, second.pass_started_at), (2, 1000));
        assert_eq!((second.files_assessed, second.pass_finished_at), (0, None));
        assert_eq!(second.cursor, PathBuf::new());
        assert_eq!(store.crawl_cursor(FS_A).unwrap(), Some(second));
    }

    #[test]
    fn filesystems_have_separate_cursors() {
        let (store, _) = memory_store(0);
        store.start_pass(FS_A, 100).unwrap();
        store.start_pass(FS_A, 200).unwrap();
        assert_eq!(store.start_pass(FS_B, 300).unwrap().pass_id, 1);
        store
            .save_crawl_cursor(FS_B, Path::new("x"), 1, &Tally::default())
            .unwrap();
        assert_eq!(store.crawl_cursor(FS_A).unwrap().unwrap().files_assessed, 0);
    }

    #[test]
    fn a_cursor_needs_a_started_pass() {
        let (store, _) = memory_store(0);
        let err = store
            .save_crawl_cursor(FS_A, Path::new("a"), 1, &Tally::default())
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::NoCrawlPass(fs) if *fs == FS_A),
            "{err:?}"
        );
        assert!(matches!(
            store.finish_pass(FS_A, 1),
            Err(StoreError::NoCrawlPass(_))
        ));
    }
}
