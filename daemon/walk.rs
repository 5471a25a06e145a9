//! Finding the files under an operator-given path without being tricked:
//! directories are opened relative to their parent's fd with no symlink
//! followed and no mount crossed; entries are visited in name order (so a
//! walk is repeatable); lost+found at a filesystem's root is left alone.
//! A walk can also spread the files over several threads and still hand
//! back what they found in that order.
//!
//! Those rules live in two functions, `enter_dir` and `list_dir`, and every
//! walk in defragd goes through them: the commands' trees and the service's
//! catch-up here, the crawl and the watcher's trees in `crawl_cursor`.

use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use nix::dir::{Dir, Type};
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, SFlag};

use crate::escape::escaped;
use crate::outcome::SkipReason;
use crate::sys;
use crate::target::Target;

/// What the walk found.
#[derive(Debug)]
pub enum Found {
    File(Target),
    /// An operator-given path that is refused outright (a symlink).
    Refused {
        path: PathBuf,
        reason: SkipReason,
    },
}

/// How deep to go below a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only the files directly in it.
    Shallow,
    /// The whole tree, within one filesystem.
    Recursive,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: sys::Error },
}

/// Calls `visit` for every file at or under `root`.
pub fn walk(root: &Path, depth: Depth, visit: &mut dyn FnMut(Found)) -> Result<(), WalkError> {
    match start(root)? {
        Start::One(found) => visit(found),
        Start::Tree { dir, dev } => walk_tree(Arc::new(dir), root.to_path_buf(), dev, depth, visit),
    }
    Ok(())
}

/// Where a walk starts: one file (or a refusal), or a directory's tree.
enum Start {
    One(Found),
    Tree { dir: OwnedFd, dev: u64 },
}

fn start(root: &Path) -> Result<Start, WalkError> {
    let meta = std::fs::symlink_metadata(root).map_err(|source| WalkError::Stat {
        path: root.into(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Ok(Start::One(Found::Refused {
            path: root.into(),
            reason: SkipReason::Symlink,
        }));
    }
    if !meta.is_dir() {
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = root
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_else(|| root.as_os_str().to_os_string());
        let dir = sys::open_dir(parent).map_err(|source| WalkError::Open {
            path: parent.into(),
            source,
        })?;
        return Ok(Start::One(Found::File(Target {
            dir: Arc::new(dir),
            name,
            path: root.into(),
            expected_dev: None,
            expected_identity: None,
        })));
    }
    let dir = sys::open_dir(root).map_err(|source| WalkError::Open {
        path: root.into(),
        source,
    })?;
    let dev = sys::stat(dir.as_fd())
        .map_err(|source| WalkError::Open {
            path: root.into(),
            source,
        })?
        .st_dev;
    Ok(Start::Tree { dir, dev })
}

/// One directory being walked: its fd, its path and the entries left.
struct Level {
    dir: Arc<OwnedFd>,
    path: PathBuf,
    entries: std::vec::IntoIter<(OsString, EntryKind)>,
}

/// What a directory entry is, as far as a walk cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File,
    Other,
}

fn walk_tree(
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    dev: u64,
    depth: Depth,
    visit: &mut dyn FnMut(Found),
) {
    // An explicit stack: a hostile tree can be deeper than the thread's stack.
    let mut stack = Vec::new();
    if let Some(level) = open_level(root, root_path) {
        stack.push(level);
    }
    while let Some(level) = stack.last_mut() {
        let Some((name, kind)) = level.entries.next() else {
            stack.pop();
            continue;
        };
        let path = level.path.join(&name);
        match kind {
            EntryKind::File => visit(Found::File(Target {
                dir: Arc::clone(&level.dir),
                name,
                path,
                expected_dev: Some(dev),
                expected_identity: None,
            })),
            EntryKind::Directory if depth == Depth::Recursive => {
                if let Some(dir) = enter_dir(level.dir.as_fd(), Path::new(&name), &path) {
                    if let Some(next) = open_level(Arc::new(dir), path) {
                        stack.push(next);
                    }
                }
            }
            EntryKind::Directory | EntryKind::Other => {}
        }
    }
}

/// Opens the directory `rel` below `base` (`base` itself when `rel` is
/// empty) to walk it, by the rules of every walk: no symlink followed and
/// no mount crossed anywhere on the way (the kernel refuses both). `shown`
/// names it in the log. None when it is not to be walked.
pub fn enter_dir(base: BorrowedFd<'_>, rel: &Path, shown: &Path) -> Option<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    match sys::open_dir_beneath(base, rel) {
        Ok(dir) => Some(dir),
        Err(sys::Error::CrossesMount) => {
            tracing::debug!("{}: a mount point, not crossed", escaped(shown));
            None
        }
        Err(sys::Error::Symlink) => {
            tracing::debug!("{}: a symlink, not followed", escaped(shown));
            None
        }
        // Deleted or renamed since its parent was listed.
        Err(sys::Error::NotFound) => {
            tracing::debug!("{}: gone before it was walked", escaped(shown));
            None
        }
        Err(e) => {
            tracing::warn!("{}: cannot open directory: {e}", escaped(shown));
            None
        }
    }
}

