//! Builders shared by the store's tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::{FileId, Finished, HistoryOutcome, NewJob, Store};
use crate::filesystem::FsUuid;

/// 0b5e4c1a-aaaa-4d6e-9f00-000000000001
pub const FS_A: FsUuid = FsUuid([
    0x0b, 0x5e, 0x4c, 0x1a, 0xaa, 0xaa, 0x4d, 0x6e, 0x9f, 0x00, 0, 0, 0, 0, 0, 0x01,
]);
/// 0b5e4c1a-bbbb-4d6e-9f00-000000000002
pub const FS_B: FsUuid = FsUuid([
    0x0b, 0x5e, 0x4c, 0x1a, 0xbb, 0xbb, 0x4d, 0x6e, 0x9f, 0x00, 0, 0, 0, 0, 0, 0x02,
]);

/// A clock the test sets by hand.
#[derive(Clone, Default)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn drive(&self, store: Store) -> Store {
        let now = Arc::clone(&self.0);
        store.with_clock(move || now.load(Ordering::SeqCst))
    }
}

pub fn file(fs: FsUuid, ino: u64) -> FileId {
    FileId {
        subvolume: 0,
        fs_uuid: fs,
        ino,
        generation: 7,
    }
}

/// A job that may be taken at once.
pub fn new_job(fs: FsUuid, ino: u64, priority: f64) -> NewJob {
    NewJob {
        file: file(fs, ino),
        path_hint: PathBuf::from(format!("data/file-{ino}")),
        size_bytes: 64 << 20,
        extents_before: 40,
        ideal_extents: 1,
        score: 0.9,
        priority,
        not_before: 0,
    }
}

pub fn filesystems(list: &[FsUuid]) -> Vec<FsUuid> {
    list.to_vec()
}

pub fn defragmented(bytes_moved: u64) -> Finished {
    Finished {
        outcome: HistoryOutcome::Defragmented,
        reason_code: None,
        reason: None,
        extents_before: None,
        extents_after: Some(1),
        bytes_moved,
    }
}

/// An in-memory store whose clock reads `now` until set otherwise.
pub fn memory_store(now: i64) -> (Store, TestClock) {
    let clock = TestClock::default();
    clock.set(now);
    (clock.drive(Store::open_in_memory().unwrap()), clock)
}
