//! Converting block-mapped (ext3-era) files to extents with
//! EXT4_IOC_MIGRATE, then defragmenting them, in one job: opt-in with
//! `defragd defrag --convert-block-mapped` or `[policy] convert_block_mapped`.
//!
//! Every image here starts as `mkfs.ext3` (so every file written on it is
//! block-mapped), mounted as ext4; most then get the extent feature with
//! `tune2fs -O extents,uninit_bg,dir_index`, as an operator upgrading from
//! ext3 does. Covered:
//!
//! 1. `check --json` counts the block-mapped files, per file and per
//!    filesystem; `defrag` without the flag skips them ("block_mapped",
//!    naming the setting); with it they end extent-mapped and defragmented,
//!    same data, mtime and inode, and e2fsck is clean.
//! 2. The service does the same in the background with
//!    `convert_block_mapped = true`, and leaves them alone by default.
//! 3. A file open for writing by another process is not converted ("busy").
//! 4. Without the extent feature: "no_extent_feature".
//! 5. Crash: the filesystem shut down without a log flush (a power cut)
//!    while the service converts many files: the data survives, e2fsck sees
//!    at most a leaked inode that `e2fsck -fy` repairs, and the restarted
//!    service names the file and the `e2fsck -f DEVICE` to run whenever the
//!    crash caught a conversion. DEFRAGD_CONVERT_CRASH_TRIALS sets the
//!    number of trials (default 10), DEFRAGD_CONVERT_CRASH_SEED the random
//!    seed (default: the clock; printed).
//!
//! Each test is a module: 1. `one_shot`, 2. `service_policy`, 3. and 4.
//! `refusals`, 5. `power_cut`; this file holds the images and the reading
//! of defragd's JSON they share.
//!
//! Test 5 fails on the product as of this writing: the service records a
//! conversion as finished as soon as EXT4_IOC_MIGRATE returns, before the
//! journal has committed the kernel's work; a crash before that commit
//! leaves the leaked inode and no word about it (see the assertion).

use defragd_testkit as common;

mod one_shot;
mod power_cut;
mod refusals;
mod service_policy;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Images with block-mapped files.

/// One file to write: its path under the mount point, size and data seed.
struct Spec {
    rel: PathBuf,
    size: u64,
    seed: u64,
}

fn spec(rel: &str, size: u64, seed: u64) -> Spec {
    Spec {
        rel: PathBuf::from(rel),
        size,
        seed,
    }
}

/// Writes `files` in `piece`-byte appends, taking turns between the files,
/// each append followed by fsync: in fragmented free space each file lands
/// in many pieces.
fn write_interleaved(paths: &[PathBuf], files: &[Spec], piece: u64) {
    let mut open: Vec<(File, Seeded, u64)> = paths
        .iter()
        .zip(files)
        .map(|(p, s)| {
            let f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
            (f, Seeded::new(s.seed), s.size)
        })
        .collect();
    let mut buf = vec![0u8; piece as usize];
    while open.iter().any(|(_, _, left)| *left > 0) {
        for (f, rng, left) in open.iter_mut().filter(|(_, _, left)| *left > 0) {
            let n = (*left).min(piece) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).expect("append");
            f.sync_all().expect("fsync");
            *left -= n as u64;
        }
    }
}

/// `lsattr PATH`'s flag field, e.g. "--------------e-------".
fn lsattr_flags(path: &Path) -> String {
    let out = sh("lsattr", [path]);
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("cannot parse lsattr output {out:?}"))
        .to_string()
}

/// Whether lsattr shows the file extent-mapped (flag `e`).
fn extent_mapped(path: &Path) -> bool {
    lsattr_flags(path).contains('e')
}

/// Unmounts `img`, gives it the extent feature with tune2fs (running
/// `e2fsck -fy` if tune2fs asks for it), and mounts it again.
fn enable_extents(img: &mut LoopImage) {
    img.unmount();
    let (ok, out, err) = sh_status(
        "tune2fs",
        [
            OsStr::new("-O"),
            OsStr::new("extents,uninit_bg,dir_index"),
            img.image_path().as_os_str(),
        ],
    );
    let text = format!("{out}{err}");
    assert!(ok, "tune2fs -O extents,uninit_bg,dir_index failed:\n{text}");
    if text.contains("fsck") {
        eprintln!("tune2fs asks for e2fsck:\n{}", text.trim());
        let (code, out) = e2fsck("-fy", img.image_path());
        assert!(
            code == 0 || code == 1,
            "e2fsck -fy after tune2fs exited {code}:\n{out}"
        );
        eprintln!("e2fsck -fy after tune2fs: exit {code}");
    } else {
        eprintln!(
            "tune2fs -O extents,uninit_bg,dir_index: {}",
            text.trim().replace('\n', " | ")
        );
    }
    img.mount();
}

