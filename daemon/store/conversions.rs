//! The record of conversions to extents. The kernel's EXT4_IOC_MIGRATE is
//! not crash-safe, so each one is written down before the call and marked
//! finished after it: after a crash, the unfinished ones name exactly which
//! file was being converted, and on which device `e2fsck` should run.

use std::path::{Path, PathBuf};

use rusqlite::params;

use super::codec::{blob_to_path, get_u64, path_to_blob};
use super::error::Doing;
use super::{FileId, Store, StoreError};

/// A conversion that was started and never finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub id: i64,
    pub file: FileId,
    pub path: PathBuf,
    pub device: PathBuf,
    pub started_at: i64,
}

impl Store {
    /// Writes down that `file` is about to be converted; returns the
    /// record's id for `finish_conversion`.
    pub fn begin_conversion(
        &self,
        file: &FileId,
        path: &Path,
        device: &Path,
    ) -> Result<i64, StoreError> {
        let ino = i64::try_from(file.ino).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "INSERT INTO conversions (fs_uuid, ino, generation, path, device, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    file.fs_uuid,
                    ino,
                    file.generation,
                    path_to_blob(path),
                    path_to_blob(device),
                    self.now()
                ],
            )
            .doing("recording a conversion")?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks a conversion as over (done, or refused by the kernel: either
    /// way nothing is left half-done).
    pub fn finish_conversion(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE conversions SET finished_at = ?2 WHERE id = ?1",
                params![id, self.now()],
            )
            .doing("recording the end of a conversion")?;
        Ok(())
    }

    /// Conversions a crash interrupted.
    pub fn unfinished_conversions(&self) -> Result<Vec<Unfinished>, StoreError> {
        let doing = "listing interrupted conversions";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, fs_uuid, ino, generation, path, device, started_at FROM conversions
                 WHERE finished_at IS NULL ORDER BY id",
            )
            .doing(doing)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(Unfinished {
                    id: row.get("id")?,
                    file: FileId {
                        // Conversions are ext4's: no subvolumes.
                        subvolume: 0,
                        fs_uuid: row.get("fs_uuid")?,
                        ino: get_u64(row, "ino")?,
                        generation: row.get("generation")?,
                    },
                    path: blob_to_path(row.get("path")?),
                    device: blob_to_path(row.get("device")?),
                    started_at: row.get("started_at")?,
                })
            })
            .doing(doing)?;
        rows.collect::<rusqlite::Result<_>>().doing(doing)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{file, memory_store, FS_A};
    use std::path::Path;

    #[test]
    fn an_unfinished_conversion_names_the_file_and_the_device() {
        let (store, _) = memory_store(100);
        let done = store
            .begin_conversion(&file(FS_A, 1), Path::new("a"), Path::new("/dev/x"))
            .unwrap();
        store.finish_conversion(done).unwrap();
        let open = store
            .begin_conversion(&file(FS_A, 2), Path::new("b"), Path::new("/dev/x"))
            .unwrap();
        let unfinished = store.unfinished_conversions().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].id, open);
        assert_eq!(unfinished[0].path, Path::new("b"));
        assert_eq!(unfinished[0].device, Path::new("/dev/x"));
        assert_eq!(unfinished[0].file.ino, 2);
    }
}
