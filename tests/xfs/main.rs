//! defragd on XFS (issue 15's acceptance), with the real binaries on
//! loop-mounted XFS images (`ImageSpec::xfs`), judged by xfsprogs
//! (`xfs_bmap`, `xfs_repair -n`, `xfs_fsr` as the peer), md5sum, fio and
//! fincore. The ext4 equivalents are tests/preconditions.rs, crash.rs,
//! service.rs, write_tracking.rs, concurrent_writer.rs, live_appender.rs
//! and page_cache.rs; each module here mirrors one theme:
//!
//! - `versus_fsr`: fragmented files in fragmented free space end intact
//!   (md5), `xfs_repair -n` clean, in no more extents than `xfs_fsr`
//!   leaves on an identical copy; both times printed, not asserted.
//! - `refusals`: each refusal with its reason code through `--json`.
//! - `writers`: fio with `--verify` and an appender writing the file
//!   while it is copied: the swap refuses (busy) or the move finishes,
//!   never a lost write.
//! - `crash`: SIGKILL and both shutdowns mid-copy and around the swap:
//!   md5 intact, `xfs_repair -n` clean after log replay, the O_TMPFILE
//!   donor's space back, and a rerun finishes the job.
//! - `service`: the service on an XFS mount finds a file by whole-
//!   filesystem write tracking and moves it; SIGKILL mid-copy, restart:
//!   the copy starts over and finishes.
//! - `page_cache`: a cached file stays cached, an uncached one uncached.
//!
//! This file holds what the modules share.

use defragd_testkit as common;

mod crash;
mod page_cache;
mod refusals;
mod service;
mod versus_fsr;
mod writers;

use std::path::{Path, PathBuf};

use common::*;

/// A new XFS image of `size_mib` with `files` (path under the mount
/// point, bytes, seed) written into fragmented free space, the rest of the
/// free space then made contiguous and the filesystem settled (remounted:
/// XFS's reserve pool back). Returns the image and the files' paths.
pub fn xfs_with_fragmented(size_mib: u64, files: &[(&str, u64, u64)]) -> (LoopImage, Vec<PathBuf>) {
    with_fragmented(ImageSpec::xfs(size_mib), files)
}

/// `xfs_with_fragmented` on an image made as `spec` says.
pub fn with_fragmented(spec: ImageSpec, files: &[(&str, u64, u64)]) -> (LoopImage, Vec<PathBuf>) {
    require_tools(XFS_TOOLS);
    let mut img = LoopImage::create(spec);
    let root = img.root().to_path_buf();
    let paths: Vec<PathBuf> = files.iter().map(|(rel, _, _)| root.join(rel)).collect();
    for p in &paths {
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
    }
    let specs: Vec<(&Path, u64, u64)> = files
        .iter()
        .zip(&paths)
        .map(|((_, size, seed), p)| (p.as_path(), *size, *seed))
        .collect();
    make_fragmented_files(&root, &specs, 2 * MIB).delete_all(&root);
    img.settle();
    (img, paths)
}

/// Bytes process `pid` has passed to write calls so far (`wchar` in
/// /proc/PID/io): the XFS copy goes into the donor with pwrite, so this
/// shows how far a copy is while the file's own map does not change.
pub fn written_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits up to `limit` until process `pid` has written `bytes`, or
/// `alive` says it ended; the bytes written by then.
pub fn wait_for_written(
    pid: u32,
    bytes: u64,
    limit: std::time::Duration,
    mut alive: impl FnMut() -> bool,
) -> u64 {
    let t = std::time::Instant::now();
    loop {
        let n = written_by(pid);
        if n >= bytes || t.elapsed() > limit || !alive() {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
