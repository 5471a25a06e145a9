//! The watcher: inotify on the configured `watch` trees. A file that is
//! written becomes a candidate once it has been quiet for the quiet period,
//! without waiting for the crawl. New directories are watched too; past the
//! watch budget (or the kernel's max_user_watches) the rest is left to the
//! crawl, with a log line; a queue overflow rescans the trees.
//!
//! The event loop only reads events and keeps books. Walking directories
//! (opening them, adding watches, listing them) is blocking I/O that a user
//! who renames directories in a loop can ask for thousands of times a
//! second: it runs on the watcher's own thread, a directory waiting for a
//! walk is queued once however many events name it, and overflow rescans
//! run one at a time and at most once per `RESCAN_EVERY`. So a hostile
//! workload in a watched tree cannot stall the control socket or the
//! watchdog, which share the event loop.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::watch;

use crate::crawl_cursor::{TreeCursor, Visit};
use crate::escape::escaped;
use crate::filesystem::FsUuid;
use crate::mounts::{reopen_root, Covered};

use super::candidates::{consider_file, Urgency};
use super::shared::{lock, Shared};
use super::unix_now;

/// Files seen written but not yet quiet, at most this many (the crawl
/// finds the rest).
const MAX_PENDING: usize = 100_000;
/// A directory seen created or moved in is walked this long after the
/// first event about it: the events of a burst make one walk.
const WALK_DEBOUNCE: Duration = Duration::from_millis(250);
/// Directories waiting for a walk, at most this many; past it, a rescan
/// covers them.
const MAX_QUEUED_WALKS: usize = 10_000;
/// Overflow rescans start at most this often.
const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// One watched tree.
#[derive(Debug, Clone)]
pub struct Tree {
    pub fs: Covered,
    pub path: PathBuf,
}

/// A directory: its filesystem's uuid and its path below the mount point.
type DirKey = (FsUuid, PathBuf);

/// A watched directory: its filesystem and its path below the mount point.
#[derive(Debug, Clone)]
struct WatchedDir {
    uuid: FsUuid,
    rel: PathBuf,
}

/// What the event loop and the walker thread share. Held for a few hash
/// operations or one inotify_add_watch, never across a walk.
#[derive(Default)]
struct Books {
    dirs: HashMap<WatchDescriptor, WatchedDir>,
    exhausted: bool,
    /// (filesystem uuid, path below its mount point) -> last write seen.
    pending: HashMap<DirKey, Instant>,
    /// Directories queued for a walk and not yet started.
    queued: HashSet<DirKey>,
}

/// What became of a request to walk a directory.
#[derive(Debug, PartialEq, Eq)]
enum Queued {
    /// New: send it to the walker.
    New,
    /// Already waiting: the walk to come covers this event too.
    Already,
    /// Too many waiting: a rescan is needed instead.
    Full,
}

impl Books {
    fn mark(&mut self, uuid: FsUuid, rel: PathBuf, now: Instant) {
        if self.pending.len() < MAX_PENDING {
            self.pending.insert((uuid, rel), now);
        }
    }

    fn queue_walk(&mut self, key: &DirKey) -> Queued {
        if self.queued.contains(key) {
            Queued::Already
        } else if self.queued.len() >= MAX_QUEUED_WALKS {
            Queued::Full
        } else {
            self.queued.insert(key.clone());
            Queued::New
        }
    }
}

/// Work for the walker thread.
enum Walk {
    /// Watch every tree; with `mark_files`, mark every file in them as
    /// written (after an overflow).
    Trees { mark_files: bool },
    /// Watch a directory that was created or moved in, and everything below
    /// it, and mark its files, not before `due`.
    Dir { key: DirKey, due: Instant },
}

/// When overflow rescans may start: one at a time, at most once per
/// `every`. An overflow while one runs or too soon after the last is not
/// lost: the rescan waits and starts when allowed.
#[derive(Debug)]
struct RescanGate {
    every: Duration,
    last_start: Option<Instant>,
    wanted: bool,
    /// The wait for the current wanted rescan has been logged.
    told: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Start a rescan now.
    Start,
    /// A rescan is wanted but must wait (said once per wait).
    Deferred,
    /// Nothing new.
    Quiet,
}

impl RescanGate {
    fn new(every: Duration) -> Self {
        RescanGate {
            every,
            last_start: None,
            wanted: false,
            told: false,
        }
    }

    /// Events were lost at `now`; `running` says whether a rescan is
    /// queued or running.
    fn want(&mut self, now: Instant, running: bool) -> Gate {
        self.wanted = true;
        self.poll(now, running)
    }

