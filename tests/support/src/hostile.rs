//! Helpers for the reliability suite (tests/fuzz/, tests/bad_input/,
//! tests/hostile/): fuzz seeds, failure tallies that end in one
//! `SUMMARY` line per part, an attacker process running as another user,
//! a canary filesystem that tells whether anything outside the tree under
//! test was touched, inotify open detection, and raw control-socket
//! clients.
//!
//! Like the rest of the harness, everything here undoes what it did in
//! Drop and touches only what it created itself (the attacker process is
//! stopped and reaped by its PID).

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::libc;

use super::cmd::sh;
use super::faults::print_summary;
use super::fixture::make_fragmented_files;
use super::image::{ImageSpec, LoopImage};
use super::judge::{fiemap, md5, Extent};
use super::MIB;

// ---------------------------------------------------------------------------
// Seeds.

/// The seed of a fuzz part: `DEFRAGD_FUZZ_SEED` (decimal or 0x-hex) when
/// set, so that a failure can be replayed, else one from the clock. Printed
/// either way.
pub fn fuzz_seed(part: &str) -> u64 {
    let seed = match std::env::var("DEFRAGD_FUZZ_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("DEFRAGD_FUZZ_SEED={text:?} is not a number"))
        }
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    eprintln!("{part}: seed {seed:#x} (replay with DEFRAGD_FUZZ_SEED={seed:#x})");
    seed
}

// ---------------------------------------------------------------------------
// Tallies and SUMMARY lines.

/// Counts of one part of the suite, printed as one `SUMMARY` line.
#[derive(Debug)]
pub struct Tally {
    pub part: String,
    pub seed: Option<u64>,
    pub cases: u64,
    pub faults: u64,
    failures: Vec<String>,
    failure_count: u64,
    pub notes: Vec<String>,
    /// Failures by kind (see `kind_of`), for the SUMMARY line.
    kinds: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    pub fn new(part: &str, seed: Option<u64>) -> Tally {
        Tally {
            part: part.to_string(),
            seed,
            cases: 0,
            faults: 0,
            failures: Vec::new(),
            failure_count: 0,
            notes: Vec::new(),
            kinds: std::collections::BTreeMap::new(),
        }
    }

    /// Records a failure; the first few are kept with their details.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failure_count += 1;
        if self.failures.len() < 8 {
            let what = what.into();
            eprintln!("{}: FAILURE: {what}", self.part);
            self.failures.push(what);
        }
    }

    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// Counts one failed property by its kind (`kind_of(message)`).
    pub fn kind(&mut self, message: &str) {
        *self.kinds.entry(kind_of(message)).or_default() += 1;
    }

    pub fn failures(&self) -> u64 {
        self.failure_count
    }

    /// An extra `key=value` for the SUMMARY line.
    pub fn note(&mut self, key: &str, value: impl std::fmt::Display) {
        self.notes.push(format!("{key}={value}"));
    }

    /// Prints the SUMMARY line (`SUMMARY part=.. seed=.. cases=N faults=M
    /// failures=F ...`, past the harness's capture, see `print_summary`),
    /// then fails the test if anything failed.
    pub fn finish(self) {
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(seed) = self.seed {
            fields.push(("seed", format!("{seed:#x}")));
        }
        fields.push(("cases", self.cases.to_string()));
        fields.push(("faults", self.faults.to_string()));
        fields.push(("failures", self.failure_count.to_string()));
        let extra: Vec<(String, String)> = self
            .notes
            .iter()
            .map(|n| match n.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => ("note".to_string(), n.clone()),
            })
            .collect();
        for (k, v) in &extra {
            fields.push((k.as_str(), v.clone()));
        }
        if !self.kinds.is_empty() {
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|(k, n)| format!("{n}x[{k}]"))
                .collect();
            fields.push(("failed_properties", kinds.join(",")));
        }
        print_summary(&self.part, &fields);
        assert!(
            self.failure_count == 0,
            "{}: {} failure(s); the first ones:\n  {}",
            self.part,
            self.failure_count,
            self.failures.join("\n  ")
        );
    }
}