/// `e2fsck OPT IMAGE`: exit code and stdout+stderr.
fn e2fsck(opt: &str, image: &Path) -> (i32, String) {
    let out = run_raw(Command::new("e2fsck").arg(opt).arg(image));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An ext3 image (`mkfs.ext3`) mounted as ext4 with `files` written into
/// it in `piece`-byte fsync'd appends, taking turns. With `fragment`, free
/// space is fragmented first (64 KiB filler files, every other one deleted)
/// and the rest of the filler deleted afterwards, so the files are in many
/// pieces and contiguous free space exists. With `extents`, tune2fs then
/// gives the filesystem the extent feature (the files stay block-mapped).
/// Returns the image and the files' absolute paths.
fn block_mapped_image(
    size_mib: u64,
    files: &[Spec],
    piece: u64,
    fragment: bool,
    extents: bool,
) -> (LoopImage, Vec<PathBuf>) {
    let t = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(size_mib).kind(FsKind::Ext3AsExt4));
    let root = img.root().to_path_buf();
    let paths: Vec<PathBuf> = files.iter().map(|s| root.join(&s.rel)).collect();
    let filler = fragment.then(|| fragment_free_space(&root, 2 * MIB));
    for p in &paths {
        fs::create_dir_all(p.parent().expect("parent")).expect("create dir");
    }
    write_interleaved(&paths, files, piece);
    if let Some(filler) = filler {
        filler.delete_all(&root);
    }
    if extents {
        enable_extents(&mut img);
    } else {
        img.settle();
    }
    for p in &paths {
        assert!(
            !extent_mapped(p),
            "fixture: {} is extent-mapped on an ext3 filesystem",
            p.display()
        );
    }
    eprintln!(
        "image: {size_mib} MiB ext3{}, {} files written in {} KiB fsync'd appends{}: built in {:.1} s; free {} of {} MiB",
        if extents { " + tune2fs extents" } else { "" },
        files.len(),
        piece / KIB,
        if fragment { " into fragmented free space" } else { "" },
        t.elapsed().as_secs_f64(),
        free_bytes(&root) / MIB,
        fs_bytes(&root) / MIB,
    );
    (img, paths)
}

/// e2fsck's summary line ("IMAGE: 12/65536 files (0.0% non-contiguous), ...").
fn fsck_summary(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains(" files ("))
        .map_or("", str::trim)
}

/// md5, inode, mtime, ctime of a file.
fn identity(path: &Path) -> (String, u64, String, String) {
    let (ino, mtime, ctime) = stat_ids(path);
    (md5(path), ino, mtime, ctime)
}

/// Waits until every file's mtime is at least `age` in the past.
fn wait_until_older_than(paths: &[PathBuf], age: Duration) {
    let newest = paths
        .iter()
        .map(|p| fs::metadata(p).and_then(|m| m.modified()).expect("mtime"))
        .max()
        .expect("some file");
    let since = newest.elapsed().unwrap_or_default();
    if let Some(left) = age.checked_sub(since) {
        sleep(left);
    }
}

// ---------------------------------------------------------------------------
// defragd's JSON, the parts this file needs beyond the testkit (tests/support).

#[derive(Debug, Deserialize)]
struct CheckFs {
    mount_point: PathBuf,
    files: u64,
    block_mapped: u64,
}

#[derive(Debug, Deserialize)]
struct CheckEntry {
    path: PathBuf,
    extents: u64,
    ideal_extents: u64,
    block_mapped: bool,
}

#[derive(Debug, Deserialize)]
struct CheckTotals {
    files: u64,
    block_mapped: u64,
}

#[derive(Debug, Deserialize)]
struct Check {
    files: Vec<CheckEntry>,
    filesystems: Vec<CheckFs>,
    total: CheckTotals,
}

#[derive(Debug, Deserialize)]
struct Summary {
    defragmented: u64,
    converted: u64,
    failed: u64,
    skipped_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct SummaryOnly {
    summary: Summary,
}

/// `defragd defrag --json EXTRA... PATHS...`, exit 0: the report and its
/// summary.
fn defrag(extra: &[&str], paths: &[&Path]) -> (DefragReport, Summary) {
    let (report, run) = defrag_json(extra, paths, 0);
    let summary = run.json::<SummaryOnly>().summary;
    (report, summary)
}