    fn poll(&mut self, now: Instant, running: bool) -> Gate {
        if !self.wanted {
            return Gate::Quiet;
        }
        let due = self
            .last_start
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due && !running {
            self.wanted = false;
            self.told = false;
            self.last_start = Some(now);
            Gate::Start
        } else if self.told {
            Gate::Quiet
        } else {
            self.told = true;
            Gate::Deferred
        }
    }
}

/// No DONT_FOLLOW: watches are added through /proc/self/fd magic links,
/// which must be followed to reach the directory already opened safely.
fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// Watches `trees` until `stop` turns true.
pub async fn run(shared: Arc<Shared>, trees: Vec<Tree>, mut stop: watch::Receiver<bool>) {
    if trees.is_empty() {
        return;
    }
    let inotify = match Inotify::init() {
        Ok(inotify) => inotify,
        Err(e) => {
            tracing::warn!("cannot start inotify ({e}); written files are found by the crawl only");
            return;
        }
    };
    let mut stream = match inotify.into_event_stream(vec![0u8; 64 * 1024]) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(
                "cannot read inotify events ({e}); written files are found by the crawl only"
            );
            return;
        }
    };
    let books = Arc::new(Mutex::new(Books::default()));
    // Set from the start: the first walk of the trees is running.
    let rescanning = Arc::new(AtomicBool::new(true));
    let stopped = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (walks, jobs) = mpsc::channel();
    let walker = Walker {
        shared: Arc::clone(&shared),
        trees,
        watches: stream.watches(),
        books: Arc::clone(&books),
        budget: shared.settings().watch.max_watches.get() as usize,
        rescanning: Arc::clone(&rescanning),
        stop: Arc::clone(&stopped.0),
    };
    if let Err(e) = std::thread::Builder::new()
        .name("watch-walk".into())
        .spawn(move || walker.run(jobs))
    {
        tracing::warn!(
            "cannot start the watcher's thread ({e}); written files are found by the crawl only"
        );
        return;
    }
    let mut watcher = Watcher {
        shared,
        books,
        walks,
        rescanning,
        gate: RescanGate::new(RESCAN_EVERY),
    };
    watcher.send(Walk::Trees { mark_files: false });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(event)) => {
                    watcher.handle(event.wd, event.mask, event.name);
                    // The stream hands out a whole buffer of events without
                    // yielding: give the control socket and the status tick
                    // their turn during a storm.
                    tokio::task::coop::consume_budget().await;
                }
                Some(Err(e)) => {
                    tracing::warn!("inotify read failed ({e}); written files are found by the crawl only");
                    return;
                }
                None => return,
            },
            _ = tick.tick() => {
                watcher.flush_quiet();
                watcher.poll_rescan();
            }
            _ = stop.changed() => return,
        }
    }
}

/// Tells the walker thread to stop when the watcher ends, however it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The event loop's side: reads events, keeps books, sends walks.
struct Watcher {
    shared: Arc<Shared>,
    books: Arc<Mutex<Books>>,
    walks: mpsc::Sender<Walk>,
    /// A rescan (or the first walk) is queued or running on the walker.
    rescanning: Arc<AtomicBool>,
    gate: RescanGate,
}

impl Watcher {
    fn send(&self, walk: Walk) {
        // The walker only ends when told to stop, or on a panic, after
        // which the crawl still finds everything.
        if self.walks.send(walk).is_err() {
            tracing::debug!("the watcher's thread is gone; not walking");
        }
    }

