//! Whole-filesystem write tracking: one fanotify group, one mark per
//! covered filesystem, so every file written anywhere on it becomes a
//! candidate once it has been quiet for the quiet period, however many
//! files and directories there are and with nothing to configure.
//!
//! Events name files by handle; a file is reached again only through its
//! handle (`candidates::consider_handle`). Events the service itself
//! causes (its opens for writing, its moves) carry its pid and are left
//! out, so it never chases its own tail. Where events were lost (the
//! kernel's queue overflowed, or the service was not running), a stat-only
//! scan finds the files changed since the last write known to be seen.
//!
//! Where fanotify cannot be had (no CAP_SYS_ADMIN, a filesystem without
//! file handles, a btrfs subvolume other than the top level), that
//! filesystem falls back to inotify on its `watch` trees (the watcher) and
//! the crawl. A btrfs top level's mark sees the writes of every subvolume:
//! those in another covered subvolume are handed to it
//! (`candidates::consider_handle`), which keeps its own record of up to
//! when writes were seen and is caught up from its own mount like a marked
//! filesystem.
//!
//! The event loop only reads events and keeps books; measuring files and
//! scanning run off it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::escape::escaped;
use crate::filesystem::FsUuid;
use crate::mounts::{reopen_root, Covered};
use crate::sys::{fs_id, Event, Fanotify, FanotifyError, FsId};

use super::candidates::{consider_file, consider_handle, Considered, Urgency};
use super::catch_up;
use super::pending::{Key, Noted, Pending, Written};
use super::shared::{lock, Shared};
use super::unix_now;

/// How writes are found on one covered filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// One fanotify mark: every write on the whole filesystem.
    Fanotify,
    /// fanotify could not be had (`why`): inotify on the `watch` trees.
    Inotify { why: String },
    /// fanotify could not be had (`why`) and no `watch` tree is set:
    /// the background crawl only.
    CrawlOnly { why: String },
    /// A btrfs subvolume the kernel will not mark on its own (EXDEV),
    /// whose writes the top level's mark at `top` sees and hands over.
    /// Writes made while the service was down are left to the crawl: the
    /// catch-up scan runs from the top level's mount only.
    ThroughTopLevel { top: PathBuf },
}

impl Tracking {
    /// A stable word for scripts and metrics.
    pub fn mode(&self) -> &'static str {
        match self {
            Tracking::Fanotify | Tracking::ThroughTopLevel { .. } => "fanotify",
            Tracking::Inotify { .. } => "inotify",
            Tracking::CrawlOnly { .. } => "crawl",
        }
    }

    /// Why fanotify is not used, or not with a mark of its own, where it
    /// is not.
    pub fn why(&self) -> Option<String> {
        match self {
            Tracking::Fanotify => None,
            Tracking::Inotify { why } | Tracking::CrawlOnly { why } => Some(why.clone()),
            Tracking::ThroughTopLevel { top } => Some(format!(
                "a btrfs subvolume: its writes are seen through the top level's mark at {}",
                escaped(top)
            )),
        }
    }

    /// Whether writes anywhere on the filesystem are seen as they happen.
    pub fn sees_whole_filesystem(&self) -> bool {
        matches!(self, Tracking::Fanotify | Tracking::ThroughTopLevel { .. })
    }

    /// The fallback for a filesystem where fanotify failed with `why`.
    pub fn fallback(why: String, has_watch_trees: bool) -> Self {
        if has_watch_trees {
            Tracking::Inotify { why }
        } else {
            Tracking::CrawlOnly { why }
        }
    }
}

/// How often the books are looked at: quiet files considered, catch-ups
/// started.
const TICK: Duration = Duration::from_secs(1);
/// How often the point up to which writes are seen is saved.
const SAVE_SEEN_EVERY: Duration = Duration::from_secs(30);
/// Catch-up scans of one filesystem start at most this often: a flood
/// that overflows the queue again and again makes one scan per interval.
const CATCH_UP_EVERY: Duration = Duration::from_secs(10);
/// Events are read at most this often. In between, the kernel merges the
/// writes to one file into the one event already queued for it, so a file
/// written thousands of times a second costs one event per read, for the
/// writer (no new event to allocate) and for the service alike. Half a
/// second is little beside the quiet period (bench/tracking: a flood of
/// 10,000 writes/s to 1,000 files cost the service 5.1% of a core read as
/// it came, 4.8% read every 0.1 s).
const READ_EVERY: Duration = Duration::from_millis(500);
/// The read buffer: the kernel hands out whole events, up to this much at a time.
const READ_BUFFER: usize = 256 * 1024;

