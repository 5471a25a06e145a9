//! The watcher: inotify on the configured `watch` trees. A file that is
//! written becomes a candidate once it has been quiet for the quiet period,
//! without waiting for the crawl. New directories are watched too; past the
//! watch budget (or the kernel's max_user_watches) the rest is left to the
//! crawl, with a log line; a queue overflow rescans the trees.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::watch;

use crate::ext4;
use crate::mounts::{reopen_root, Covered};
use crate::walk::{read_entries, EntryKind};

use super::candidates::{consider_file, Urgency};
use super::shared::Shared;
use super::unix_now;

/// Files seen written but not yet quiet, at most this many (the crawl
/// finds the rest).
const MAX_PENDING: usize = 100_000;

/// One watched tree.
#[derive(Debug, Clone)]
pub struct Tree {
    pub fs: Covered,
    pub path: PathBuf,
}

/// A watched directory: its filesystem and its path below the mount point.
#[derive(Debug, Clone)]
struct WatchedDir {
    uuid: String,
    rel: PathBuf,
}

struct Watcher {
    shared: Arc<Shared>,
    trees: Vec<Tree>,
    watches: Watches,
    dirs: HashMap<WatchDescriptor, WatchedDir>,
    budget: usize,
    exhausted: bool,
    /// (filesystem uuid, path below its mount point) -> last write seen.
    pending: HashMap<(String, PathBuf), Instant>,
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
    let budget = shared.settings().watch.max_watches.get() as usize;
    let mut watcher = Watcher {
        shared,
        trees,
        watches: stream.watches(),
        dirs: HashMap::new(),
        budget,
        exhausted: false,
        pending: HashMap::new(),
    };
    watcher.watch_all_trees(false);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(event)) => watcher.handle(event.wd, event.mask, event.name),
                Some(Err(e)) => {
                    tracing::warn!("inotify read failed ({e}); written files are found by the crawl only");
                    return;
                }
                None => return,
            },
            _ = tick.tick() => watcher.flush_quiet(),
            _ = stop.changed() => return,
        }
    }
}

impl Watcher {
    fn watch_all_trees(&mut self, mark_files: bool) {
        for tree in self.trees.clone() {
            let Some(root) = reopen_root(&tree.fs) else {
                continue;
            };
            let Ok(rel) = tree.path.strip_prefix(&tree.fs.mount_point) else {
                continue;
            };
            self.watch_tree(&tree.fs, root.as_fd(), rel, mark_files);
        }
        tracing::info!("watching {} directories for writes", self.dirs.len());
    }

    /// Watches `rel` and every directory below it; with `mark_files`, also
    /// marks every file in them as written (after an overflow, or for a
    /// directory that appeared with files already in it).
    fn watch_tree(&mut self, fs: &Covered, root: BorrowedFd<'_>, rel: &Path, mark_files: bool) {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir_rel) = stack.pop() {
            let opened = if dir_rel.as_os_str().is_empty() {
                ext4::open_dir_beneath(root, Path::new("."))
            } else {
                ext4::open_dir_beneath(root, &dir_rel)
            };
            let Ok(dir) = opened else { continue };
            if !self.add_watch(dir.as_fd(), &fs.uuid, &dir_rel) {
                return;
            }
            let Ok(entries) = read_entries(&dir) else {
                continue;
            };
            for (name, kind) in entries {
                match kind {
                    EntryKind::Directory => stack.push(dir_rel.join(&name)),
                    EntryKind::File if mark_files => self.mark(&fs.uuid, dir_rel.join(&name)),
                    _ => {}
                }
            }
        }
    }

    /// Adds a watch on an open directory (through /proc/self/fd, so it is
    /// exactly that directory whatever its name became). False once the
    /// budget or the kernel's limit is reached.
    fn add_watch(&mut self, dir: BorrowedFd<'_>, uuid: &str, rel: &Path) -> bool {
        if self.exhausted {
            return false;
        }
        if self.dirs.len() >= self.budget {
            self.exhausted = true;
            tracing::warn!(
                "watch budget of {} directories reached (watch.max_watches); directories past it are covered by the crawl only",
                self.budget
            );
            return false;
        }
        let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        match self.watches.add(&proc_path, mask()) {
            Ok(wd) => {
                self.dirs.insert(
                    wd,
                    WatchedDir {
                        uuid: uuid.to_string(),
                        rel: rel.to_path_buf(),
                    },
                );
                true
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                self.exhausted = true;
                tracing::warn!(
                    "the kernel's inotify watch limit is reached (fs.inotify.max_user_watches) after {} directories; \
                     raise it with sysctl to watch more; the rest is covered by the crawl only",
                    self.dirs.len()
                );
                false
            }
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}", rel.display());
                true
            }
        }
    }

    fn mark(&mut self, uuid: &str, rel: PathBuf) {
        if self.pending.len() < MAX_PENDING {
            self.pending.insert((uuid.to_string(), rel), Instant::now());
        }
    }

    fn handle(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<OsString>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!("inotify queue overflowed; rescanning the watched trees");
            self.watch_all_trees(true);
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&wd);
            return;
        }
        let (Some(dir), Some(name)) = (self.dirs.get(&wd).cloned(), name) else {
            return;
        };
        let rel = dir.rel.join(name);
        if mask.contains(EventMask::ISDIR) {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                let Some(fs) = self.shared.covered_fs(&dir.uuid) else {
                    return;
                };
                let Some(root) = reopen_root(&fs) else { return };
                self.watch_tree(&fs, root.as_fd(), &rel, true);
            }
            return;
        }
        self.mark(&dir.uuid, rel);
    }

    /// Considers the files that have been quiet for the quiet period.
    fn flush_quiet(&mut self) {
        let quiet = self.shared.settings().policy.quiet_period;
        let now = Instant::now();
        let ready: Vec<(String, PathBuf)> = self
            .pending
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        for key in &ready {
            self.pending.remove(key);
        }
        let shared = Arc::clone(&self.shared);
        // Measuring files is blocking I/O: off the event loop.
        tokio::task::spawn_blocking(move || {
            for (uuid, rel) in ready {
                let Some(fs) = shared.covered_fs(&uuid) else {
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
                tracing::debug!("watch: {} quiet, considered: {outcome:?}", rel.display());
            }
        });
    }
}