/// The entries a walk visits in the open directory `dir`, sorted by name
/// bytes: all but . and .., and but lost+found when `dir` is the root of a
/// mount (e2fsck's or xfs_repair's, never defragd's; by name and place,
/// as every filesystem type that has one keeps it there). `shown` names it
/// in the log. None when it cannot be read.
pub fn list_dir(dir: &OwnedFd, shown: &Path) -> Option<Vec<(OsString, EntryKind)>> {
    let mut entries = match read_entries(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("{}: cannot read directory: {e}", escaped(shown));
            return None;
        }
    };
    // A directory whose mount status cannot be read is taken as a root:
    // leaving one lost+found alone is the safe side.
    let at_fs_root = sys::is_mount_root(dir.as_fd()).unwrap_or(true);
    entries.retain(|(name, _)| walked(name, at_fs_root));
    Some(entries)
}

/// Whether a walk visits the entry `name` of a directory, which may be a
/// filesystem's root.
fn walked(name: &OsStr, in_fs_root: bool) -> bool {
    !(in_fs_root && name.as_bytes() == b"lost+found")
}

/// Reads a directory's entries, sorted by name.
fn open_level(dir: Arc<OwnedFd>, path: PathBuf) -> Option<Level> {
    let entries = list_dir(&dir, &path)?;
    Some(Level {
        dir,
        path,
        entries: entries.into_iter(),
    })
}

/// Reads a directory's entries (without . and ..), sorted by name bytes.
fn read_entries(dir: &OwnedFd) -> nix::Result<Vec<(OsString, EntryKind)>> {
    // fdopendir takes ownership of its fd and moves its offset: give it a
    // fresh one of the same directory.
    let own = nix::fcntl::openat(
        dir.as_fd(),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut handle = Dir::from_fd(own)?;
    let mut entries = Vec::new();
    for entry in handle.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(Type::Directory) => EntryKind::Directory,
            Some(Type::File) => EntryKind::File,
            Some(_) => EntryKind::Other,
            None => kind_by_stat(dir, name),
        };
        entries.push((name.to_os_string(), kind));
    }
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}

/// For filesystems that do not report entry types.
fn kind_by_stat(dir: &OwnedFd, name: &OsStr) -> EntryKind {
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => EntryKind::Directory,
            SFlag::S_IFREG => EntryKind::File,
            _ => EntryKind::Other,
        },
        Err(_) => EntryKind::Other,
    }
}

