//! How fragmented each filesystem is, over time, and what the service did
//! there each day. A crawl pass adds up the extents of every file it maps
//! (kept with its cursor, so a restarted pass keeps its tally) and records
//! the sum when it ends; a move takes the extents it removed off the newest
//! record at once, so the figure falls as the service works and rises when
//! a pass finds new fragmentation. Only the newest `KEPT_PER_FS` records
//! of a filesystem are kept: enough for a trend, never a growing file.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::codec::{blob_to_path, get_u64, Uint};
use super::error::Doing;
use super::{Store, StoreError};
use crate::filesystem::FsUuid;

/// Records kept per filesystem (a daily crawl: a little over three months).
const KEPT_PER_FS: u64 = 100;

/// What a crawl measured of a filesystem: the files it mapped and their
/// extents, against the fewest they could be in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub files: u64,
    pub extents: u64,
    pub ideal_extents: u64,
}

impl Tally {
    /// One mapped file.
    pub fn of_file(extents: u64, ideal_extents: u64) -> Tally {
        Tally {
            files: 1,
            extents,
            ideal_extents,
        }
    }

    pub fn excess_extents(&self) -> u64 {
        self.extents.saturating_sub(self.ideal_extents)
    }

    /// The share of extents beyond the ideal, 0 to 1: a file's score
    /// (`assess`) over the whole filesystem, without the factor 100.
    pub fn ratio(&self) -> f64 {
        if self.extents == 0 {
            0.0
        } else {
            self.excess_extents() as f64 / self.extents as f64
        }
    }

    /// 0 for a filesystem whose files are all in their ideal shape, towards
    /// 100 as more of their extents are excess; as `defragd check` scores a
    /// file.
    pub fn score(&self) -> f64 {
        100.0 * self.ratio()
    }

    /// After a move took `removed` extents off one of the files: never
    /// below the ideal, which a move cannot beat.
    pub fn after_move(self, removed: u64) -> Tally {
        Tally {
            extents: self.extents.saturating_sub(removed).max(self.ideal_extents),
            ..self
        }
    }
}

/// One record: what a pass measured, as moves since have changed it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measurement {
    /// When the pass ended (unix seconds).
    pub measured_at: i64,
    pub tally: Tally,
}

/// A filesystem's newest record and the one before, to show the change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FsFragmentation {
    pub latest: Measurement,
    pub previous: Option<Measurement>,
}

/// Files defragmented and bytes moved by jobs that finished in a span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    pub files_defragmented: u64,
    pub bytes_moved: u64,
}

/// A filesystem's activity today and since the store was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsActivity {
    pub fs_uuid: FsUuid,
    pub today: Activity,
    pub total: Activity,
}

fn measurement_from_row(row: &Row<'_>) -> rusqlite::Result<Measurement> {
    Ok(Measurement {
        measured_at: row.get("measured_at")?,
        tally: Tally {
            files: get_u64(row, "files")?,
            extents: get_u64(row, "extents")?,
            ideal_extents: get_u64(row, "ideal_extents")?,
        },
    })
}

/// Whether the crawl at `cursor` has already passed `path`: it walks in
/// the order of `Path`'s comparison (component by component, bytes within
/// each), so everything up to its cursor is behind it.
fn crawl_has_passed(cursor: &Path, path: &Path) -> bool {
    !cursor.as_os_str().is_empty() && path <= cursor
}

/// Adds what the crawl mapped of one file to the running pass's tally.
pub(super) fn add_to_pass(
    tx: &rusqlite::Connection,
    fs_uuid: FsUuid,
    measured: &Tally,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE crawl_cursors SET files_measured = files_measured + ?2,
                 extents = extents + ?3, ideal_extents = ideal_extents + ?4
             WHERE fs_uuid = ?1",
    )?;
    stmt.execute(params![
        fs_uuid,
        Uint(measured.files),
        Uint(measured.extents),
        Uint(measured.ideal_extents)
    ])?;
    Ok(())
}