    fn handle(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<OsString>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.want_rescan("inotify queue overflowed");
            return;
        }
        let mut books = lock(&self.books);
        if mask.contains(EventMask::IGNORED) {
            books.dirs.remove(&wd);
            return;
        }
        let (Some(dir), Some(name)) = (books.dirs.get(&wd), name) else {
            return;
        };
        let rel = dir.rel.join(name);
        if mask.contains(EventMask::ISDIR) {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                let key = (dir.uuid, rel);
                match books.queue_walk(&key) {
                    Queued::New => {
                        drop(books);
                        self.send(Walk::Dir {
                            key,
                            due: Instant::now() + WALK_DEBOUNCE,
                        });
                    }
                    Queued::Already => {}
                    Queued::Full => {
                        drop(books);
                        self.want_rescan("too many new directories wait to be watched");
                    }
                }
            }
            return;
        }
        let uuid = dir.uuid;
        books.mark(uuid, rel, Instant::now());
    }

    /// Asks for a rescan because events were lost (`why`).
    fn want_rescan(&mut self, why: &str) {
        let running = self.rescanning.load(Ordering::Acquire);
        match self.gate.want(Instant::now(), running) {
            Gate::Start => {
                tracing::warn!("{why}; rescanning the watched trees");
                self.start_rescan();
            }
            Gate::Deferred => tracing::warn!(
                "{why}; a rescan is running or ran less than {} s ago, so the next one waits (at most one every {} s)",
                RESCAN_EVERY.as_secs(),
                RESCAN_EVERY.as_secs()
            ),
            Gate::Quiet => tracing::debug!("{why}; a rescan is already waiting"),
        }
    }

    /// Starts a rescan that had to wait, once it may.
    fn poll_rescan(&mut self) {
        let running = self.rescanning.load(Ordering::Acquire);
        if self.gate.poll(Instant::now(), running) == Gate::Start {
            tracing::info!("rescanning the watched trees (deferred after lost inotify events)");
            self.start_rescan();
        }
    }

    fn start_rescan(&self) {
        self.rescanning.store(true, Ordering::Release);
        self.send(Walk::Trees { mark_files: true });
    }

    /// Considers the files that have been quiet for the quiet period.
    fn flush_quiet(&mut self) {
        let quiet = self.shared.settings().policy.quiet_period;
        let now = Instant::now();
        let ready: Vec<DirKey> = {
            let mut books = lock(&self.books);
            let ready: Vec<DirKey> = books
                .pending
                .iter()
                .filter(|(_, seen)| now.duration_since(**seen) >= quiet)
                .map(|(k, _)| k.clone())
                .collect();
            for key in &ready {
                books.pending.remove(key);
            }
            ready
        };
        if ready.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        // Measuring files is blocking I/O: off the event loop.
        tokio::task::spawn_blocking(move || {
            for (uuid, rel) in ready {
                let Some(fs) = shared.covered_fs(uuid) else {
                    continue;
                };
                let Some(root) = reopen_root(&fs) else {
                    continue;
                };
                let outcome = consider_file(
                    &shared,
                    &fs,
                    root.as_fd(),
                    &rel,
                    Urgency::Written,
                    unix_now(),
                );
                tracing::debug!("watch: {} quiet, considered: {outcome:?}", escaped(&rel));
            }
        });
    }
}