/// Catch-up scans wanted and running, by filesystem uuid.
#[derive(Debug, Default)]
struct CatchUps {
    /// Wanted: files changed since this unix time.
    wanted: HashMap<FsUuid, i64>,
    /// Running: since this unix time.
    running: HashMap<FsUuid, i64>,
    last_start: HashMap<FsUuid, Instant>,
}

impl CatchUps {
    /// Asks for a scan of `uuid` from `since` (the earliest wins).
    fn want(&mut self, uuid: FsUuid, since: i64) {
        let at = self.wanted.entry(uuid).or_insert(since);
        *at = (*at).min(since);
    }

    /// The scans that may start now.
    fn due(&mut self, now: Instant) -> Vec<(FsUuid, i64)> {
        let due: Vec<(FsUuid, i64)> = self
            .wanted
            .iter()
            .filter(|(uuid, _)| !self.running.contains_key(*uuid))
            .filter(|(uuid, _)| {
                self.last_start
                    .get(*uuid)
                    .is_none_or(|last| now.saturating_duration_since(*last) >= CATCH_UP_EVERY)
            })
            .map(|(uuid, since)| (*uuid, *since))
            .collect();
        for (uuid, since) in &due {
            self.wanted.remove(uuid);
            self.running.insert(*uuid, *since);
            self.last_start.insert(*uuid, now);
        }
        due
    }

    /// The earliest point a wanted or running scan starts from.
    fn since(&self, uuid: FsUuid) -> Option<i64> {
        let wanted = self.wanted.get(&uuid).copied();
        let running = self.running.get(&uuid).copied();
        wanted.into_iter().chain(running).min()
    }

    fn forget(&mut self, uuid: FsUuid) {
        self.wanted.remove(&uuid);
    }
}

/// What the event loop, the syncs and the scans share.
#[derive(Debug, Default)]
struct Books {
    /// Marked filesystems: fanotify's id -> uuid.
    marks: HashMap<FsId, FsUuid>,
    /// btrfs subvolumes whose writes come through their top level's mark:
    /// subvolume -> top level. Their events wait under the top level's
    /// uuid until they are quiet.
    through: HashMap<FsUuid, FsUuid>,
    pending: Pending,
    catch_ups: CatchUps,
}

impl Books {
    /// Every write on `uuid` before this unix time has been dealt with.
    fn seen_until(&self, uuid: FsUuid, now_unix: i64) -> i64 {
        // A subvolume's writes wait under its top level's uuid, and those
        // its own catch-up found under its own.
        let via = self.through.get(&uuid).copied().unwrap_or(uuid);
        let pending = self
            .pending
            .seen_until(uuid, now_unix)
            .min(self.pending.seen_until(via, now_unix));
        self.catch_ups
            .since(uuid)
            .map_or(pending, |since| since.min(pending))
    }

    /// Every filesystem whose writes are tracked: marked, or seen through
    /// a marked top level.
    fn tracked(&self) -> Vec<FsUuid> {
        self.marks
            .values()
            .chain(self.through.keys())
            .copied()
            .collect()
    }

    /// `uuid` and the subvolumes whose writes come through its mark: the
    /// filesystems whose events are lost with its own.
    fn seen_through(&self, uuid: FsUuid) -> Vec<FsUuid> {
        let subvolumes = self.through.iter().filter(|(_, top)| **top == uuid);
        std::iter::once(uuid)
            .chain(subvolumes.map(|(sub, _)| *sub))
            .collect()
    }
}

/// The fanotify group, when it could be had, and its books.
pub struct Tracker {
    group: Result<Arc<Fanotify>, FanotifyError>,
    books: Arc<Mutex<Books>>,
}

impl Tracker {
    /// Creates the group (once per service: marks come and go with the
    /// covered filesystems, the group and its queue stay).
    pub fn new() -> Self {
        let group = Fanotify::init().map(Arc::new);
        if let Err(e) = &group {
            tracing::warn!("whole-filesystem write tracking is off: {e}");
        }
        Tracker {
            group,
            books: Arc::new(Mutex::new(Books::default())),
        }
    }

