//! Crash trials on XFS (tests/crash.rs on ext4), each on a fresh identical
//! copy of one image: three files of 16, 24 and 32 MiB written into
//! fragmented free space, the rest of the free space made contiguous.
//! `defragd defrag --max-mib-per-s 16` moves them in order (a 4.5 s run)
//! and one fault hits, at a moment found by watching the move, not by a
//! timer:
//!
//! - mid-copy: 12 MiB into the second file's copy (the first file done),
//!   as the one-shot's writes (/proc/PID/io wchar) show;
//! - at the end of the first file's copy (all 16 MiB written to the
//!   donor): the swap follows within milliseconds, so the fault lands
//!   right before it or right after;
//! - right after the first file's swap, as soon as its map changes.
//!
//! Faults: SIGKILL of the one-shot; `xfs_io -x -c 'shutdown -f'` (the log
//! flushed: what was committed survives) and plain `shutdown` (no log
//! flush, like a power cut). After a shutdown the one-shot must end by
//! itself (status 1, no panic) within 15 s.
//!
//! Then: unmount, mount (the log replays, the O_TMPFILE donor on the
//! unlinked list is freed), unmount, `xfs_repair -n` clean; mounted again,
//! every file has its md5 and its data ranges, and the free space is back
//! within TOLERANCE of before the run (a leaked donor would hold 16 MiB or
//! more). A rerun of the one-shot finishes the job: every file ends
//! defragmented, md5 unchanged, `xfs_repair -n` clean.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::*;
use super::{wait_for_written, with_fragmented};

const FILES: [(&str, u64, u64); 3] = [
    ("data/a.bin", 16 * MIB, 0xa1),
    ("data/b.bin", 24 * MIB, 0xb2),
    ("data/c/c.bin", 32 * MIB, 0xc3),
];
const THROTTLE_MIB_PER_S: u64 = 16;
/// Free space may differ by the files' extent-tree blocks, a few at most
/// (a few hundred extents each, before or after); a leaked donor would
/// hold at least 16 MiB.
const TOLERANCE: u64 = 2 * MIB;

#[derive(Clone, Copy, Debug)]
enum Fault {
    SigKill,
    Shutdown(ShutdownFlag),
}

#[derive(Clone, Copy, Debug)]
enum Moment {
    /// Halfway through the first file's copy: no swap yet.
    FirstCopy,
    /// 12 MiB into the second file's copy: the first one swapped.
    MidCopy,
    CopyEnd,
    AfterSwap,
}

struct Original {
    rel: &'static str,
    md5: String,
    map: Vec<Extent>,
    extents: u64,
}

struct Template {
    img: LoopImage,
    files: Vec<Original>,
    rmapbt: bool,
}

/// The template image: made by plain `mkfs.xfs`, or with the reverse
/// mapping btree (`-m rmapbt=1`).
fn template(rmapbt: bool) -> Template {
    let spec = if rmapbt {
        ImageSpec::xfs(384).mkfs_opts(&["-m", "rmapbt=1"])
    } else {
        ImageSpec::xfs(384).mkfs_opts(&["-m", "rmapbt=0"])
    };
    let (img, paths) = with_fragmented(spec, &FILES);
    let files = FILES
        .iter()
        .zip(&paths)
        .map(|((rel, _, _), p)| Original {
            rel,
            md5: md5(p),
            map: fiemap(p),
            extents: filefrag_extents(p),
        })
        .collect();
    Template { img, files, rmapbt }
}