/// The walker thread's side: opens directories (only with the openat2
/// helpers, never through a symlink or across a mount), adds watches and
/// lists them.
struct Walker {
    shared: Arc<Shared>,
    trees: Vec<Tree>,
    watches: Watches,
    books: Arc<Mutex<Books>>,
    budget: usize,
    rescanning: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Walker {
    /// Walks what it is sent until the watcher ends.
    fn run(mut self, jobs: mpsc::Receiver<Walk>) {
        while let Ok(job) = jobs.recv() {
            if self.stopped() {
                return;
            }
            match job {
                Walk::Trees { mark_files } => {
                    self.watch_all_trees(mark_files);
                    self.rescanning.store(false, Ordering::Release);
                }
                Walk::Dir { key, due } => {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    // From here on an event about it queues a new walk:
                    // this one may already have listed the directory.
                    lock(&self.books).queued.remove(&key);
                    self.walk_new_dir(&key);
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn watch_all_trees(&mut self, mark_files: bool) {
        for tree in self.trees.clone() {
            let Some(root) = reopen_root(&tree.fs) else {
                continue;
            };
            let Ok(rel) = tree.path.strip_prefix(&tree.fs.mount_point) else {
                continue;
            };
            self.watch_tree(tree.fs.uuid, root.as_fd(), rel, mark_files);
        }
        if !self.stopped() {
            let watched = lock(&self.books).dirs.len();
            tracing::info!("watching {watched} directories for writes");
        }
    }

    fn walk_new_dir(&mut self, (uuid, rel): &DirKey) {
        let Some(fs) = self.shared.covered_fs(*uuid) else {
            return;
        };
        let Some(root) = reopen_root(&fs) else { return };
        self.watch_tree(fs.uuid, root.as_fd(), rel, true);
    }

    /// Watches `rel` and every directory below it; with `mark_files`, also
    /// marks every file in them as written (after an overflow, or for a
    /// directory that appeared with files already in it).
    fn watch_tree(&mut self, uuid: FsUuid, root: BorrowedFd<'_>, rel: &Path, mark_files: bool) {
        let mut walk = TreeCursor::below(rel.to_path_buf());
        let mut files = Vec::new();
        while let Some(visit) = walk.next_entry(root) {
            if self.stopped() {
                return;
            }
            match visit {
                Visit::Dir { rel, dir } => {
                    // A directory's files are marked together, under one lock.
                    self.mark_written(uuid, &mut files);
                    if !self.add_watch(dir.as_fd(), uuid, &rel) {
                        return;
                    }
                }
                Visit::File(rel) if mark_files => files.push(rel),
                Visit::File(_) => {}
            }
        }
        self.mark_written(uuid, &mut files);
    }

    fn mark_written(&self, uuid: FsUuid, files: &mut Vec<PathBuf>) {
        if files.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut books = lock(&self.books);
        for file in files.drain(..) {
            books.mark(uuid, file, now);
        }
    }

    /// Adds a watch on an open directory (through /proc/self/fd, so it is
    /// exactly that directory whatever its name became). False once the
    /// budget or the kernel's limit is reached.
    fn add_watch(&mut self, dir: BorrowedFd<'_>, uuid: FsUuid, rel: &Path) -> bool {
        // Held across the add: the event loop must not see the watch's
        // IN_IGNORED before its entry is in the books.
        let mut books = lock(&self.books);
        if books.exhausted {
            return false;
        }
        if books.dirs.len() >= self.budget {
            books.exhausted = true;
            tracing::warn!(
                "watch budget of {} directories reached (watch.max_watches); directories past it are covered by the crawl only",
                self.budget
            );
            return false;
        }
        let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        match self.watches.add(&proc_path, mask()) {
            Ok(wd) => {
                books.dirs.insert(
                    wd,
                    WatchedDir {
                        uuid,
                        rel: rel.to_path_buf(),
                    },
                );
                true
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                books.exhausted = true;
                tracing::warn!(
                    "the kernel's inotify watch limit is reached (fs.inotify.max_user_watches) after {} directories; \
                     raise it with sysctl to watch more; the rest is covered by the crawl only",
                    books.dirs.len()
                );
                false
            }
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}", escaped(&rel));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rel: &str) -> DirKey {
        (FsUuid::for_test("uuid"), PathBuf::from(rel))
    }

    #[test]
    fn a_directory_waiting_for_a_walk_is_queued_once() {
        let mut books = Books::default();
        assert_eq!(books.queue_walk(&key("a")), Queued::New);
        assert_eq!(books.queue_walk(&key("a")), Queued::Already);
        assert_eq!(books.queue_walk(&key("b")), Queued::New);
        books.queued.remove(&key("a"));
        assert_eq!(books.queue_walk(&key("a")), Queued::New);
    }

    #[test]
    fn too_many_waiting_walks_ask_for_a_rescan() {
        let mut books = Books::default();
        for i in 0..MAX_QUEUED_WALKS {
            assert_eq!(books.queue_walk(&key(&format!("d{i}"))), Queued::New);
        }
        assert_eq!(books.queue_walk(&key("one more")), Queued::Full);
        assert_eq!(books.queue_walk(&key("d0")), Queued::Already);
    }

    #[test]
    fn pending_files_are_bounded() {
        let mut books = Books::default();
        let now = Instant::now();
        for i in 0..MAX_PENDING + 10 {
            books.mark(
                FsUuid::for_test("uuid"),
                PathBuf::from(format!("f{i}")),
                now,
            );
        }
        assert_eq!(books.pending.len(), MAX_PENDING);
    }

    #[test]
    fn the_first_rescan_starts_at_once() {
        let mut gate = RescanGate::new(Duration::from_secs(10));
        assert_eq!(gate.poll(Instant::now(), false), Gate::Quiet);
        assert_eq!(gate.want(Instant::now(), false), Gate::Start);
        assert_eq!(gate.poll(Instant::now(), true), Gate::Quiet);
    }

    #[test]
    fn a_rescan_too_soon_after_the_last_waits_and_is_said_once() {
        let every = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut gate = RescanGate::new(every);
        assert_eq!(gate.want(t0, false), Gate::Start);
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(gate.want(t1, false), Gate::Deferred);
        assert_eq!(gate.want(t1, false), Gate::Quiet);
        assert_eq!(gate.poll(t0 + Duration::from_secs(9), false), Gate::Quiet);
        assert_eq!(gate.poll(t0 + every, false), Gate::Start);
        assert_eq!(gate.poll(t0 + every, false), Gate::Quiet);
    }

    #[test]
    fn at_most_one_rescan_runs() {
        let every = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut gate = RescanGate::new(every);
        // An overflow during the first walk of the trees.
        assert_eq!(gate.want(t0, true), Gate::Deferred);
        assert_eq!(gate.poll(t0 + Duration::from_secs(60), true), Gate::Quiet);
        assert_eq!(gate.poll(t0 + Duration::from_secs(61), false), Gate::Start);
        // Long after, but the previous rescan still runs.
        let t2 = t0 + Duration::from_secs(200);
        assert_eq!(gate.want(t2, true), Gate::Deferred);
        assert_eq!(gate.poll(t2, false), Gate::Start);
    }
}