    /// Marks the covered filesystems not marked yet and forgets the ones
    /// no longer covered; says for each how its writes are found.
    pub fn sync(&self, shared: &Shared) {
        let covered = shared.covered();
        let settings = shared.settings();
        let has_trees = |fs: &Covered| {
            settings
                .filesystems
                .iter()
                .any(|f| f.path == fs.mount_point && !f.watch.is_empty())
        };
        let mut books = lock(&self.books);
        let gone: Vec<(FsId, FsUuid)> = books
            .marks
            .iter()
            .filter(|(_, uuid)| !covered.contains_key(*uuid))
            .map(|(id, uuid)| (*id, *uuid))
            .collect();
        for (id, uuid) in gone {
            books.marks.remove(&id);
            books.pending.forget(uuid);
            books.catch_ups.forget(uuid);
            shared.forget_tracking(uuid);
        }
        let gone_through: Vec<FsUuid> = books
            .through
            .keys()
            .filter(|uuid| !covered.contains_key(*uuid))
            .copied()
            .collect();
        for uuid in gone_through {
            books.through.remove(&uuid);
            books.catch_ups.forget(uuid);
            shared.forget_tracking(uuid);
        }
        // btrfs top levels first: a subvolume's writes may be seen through
        // its top level's mark.
        let mut units: Vec<&Covered> = covered.values().collect();
        units.sort_by_key(|fs| fs.subvolume);
        for fs in units {
            if books.marks.values().any(|uuid| *uuid == fs.uuid) {
                continue;
            }
            let tracking = match self.mark(fs) {
                Ok(id) => {
                    books.marks.insert(id, fs.uuid);
                    self.start_from(shared, fs, &mut books);
                    Tracking::Fanotify
                }
                Err(why) => match marked_top_level(fs, &covered, &books) {
                    Some(top) => {
                        if books.through.insert(fs.uuid, top.uuid).is_none() {
                            self.start_from(shared, fs, &mut books);
                        }
                        Tracking::ThroughTopLevel {
                            top: top.mount_point.clone(),
                        }
                    }
                    None => {
                        books.through.remove(&fs.uuid);
                        Tracking::fallback(why, has_trees(fs))
                    }
                },
            };
            let known = shared.tracking(fs.uuid);
            if known != tracking {
                log_tracking(fs, &tracking);
            }
            shared.set_tracking(fs.uuid, tracking);
        }
    }

    fn mark(&self, fs: &Covered) -> Result<FsId, String> {
        let group = self.group.as_ref().map_err(ToString::to_string)?;
        let root = reopen_root(fs).ok_or_else(|| "its mount point cannot be opened".to_string())?;
        let id = fs_id(root.as_fd()).map_err(|e| format!("statfs failed: {e}"))?;
        group.mark_filesystem(root.as_fd()).map_err(|e| match e {
            // Linux (6.18 here) refuses whole-filesystem marks on a btrfs
            // subvolume other than the top level: its f_fsid is not the
            // filesystem's.
            FanotifyError::FilesystemUnsupported(nix::errno::Errno::EXDEV)
                if fs.subvolume > crate::mounts::TOP_LEVEL_SUBVOLUME =>
            {
                format!(
                    "fanotify cannot mark a btrfs subvolume other than the top level (EXDEV); \
                     this is subvolume {}",
                    fs.subvolume
                )
            }
            other => other.to_string(),
        })?;
        Ok(id)
    }