/// Calls `work` for every file at or under `root` on up to `threads`
/// threads at once, each with its own state made by `init`, and returns
/// what it returned in the order `walk` visits the files. Directories are
/// opened and read by the same rules as `walk`.
pub fn walk_parallel<S, T, I, W>(
    root: &Path,
    depth: Depth,
    threads: NonZeroUsize,
    init: I,
    work: W,
) -> Result<Vec<T>, WalkError>
where
    T: Send,
    I: Fn() -> S + Sync,
    W: Fn(&mut S, Found) -> T + Sync,
{
    let (dir, dev) = match start(root)? {
        Start::One(found) => return Ok(vec![work(&mut init(), found)]),
        Start::Tree { dir, dev } => (dir, dev),
    };
    let jobs = Jobs::new(Job::Read {
        dir: Arc::new(dir),
        path: root.to_path_buf(),
        key: Arc::from([]),
    });
    let tree = Tree { dev, depth };
    let worker = || {
        let mut state = init();
        let mut found = Vec::new();
        while let Some(job) = jobs.next() {
            tree.run(job, &jobs, &mut |key, f| {
                found.push((key, work(&mut state, f)))
            });
        }
        found
    };
    let mut all = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads.get())
            .filter_map(|n| {
                std::thread::Builder::new()
                    .name(format!("walk-{n}"))
                    .spawn_scoped(scope, worker)
                    .inspect_err(|e| tracing::debug!("walking on fewer threads: {e}"))
                    .ok()
            })
            .collect();
        let mut all = worker();
        for helper in helpers {
            match helper.join() {
                Ok(found) => all.extend(found),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    all.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// Where an entry comes in `walk`'s order: the index of each directory on
/// the way down from the root, then the entry's own index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    dir: Arc<[u32]>,
    entry: u32,
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let a = self.dir.iter().chain(std::iter::once(&self.entry));
        a.cmp(other.dir.iter().chain(std::iter::once(&other.entry)))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// How many files of one directory make one job: enough to pay for the
/// queue, few enough that a huge directory is shared among the threads.
const FILES_PER_JOB: usize = 256;

/// A piece of a parallel walk.
enum Job {
    /// Read an open directory, queue its files and subdirectories.
    Read {
        dir: Arc<OwnedFd>,
        path: PathBuf,
        key: Arc<[u32]>,
    },
    /// Open the subdirectory `name` of `parent` and read it. Opened only
    /// when its turn comes, so that queued directories hold no fd.
    Open {
        parent: Arc<OwnedFd>,
        name: OsString,
        path: PathBuf,
        key: Arc<[u32]>,
    },
    /// Visit some files of one directory.
    Visit {
        dir: Arc<OwnedFd>,
        path: Arc<Path>,
        key: Arc<[u32]>,
        files: Vec<(u32, OsString)>,
    },
}

/// The jobs left, and how many are being done: the walk is over when
/// none is left and none is being done (a job being done may add more).
struct Jobs {
    state: Mutex<(Vec<Job>, usize)>,
    changed: Condvar,
}

impl Jobs {
    fn new(first: Job) -> Self {
        Jobs {
            state: Mutex::new((vec![first], 0)),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<Job>, usize)> {
        // A panicking job leaves nothing half-done in the queue itself.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job (the last queued: the walk goes depth first, so that
    /// few directories are open at once), or None when the walk is over.
    fn next(&self) -> Option<Running<'_>> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.0.pop() {
                state.1 += 1;
                return Some(Running {
                    jobs: self,
                    job: Some(job),
                });
            }
            if state.1 == 0 {
                return None;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn add(&self, more: Vec<Job>) {
        if !more.is_empty() {
            self.lock().0.extend(more);
            self.changed.notify_all();
        }
    }
}

/// A job being done; when dropped (done, or its thread panicked), the
/// others are told, so that none waits for it for ever.
struct Running<'a> {
    jobs: &'a Jobs,
    job: Option<Job>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.jobs.lock();
        state.1 -= 1;
        if state.1 == 0 {
            self.jobs.changed.notify_all();
        }
    }
}

/// What every job of one walk shares.
struct Tree {
    dev: u64,
    depth: Depth,
}

impl Tree {
    fn run(&self, mut running: Running<'_>, jobs: &Jobs, visit: &mut dyn FnMut(Key, Found)) {
        let Some(job) = running.job.take() else {
            return;
        };
        match job {
            Job::Open {
                parent,
                name,
                path,
                key,
            } => {
                if let Some(dir) = enter_dir(parent.as_fd(), Path::new(&name), &path) {
                    drop(parent);
                    jobs.add(self.read(Arc::new(dir), path, key));
                }
            }
            Job::Read { dir, path, key } => jobs.add(self.read(dir, path, key)),
            Job::Visit {
                dir,
                path,
                key,
                files,
            } => {
                for (entry, name) in files {
                    let found = Found::File(Target {
                        dir: Arc::clone(&dir),
                        path: path.join(&name),
                        name,
                        expected_dev: Some(self.dev),
                        expected_identity: None,
                    });
                    let key = Key {
                        dir: Arc::clone(&key),
                        entry,
                    };
                    visit(key, found);
                }
            }
        }
    }

    /// The jobs for one directory's entries: its files in batches, its
    /// subdirectories one each.
    fn read(&self, dir: Arc<OwnedFd>, path: PathBuf, key: Arc<[u32]>) -> Vec<Job> {
        let Some(entries) = list_dir(&dir, &path) else {
            return Vec::new();
        };
        let mut jobs = Vec::new();
        let mut files = Vec::new();
        for (entry, (name, kind)) in (0u32..).zip(entries) {
            match kind {
                EntryKind::File => files.push((entry, name)),
                EntryKind::Directory if self.depth == Depth::Recursive => {
                    let child: Arc<[u32]> = key.iter().copied().chain([entry]).collect();
                    jobs.push(Job::Open {
                        parent: Arc::clone(&dir),
                        path: path.join(&name),
                        name,
                        key: child,
                    });
                }
                EntryKind::Directory | EntryKind::Other => {}
            }
        }
        // Queued last, so done first: this directory's files while it is
        // open and its inodes are warm, then its subdirectories.
        let path: Arc<Path> = Arc::from(path);
        let mut files = files.into_iter().peekable();
        while files.peek().is_some() {
            jobs.push(Job::Visit {
                dir: Arc::clone(&dir),
                path: Arc::clone(&path),
                key: Arc::clone(&key),
                files: files.by_ref().take(FILES_PER_JOB).collect(),
            });
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths `walk` visits, in its order.
    fn serial(root: &Path, depth: Depth) -> Vec<PathBuf> {
        let mut seen = Vec::new();
        walk(root, depth, &mut |found| {
            if let Found::File(t) = found {
                seen.push(t.path);
            }
        })
        .expect("walk");
        seen
    }

    fn parallel(root: &Path, depth: Depth, threads: usize) -> Vec<PathBuf> {
        let threads = NonZeroUsize::new(threads).expect("threads");
        walk_parallel(
            root,
            depth,
            threads,
            || (),
            |_, found| match found {
                Found::File(t) => Some(t.path),
                Found::Refused { .. } => None,
            },
        )
        .expect("walk_parallel")
        .into_iter()
        .flatten()
        .collect()
    }

    #[test]
    fn a_parallel_walk_visits_what_walk_visits_in_the_same_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // Files and directories interleaved by name, a directory larger
        // than one job, deep nesting, and entries that are not files.
        for d in ["a", "b/c/d", "b/e", "m", "z/big"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "0", "a/x", "b/a", "b/c/d/f", "b/c/g", "b/f", "l", "m/q", "zz",
        ] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        for i in 0..(FILES_PER_JOB * 3 + 7) {
            std::fs::write(root.join(format!("z/big/{i:05}")), b"x").expect("write");
        }
        std::os::unix::fs::symlink("b", root.join("c-link")).expect("symlink");
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRUSR).expect("mkfifo");

        let expected = serial(root, Depth::Recursive);
        assert_eq!(expected.len(), 9 + FILES_PER_JOB * 3 + 7);
        for threads in [1, 2, 5] {
            assert_eq!(parallel(root, Depth::Recursive, threads), expected);
        }
        assert_eq!(
            parallel(root, Depth::Shallow, 3),
            serial(root, Depth::Shallow)
        );
    }

    #[test]
    fn a_parallel_walk_of_one_file_or_a_symlink_is_one_visit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("f", &link).expect("symlink");
        let one = NonZeroUsize::MIN;
        let visits = |path: &Path| {
            walk_parallel(
                path,
                Depth::Recursive,
                one,
                || (),
                |_, found| match found {
                    Found::File(t) => format!("file {}", t.path.display()),
                    Found::Refused { path, reason } => {
                        format!("refused {} {reason}", path.display())
                    }
                },
            )
            .expect("walk_parallel")
        };
        assert_eq!(visits(&file), [format!("file {}", file.display())]);
        let refused = visits(&link);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].starts_with("refused "), "{refused:?}");
    }

    #[test]
    fn lost_and_found_is_left_alone_only_at_a_filesystems_root() {
        let lf = OsStr::new("lost+found");
        assert!(!walked(lf, true));
        assert!(walked(lf, false), "a lost+found deeper down is anyone's");
        assert!(walked(OsStr::new("data"), true));
        // A temporary directory is no mount's root: its lost+found is listed.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("lost+found")).expect("mkdir");
        let fd = sys::open_dir(dir.path()).expect("open");
        let listed = list_dir(&fd, dir.path()).expect("list");
        assert_eq!(
            listed,
            [(OsString::from("lost+found"), EntryKind::Directory)]
        );
    }

    #[test]
    fn a_symlink_or_a_mount_point_is_not_entered() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink("real", dir.path().join("link")).expect("symlink");
        let fd = sys::open_dir(dir.path()).expect("open");
        assert!(enter_dir(fd.as_fd(), Path::new("real"), Path::new("real")).is_some());
        assert!(enter_dir(fd.as_fd(), Path::new(""), Path::new(".")).is_some());
        assert!(enter_dir(fd.as_fd(), Path::new("link"), Path::new("link")).is_none());
        assert!(enter_dir(fd.as_fd(), Path::new("link/."), Path::new("link")).is_none());
        // /proc is a mount of its own wherever Linux runs.
        let slash = sys::open_dir(Path::new("/")).expect("open /");
        assert!(enter_dir(slash.as_fd(), Path::new("proc"), Path::new("/proc")).is_none());
    }

    #[test]
    fn the_commands_walk_does_not_follow_a_symlinked_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), b"x").expect("write");
        std::os::unix::fs::symlink("sub", dir.path().join("link")).expect("symlink");
        assert_eq!(
            serial(dir.path(), Depth::Recursive),
            [dir.path().join("sub/f")]
        );
    }

    #[test]
    fn keys_order_a_directorys_entries_around_its_subdirectories() {
        let key = |dir: &[u32], entry| Key {
            dir: Arc::from(dir),
            entry,
        };
        // Entry 1 of the root comes before what is inside directory 2,
        // which comes before entry 3 of the root.
        assert!(key(&[], 1) < key(&[2], 0));
        assert!(key(&[2], 7) < key(&[], 3));
        assert!(key(&[2, 0], 9) < key(&[2], 1));
    }
}
