//! Files the service is done with until someone writes them again: moved,
//! or judged not worth a move (no gain possible, no contiguous space). A
//! file settled here and unchanged since (same mtime and size) is not
//! considered again on a write event: the service's own opens for writing
//! and moves raise such events, and without this record it would chase
//! its own tail. Also the time up to which every write on a filesystem is
//! known to have been seen, so that a restart catches up from there.

use rusqlite::{params, OptionalExtension};

use super::codec::Uint;
use super::error::Doing;
use super::{FileId, Store, StoreError};
use crate::filesystem::FsUuid;

/// How many settled files are remembered; the oldest are forgotten past
/// it (forgetting one costs at most one more look at it).
pub const MAX_SETTLED: u64 = 200_000;

/// Why a file is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettledWhy {
    /// Moved: nothing to do until it is written again.
    Moved,
    /// Not worth a move now (no gain possible, free space too scattered):
    /// a crawl pass looks again, since free space changes.
    NoGain,
}

impl SettledWhy {
    fn as_str(self) -> &'static str {
        match self {
            SettledWhy::Moved => "moved",
            SettledWhy::NoGain => "no_gain",
        }
    }
}

/// A settled file as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The file's mtime (unix seconds) and size when it was settled.
    pub mtime: i64,
    pub size_bytes: u64,
    pub why: SettledWhy,
    pub settled_at: i64,
}

impl Settled {
    /// Whether the file, now at `mtime` and `size_bytes`, is as it was.
    pub fn unchanged(&self, mtime: i64, size_bytes: u64) -> bool {
        self.mtime == mtime && self.size_bytes == size_bytes
    }
}

impl Store {
    /// Records that the service is done with `file`, as it was at `mtime`
    /// and `size_bytes` before the service opened it.
    pub fn settle(
        &self,
        file: &FileId,
        mtime: i64,
        size_bytes: u64,
        why: SettledWhy,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO settled (fs_uuid, ino, generation, mtime, size_bytes, why, settled_at,
                                      subvolume)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (fs_uuid, subvolume, ino, generation) DO UPDATE SET
                     mtime = excluded.mtime, size_bytes = excluded.size_bytes,
                     why = excluded.why, settled_at = excluded.settled_at",
                params![
                    file.fs_uuid,
                    Uint(file.ino),
                    file.generation,
                    mtime,
                    Uint(size_bytes),
                    why.as_str(),
                    self.now(),
                    Uint(file.subvolume)
                ],
            )
            .doing("recording a settled file")?;
        Ok(())
    }

    /// What is recorded of `file`, if it is settled.
    pub fn settled(&self, file: &FileId) -> Result<Option<Settled>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT mtime, size_bytes, why, settled_at FROM settled
                 WHERE fs_uuid = ?1 AND ino = ?2 AND generation = ?3 AND subvolume = ?4",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        file.fs_uuid,
                        Uint(file.ino),
                        file.generation,
                        Uint(file.subvolume)
                    ],
                    |row| {
                        let why: String = row.get(2)?;
                        Ok(Settled {
                            mtime: row.get(0)?,
                            size_bytes: row.get::<_, Uint>(1)?.0,
                            why: if why == "moved" {
                                SettledWhy::Moved
                            } else {
                                SettledWhy::NoGain
                            },
                            settled_at: row.get(3)?,
                        })
                    },
                )
                .optional()
            })
            .doing("reading a settled file")
    }

    /// Forgets the oldest settled files past `keep`.
    pub fn prune_settled(&self, keep: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM settled WHERE rowid IN
                     (SELECT rowid FROM settled ORDER BY settled_at DESC LIMIT -1 OFFSET ?1)",
                [Uint(keep)],
            )
            .doing("pruning settled files")?;
        Ok(())
    }

    /// Every write on `uuid` before this unix time has been seen (and its
    /// file considered, or settled); None before the first mark.
    pub fn tracked_until(&self, uuid: FsUuid) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT tracked_until FROM filesystems WHERE uuid = ?1",
                [uuid],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .doing("reading when writes were last tracked")
    }

    pub fn set_tracked_until(&self, uuid: FsUuid, until: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE filesystems SET tracked_until = ?2 WHERE uuid = ?1",
                params![uuid, until],
            )
            .doing("recording when writes were last tracked")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{file, memory_store, FS_A};
    use super::*;

    #[test]
    fn a_settled_file_is_unchanged_until_its_mtime_or_size_changes() {
        let (store, clock) = memory_store(100);
        let f = file(FS_A, 12);
        assert_eq!(store.settled(&f).unwrap(), None);
        store.settle(&f, 50, 4096, SettledWhy::Moved).unwrap();
        let s = store.settled(&f).unwrap().unwrap();
        assert_eq!(s.why, SettledWhy::Moved);
        assert_eq!(s.settled_at, 100);
        assert!(s.unchanged(50, 4096));
        assert!(!s.unchanged(51, 4096));
        assert!(!s.unchanged(50, 8192));
        // Settling again replaces the record.
        clock.set(300);
        store.settle(&f, 60, 4096, SettledWhy::NoGain).unwrap();
        let s = store.settled(&f).unwrap().unwrap();
        assert_eq!(
            (s.mtime, s.why, s.settled_at),
            (60, SettledWhy::NoGain, 300)
        );
        // Another generation of the same inode number is another file.
        let mut reused = f.clone();
        reused.generation += 1;
        assert_eq!(store.settled(&reused).unwrap(), None);
    }

    #[test]
    fn only_the_newest_settled_files_are_kept() {
        let (store, clock) = memory_store(100);
        for ino in 0..10 {
            clock.set(100 + i64::try_from(ino).unwrap());
            store
                .settle(&file(FS_A, ino), 1, 1, SettledWhy::Moved)
                .unwrap();
        }
        store.prune_settled(4).unwrap();
        let kept: Vec<u64> = (0..10)
            .filter(|&ino| store.settled(&file(FS_A, ino)).unwrap().is_some())
            .collect();
        assert_eq!(kept, [6, 7, 8, 9]);
    }

    #[test]
    fn tracked_until_is_kept_per_filesystem() {
        let (store, _) = memory_store(100);
        assert_eq!(store.tracked_until(FS_A).unwrap(), None);
        store
            .upsert_filesystem(FS_A, std::path::Path::new("/srv"))
            .unwrap();
        assert_eq!(store.tracked_until(FS_A).unwrap(), None);
        store.set_tracked_until(FS_A, 1234).unwrap();
        assert_eq!(store.tracked_until(FS_A).unwrap(), Some(1234));
        // Seeing the filesystem again keeps the mark.
        store
            .upsert_filesystem(FS_A, std::path::Path::new("/srv"))
            .unwrap();
        assert_eq!(store.tracked_until(FS_A).unwrap(), Some(1234));
    }
}