    /// Where writes were last seen up to on `fs` (before a restart, or an
    /// unmount), catches up from there; the first time, starts the record.
    fn start_from(&self, shared: &Shared, fs: &Covered, books: &mut Books) {
        let now = unix_now();
        let until = shared.store().tracked_until(fs.uuid);
        match until {
            Ok(Some(until)) => books.catch_ups.want(fs.uuid, until),
            Ok(None) => {
                if let Err(e) = shared.store().set_tracked_until(fs.uuid, now) {
                    tracing::warn!("cannot record write tracking's start: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot read when writes were last tracked: {e}"),
        }
    }

    /// Records up to when writes were seen (at a clean stop: the next start
    /// catches up from there).
    pub fn save_seen(&self, shared: &Shared) {
        save_seen(shared, &self.books);
    }

    /// Runs the event loop until `stop`; returns at once where there is no group.
    pub async fn run(&self, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        let Ok(group) = &self.group else {
            let _ = stop.changed().await;
            return;
        };
        // SAFETY: the AsyncFd owns an Arc of the group, so the fd stays open
        // and the same until the AsyncFd drops it.
        let registered = unsafe {
            AsyncFd::register_with_interest(
                GroupFd(Arc::clone(group)),
                tokio::io::Interest::READABLE,
            )
        };
        let fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("cannot poll the fanotify group ({e}); written files are found by the crawl only");
                return;
            }
        };
        let mut loop_ = EventLoop {
            shared,
            books: Arc::clone(&self.books),
            me: i32::try_from(std::process::id()).unwrap_or(-1),
            buf: vec![0u8; READ_BUFFER],
            last_read_unix: unix_now(),
            last_saved: Instant::now(),
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        loop {
            tokio::select! {
                ready = fd.readable() => match ready {
                    Ok(mut guard) => {
                        let since = last_read.elapsed();
                        if since < READ_EVERY {
                            tokio::time::sleep(READ_EVERY - since).await;
                        }
                        last_read = Instant::now();
                        // A storm of events must not starve the control
                        // socket and the watchdog, which share this thread.
                        while !loop_.drain(group) {
                            tokio::task::coop::consume_budget().await;
                        }
                        guard.clear_ready();
                    }
                    Err(e) => {
                        tracing::warn!("fanotify polling failed ({e}); written files are found by the crawl only");
                        return;
                    }
                },
                _ = tick.tick() => loop_.tick(),
                _ = stop.changed() => {
                    loop_.save_seen();
                    return;
                }
            }
        }
    }
}

/// The covered, marked top level of the btrfs filesystem whose subvolume
/// `fs` is, if any: its mark sees `fs`'s writes.
fn marked_top_level<'a>(
    fs: &Covered,
    covered: &'a HashMap<FsUuid, Covered>,
    books: &Books,
) -> Option<&'a Covered> {
    if fs.subvolume <= crate::mounts::TOP_LEVEL_SUBVOLUME {
        return None;
    }
    covered.values().find(|top| {
        top.subvolume == crate::mounts::TOP_LEVEL_SUBVOLUME
            && top.info.uuid == fs.info.uuid
            && books.marks.values().any(|uuid| *uuid == top.uuid)
    })
}

fn log_tracking(fs: &Covered, tracking: &Tracking) {
    let at = escaped(&fs.mount_point);
    match tracking {
        Tracking::Fanotify => {
            tracing::info!("{at}: tracking writes on the whole filesystem (fanotify)")
        }
        Tracking::Inotify { why } => tracing::warn!(
            "{at}: cannot track writes on the whole filesystem: {why}; tracking the `watch` trees with inotify, the crawl finds the rest"
        ),
        Tracking::CrawlOnly { why } => tracing::warn!(
            "{at}: cannot track writes on the whole filesystem: {why}; written files are found by the crawl only \
             (list trees in `watch` for inotify there)"
        ),
        Tracking::ThroughTopLevel { top } => tracing::info!(
            "{at}: tracking writes through the top level's mark at {} (fanotify cannot mark a btrfs \
             subvolume on its own)",
            escaped(top)
        ),
    }
}

/// The group's fd, for the reactor.
struct GroupFd(Arc<Fanotify>);

impl AsRawFd for GroupFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct EventLoop {
    shared: Arc<Shared>,
    books: Arc<Mutex<Books>>,
    /// The service's own pid: its events are its own opens and moves.
    me: i32,
    buf: Vec<u8>,
    /// When events were last read (unix seconds): after an overflow,
    /// events since then may have been lost.
    last_read_unix: i64,
    last_saved: Instant,
}

impl EventLoop {
    /// Reads one buffer of events; true once the queue is empty.
    fn drain(&mut self, group: &Fanotify) -> bool {
        let events = match group.read(&mut self.buf) {
            Ok(events) => events,
            Err(nix::errno::Errno::EINTR) => return false,
            Err(e) => {
                tracing::warn!("reading fanotify events failed: {e}");
                return true;
            }
        };
        if events.is_empty() {
            return true;
        }
        let (now, now_unix) = (Instant::now(), unix_now());
        let mut books = lock(&self.books);
        let mut lost: HashSet<FsUuid> = HashSet::new();
        for event in events {
            match event {
                Event::Written { pid, .. } if pid == self.me => {}
                Event::Written { fs, handle, .. } => {
                    let Some(uuid) = books.marks.get(&fs).cloned() else {
                        continue;
                    };
                    self.shared.metrics.write_events.inc();
                    if books
                        .pending
                        .note((uuid, Written::Handle(handle)), now, now_unix)
                        == Noted::Full
                    {
                        lost.extend(books.seen_through(uuid));
                    }
                }
                Event::Overflow => lost.extend(books.tracked()),
            }
        }
        for uuid in lost {
            // Said once per catch-up: a flood overflows the queue again and again.
            if books.catch_ups.since(uuid).is_none() {
                let at = self.shared.covered_fs(uuid).map_or_else(
                    || uuid.to_string(),
                    |fs| escaped(&fs.mount_point).to_string(),
                );
                tracing::warn!(
                    "{at}: write events were lost (the kernel's event queue overflowed, or too many \
                     files wait); scanning for files changed since then"
                );
            }
            books.catch_ups.want(uuid, self.last_read_unix);
        }
        self.last_read_unix = now_unix;
        false
    }