/// Records the running pass's tally as the filesystem's newest
/// measurement (a pass that mapped no file records nothing).
pub(super) fn record_pass(
    tx: &rusqlite::Connection,
    fs_uuid: FsUuid,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO fragmentation (fs_uuid, measured_at, files, extents, ideal_extents)
             SELECT fs_uuid, ?2, files_measured, extents, ideal_extents
             FROM crawl_cursors WHERE fs_uuid = ?1 AND files_measured > 0",
        params![fs_uuid, now],
    )?;
    tx.execute(
        "DELETE FROM fragmentation WHERE fs_uuid = ?1 AND id <= (
                 SELECT id FROM fragmentation WHERE fs_uuid = ?1
                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![fs_uuid, Uint(KEPT_PER_FS)],
    )?;
    Ok(())
}

impl Store {
    /// A move took `removed` extents off the file at `path` (relative to the
    /// mount point): off the newest measurement, and off the running pass
    /// if the crawl has already counted that file (if not, it will measure
    /// the file as it is now).
    pub fn extents_removed(
        &self,
        fs_uuid: FsUuid,
        path: &Path,
        removed: u64,
    ) -> Result<(), StoreError> {
        if removed == 0 {
            return Ok(());
        }
        let doing = "recording extents removed";
        let tx = self.write_tx().doing(doing)?;
        let newest = tx
            .query_row(
                "SELECT id, measured_at, files, extents, ideal_extents FROM fragmentation
                 WHERE fs_uuid = ?1 ORDER BY id DESC LIMIT 1",
                [fs_uuid],
                |row| Ok((row.get::<_, i64>("id")?, measurement_from_row(row)?)),
            )
            .optional()
            .doing(doing)?;
        if let Some((id, m)) = newest {
            tx.execute(
                "UPDATE fragmentation SET extents = ?2 WHERE id = ?1",
                params![id, Uint(m.tally.after_move(removed).extents)],
            )
            .doing(doing)?;
        }
        let pass = tx
            .query_row(
                "SELECT cursor, files_measured, extents, ideal_extents FROM crawl_cursors
                 WHERE fs_uuid = ?1 AND pass_finished_at IS NULL",
                [fs_uuid],
                |row| {
                    Ok((
                        blob_to_path(row.get("cursor")?),
                        Tally {
                            files: get_u64(row, "files_measured")?,
                            extents: get_u64(row, "extents")?,
                            ideal_extents: get_u64(row, "ideal_extents")?,
                        },
                    ))
                },
            )
            .optional()
            .doing(doing)?;
        if let Some((cursor, tally)) = pass {
            if crawl_has_passed(&cursor, path) {
                tx.execute(
                    "UPDATE crawl_cursors SET extents = ?2 WHERE fs_uuid = ?1",
                    params![fs_uuid, Uint(tally.after_move(removed).extents)],
                )
                .doing(doing)?;
            }
        }
        tx.commit().doing(doing)
    }