/// A failure message without its figures: digits become N, and it ends
/// at the first ": ", '{', '(' or '['.
pub fn kind_of(message: &str) -> String {
    let end = [": ", "{", "(", "["]
        .iter()
        .filter_map(|sep| message.find(sep))
        .min()
        .unwrap_or(message.len());
    let head = &message[..end];
    let mut out = String::new();
    let mut in_number = false;
    for c in head.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// Runs `f`, turning a panic into an `Err` with its message.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silences the panic message of panics caught on purpose (by `catch`)
/// on this thread while `f` runs; other threads (other tests) keep theirs.
pub fn quiet_panics<T>(f: impl FnOnce() -> T) -> T {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    match result {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

// ---------------------------------------------------------------------------
// The unprivileged user.

/// The uid and gid the attacker runs as (`nobody` / `nogroup`).
pub const NOBODY: u32 = 65534;

/// `setpriv --reuid=65534 --regid=65534 --clear-groups PROG`.
pub fn as_nobody(prog: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", prog]);
    cmd
}

/// `setpriv --reuid=65534 --regid=65534 --groups=GID PROG`: nobody with
/// one supplementary group.
pub fn as_nobody_in_group(gid: u32, prog: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"])
        .arg(format!("--groups={gid}"))
        .arg(prog);
    cmd
}

/// chown -h UID:GID PATH (a symlink itself, not its target).
pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// chmod MODE PATH.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// Lets 65534 traverse every directory from / down to `path` that is not
/// already traversable by others (the harness's temp dirs are 0700).
pub fn open_path_for_others(path: &Path) {
    let mut p = PathBuf::new();
    for c in path.components() {
        p.push(c);
        if let Ok(m) = fs::metadata(&p) {
            if m.is_dir() && m.mode() & 0o001 == 0 {
                chmod(&p, (m.mode() & 0o7777) | 0o011);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The attacker: a forked process running as 65534 that swaps names.

/// What the attacker does with each of its pairs.
#[derive(Clone, Debug)]
pub enum Swap {
    /// renameat2(RENAME_EXCHANGE) of `a` and `b`: at every instant each
    /// name exists, as one or the other.
    Exchange { a: String, b: String },
    /// rename(name, away); rename(link, name); rename(name, link);
    /// rename(away, name): a symlink renamed over the name and back.
    RenameOver {
        name: String,
        link: String,
        away: String,
    },
}

#[repr(C)]
struct SwapShared {
    stop: AtomicU32,
    rounds: AtomicU64,
    renames: AtomicU64,
    errors: AtomicU64,
    last_errno: AtomicI32,
    ready: AtomicU32,
}

/// A process (forked from the test, then running as uid/gid 65534 with no
/// groups) that swaps names in one directory in a tight loop until dropped.
pub struct Swapper {
    pid: libc::pid_t,
    shared: *mut SwapShared,
    _dir: OwnedFd,
    started: Instant,
}

// The raw pointer is a MAP_SHARED mapping owned by this struct.
unsafe impl Send for Swapper {}

impl Swapper {
    /// Starts swapping `swaps` (names relative to `dir`) as 65534. Names
    /// must be plain file names in `dir`, which 65534 must be able to
    /// write. `symlinks` (name, target) are created first, by 65534, so
    /// the links belong to the attacker.
    pub fn start(dir: &Path, symlinks: &[(&str, &Path)], swaps: &[Swap]) -> Swapper {
        let dir_fd: OwnedFd = fs::File::open(dir)
            .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
            .into();
        let c = |s: &str| CString::new(s).expect("no NUL in a name");
        let links: Vec<(CString, CString)> = symlinks
            .iter()
            .map(|(name, target)| {
                (
                    c(name),
                    CString::new(target.as_os_str().as_bytes()).expect("no NUL"),
                )
            })
            .collect();
        // Each step: (from, to, exchange?). A round is two passes: the
        // first puts every symlink in place, the second puts every name
        // back, so each name is hostile half of the time and a round ends
        // with everything where it was.
        let mut first: Vec<(CString, CString, bool)> = Vec::new();
        let mut second: Vec<(CString, CString, bool)> = Vec::new();
        for s in swaps {
            match s {
                Swap::Exchange { a, b } => {
                    first.push((c(a), c(b), true));
                    second.push((c(a), c(b), true));
                }
                Swap::RenameOver { name, link, away } => {
                    first.push((c(name), c(away), false));
                    first.push((c(link), c(name), false));
                    second.push((c(name), c(link), false));
                    second.push((c(away), c(name), false));
                }
            }
        }
        let steps: Vec<(CString, CString, bool)> = first.into_iter().chain(second).collect();
        let size = std::mem::size_of::<SwapShared>();
        // SAFETY: an anonymous shared mapping, checked below; zeroed memory
        // is a valid SwapShared (atomics of 0).
        let shared = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(shared != libc::MAP_FAILED, "mmap for the swapper failed");
        let shared = shared.cast::<SwapShared>();
        let raw_dir = dir_fd.as_raw_fd();
        // SAFETY: after fork the child only makes raw system calls on data
        // prepared before the fork (no allocation, no locks), then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: see above; every pointer is valid for the child's life.
            unsafe { swapper_child(raw_dir, &links, &steps, &*shared) }
        }
        let me = Swapper {
            pid,
            shared,
            _dir: dir_fd,
            started: Instant::now(),
        };
        // Wait until it runs as 65534 and made its links.
        let t = Instant::now();
        loop {
            let state = me.state().ready.load(Ordering::Acquire);
            if state == 1 {
                break;
            }
            assert!(
                state != 2,
                "the swapper could not become uid 65534 or make its symlinks (errno {})",
                me.state().last_errno.load(Ordering::Relaxed)
            );
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the swapper did not start"
            );
            sleep(Duration::from_millis(2));
        }
        me
    }

    fn state(&self) -> &SwapShared {
        // SAFETY: mapped for as long as self lives.
        unsafe { &*self.shared }
    }

    /// Completed rounds over all pairs.
    pub fn rounds(&self) -> u64 {
        self.state().rounds.load(Ordering::Relaxed)
    }

    /// Successful renames.
    pub fn renames(&self) -> u64 {
        self.state().renames.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> (u64, i32) {
        (
            self.state().errors.load(Ordering::Relaxed),
            self.state().last_errno.load(Ordering::Relaxed),
        )
    }

    /// Stops the loop at the end of a round (every name back in place)
    /// and reaps the process. Returns (renames, seconds run).
    pub fn stop(mut self) -> (u64, f64) {
        self.halt();
        (self.renames(), self.started.elapsed().as_secs_f64())
    }

    fn halt(&mut self) {
        if self.pid <= 0 {
            return;
        }
        self.state().stop.store(1, Ordering::Release);
        let t = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid || r < 0 {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                // SAFETY: our own child, not yet reaped.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, &mut status, 0);
                }
                break;
            }
            sleep(Duration::from_millis(2));
        }
        self.pid = 0;
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.halt();
        // SAFETY: the mapping made in start, unmapped once.
        unsafe {
            libc::munmap(self.shared.cast(), std::mem::size_of::<SwapShared>());
        }
    }
}

/// The attacker's loop. Never returns.
unsafe fn swapper_child(
    dir: libc::c_int,
    links: &[(CString, CString)],
    steps: &[(CString, CString, bool)],
    shared: &SwapShared,
) -> ! {
    let fail = |shared: &SwapShared| -> ! {
        shared
            .last_errno
            .store(*libc::__errno_location(), Ordering::Relaxed);
        shared.ready.store(2, Ordering::Release);
        libc::_exit(2)
    };
    // Die with the test.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    // Keep nothing but `dir` and stdio. The fork copied every descriptor
    // the test process had open, those of tests running in other threads
    // too: held here, their files would keep those tests' filesystems
    // busy ("target is busy" at their unmount) for as long as this runs.
    let keep = libc::c_uint::try_from(dir).unwrap_or(0);
    if keep > 3 {
        libc::close_range(3, keep - 1, 0);
    }
    libc::close_range(keep.max(2) + 1, libc::c_uint::MAX, 0);
    let id = NOBODY;
    if libc::setgroups(0, std::ptr::null()) != 0
        || libc::setresgid(id, id, id) != 0
        || libc::setresuid(id, id, id) != 0
    {
        fail(shared);
    }
    for (name, target) in links {
        // A link left by an earlier attacker on this tree is fine.
        if libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) != 0
            && *libc::__errno_location() != libc::EEXIST
        {
            fail(shared);
        }
    }
    shared.ready.store(1, Ordering::Release);
    loop {
        if shared.stop.load(Ordering::Acquire) != 0 {
            libc::_exit(0);
        }
        for (from, to, exchange) in steps {
            let flags = if *exchange { libc::RENAME_EXCHANGE } else { 0 };
            let r = libc::renameat2(dir, from.as_ptr(), dir, to.as_ptr(), flags);
            if r == 0 {
                shared.renames.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared
                    .last_errno
                    .store(*libc::__errno_location(), Ordering::Relaxed);
            }
        }
        shared.rounds.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The canary: files outside the filesystem under test.

/// atime, mtime and ctime to the nanosecond (lstat).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Times {
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

pub fn times(path: &Path) -> Times {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    Times {
        atime: (m.atime(), m.atime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

#[derive(Clone, Debug)]
struct CanaryFile {
    path: PathBuf,
    md5: String,
    extents: Vec<Extent>,
    times: Times,
}

/// Fragmented files and directories on a filesystem of their own (another
/// loop image, mounted with strictatime so that every read and every
/// directory listing moves an atime). A tool that reaches them through a
/// symlink would move them (they are fragmented, with contiguous free space
/// beside) or at least list or read them: `check` tells.
pub struct Canary {
    img: LoopImage,
    /// `victims/` on the canary filesystem: symlinks point here.
    pub dir: PathBuf,
    files: Vec<CanaryFile>,
    dirs: Vec<(PathBuf, Times)>,
}

impl Canary {
    /// victims/dirN/bigN.bin (N = "", 2, 3, 4), victims/file.bin and
    /// victims/file2.bin, all fragmented, on a filesystem of their own.
    pub fn create() -> Canary {
        let img = LoopImage::create(ImageSpec::ext4(96).mount_opts("strictatime"));
        let root = img.root().to_path_buf();
        let dir = root.join("victims");
        fs::create_dir_all(dir.join("dir")).expect("mkdir canary dirs");
        let dirs = ["dir", "dir2", "dir3", "dir4"].map(|d| dir.join(d));
        for d in &dirs {
            fs::create_dir_all(d).expect("mkdir canary dirs");
        }
        let specs: Vec<(PathBuf, u64, u64)> = vec![
            (dir.join("dir").join("big.bin"), 6 * MIB, 0xca1a),
            (dir.join("dir2").join("big2.bin"), 4 * MIB, 0xca1b),
            (dir.join("dir3").join("big3.bin"), 4 * MIB, 0xca1e),
            (dir.join("dir4").join("big4.bin"), 4 * MIB, 0xca1f),
            (dir.join("file.bin"), 4 * MIB, 0xca1c),
            (dir.join("file2.bin"), 4 * MIB, 0xca1d),
        ];
        let refs: Vec<(&Path, u64, u64)> = specs
            .iter()
            .map(|(p, s, seed)| (p.as_path(), *s, *seed))
            .collect();
        make_fragmented_files(&root, &refs, 2 * MIB).delete_all(&root);
        let mut img = img;
        img.settle();
        let mut canary = Canary {
            img,
            dir: dir.clone(),
            files: Vec::new(),
            dirs: Vec::new(),
        };
        for (p, _, _) in &specs {
            let sum = md5(p);
            canary.files.push(CanaryFile {
                path: p.clone(),
                md5: sum,
                extents: Vec::new(),
                times: times(p),
            });
        }
        // An old atime, set after the reads above: any later read or
        // listing sets it to now (strictatime).
        let dirs: Vec<PathBuf> = std::iter::once(dir.clone()).chain(dirs).collect();
        let mut touch: Vec<PathBuf> = specs.iter().map(|(p, _, _)| p.clone()).collect();
        touch.extend(dirs.iter().cloned());
        let mut args = vec![
            std::ffi::OsString::from("-a"),
            "-h".into(),
            "-d".into(),
            "@1000000000".into(),
        ];
        args.extend(touch.iter().map(|p| p.as_os_str().to_os_string()));
        sh("touch", &args);
        for f in &mut canary.files {
            f.extents = fiemap(&f.path);
            f.times = times(&f.path);
        }
        canary.dirs = dirs.iter().map(|d| (d.clone(), times(d))).collect();
        eprintln!(
            "canary on {}: {}",
            canary.img.root().display(),
            canary
                .files
                .iter()
                .map(|f| format!("{} ({} extents)", f.path.display(), f.extents.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        canary
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// What changed on the canary since it was made, without reading it:
    /// atimes (a read or a listing), mtimes and ctimes, extent maps (a
    /// move). Empty when nothing did. May be called any number of times.
    pub fn quick_changes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (d, t) in &self.dirs {
            let now = times(d);
            if now != *t {
                out.push(format!(
                    "directory {} was listed or changed: {t:?} -> {now:?}",
                    d.display()
                ));
            }
        }
        for f in &self.files {
            let now = times(&f.path);
            if now != f.times {
                out.push(format!(
                    "{} was read or changed: {:?} -> {now:?}",
                    f.path.display(),
                    f.times
                ));
            }
            let ext = fiemap(&f.path);
            if ext != f.extents {
                out.push(format!(
                    "{} was moved: {} extents -> {}",
                    f.path.display(),
                    f.extents.len(),
                    ext.len()
                ));
            }
        }
        out
    }

    /// `quick_changes`, then the contents (reading them moves the atimes:
    /// call it last).
    pub fn changes(&self) -> Vec<String> {
        let mut out = self.quick_changes();
        for f in &self.files {
            let sum = md5(&f.path);
            if sum != f.md5 {
                out.push(format!("{}: content changed", f.path.display()));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Was a special file opened?

/// inotify watches on inodes that must never be opened (FIFOs, device
/// nodes, sockets): any real open(2) of them queues IN_OPEN, whatever
/// name it came through. O_PATH opens (which run no driver code and are
/// what the tools use to pin a name) do not.
pub struct OpenWatch {
    inotify: inotify::Inotify,
    names: std::collections::HashMap<inotify::WatchDescriptor, PathBuf>,
}

impl OpenWatch {
    pub fn new(paths: &[PathBuf]) -> OpenWatch {
        use inotify::WatchMask;
        let inotify = inotify::Inotify::init().expect("inotify_init");
        let mut names = std::collections::HashMap::new();
        for p in paths {
            let wd = inotify
                .watches()
                .add(
                    p,
                    WatchMask::OPEN
                        | WatchMask::ACCESS
                        | WatchMask::MODIFY
                        | WatchMask::CLOSE_WRITE
                        | WatchMask::CLOSE_NOWRITE
                        | WatchMask::DONT_FOLLOW,
                )
                .unwrap_or_else(|e| panic!("inotify watch on {}: {e}", p.display()));
            names.insert(wd, p.clone());
        }
        OpenWatch { inotify, names }
    }

    /// Every event since the last call, as "PATH: MASK".
    pub fn events(&mut self) -> Vec<String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            match self.inotify.read_events(&mut buf) {
                Ok(events) => {
                    let mut n = 0;
                    for e in events {
                        n += 1;
                        let name = self
                            .names
                            .get(&e.wd)
                            .map_or_else(|| "?".to_string(), |p| p.display().to_string());
                        out.push(format!("{name}: {:?}", e.mask));
                    }
                    if n == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading inotify events: {e}"),
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Raw control-socket clients.

/// How a raw exchange on the control socket ended.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Complete response lines (without the newline).
    pub lines: Vec<String>,
    /// Bytes after the last newline when the stream ended.
    pub partial: Vec<u8>,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
    /// An error writing the request (the server may close early).
    pub write_error: Option<io::ErrorKind>,
    pub timed_out: bool,
}

/// Connects, writes `data` (then shuts down the writing half when
/// `shutdown`), reads until EOF, `want_lines` lines or `timeout`.
pub fn exchange(
    socket: &Path,
    data: &[u8],
    shutdown: bool,
    want_lines: Option<usize>,
    timeout: Duration,
) -> io::Result<Exchange> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = Exchange::default();
    if let Err(e) = stream.write_all(data) {
        out.write_error = Some(e.kind());
    }
    if shutdown {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    read_lines(&mut stream, &mut out, want_lines, timeout);
    Ok(out)
}

/// Reads response lines from `stream` into `out` until EOF, `want_lines`
/// lines, or `timeout` from now.
pub fn read_lines(
    stream: &mut UnixStream,
    out: &mut Exchange,
    want_lines: Option<usize>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 8192];
    loop {
        if want_lines.is_some_and(|n| out.lines.len() >= n) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.timed_out = true;
            return;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => {
                out.closed = true;
                return;
            }
            Ok(n) => {
                out.partial.extend_from_slice(&buf[..n]);
                while let Some(end) = out.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = out.partial.drain(..=end).collect();
                    out.lines
                        .push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                out.timed_out = true;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                out.closed = true;
                return;
            }
        }
    }
}

/// What a fresh client's `status` request got.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusAnswer {
    /// `{"ok":true,"data":{...}}`, with the data.
    Ok(serde_json::Value),
    /// `{"ok":false,"error":"busy: ..."}`: every connection slot taken.
    Busy,
    /// Another error response.
    Error(String),
    /// No complete response line within the time allowed.
    NoAnswer(String),
}

/// One `{"cmd":"status"}` from a fresh connection, waiting at most `limit`.
pub fn status_once(socket: &Path, limit: Duration) -> (StatusAnswer, Duration) {
    let t = Instant::now();
    let answer = match exchange(socket, b"{\"cmd\":\"status\"}\n", false, Some(1), limit) {
        Err(e) => StatusAnswer::NoAnswer(format!("connect: {e}")),
        Ok(ex) => match ex.lines.first() {
            None => StatusAnswer::NoAnswer(format!(
                "closed={} timed_out={} partial={:?}",
                ex.closed,
                ex.timed_out,
                String::from_utf8_lossy(&ex.partial)
            )),
            Some(line) => match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v["ok"] == true => StatusAnswer::Ok(v["data"].clone()),
                Ok(v) => {
                    let err = v["error"].as_str().unwrap_or("").to_string();
                    if err.starts_with("busy") {
                        StatusAnswer::Busy
                    } else {
                        StatusAnswer::Error(err)
                    }
                }
                Err(e) => StatusAnswer::Error(format!("not JSON ({e}): {line}")),
            },
        },
    };
    (answer, t.elapsed())
}

/// VmRSS of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The number of open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