    fn tick(&mut self) {
        self.flush_quiet();
        self.start_catch_ups();
        if self.last_saved.elapsed() >= SAVE_SEEN_EVERY {
            self.save_seen();
        }
    }

    fn save_seen(&mut self) {
        self.last_saved = Instant::now();
        save_seen(&self.shared, &self.books);
    }

    /// Considers the files that have been quiet for the quiet period.
    fn flush_quiet(&mut self) {
        let quiet = self.shared.settings().policy.quiet_period;
        let ready = lock(&self.books).pending.take_quiet(Instant::now(), quiet);
        if ready.is_empty() {
            return;
        }
        let (shared, books) = (Arc::clone(&self.shared), Arc::clone(&self.books));
        // Measuring files is blocking I/O: off the event loop.
        tokio::task::spawn_blocking(move || consider_all(&shared, &books, ready));
    }

    fn start_catch_ups(&mut self) {
        let due = lock(&self.books).catch_ups.due(Instant::now());
        for (uuid, since) in due {
            let Some(fs) = self.shared.covered_fs(uuid) else {
                lock(&self.books).catch_ups.running.remove(&uuid);
                continue;
            };
            self.shared.metrics.catch_ups.inc();
            let (shared, books) = (Arc::clone(&self.shared), Arc::clone(&self.books));
            let spawned = std::thread::Builder::new()
                .name("catch-up".into())
                .spawn(move || catch_up_on(&shared, &books, &fs, since));
            if let Err(e) = spawned {
                tracing::warn!(
                    "cannot start a catch-up scan ({e}); the crawl finds what was missed"
                );
                lock(&self.books).catch_ups.running.remove(&uuid);
            }
        }
    }
}

/// Records, per filesystem, up to when every write has been seen.
fn save_seen(shared: &Shared, books: &Mutex<Books>) {
    let now = unix_now();
    let seen: Vec<(FsUuid, i64)> = {
        let books = lock(books);
        books
            .tracked()
            .into_iter()
            .map(|uuid| (uuid, books.seen_until(uuid, now)))
            .collect()
    };
    let store = shared.store();
    for (uuid, until) in seen {
        if let Err(e) = store.set_tracked_until(uuid, until) {
            tracing::warn!("cannot record up to when writes were tracked: {e}");
        }
    }
}

/// Measures each file and queues those worth it.
fn consider_all(shared: &Shared, books: &Mutex<Books>, ready: Vec<Key>) {
    for (uuid, written) in ready {
        let Some(fs) = shared.covered_fs(uuid) else {
            continue;
        };
        let Some(root) = reopen_root(&fs) else {
            continue;
        };
        let now = unix_now();
        let outcome = match &written {
            Written::Handle(handle) => consider_handle(shared, &fs, root.as_fd(), handle, now),
            Written::Path(rel) => {
                consider_file(shared, &fs, root.as_fd(), rel, Urgency::Written, now)
            }
        };
        tracing::debug!("written file quiet, considered: {outcome:?}");
        // Written during its own move: looked at again once the move is
        // over (the job left as it was cannot take this write in).
        if outcome == Considered::Running {
            let (at, at_unix) = (Instant::now(), unix_now());
            lock(books).pending.note((uuid, written), at, at_unix);
        }
    }
}