    /// The filesystem's newest measurement and the one before; None
    /// before its first pass ends.
    pub fn fragmentation(&self, fs_uuid: FsUuid) -> Result<Option<FsFragmentation>, StoreError> {
        let doing = "reading the fragmentation record";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT measured_at, files, extents, ideal_extents FROM fragmentation
                 WHERE fs_uuid = ?1 ORDER BY id DESC LIMIT 2",
            )
            .doing(doing)?;
        let rows = stmt
            .query_map([fs_uuid], measurement_from_row)
            .doing(doing)?;
        let mut newest = rows.collect::<rusqlite::Result<Vec<_>>>().doing(doing)?;
        let previous = (newest.len() > 1).then(|| newest.remove(1));
        Ok(newest
            .pop()
            .map(|latest| FsFragmentation { latest, previous }))
    }

    /// Counts a finished job on the local day that begins at `day` (unix
    /// seconds of its midnight).
    pub fn count_activity(
        &self,
        fs_uuid: FsUuid,
        day: i64,
        done: &Activity,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO activity (fs_uuid, day, files_defragmented, bytes_moved)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (fs_uuid, day) DO UPDATE SET
                     files_defragmented = files_defragmented + excluded.files_defragmented,
                     bytes_moved = bytes_moved + excluded.bytes_moved",
            )
            .doing("counting a finished job")?;
        stmt.execute(params![
            fs_uuid,
            day,
            Uint(done.files_defragmented),
            Uint(done.bytes_moved)
        ])
        .doing("counting a finished job")?;
        Ok(())
    }

    /// Each filesystem's activity on the day from `today` on, and in total.
    pub fn activity(&self, today: i64) -> Result<Vec<FsActivity>, StoreError> {
        let doing = "adding up the activity";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT fs_uuid,
                     SUM(CASE WHEN day >= ?1 THEN files_defragmented ELSE 0 END) AS files_today,
                     SUM(CASE WHEN day >= ?1 THEN bytes_moved ELSE 0 END) AS bytes_today,
                     SUM(files_defragmented) AS files_total,
                     SUM(bytes_moved) AS bytes_total
                 FROM activity GROUP BY fs_uuid ORDER BY fs_uuid",
            )
            .doing(doing)?;
        let rows = stmt
            .query_map([today], |row| {
                Ok(FsActivity {
                    fs_uuid: row.get("fs_uuid")?,
                    today: Activity {
                        files_defragmented: get_u64(row, "files_today")?,
                        bytes_moved: get_u64(row, "bytes_today")?,
                    },
                    total: Activity {
                        files_defragmented: get_u64(row, "files_total")?,
                        bytes_moved: get_u64(row, "bytes_total")?,
                    },
                })
            })
            .doing(doing)?;
        rows.collect::<rusqlite::Result<_>>().doing(doing)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{memory_store, FS_A, FS_B};
    use super::*;

    fn tally(extents: u64, ideal: u64) -> Tally {
        Tally::of_file(extents, ideal)
    }

    #[test]
    fn the_score_is_the_share_of_excess_extents() {
        assert_eq!(Tally::default().score(), 0.0);
        assert_eq!(tally(10, 10).score(), 0.0);
        assert_eq!(tally(100, 25).score(), 75.0);
        assert_eq!(tally(100, 25).excess_extents(), 75);
        // A move never takes a file below its ideal.
        assert_eq!(tally(100, 25).after_move(50).extents, 50);
        assert_eq!(tally(100, 25).after_move(500).extents, 25);
    }

    #[test]
    fn the_crawl_has_passed_what_sorts_up_to_its_cursor() {
        assert!(crawl_has_passed(Path::new("b/c"), Path::new("a/z")));
        assert!(crawl_has_passed(Path::new("b/c"), Path::new("b/c")));
        // Component by component: a/z comes before a.txt (a < a.txt).
        assert!(crawl_has_passed(Path::new("a.txt"), Path::new("a/z")));
        assert!(!crawl_has_passed(Path::new("b/c"), Path::new("b/d")));
        assert!(!crawl_has_passed(Path::new(""), Path::new("a")));
    }

    #[test]
    fn a_pass_records_its_tally_when_it_ends() {
        let (store, _) = memory_store(0);
        assert_eq!(store.fragmentation(FS_A).unwrap(), None);
        store.start_pass(FS_A, 100).unwrap();
        store
            .save_crawl_cursor(FS_A, Path::new("a"), 1, &tally(40, 10))
            .unwrap();
        store
            .save_crawl_cursor(FS_A, Path::new("b"), 2, &tally(60, 10))
            .unwrap();
        // A file it could not map counts as assessed, not measured.
        store
            .save_crawl_cursor(FS_A, Path::new("c"), 3, &Tally::default())
            .unwrap();
        assert_eq!(
            store.fragmentation(FS_A).unwrap(),
            None,
            "not before the end"
        );
        store.finish_pass(FS_A, 200).unwrap();
        let f = store.fragmentation(FS_A).unwrap().unwrap();
        assert_eq!(f.latest.measured_at, 200);
        assert_eq!(
            f.latest.tally,
            Tally {
                files: 2,
                extents: 100,
                ideal_extents: 20
            }
        );
        assert_eq!(f.previous, None);

        // The next pass starts from zero; the record before is kept.
        store.start_pass(FS_A, 300).unwrap();
        store
            .save_crawl_cursor(FS_A, Path::new("a"), 1, &tally(30, 10))
            .unwrap();
        store.finish_pass(FS_A, 400).unwrap();
        let f = store.fragmentation(FS_A).unwrap().unwrap();
        assert_eq!((f.latest.tally.extents, f.latest.tally.files), (30, 1));
        assert_eq!(f.previous.map(|p| p.measured_at), Some(200));
        assert_eq!(store.fragmentation(FS_B).unwrap(), None);
    }

    #[test]
    fn a_move_lowers_the_record_and_what_the_pass_has_counted() {
        let (store, _) = memory_store(0);
        store.start_pass(FS_A, 100).unwrap();
        store
            .save_crawl_cursor(FS_A, Path::new("m"), 1, &tally(100, 10))
            .unwrap();
        store.finish_pass(FS_A, 200).unwrap();
        store.start_pass(FS_A, 300).unwrap();
        store
            .save_crawl_cursor(FS_A, Path::new("m"), 1, &tally(100, 10))
            .unwrap();
        // "a" is behind the cursor: the pass counted it, so the move counts.
        store.extents_removed(FS_A, Path::new("a"), 30).unwrap();
        // "z" is ahead: the pass will measure it as the move left it.
        store.extents_removed(FS_A, Path::new("z"), 20).unwrap();
        store.finish_pass(FS_A, 400).unwrap();
        let f = store.fragmentation(FS_A).unwrap().unwrap();
        assert_eq!(f.latest.tally.extents, 70, "the pass: 100 - 30");
        assert_eq!(
            f.previous.map(|p| p.tally.extents),
            Some(50),
            "the record then: 100 - 30 - 20"
        );
        // After the pass, moves lower the newest record.
        store.extents_removed(FS_A, Path::new("q"), 5).unwrap();
        let f = store.fragmentation(FS_A).unwrap().unwrap();
        assert_eq!(f.latest.tally.extents, 65);
    }

    #[test]
    fn only_the_newest_records_are_kept() {
        let (store, _) = memory_store(0);
        for pass in 0..(KEPT_PER_FS as i64 + 5) {
            store.start_pass(FS_A, pass * 10).unwrap();
            store
                .save_crawl_cursor(FS_A, Path::new("a"), 1, &tally(2, 1))
                .unwrap();
            store.finish_pass(FS_A, pass * 10 + 5).unwrap();
        }
        let kept: u64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM fragmentation", [], |row| {
                row.get::<_, Uint>(0)
            })
            .unwrap()
            .0;
        assert_eq!(kept, KEPT_PER_FS);
    }

    #[test]
    fn activity_adds_up_by_day_and_in_total() {
        let (store, _) = memory_store(0);
        let one = |bytes| Activity {
            files_defragmented: 1,
            bytes_moved: bytes,
        };
        store.count_activity(FS_A, 0, &one(100)).unwrap();
        store.count_activity(FS_A, 86_400, &one(10)).unwrap();
        store.count_activity(FS_A, 86_400, &one(5)).unwrap();
        store
            .count_activity(FS_B, 86_400, &Activity::default())
            .unwrap();
        let activity = store.activity(86_400).unwrap();
        assert_eq!(
            activity,
            [
                FsActivity {
                    fs_uuid: FS_A,
                    today: Activity {
                        files_defragmented: 2,
                        bytes_moved: 15
                    },
                    total: Activity {
                        files_defragmented: 3,
                        bytes_moved: 115
                    },
                },
                FsActivity {
                    fs_uuid: FS_B,
                    today: Activity::default(),
                    total: Activity::default(),
                },
            ]
        );
    }
}
