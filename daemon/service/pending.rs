//! Written files waiting for their quiet period, coalesced: however many
//! events name a file, it waits once, and is considered once it has been
//! quiet for the quiet period after its last write. Pure books: the clock
//! is passed in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::filesystem::FsUuid;
use crate::sys::FileHandle;

/// Written files waiting, at most this many; past it, new ones are
/// caught up by a scan of recently changed files instead.
pub const MAX_PENDING: usize = 100_000;

/// How a written file is named until it is considered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Written {
    /// By handle, from fanotify: no rename can redirect it.
    Handle(FileHandle),
    /// By path below the mount point, from a catch-up scan.
    Path(PathBuf),
}

/// A file of a filesystem (by uuid) that was written.
pub type Key = (FsUuid, Written);

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The first write since it was last considered (unix seconds): the
    /// filesystem's writes are all seen only up to the oldest of these.
    first_unix: i64,
    last: Instant,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    Pending,
    /// Too many files wait: this one was not recorded.
    Full,
}

#[derive(Debug, Default)]
pub struct Pending {
    files: HashMap<Key, Seen>,
}

impl Pending {
    /// `key` was written at `now` (`now_unix` in unix seconds).
    pub fn note(&mut self, key: Key, now: Instant, now_unix: i64) -> Noted {
        if let Some(seen) = self.files.get_mut(&key) {
            seen.last = seen.last.max(now);
            return Noted::Pending;
        }
        if self.files.len() >= MAX_PENDING {
            return Noted::Full;
        }
        self.files.insert(
            key,
            Seen {
                first_unix: now_unix,
                last: now,
            },
        );
        Noted::Pending
    }

    /// Takes the files whose last write is at least `quiet` before `now`.
    pub fn take_quiet(&mut self, now: Instant, quiet: Duration) -> Vec<Key> {
        let ready: Vec<Key> = self
            .files
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.last) >= quiet)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &ready {
            self.files.remove(key);
        }
        ready
    }

    /// Every write on `uuid` before the returned unix time has been dealt
    /// with: the oldest first write still waiting, or `now_unix`.
    pub fn seen_until(&self, uuid: FsUuid, now_unix: i64) -> i64 {
        self.files
            .iter()
            .filter(|((fs, _), _)| *fs == uuid)
            .map(|(_, seen)| seen.first_unix)
            .min()
            .map_or(now_unix, |oldest| oldest.min(now_unix))
    }

    /// Forgets a filesystem's files (it is no longer covered).
    pub fn forget(&mut self, uuid: FsUuid) {
        self.files.retain(|(fs, _), _| *fs != uuid);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.files.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(n: u8) -> Written {
        Written::Handle(FileHandle {
            handle_type: 1,
            bytes: vec![n; 8].into(),
        })
    }

    fn key(fs: &str, n: u8) -> Key {
        (FsUuid::for_test(fs), handle(n))
    }

    const QUIET: Duration = Duration::from_secs(5);

    #[test]
    fn thousands_of_writes_to_one_file_make_one_candidate_after_the_last() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        for i in 0..5000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(p.note(key("a", 1), at, 1000), Noted::Pending);
        }
        let last = t0 + Duration::from_millis(4999);
        assert!(p
            .take_quiet(last + QUIET - Duration::from_millis(1), QUIET)
            .is_empty());
        assert_eq!(p.take_quiet(last + QUIET, QUIET), vec![key("a", 1)]);
        assert!(p.is_empty());
    }

    #[test]
    fn each_file_waits_for_its_own_quiet_period() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        p.note(key("a", 1), t0, 1000);
        p.note(key("a", 2), t0 + Duration::from_secs(3), 1003);
        assert_eq!(p.take_quiet(t0 + QUIET, QUIET), vec![key("a", 1)]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.take_quiet(t0 + Duration::from_secs(8), QUIET),
            vec![key("a", 2)]
        );
    }

    #[test]
    fn writes_are_seen_up_to_the_oldest_still_waiting() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        assert_eq!(p.seen_until(FsUuid::for_test("a"), 2000), 2000);
        p.note(key("a", 1), t0, 1000);
        p.note(key("a", 2), t0, 1500);
        p.note(key("b", 1), t0, 900);
        // A later write to a waiting file does not move its first write.
        p.note(key("a", 1), t0, 1800);
        assert_eq!(p.seen_until(FsUuid::for_test("a"), 2000), 1000);
        assert_eq!(p.seen_until(FsUuid::for_test("b"), 2000), 900);
        assert_eq!(p.seen_until(FsUuid::for_test("c"), 2000), 2000);
        p.forget(FsUuid::for_test("a"));
        assert_eq!(p.seen_until(FsUuid::for_test("a"), 2000), 2000);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_books_are_bounded_and_say_when_full() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        for i in 0..MAX_PENDING {
            let written = Written::Path(PathBuf::from(format!("f{i}")));
            assert_eq!(
                p.note((FsUuid::for_test("a"), written), t0, 1),
                Noted::Pending
            );
        }
        assert_eq!(p.note(key("a", 1), t0, 1), Noted::Full);
        // A file already waiting is still noted.
        let first = (FsUuid::for_test("a"), Written::Path(PathBuf::from("f0")));
        assert_eq!(p.note(first, t0, 1), Noted::Pending);
        assert_eq!(p.len(), MAX_PENDING);
    }
}
