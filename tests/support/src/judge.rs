//! Judges nobody in this project wrote: filefrag, md5sum, stat, lsattr,
//! fincore, dd, e4defrag -c, statvfs; and snapshots built from them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cmd::{sh, sh_status};
use super::KIB;

/// `filefrag PATH` → the "N extents found" count.
pub fn filefrag_extents(path: &Path) -> u64 {
    let out = sh("filefrag", [path]);
    let line = out.lines().last().unwrap_or("");
    // "<path>: 12 extents found" / "<path>: 1 extent found"
    let tail = line.rsplit(": ").next().unwrap_or("");
    let n = tail.split_whitespace().next().unwrap_or("");
    n.parse().unwrap_or_else(|_| {
        panic!(
            "cannot parse filefrag output for {}: {out:?}",
            path.display()
        )
    })
}

/// One FIEMAP extent as listed by `filefrag -v`, in filesystem blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// Every FIEMAP extent of PATH, from `filefrag -v`.
pub fn fiemap(path: &Path) -> Vec<Extent> {
    let out = sh("filefrag", [OsStr::new("-v"), path.as_os_str()]);
    let mut v = Vec::new();
    for line in out.lines() {
        // "   3:     2048..    4095:      12289..     14336:   2048:      10240: last,eof"
        let fields: Vec<&str> = line.split(':').map(str::trim).collect();
        if fields.len() < 4 || fields[0].parse::<u64>().is_err() {
            continue;
        }
        let range = |f: &str| -> Option<(u64, u64)> {
            let (a, b) = f.split_once("..")?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        };
        let (Some((l0, l1)), Some((p0, _))) = (range(fields[1]), range(fields[2])) else {
            panic!(
                "cannot parse filefrag -v line {line:?} for {}",
                path.display()
            );
        };
        v.push(Extent {
            logical: l0,
            physical: p0,
            len: l1 - l0 + 1,
        });
    }
    v
}

/// Runs of blocks that are physically next to each other, holes ignored
/// (the old filefrag's count; 1.47 also merges across a hole when the
/// physical gap equals the hole).
pub fn dense_runs(ext: &[Extent]) -> u64 {
    let mut runs = 0;
    let mut next: Option<u64> = None;
    for e in ext {
        if next != Some(e.physical) {
            runs += 1;
        }
        next = Some(e.physical + e.len);
    }
    runs
}

/// Runs of extents contiguous both logically and physically (a hole always
/// starts a new run): the contract's `physical_runs`.
pub fn physical_runs(ext: &[Extent]) -> u64 {
    let mut runs = 0;
    let mut next: Option<(u64, u64)> = None;
    for e in ext {
        if next != Some((e.logical, e.physical)) {
            runs += 1;
        }
        next = Some((e.logical + e.len, e.physical + e.len));
    }
    runs
}

/// Logical ranges (blocks, [start, end)) that hold data, adjacent ones
/// merged: where the data and the holes are, wherever they sit on disk.
pub fn mapped_ranges(ext: &[Extent]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in ext {
        let (start, end) = (e.logical, e.logical + e.len);
        match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ranges.push((start, end)),
        }
    }
    ranges
}

pub fn md5(path: &Path) -> String {
    let out = sh("md5sum", [path]);
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// md5sum of the first `len` bytes of PATH (piped into `md5sum`).
pub fn md5_prefix(path: &Path, len: u64) -> String {
    let data = read_all(path);
    assert!(
        data.len() as u64 >= len,
        "{} is shorter than {len} bytes",
        path.display()
    );
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum");
    let mut stdin = child.stdin.take().expect("md5sum stdin");
    let prefix = data[..len as usize].to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&prefix));
    let out = child.wait_with_output().expect("md5sum output");
    feeder
        .join()
        .expect("feeder thread")
        .expect("write to md5sum");
    assert!(out.status.success(), "md5sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// (inode, mtime, ctime) from `stat`, timestamps to the nanosecond.
pub fn stat_ids(path: &Path) -> (u64, String, String) {
    let out = sh(
        "stat",
        [
            OsStr::new("-c"),
            OsStr::new("%i %.9Y %.9Z"),
            path.as_os_str(),
        ],
    );
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f.len(), 3, "unexpected stat output {out:?}");
    (
        f[0].parse().expect("inode number"),
        f[1].to_string(),
        f[2].to_string(),
    )
}

