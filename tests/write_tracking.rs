//! Write tracking on whole filesystems, with the real service on loop-mounted
//! ext4 and a config that names only the filesystem (no `watch` trees):
//!
//! 1. a file fragmented after the first crawl, deep in a tree of thousands
//!    of directories made after the service started, is found and its move
//!    starts within `quiet_period` + 10 s of its last write;
//! 2. a file fragmented while the service was down is found at the next
//!    start, without a crawl pass;
//! 3. the service's own moves and skips never queue a file again: with
//!    nobody writing for 60 s after the work is done, no new attempt, and
//!    no more bytes moved than the improved files hold;
//! 4. without CAP_SYS_ADMIN the service falls back on inotify over the
//!    `watch` trees, says so (log, `defragctl status`), still finds written
//!    files there, and does not chase its own tail either.

use defragd_testkit as common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

/// A history row as `defragctl --json history` gives it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Attempt {
    path: PathBuf,
    outcome: String,
    reason_code: Option<String>,
    bytes_moved: u64,
}

fn history(svc_socket: &Path) -> Vec<Attempt> {
    let args: [&OsStr; 3] = [
        "--json".as_ref(),
        "history".as_ref(),
        "--limit=10000".as_ref(),
    ];
    let (out, _) = defragctl(svc_socket, &args, secs(20));
    assert!(out.status.success(), "defragctl history: {out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    let rows = value.get("data").cloned().unwrap_or(value);
    serde_json::from_value(rows).expect("history rows")
}

fn status_json(socket: &Path) -> serde_json::Value {
    let args: [&OsStr; 2] = ["--json".as_ref(), "status".as_ref()];
    let (out, _) = defragctl(socket, &args, secs(20));
    assert!(out.status.success(), "defragctl status: {out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    value.get("data").cloned().unwrap_or(value)
}

/// Waits for the crawl's one pass over `root` to end.
fn wait_for_crawl(svc: &mut Service, root: &Path) {
    svc.wait_for_log(&crawl_pass_done(root), secs(60));
}

/// A new 256 MiB image and the service covering it, with only the
/// filesystem in its config, once it tracks writes there and its first
/// crawl pass (over a filesystem still empty) is over.
fn a_tracked_filesystem() -> (LoopImage, PathBuf, ServiceHome, Service) {
    let img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let home = ServiceHome::new();
    home.write_config(&ServiceConfig::new(&root, &[]));
    let mut svc = home.start(&[]);
    svc.wait_for_log(TRACKING_WRITES, secs(30));
    wait_for_crawl(&mut svc, &root);
    (img, root, home, svc)
}

/// Writes `path` (`size` bytes) into fragmented free space, then frees
/// the filler while still appending to it, so that it is written until
/// contiguous free space exists; returns when it was last written.
fn write_fragmented(root: &Path, path: &Path, size: u64, seed: u64) -> Instant {
    let filler = fragment_free_space(root, 2 * MIB);
    let mut rng = Seeded::new(seed);
    let piece = 16 * KIB as usize;
    let mut handles = interleaved_writes(&[path.to_path_buf()], size, piece, &mut rng);
    let extents = filefrag_extents(path);
    // Half of 4 MiB in 64 KiB holes is 32 extents: the 2 MiB left free may
    // take the rest (seen in CI: exactly 32). Any such file is well worth
    // a move under the tests' policy; what the tests judge is whether the
    // service finds it.
    assert!(
        extents >= 16,
        "fixture: {} has only {extents} extents",
        path.display()
    );
    delete_filler_while_writing(
        filler,
        root,
        &mut handles,
        &mut rng,
        piece,
        Duration::from_millis(400),
        secs(2),
    );
    drop(handles);
    Instant::now()
}

#[test]
fn a_file_written_deep_in_a_new_tree_is_found_within_the_quiet_period_and_10_s() {
    if !require_root() {
        return;
    }
    let (mut img, root, _home, mut svc) = a_tracked_filesystem();

    // 3,000 directories, made after the service started.
    let t = Instant::now();
    let mut deepest = root.join("tree");
    for a in 0..30 {
        for b in 0..10 {
            for c in 0..10 {
                let dir = root.join(format!("tree/a{a:02}/b{b}/c{c}"));
                fs::create_dir_all(&dir).expect("mkdir");
                deepest = dir;
            }
        }
    }
    eprintln!(
        "made 3,000 directories in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let path = deepest.join("table.db");
    let last_write = write_fragmented(&root, &path, 4 * MIB, 0x7ac1);
    let before = filefrag_extents(&path);
    let sum = md5(&path);

    svc.wait_for_log(&defragmenting(&path), secs(60));
    let found_after = last_write.elapsed();
    eprintln!(
        "{}: {before} extents; its move started {:.1} s after its last write",
        path.display(),
        found_after.as_secs_f64()
    );
    let quiet = secs(2);
    assert!(
        found_after <= quiet + secs(10),
        "the move started {found_after:?} after the last write; the goal is the quiet period ({quiet:?}) + 10 s"
    );
    svc.wait_for_log(&defragmented(&path), secs(60));
    assert_eq!(md5(&path), sum, "content changed");
    assert_defragmented(&path, before);
    // Found by write tracking: the crawl's one pass ended before the file existed.
    let starts = svc.lines_with(&format!("crawl of {}: starting pass", root.display()));
    assert_eq!(starts.len(), 1, "crawl passes: {starts:?}");
    svc.stop(secs(10));
    img.unmount_and_fsck();
}

#[test]
fn a_file_written_while_the_service_was_down_is_found_at_start_without_a_crawl() {
    if !require_root() {
        return;
    }
    let (mut img, root, home, mut svc) = a_tracked_filesystem();
    svc.stop(secs(10));

    let path = root.join("written-while-down.db");
    write_fragmented(&root, &path, 4 * MIB, 0xd0d0);
    let before = filefrag_extents(&path);
    let sum = md5(&path);

    let mut svc = home.start(&[]);
    let caught = svc.wait_for_log("caught up on writes since", secs(60));
    eprintln!("{caught}");
    svc.wait_for_log(&defragmented(&path), secs(60));
    assert_eq!(md5(&path), sum, "content changed");
    assert_defragmented(&path, before);
    // The pass of the first run is over and the next is a day away.
    assert!(
        svc.lines_with("starting pass").is_empty(),
        "a crawl pass started: {:?}",
        svc.lines_with("starting pass")
    );
    let changed = caught.rsplit(": ").next().unwrap_or_default();
    assert!(
        number_after(&format!(" {changed}"), " ") >= 1,
        "the catch-up found nothing: {caught}"
    );
    svc.stop(secs(10));
    img.unmount_and_fsck();
}

/// Counts the service's attempts at files (history rows that are not
/// drops) and the bytes it moved.
fn attempts(rows: &[Attempt]) -> (usize, u64) {
    let tried = rows.iter().filter(|r| r.outcome != "dropped").count();
    (tried, rows.iter().map(|r| r.bytes_moved).sum())
}

/// Waits until `n` attempts are in the history.
fn wait_for_attempts(socket: &Path, n: usize, timeout: Duration) -> Vec<Attempt> {
    let t = Instant::now();
    loop {
        let rows = history(socket);
        if attempts(&rows).0 >= n {
            return rows;
        }
        assert!(
            t.elapsed() < timeout,
            "{n} attempts awaited for {timeout:?}; history: {rows:?}"
        );
        sleep(Duration::from_millis(500));
    }
}

/// Nobody writes for `quiet`: the history must not grow.
fn assert_no_new_attempts(socket: &Path, svc: &Service, quiet: Duration) {
    let before = history(socket);
    let jobs_before = svc.lines_with("defragmenting ").len();
    sleep(quiet);
    let after = history(socket);
    assert_eq!(
        attempts(&after).0,
        attempts(&before).0,
        "new attempts with nobody writing for {quiet:?}: {:?}",
        &after[..after.len() - before.len()]
    );
    assert_eq!(
        svc.lines_with("defragmenting ").len(),
        jobs_before,
        "a move started with nobody writing"
    );
}

/// Leaves the free space of `root` in `hole`-sized holes: one file
/// allocated over nearly all of it, with holes punched every `2 * hole`.
fn free_space_in_holes(root: &Path, name: &str, hole: u64) -> PathBuf {
    use nix::fcntl::{fallocate, FallocateFlags};
    let path = root.join(name);
    let file = fs::File::create(&path).expect("create hole file");
    // Blocks freed by earlier moves can be allocated only once the journal
    // has committed their release: commit first, or they come free later
    // in runs a file under test lands in whole.
    sync_fs(root);
    // As much as the filesystem gives (its own reserve and metadata take
    // some of what statfs calls free).
    let mut len = free_bytes(root) / (2 * hole) * (2 * hole);
    while let Err(e) = fallocate(&file, FallocateFlags::empty(), 0, len as i64) {
        assert!(
            e == nix::errno::Errno::ENOSPC && len > 4 * MIB,
            "fallocate: {e}"
        );
        len -= 2 * hole;
    }
    // Then every block still free, in smaller and smaller steps past the
    // part that gets holes: no free run is left but the holes.
    let mut end = len;
    let mut step = 2 * hole;
    while step >= 4 * KIB {
        match fallocate(&file, FallocateFlags::empty(), end as i64, step as i64) {
            Ok(()) => end += step,
            Err(nix::errno::Errno::ENOSPC) => step /= 2,
            Err(e) => panic!("fallocate: {e}"),
        }
    }
    file.sync_all().expect("fsync");
    let mut at = 0;
    while at < len {
        fallocate(
            &file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            at as i64,
            hole as i64,
        )
        .expect("punch hole");
        at += 2 * hole;
    }
    file.sync_all().expect("fsync");
    sync_fs(root);
    path
}

/// A fragmented file that no donor can improve: written in 256 KiB
/// pieces into 256 KiB holes, after which the rest of the free space is
/// left in 64 KiB holes (keep it so: freeing the hole files would give a
/// donor the space it lacks).
fn write_unimprovable(root: &Path, path: &Path) {
    free_space_in_holes(root, "holes-256k", 256 * KIB);
    write_seeded_file(path, 4 * MIB, 0xb0b);
    free_space_in_holes(root, "holes-64k", 64 * KIB);
    let extents = filefrag_extents(path);
    assert!(
        extents >= 6,
        "fixture: {} has only {extents} extents",
        path.display()
    );
}

#[test]
fn the_services_own_moves_and_skips_never_queue_a_file_again() {
    if !require_root() {
        return;
    }
    let (mut img, root, home, mut svc) = a_tracked_filesystem();
    let socket = home.control_socket();

    // One file the service moves.
    let moved = root.join("moved.db");
    write_fragmented(&root, &moved, 4 * MIB, 0x3e3e);
    let moved_size = fs::metadata(&moved).expect("stat").len();
    svc.wait_for_log(&defragmented(&moved), secs(60));
    // One it cannot improve: in 256 KiB pieces, free space in 64 KiB holes.
    let stuck = root.join("stuck.db");
    write_unimprovable(&root, &stuck);
    let stuck_extents = filefrag_extents(&stuck);
    eprintln!("{}: {stuck_extents} extents", stuck.display());
    let rows = wait_for_attempts(&socket, 2, secs(60));
    eprintln!("history: {rows:?}");
    let stuck_rows: Vec<&Attempt> = rows.iter().filter(|r| r.path == stuck).collect();
    assert_eq!(stuck_rows.len(), 1, "{rows:?}");
    assert_eq!(stuck_rows[0].outcome, "skipped", "{rows:?}");

    assert_no_new_attempts(&socket, &svc, secs(60));
    let (tried, bytes) = attempts(&history(&socket));
    assert_eq!(tried, 2, "one attempt per file");
    assert!(
        bytes <= moved_size,
        "{bytes} bytes moved; the one improved file holds {moved_size}"
    );
    eprintln!(
        "2 attempts in all ({} skipped as {:?}), {bytes} bytes moved for {moved_size} improved",
        stuck.display(),
        stuck_rows[0].reason_code
    );
    svc.stop(secs(10));
    img.unmount_and_fsck();
}

#[test]
fn without_cap_sys_admin_inotify_on_the_watch_trees_takes_over_and_says_so() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let watched = root.join("watched");
    fs::create_dir(&watched).expect("mkdir watched");
    let home = ServiceHome::new();
    home.write_config(&ServiceConfig::new(&root, &[&watched]));
    // setpriv execs the service with CAP_SYS_ADMIN out of its bounding set.
    let mut svc = home.start_through(&["setpriv", "--bounding-set=-sys_admin"], &[]);
    let said = svc.wait_for_log("cannot track writes on the whole filesystem", secs(30));
    assert!(said.contains("CAP_SYS_ADMIN"), "{said}");
    assert!(said.contains("inotify"), "{said}");
    svc.wait_for_log("watching 1 directories", secs(30));
    wait_for_crawl(&mut svc, &root);
    let socket = home.control_socket();
    let status = status_json(&socket);
    let fs0 = &status["filesystems"][0];
    assert_eq!(fs0["tracking"], "inotify", "{status}");
    assert!(
        fs0["tracking_note"]
            .as_str()
            .is_some_and(|n| n.contains("CAP_SYS_ADMIN")),
        "{status}"
    );
    assert!(
        status["summary"]
            .as_str()
            .is_some_and(|s| s.contains("write tracking: inotify on")),
        "{status}"
    );

    let path = watched.join("app.db");
    write_fragmented(&root, &path, 4 * MIB, 0x1a1a);
    let before = filefrag_extents(&path);
    svc.wait_for_log(&defragmented(&path), secs(60));
    assert_defragmented(&path, before);
    // The move's own close-after-write reaches inotify too: it must not
    // bring the file back.
    wait_for_attempts(&socket, 1, secs(10));
    assert_no_new_attempts(&socket, &svc, secs(20));
    svc.stop(secs(10));
    img.unmount_and_fsck();
}