/// Scans `fs` for files changed since `since` and marks them written at
/// their change time, so they wait out the rest of their quiet period.
fn catch_up_on(shared: &Shared, books: &Mutex<Books>, fs: &Covered, since: i64) {
    let started = Instant::now();
    let stop = || shared.shutting_down() || shared.covered_fs(fs.uuid).is_none();
    let scanned = catch_up::changed_since(fs, since, &stop, &mut |rel, changed_at| {
        let now_unix = unix_now();
        let ago = Duration::from_secs(u64::try_from(now_unix - changed_at).unwrap_or(0));
        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        let noted =
            lock(books)
                .pending
                .note((fs.uuid, Written::Path(rel)), at, changed_at.min(now_unix));
        if noted == Noted::Full {
            tracing::debug!("catch-up: too many files wait; the crawl finds the rest");
        }
    });
    lock(books).catch_ups.running.remove(&fs.uuid);
    tracing::info!(
        "{}: caught up on writes since {}: {} of {} files changed, in {:.1} s",
        escaped(&fs.mount_point),
        chrono::DateTime::from_timestamp(since, 0)
            .map_or_else(|| since.to_string(), |t| t.to_rfc3339()),
        scanned.changed,
        scanned.files,
        started.elapsed().as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_starts_at_once_then_at_most_once_per_interval() {
        let mut c = CatchUps::default();
        let t0 = Instant::now();
        c.want(FsUuid::for_test("a"), 100);
        c.want(FsUuid::for_test("a"), 90);
        assert_eq!(c.due(t0), vec![(FsUuid::for_test("a"), 90)]);
        // Wanted again while it runs: waits for it to end.
        c.want(FsUuid::for_test("a"), 120);
        assert!(c.due(t0 + CATCH_UP_EVERY).is_empty());
        assert_eq!(c.since(FsUuid::for_test("a")), Some(90));
        c.running.remove(&FsUuid::for_test("a"));
        assert!(c.due(t0 + Duration::from_secs(1)).is_empty(), "too soon");
        assert_eq!(
            c.due(t0 + CATCH_UP_EVERY),
            vec![(FsUuid::for_test("a"), 120)]
        );
        c.running.remove(&FsUuid::for_test("a"));
        assert_eq!(c.since(FsUuid::for_test("a")), None);
    }

    #[test]
    fn writes_are_seen_only_up_to_a_catch_up_still_owed() {
        let mut books = Books::default();
        assert_eq!(books.seen_until(FsUuid::for_test("a"), 1000), 1000);
        books.catch_ups.want(FsUuid::for_test("a"), 400);
        assert_eq!(books.seen_until(FsUuid::for_test("a"), 1000), 400);
        let due = books.catch_ups.due(Instant::now());
        assert_eq!(due.len(), 1);
        assert_eq!(
            books.seen_until(FsUuid::for_test("a"), 1000),
            400,
            "running counts too"
        );
        books.catch_ups.running.remove(&FsUuid::for_test("a"));
        assert_eq!(books.seen_until(FsUuid::for_test("a"), 1000), 1000);
    }

    #[test]
    fn a_subvolume_seen_through_its_top_level_keeps_its_own_record() {
        let (top, sub, other) = (
            FsUuid::for_test("top"),
            FsUuid::for_test("sub"),
            FsUuid::for_test("other"),
        );
        let mut books = Books::default();
        books.marks.insert(crate::sys::FsId([1, 2]), top);
        books.through.insert(sub, top);
        let tracked: HashSet<FsUuid> = books.tracked().into_iter().collect();
        assert_eq!(
            tracked,
            HashSet::from([top, sub]),
            "saved, and caught up after an overflow"
        );
        assert_eq!(
            books.seen_through(top).len(),
            2,
            "lost with the top level's"
        );
        assert_eq!(books.seen_through(other), vec![other]);
        // A write waiting under the top level's uuid may be the subvolume's.
        let now = Instant::now();
        books
            .pending
            .note((top, Written::Path("a".into())), now, 500);
        assert_eq!(books.seen_until(sub, 1000), 500);
        // And so may one its own catch-up found.
        books
            .pending
            .note((sub, Written::Path("b".into())), now, 400);
        assert_eq!(books.seen_until(sub, 1000), 400);
        assert_eq!(books.seen_until(top, 1000), 500);
        books.catch_ups.want(sub, 300);
        assert_eq!(books.seen_until(sub, 1000), 300);
        assert_eq!(books.seen_until(top, 1000), 500);
    }

    #[test]
    fn the_fallback_says_whether_inotify_has_trees_to_watch() {
        let why = "no CAP_SYS_ADMIN".to_string();
        assert_eq!(Tracking::fallback(why.clone(), true).mode(), "inotify");
        let crawl = Tracking::fallback(why.clone(), false);
        assert_eq!(crawl.mode(), "crawl");
        assert_eq!(crawl.why(), Some(why));
        assert_eq!(Tracking::Fanotify.why(), None);
        let through = Tracking::ThroughTopLevel {
            top: PathBuf::from("/srv"),
        };
        assert_eq!(through.mode(), "fanotify");
        assert!(through.sees_whole_filesystem() && Tracking::Fanotify.sees_whole_filesystem());
        assert!(!crawl.sees_whole_filesystem());
        assert!(through.why().is_some_and(|w| w.contains("/srv")));
    }
}