/// The i_generation (FS_IOC_GETVERSION) as printed by `lsattr -v`.
pub fn generation(path: &Path) -> u64 {
    let out = sh("lsattr", [OsStr::new("-v"), path.as_os_str()]);
    let first = out.split_whitespace().next().unwrap_or_default();
    first
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse lsattr -v output {out:?}"))
}

/// What any filesystem can tell: content and identity, no layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicState {
    pub md5: String,
    pub ino: u64,
    pub mtime: String,
    pub ctime: String,
    pub size: u64,
}

pub fn basic_state(path: &Path) -> BasicState {
    let (ino, mtime, ctime) = stat_ids(path);
    BasicState {
        md5: md5(path),
        ino,
        mtime,
        ctime,
        size: fs::metadata(path).expect("metadata").len(),
    }
}

/// Bytes allocated on disk (`stat` %b × %B).
pub fn allocated_bytes(path: &Path) -> u64 {
    let out = sh(
        "stat",
        [OsStr::new("-c"), OsStr::new("%b %B"), path.as_os_str()],
    );
    let f: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().expect("stat number"))
        .collect();
    f[0] * f[1]
}

/// Resident page-cache pages of PATH according to util-linux `fincore`.
pub fn fincore_pages(path: &Path) -> u64 {
    let out = sh(
        "fincore",
        [
            OsStr::new("-n"),
            OsStr::new("-r"),
            OsStr::new("-o"),
            OsStr::new("PAGES"),
            path.as_os_str(),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse fincore output {out:?}"))
}

/// Drops PATH's pages from the page cache (`dd iflag=nocache count=0` →
/// posix_fadvise DONTNEED over the whole file).
pub fn evict_file_cache(path: &Path) {
    sh(
        "dd",
        [
            format!("if={}", path.display()),
            "iflag=nocache".into(),
            "count=0".into(),
            "status=none".into(),
        ],
    );
}

/// Evicts `path` from the page cache and checks that it is out but for at
/// most `slack` pages: a test of what a move leaves in the cache must start
/// from a file that is not in it.
pub fn evict_file_cache_checked(path: &Path, slack: u64) {
    evict_file_cache(path);
    let resident = fincore_pages(path);
    assert!(
        resident <= slack,
        "could not evict {} from the page cache ({resident} pages left)",
        path.display()
    );
}

/// Evicts every regular file under `dir` from the page cache.
pub fn evict_tree_cache(dir: &Path) {
    for rel in regular_files(dir) {
        evict_file_cache(&dir.join(rel));
    }
}

/// Resident pages of every regular file under `dir`, summed.
pub fn tree_resident_pages(dir: &Path) -> u64 {
    regular_files(dir)
        .iter()
        .map(|rel| fincore_pages(&dir.join(rel)))
        .sum()
}

/// "Fragmentation score" from `e4defrag -c PATH` (None when not printed).
pub fn e4defrag_score(path: &Path) -> Option<f64> {
    let (_, out, _) = sh_status("e4defrag", [OsStr::new("-c"), path.as_os_str()]);
    out.lines()
        .find(|l| l.contains("Fragmentation score"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
}

/// Regular files under `dir` (relative paths, sorted), not following
/// symlinks, skipping lost+found.
pub fn regular_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if e.file_name() == "lost+found" {
                continue;
            }
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file() {
                out.push(p.strip_prefix(base).expect("under base").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Everything a defragmenter must not change about a file, and its layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState {
    pub md5: String,
    pub ino: u64,
    pub mtime: String,
    pub ctime: String,
    pub generation: u64,
    pub size: u64,
    /// filefrag's "N extents found": the figure the tests judge by.
    pub extents: u64,
    /// FIEMAP extents listed by `filefrag -v`.
    pub fiemap_extents: u64,
    /// See `dense_runs`.
    pub dense_runs: u64,
    /// See `physical_runs`.
    pub physical_runs: u64,
    pub allocated: u64,
    pub mapped: Vec<(u64, u64)>,
}

impl FileState {
    /// Whether `n` is this file's extent count by one of the definitions
    /// filefrag's output supports: its own "N extents found", the FIEMAP
    /// entries it lists, or physically dense runs.
    pub fn is_an_extent_count(&self, n: u64) -> bool {
        n == self.extents || n == self.fiemap_extents || n == self.dense_runs
    }
}

pub fn file_state(path: &Path) -> FileState {
    // Read the content before asking for the layout: FIEMAP on a
    // block-mapped file nobody has read yet lists a few more pieces than it
    // does once reads have filled the kernel's extent cache (299 against
    // 296 for the same 16 MiB file), so the layout would seem to change.
    let md5 = md5(path);
    let (ino, mtime, ctime) = stat_ids(path);
    let ext = fiemap(path);
    FileState {
        md5,
        ino,
        mtime,
        ctime,
        generation: generation(path),
        size: fs::metadata(path).expect("metadata").len(),
        extents: filefrag_extents(path),
        fiemap_extents: ext.len() as u64,
        dense_runs: dense_runs(&ext),
        physical_runs: physical_runs(&ext),
        allocated: allocated_bytes(path),
        mapped: mapped_ranges(&ext),
    }
}

/// State of every regular file under `dir`, keyed by path relative to `dir`.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, FileState> {
    regular_files(dir)
        .into_iter()
        .map(|rel| {
            let st = file_state(&dir.join(&rel));
            (rel, st)
        })
        .collect()
}

pub fn total_extents(snap: &BTreeMap<PathBuf, FileState>) -> u64 {
    snap.values().map(|s| s.extents).sum()
}

/// Asserts that contents and identity (md5, inode, mtime, ctime, generation,
/// size) of every file are unchanged, and that holes stayed holes (same
/// mapped logical ranges, allocation not grown).
pub fn assert_preserved(
    before: &BTreeMap<PathBuf, FileState>,
    after: &BTreeMap<PathBuf, FileState>,
    who: &str,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{who}: the set of files changed"
    );
    for (rel, b) in before {
        let a = &after[rel];
        let p = rel.display();
        assert_eq!(b.md5, a.md5, "{who}: content of {p} changed");
        assert_eq!(b.size, a.size, "{who}: size of {p} changed");
        assert_eq!(b.ino, a.ino, "{who}: inode number of {p} changed");
        assert_eq!(
            b.generation, a.generation,
            "{who}: generation of {p} changed"
        );
        assert_eq!(b.mtime, a.mtime, "{who}: mtime of {p} changed");
        assert_eq!(b.ctime, a.ctime, "{who}: ctime of {p} changed");
        assert_eq!(
            b.mapped, a.mapped,
            "{who}: mapped logical ranges (holes) of {p} changed"
        );
        // Data blocks are pinned by `mapped` above; what `du` adds on top
        // is extent-tree blocks, which may legitimately differ a little.
        assert!(
            a.allocated <= b.allocated + extent_tree_slack(b.size),
            "{who}: allocation of {p} grew from {} to {} bytes",
            b.allocated,
            a.allocated
        );
    }
}

/// How much more `du` may count for a file after a move than before, with
/// the same data blocks: extent-tree blocks. MOVE_EXT leaves some behind
/// (seen: +10 blocks on a 128 MiB file that went from ~1900 extents to 3,
/// with e4defrag and defragd alike).
pub fn extent_tree_slack(size: u64) -> u64 {
    64 * KIB + size / 1024
}

/// Reads a whole file.
pub fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

/// Inode number of PATH without following a symlink.
pub fn lino(path: &Path) -> u64 {
    fs::symlink_metadata(path).expect("lstat").ino()
}

/// Free bytes of the filesystem holding `path` (what root may use).
pub fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks_free() as u64 * st.fragment_size() as u64
}

pub fn fs_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() as u64 * st.fragment_size() as u64
}

/// Blocks of a file now mapped elsewhere than in `orig` (its FIEMAP before
/// a move started): what the move has done so far. A donor's blocks were
/// free before, so a moved block never sits where it was.
pub fn moved_blocks(orig: &[Extent], now: &[Extent]) -> u64 {
    let unmoved = |e: &Extent| {
        orig.iter().any(|o| {
            e.logical >= o.logical
                && e.logical + e.len <= o.logical + o.len
                && e.physical == o.physical + (e.logical - o.logical)
        })
    };
    now.iter().filter(|e| !unmoved(e)).map(|e| e.len).sum()
}