/// Waits for `moment` of the one-shot `p`; false if it ended first.
fn wait_for(moment: Moment, p: &mut Proc, first: &std::path::Path, orig: &[Extent]) -> bool {
    let limit = secs(30);
    match moment {
        Moment::FirstCopy => {
            let want = FILES[0].1 / 2;
            wait_for_written(p.pid, want, limit, || p.is_running()) >= want
        }
        Moment::MidCopy => {
            let want = FILES[0].1 + 12 * MIB;
            wait_for_written(p.pid, want, limit, || p.is_running()) >= want
        }
        Moment::CopyEnd => {
            let want = FILES[0].1;
            wait_for_written(p.pid, want, limit, || p.is_running()) >= want
        }
        Moment::AfterSwap => {
            let t = Instant::now();
            while t.elapsed() < limit && p.is_running() {
                if moved_blocks(orig, &fiemap(first)) > 0 {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        }
    }
}

/// Without rmapbt defragd swaps only with the operator's consent (the
/// crash trials there stop before the swap, or are the kernel bug's).
fn consent(tpl: &Template) -> &'static [&'static str] {
    if tpl.rmapbt {
        &[]
    } else {
        &["--xfs-swapext-without-rmapbt"]
    }
}

fn trial(tpl: &mut Template, fault: Fault, moment: Moment) {
    let tag = format!("{fault:?} at {moment:?}");
    let mut img = tpl.img.duplicate();
    let root = img.root().to_path_buf();
    let paths: Vec<PathBuf> = tpl.files.iter().map(|f| root.join(f.rel)).collect();
    let free_before = free_bytes_synced(&root);

    let work = tempdir();
    let mut cmd = Command::new(defragd_bin());
    cmd.arg("defrag")
        .arg("--max-mib-per-s")
        .arg(THROTTLE_MIB_PER_S.to_string())
        .args(consent(tpl))
        .args(&paths);
    let mut p = Proc::spawn(cmd, work.path(), "defrag");
    let reached = wait_for(moment, &mut p, &paths[0], &tpl.files[0].map);
    let hit_at = p.started.elapsed();
    match fault {
        Fault::SigKill => {
            p.kill();
        }
        Fault::Shutdown(flag) => {
            xfs_shutdown(&root, flag);
            let st = p.wait_exit(secs(15));
            let (out, err) = (p.stdout(), p.stderr());
            let Some(st) = st else {
                p.kill();
                panic!(
                    "{tag}: the one-shot did not end within 15 s of the shutdown:\n{out}\n{err}"
                );
            };
            assert!(
                st.code() == Some(1) && !err.contains("panicked"),
                "{tag}: after the shutdown the one-shot exited {st} (want 1, no panic):\n{out}\n{err}"
            );
        }
    }
    assert!(
        reached,
        "{tag}: the run ended before the moment; stdout:\n{}",
        p.stdout()
    );

    // Recovery.
    let replay = match fault {
        Fault::Shutdown(_) => {
            let msgs = replay_journal(&mut img);
            img.unmount_and_fsck();
            msgs.join(" | ")
        }
        Fault::SigKill => {
            img.unmount_and_fsck();
            String::new()
        }
    };
    img.mount();
    let mut moved: Vec<String> = Vec::new();
    for (f, p) in tpl.files.iter().zip(&paths) {
        assert_eq!(md5(p), f.md5, "{tag}: the content of {} changed", f.rel);
        let now = fiemap(p);
        assert_eq!(
            mapped_ranges(&now),
            mapped_ranges(&f.map),
            "{tag}: the data ranges of {} changed",
            f.rel
        );
        // Without rmapbt SWAPEXT is one transaction: a file is swapped
        // whole or not at all. With rmapbt the kernel swaps mapping by
        // mapping in a chain of transactions, and a crash can stop it
        // between two: the file then lies partly in its old blocks, partly
        // in the donor's, with the same data in both (the donor was
        // durable before the swap began), as the md5 above shows.
        let blocks = moved_blocks(&f.map, &now);
        let total: u64 = f.map.iter().map(|e| e.len).sum();
        assert!(
            tpl.rmapbt || blocks == 0 || blocks == total,
            "{tag}: {} is partly moved ({blocks} of {total} blocks)",
            f.rel
        );
        moved.push(format!("{}/{total}", blocks));
    }
    let free_after = free_bytes_synced(&root);
    eprintln!(
        "{tag}: fault {:.2}s into the run; after recovery moved {moved:?}, free {:+.2} MiB; replay: {replay}",
        hit_at.as_secs_f64(),
        (free_after as f64 - free_before as f64) / MIB as f64
    );
    assert!(
        free_after.abs_diff(free_before) <= TOLERANCE,
        "{tag}: free space {free_before} B before the run, {free_after} B after recovery: a leaked donor?"
    );

    // The rerun finishes the job.
    let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let (report, _) = defrag_json(consent(tpl), &refs, 0);
    for (f, p) in tpl.files.iter().zip(&paths) {
        let r = report.file(p);
        assert!(
            r.outcome == "defragmented" || r.reason_code.as_deref() == Some("already_contiguous"),
            "{tag}: rerun on {}: {r:?}",
            f.rel
        );
        assert_eq!(md5(p), f.md5, "{tag}: the rerun changed {}", f.rel);
        if let Err(e) = defragmented_verdict(p, f.extents) {
            panic!("{tag}: after the rerun: {e}");
        }
    }
    eprintln!(
        "{tag}: rerun: {}",
        paths
            .iter()
            .map(|p| format!("{} extents", xfs_bmap_extents(p)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    img.unmount_and_fsck();
}

/// Free bytes after `sync -f`: blocks freed by the last transactions
/// counted.
fn free_bytes_synced(root: &std::path::Path) -> u64 {
    sync_fs(root);
    free_bytes(root)
}

#[test]
fn sigkill_mid_copy_leaves_the_file_and_a_rerun_finishes() {
    if !require_root() {
        return;
    }
    let mut tpl = template(false);
    trial(&mut tpl, Fault::SigKill, Moment::MidCopy);
}

#[test]
fn shutdowns_before_the_first_swap_leave_the_files_and_free_the_donor() {
    if !require_root() {
        return;
    }
    let mut tpl = template(false);
    for flag in [ShutdownFlag::LogFlush, ShutdownFlag::NoLogFlush] {
        trial(&mut tpl, Fault::Shutdown(flag), Moment::FirstCopy);
    }
}

/// After a swap, on an image with the reverse mapping btree, where the
/// kernel swaps without the bmbt owner change that
/// `a_shutdown_after_a_swap_without_rmapbt_replays` is about.
#[test]
fn shutdowns_after_a_swap_with_rmapbt_keep_the_data_and_a_rerun_finishes() {
    if !require_root() {
        return;
    }
    let mut tpl = template(true);
    for moment in [Moment::MidCopy, Moment::CopyEnd, Moment::AfterSwap] {
        for flag in [ShutdownFlag::LogFlush, ShutdownFlag::NoLogFlush] {
            trial(&mut tpl, Fault::Shutdown(flag), moment);
        }
    }
}

/// KNOWN KERNEL BUG (6.18): on XFS without rmapbt (mkfs.xfs's default),
/// SWAPEXT of a file whose map is a btree (any fragmented file: more
/// than a dozen extents) logs a bmbt owner change, and after a shutdown
/// that leaves that transaction in the log, log recovery fails:
/// "Metadata corruption detected at xfs_dinode_verify ... log mount
/// failed", mount says "Structure needs cleaning", `xfs_repair -n` is not
/// clean. Not defragd's doing: `xfs_io -c 'swapext DONOR' FILE` (a named
/// donor, no O_TMPFILE, no attribute) then `xfs_io -x -c 'shutdown -f'`
/// fails the same way, and so did `xfs_fsr` then a shutdown in one run of
/// two; waiting 35 s or `sync -f` before the shutdown does not help;
/// `fsfreeze -f; fsfreeze -u` after the swap does, and so does
/// `-m rmapbt=1` (the test above). Ignored until the kernel is fixed:
/// `cargo test --test xfs -- --ignored` tells whether a kernel still has
/// it.
#[test]
#[ignore = "fails on kernel 6.18: XFS log recovery after SWAPEXT of a btree-format file"]
fn a_shutdown_after_a_swap_without_rmapbt_replays() {
    if !require_root() {
        return;
    }
    let mut tpl = template(false);
    trial(
        &mut tpl,
        Fault::Shutdown(ShutdownFlag::LogFlush),
        Moment::MidCopy,
    );
}
