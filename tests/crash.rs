//! Crash injection: N trials, each on a fresh copy of one fragmented image
//! (320 MiB, three files of 16, 24 and 32 MiB written into fragmented free
//! space, the rest of the free space then made contiguous). In each trial
//! defragd moves the files at 16 MiB/s, so a run spans ~4.5 s and 72 chunks,
//! and at a random moment (5-90% into the run; seeded RNG, the seed is
//! printed) one fault hits:
//!
//! - `sigkill`: SIGKILL of the process; the filesystem lives on.
//! - `shutdown_logflush`: EXT4_IOC_SHUTDOWN flag 1 (EXT4_GOING_FLAGS_
//!   LOGFLUSH, what `xfs_io -x -c 'shutdown -f'` sends): the running
//!   transaction is committed, then the journal aborted.
//! - `shutdown_nologflush`: flag 2 (NOLOGFLUSH, plain `xfs_io -x -c
//!   shutdown`): the journal is aborted at once, like a power cut; what was
//!   not yet committed is lost.
//!
//! The kinds rotate (trial i: kind i mod 3) and so does the mover: the
//! service (`defragd --config`, trials 0-2 of every 6) or the one-shot
//! (`defragd defrag --max-mib-per-s 16`, trials 3-5). A shutdown under the
//! service models the whole machine going down at one instant: the service
//! is frozen (SIGSTOP), the filesystem shut down, the service SIGKILLed, so
//! it never sees the EIO that follows (it would otherwise record a failed
//! attempt and wait its 10-minute retry delay). A shutdown under the
//! one-shot is "live": the command sees every later call fail with EIO and
//! must end by itself, with exit status 1 and no panic, within 15 s.
//!
//! After the fault: the process is gone; after a shutdown the image is
//! unmounted, mounted again (the journal replays, the orphan donor is
//! deleted) and unmounted; `e2fsck -fn` must exit 0; the image is mounted
//! again and every file must have its md5 from before, and the free block
//! count (statfs, after `sync -f`) must be back within TOLERANCE_BLOCKS of
//! the count before the run. Then defragd runs again (the service with the
//! same store, unthrottled: it must resume the interrupted job and finish
//! the queue; the one-shot over the same files) and every file must end
//! defragmented, md5 unchanged, and `e2fsck -fn` clean at the end.
//!
//! A failed trial does not stop the others: its message is kept and the
//! test fails at the end with all of them. The counts are printed as one
//! `SUMMARY part=crash ...` line.
//!
//! Environment: DEFRAGD_CRASH_TRIALS (default 6), DEFRAGD_CRASH_SEED
//! (default from the clock), DEFRAGD_CRASH_MODES (both | service |
//! oneshot; default both).

use defragd_testkit as common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

const IMAGE_MIB: u64 = 320;
/// (path under the mount point, size, seed).
const FILES: [(&str, u64, u64); 3] = [
    ("data/a.bin", 16 * MIB, 0xa1),
    ("data/b.bin", 24 * MIB, 0xb2),
    ("data/c/c.bin", 32 * MIB, 0xc3),
];
const THROTTLE_MIB_PER_S: u64 = 16;

/// How far the free block count may be off after recovery. The data
/// blocks of every file are the same number before and after (its mapped
/// ranges are checked equal), so what may legitimately differ is the
/// extent-tree blocks: a 4 KiB leaf holds 340 extents, and these files have
/// at most ~2,000 extents between them (≤ 7 leaves plus index blocks),
/// before or after a partial move. 256 blocks (1 MiB) covers that with
/// room to spare, and is 16 times smaller than the smallest leak that
/// matters: a leaked donor holds as many blocks as the part of the file
/// being moved, at least 4,096 (the smallest file, 16 MiB) on a first run.
const TOLERANCE_BLOCKS: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SigKill,
    Shutdown(ShutdownFlag),
}

impl Fault {
    const ALL: [Fault; 3] = [
        Fault::SigKill,
        Fault::Shutdown(ShutdownFlag::LogFlush),
        Fault::Shutdown(ShutdownFlag::NoLogFlush),
    ];
    fn name(self) -> &'static str {
        match self {
            Fault::SigKill => "sigkill",
            Fault::Shutdown(ShutdownFlag::LogFlush) => "shutdown_logflush",
            Fault::Shutdown(ShutdownFlag::NoLogFlush) => "shutdown_nologflush",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Service,
    OneShot,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Service => "service",
            Mode::OneShot => "oneshot",
        }
    }
}

/// A file of the template image, as it was before any trial.
#[derive(Clone, Debug)]
struct Original {
    rel: PathBuf,
    size: u64,
    md5: String,
    map: Vec<Extent>,
    extents: u64,
    data_blocks: u64,
}

/// The first logical block still where it was in `orig` (the mover goes
/// through a file in logical order, so the blocks before it were moved);
/// None when every block moved.
fn first_unmoved_block(orig: &[Extent], now: &[Extent]) -> Option<u64> {
    let mut first: Option<u64> = None;
    for e in now {
        for o in orig {
            let lo = e.logical.max(o.logical);
            let hi = (e.logical + e.len).min(o.logical + o.len);
            if lo >= hi {
                continue;
            }
            // Within the overlap, a block is unmoved where both map it to
            // the same physical block: that is all or nothing here.
            if e.physical + (lo - e.logical) == o.physical + (lo - o.logical) {
                first = Some(first.map_or(lo, |f: u64| f.min(lo)));
            }
        }
    }
    first
}

struct Template {
    img: LoopImage,
    files: Vec<Original>,
}

fn build_template() -> Template {
    let t = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(IMAGE_MIB));
    let root = img.root().to_path_buf();
    std::fs::create_dir_all(root.join("data/c")).expect("mkdir data/c");
    let paths: Vec<PathBuf> = FILES.iter().map(|(rel, _, _)| root.join(rel)).collect();
    let specs: Vec<(&Path, u64, u64)> = FILES
        .iter()
        .zip(&paths)
        .map(|((_, size, seed), p)| (p.as_path(), *size, *seed))
        .collect();
    make_fragmented_files(&root, &specs, 2 * MIB).delete_all(&root);
    img.settle();
    let files: Vec<Original> = FILES
        .iter()
        .map(|(rel, size, _)| {
            let p = img.root().join(rel);
            let map = fiemap(&p);
            Original {
                rel: PathBuf::from(rel),
                size: *size,
                md5: md5(&p),
                data_blocks: map.iter().map(|e| e.len).sum(),
                extents: filefrag_extents(&p),
                map,
            }
        })
        .collect();
    eprintln!(
        "template built in {:.1}s: {}; free {} MiB of {} MiB",
        t.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|f| format!(
                "{} {} MiB in {} extents",
                f.rel.display(),
                f.size / MIB,
                f.extents
            ))
            .collect::<Vec<_>>()
            .join(", "),
        free_bytes(img.root()) / MIB,
        fs_bytes(img.root()) / MIB
    );
    Template { img, files }
}

/// What one trial saw, for the SUMMARY line.
#[derive(Default, Debug)]
struct TrialStats {
    /// A move was under way when the fault hit (a job started and not
    /// finished, as the process reported it).
    in_move: bool,
    /// Files found partly moved after recovery.
    partial_after: u64,
    /// Files whose move (finished or partial, as reported) was undone by
    /// the fault: no block moved after recovery.
    reverted: u64,
    orphans_deleted: u64,
    resumed: u64,
    files_verified: u64,
    bytes_verified: u64,
    fsck_runs: u64,
    free_delta_blocks: i64,
}

/// "N orphan inode(s) deleted" in the kernel's messages, summed.
fn orphans_deleted(msgs: &[String]) -> u64 {
    msgs.iter()
        .filter_map(|m| {
            let at = m.find(" orphan inode")?;
            let before = &m[..at];
            let n = before.rsplit(|c: char| !c.is_ascii_digit()).next()?;
            if m[at..].contains("deleted") {
                n.parse::<u64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Unmounts and runs `e2fsck -fn`; fails with e2fsck's words if not clean.
fn fsck_clean(img: &mut LoopImage, when: &str) -> String {
    img.unmount();
    let (ok, out) = fsck_image(img.image_path());
    assert!(ok, "e2fsck -fn {when} is not clean (exit != 0):\n{out}");
    // "IMAGE: 14/81920 files (0.0% non-contiguous), 41234/81920 blocks"
    out.lines()
        .find(|l| l.contains(" files ("))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn service_config(root: &Path, mib_per_s: u64) -> ServiceConfig {
    let mut cfg = ServiceConfig::new(root, &[]);
    cfg.max_mib_per_s = mib_per_s;
    cfg
}

/// One trial; panics (caught by the caller) on any failure. `stats` is
/// filled as the trial goes, so a failed trial's counts are kept too.
fn trial(
    tpl: &mut Template,
    n: u64,
    fault: Fault,
    mode: Mode,
    rng: &mut Seeded,
    stats: &mut TrialStats,
) {
    let t = Instant::now();
    let mut img = tpl.img.duplicate();
    // Only the copy stays mounted: both carry the same filesystem UUID.
    tpl.img.unmount();
    let root = img.root().to_path_buf();
    let paths: Vec<PathBuf> = tpl.files.iter().map(|f| root.join(&f.rel)).collect();
    let free_before = free_blocks(&root);
    let total: u64 = tpl.files.iter().map(|f| f.size).sum();
    let expected = Duration::from_secs_f64(total as f64 / (THROTTLE_MIB_PER_S * MIB) as f64);
    // A moment within the run: 5% to 90% of its expected length after
    // the first chunk (service) or the start (one-shot).
    let frac = 0.05 + 0.85 * (rng.next_u64() % 10_000) as f64 / 10_000.0;
    let delay = expected.mul_f64(frac);
    let tag = format!("trial {n} ({}, {})", mode.name(), fault.name());
    eprintln!(
        "{tag}: fault {:.2}s into a ~{:.1}s run",
        delay.as_secs_f64(),
        expected.as_secs_f64()
    );

    // --- Run 1, and the fault.
    let home = ServiceHome::new();
    let work = tempdir();
    // Files the run reported finished, and the one it was moving.
    let mut done_before: Vec<bool> = vec![false; paths.len()];
    let mut moving: Option<usize> = None;
    match mode {
        Mode::Service => {
            home.write_config(&service_config(&root, THROTTLE_MIB_PER_S));
            let mut svc = home.start(&[]);
            svc.wait_for_line("the first job", secs(60), |l| l.contains("defragmenting "));
            sleep(delay);
            match fault {
                Fault::SigKill => {
                    svc.sigkill();
                }
                Fault::Shutdown(flag) => {
                    signal_pid(svc.pid(), nix::libc::SIGSTOP);
                    shutdown_fs(&root, flag);
                    svc.sigkill();
                }
            }
            let log = svc.log();
            for (i, p) in paths.iter().enumerate() {
                done_before[i] = log.contains(&defragmented(p));
                if !done_before[i] && log.contains(&defragmenting(p)) {
                    moving = Some(i);
                }
            }
            assert!(
                !log.contains("panicked"),
                "{tag}: the service panicked:\n{}",
                svc.tail(40)
            );
        }
        Mode::OneShot => {
            let mut cmd = Command::new(defragd_bin());
            cmd.arg("defrag")
                .arg("--max-mib-per-s")
                .arg(THROTTLE_MIB_PER_S.to_string())
                .args(&paths);
            let mut p = Proc::spawn(cmd, work.path(), "defrag-1");
            sleep(delay + Duration::from_millis(100));
            let running = p.is_running();
            if !running {
                // Possible only on a slow start: the fault then hits an
                // idle filesystem, which recovery must survive as well.
                eprintln!(
                    "{tag}: the one-shot ended before the fault ({:?})",
                    p.exit_status()
                );
            }
            match fault {
                Fault::SigKill => {
                    p.kill();
                }
                Fault::Shutdown(flag) => {
                    shutdown_fs(&root, flag);
                    // Live: every later call fails with EIO; the command
                    // must report it and end by itself.
                    let st = p.wait_exit(secs(15));
                    let (out, err) = (p.stdout(), p.stderr());
                    match st {
                        None => {
                            p.kill();
                            panic!(
                                "{tag}: the one-shot did not end within 15 s of the shutdown; stdout:\n{out}\nstderr:\n{err}"
                            );
                        }
                        Some(st) if running => {
                            assert!(
                                st.code() == Some(1) && !err.contains("panicked"),
                                "{tag}: after the shutdown the one-shot exited with {st} (want 1: some files failed, no panic); stdout:\n{out}\nstderr:\n{err}"
                            );
                            eprintln!(
                                "{tag}: the one-shot ended by itself after the shutdown ({st}): {}",
                                out.lines()
                                    .filter(|l| l.starts_with("failed"))
                                    .collect::<Vec<_>>()
                                    .join(" | ")
                            );
                        }
                        Some(_) => {}
                    }
                }
            }
            let out = p.stdout();
            for (i, path) in paths.iter().enumerate() {
                done_before[i] = out.lines().any(|l| {
                    l.starts_with("defragmented ") && l.contains(&format!(" {}  ", path.display()))
                });
            }
            // The one-shot takes the paths in the order given.
            moving = done_before.iter().position(|d| !d);
        }
    }
    stats.in_move = moving.is_some();
    eprintln!(
        "{tag}: at the fault: done {:?}, moving {:?}",
        paths
            .iter()
            .zip(&done_before)
            .filter(|(_, d)| **d)
            .map(|(p, _)| p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string())
            .collect::<Vec<_>>(),
        moving.map(|i| tpl.files[i].rel.display().to_string())
    );

    // --- Recovery.
    if let Fault::Shutdown(_) = fault {
        let msgs = replay_journal(&mut img);
        stats.orphans_deleted = orphans_deleted(&msgs);
        eprintln!("{tag}: replay mount said: {}", msgs.join(" | "));
    }
    let fsck = fsck_clean(&mut img, &format!("after the fault ({tag})"));
    stats.fsck_runs += 1;
    eprintln!("{tag}: e2fsck -fn after the fault: {fsck}");
    img.mount();
    let mut prefix_end: Vec<Option<u64>> = Vec::new();
    for (i, (f, p)) in tpl.files.iter().zip(&paths).enumerate() {
        assert_eq!(
            md5(p),
            f.md5,
            "{tag}: content of {} changed by the fault",
            f.rel.display()
        );
        let now = fiemap(p);
        assert_eq!(
            mapped_ranges(&now),
            mapped_ranges(&f.map),
            "{tag}: the mapped ranges of {} changed",
            f.rel.display()
        );
        let moved = moved_blocks(&f.map, &now);
        if moved > 0 && moved < f.data_blocks {
            stats.partial_after += 1;
        }
        if moved == 0 && (done_before[i] || moving == Some(i)) {
            // Reported finished (or under way), nothing of it on disk.
            if done_before[i] || fault == Fault::Shutdown(ShutdownFlag::NoLogFlush) {
                stats.reverted += 1;
            }
        }
        stats.files_verified += 1;
        stats.bytes_verified += f.size;
        let first = first_unmoved_block(&f.map, &now);
        eprintln!(
            "{tag}: {} after recovery: {moved} of {} blocks moved, first unmoved block {first:?}, {} extents",
            f.rel.display(),
            f.data_blocks,
            filefrag_extents(p)
        );
        prefix_end.push(first);
    }
    let free_after = free_blocks(&root);
    stats.free_delta_blocks = free_after as i64 - free_before as i64;
    assert!(
        free_after.abs_diff(free_before) <= TOLERANCE_BLOCKS,
        "{tag}: free blocks {free_before} before the run, {free_after} after recovery ({:+}): more than {TOLERANCE_BLOCKS} off; a leaked donor?",
        stats.free_delta_blocks
    );

    // --- Run 2: the job finishes. Layout problems are collected, so that
    // one message tells all of them; content and e2fsck fail at once.
    let mut problems: Vec<String> = Vec::new();
    match mode {
        Mode::Service => {
            home.write_config(&service_config(&root, 10_000));
            let mut svc = home.start(&[]);
            for (i, p) in paths.iter().enumerate() {
                if done_before[i] {
                    continue;
                }
                svc.wait_for_line(
                    &format!("the end of {}'s job", p.display()),
                    secs(60),
                    |l| {
                        l.contains(&defragmented(p))
                            || l.contains(&format!("failed {}", p.display()))
                            || l.contains(&format!("skipped {}: ", p.display()))
                            || (l.contains("dropped job ")
                                && l.contains(&format!(" {}: ", p.display())))
                    },
                );
            }
            let log = svc.log();
            for line in log.lines().filter(|l| l.contains("resuming job ")) {
                stats.resumed += 1;
                let Some(i) = paths
                    .iter()
                    .position(|p| line.contains(&format!(" {} at block ", p.display())))
                else {
                    problems.push(format!("a job resumed for a path not in the test: {line}"));
                    continue;
                };
                let at = line
                    .rsplit(" at block ")
                    .next()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("cannot parse {line:?}"));
                eprintln!("{tag}: run 2: {line}");
                if let Some(first) = prefix_end[i].filter(|first| at > *first) {
                    let done = log
                        .lines()
                        .find(|l| l.contains(&defragmented(&paths[i])))
                        .unwrap_or("(no line)");
                    problems.push(format!(
                        "run 2 resumed {} at block {at}, but after recovery its blocks from {first} on were in their old places (the {} undid moves the store's cursor had counted): blocks {first}..{at} are never moved again; run 2 then said: {done}",
                        tpl.files[i].rel.display(),
                        fault.name()
                    ));
                }
            }
            for (i, p) in paths.iter().enumerate() {
                // A move that finished just before the fault, unrecorded,
                // is found contiguous by the resumed job: also a success.
                let found_done =
                    log.contains(&format!("skipped {}: is already contiguous", p.display()));
                if !done_before[i] && !log.contains(&defragmented(p)) && !found_done {
                    problems.push(format!(
                        "run 2 did not defragment {}: {}",
                        p.display(),
                        log.lines()
                            .filter(|l| l.contains(&p.display().to_string()))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                }
            }
            assert!(
                !log.contains("panicked"),
                "{tag}: the service panicked:\n{}",
                svc.tail(40)
            );
            svc.stop(secs(15));
        }
        Mode::OneShot => {
            let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
            let (report, _) = defrag_json(&[], &refs, 0);
            for p in &paths {
                let f = report.file(p);
                if !(f.outcome == "defragmented"
                    || (f.outcome == "skipped"
                        && f.reason_code.as_deref() == Some("already_contiguous")))
                {
                    problems.push(format!(
                        "run 2 of the one-shot on {}: {} ({:?})",
                        p.display(),
                        f.outcome,
                        f.reason
                    ));
                }
            }
        }
    }

    // --- The end state.
    for (i, (f, p)) in tpl.files.iter().zip(&paths).enumerate() {
        assert_eq!(
            md5(p),
            f.md5,
            "{tag}: content of {} changed by run 2",
            f.rel.display()
        );
        stats.files_verified += 1;
        stats.bytes_verified += f.size;
        if let Err(e) = defragmented_verdict(p, f.extents) {
            let why = if done_before[i] && mode == Mode::Service {
                format!(
                    " — the service had logged it defragmented before the fault, the {} undid that move, and the store still says done, so run 2 left it alone",
                    fault.name()
                )
            } else {
                String::new()
            };
            problems.push(format!("{e}{why}"));
        }
    }
    let fsck = fsck_clean(&mut img, &format!("at the end of {tag}"));
    stats.fsck_runs += 1;
    assert!(
        problems.is_empty(),
        "{tag}: the files did not end defragmented (content and e2fsck were fine):\n- {}",
        problems.join("\n- ")
    );
    eprintln!(
        "{tag}: passed in {:.1}s; free blocks {:+} after recovery; e2fsck at the end: {fsck}",
        t.elapsed().as_secs_f64(),
        stats.free_delta_blocks
    );
}

#[test]
fn crash_mid_move_then_recover_and_finish() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let trials = env_count("DEFRAGD_CRASH_TRIALS", 6);
    let seed = env_seed("DEFRAGD_CRASH_SEED");
    let modes = std::env::var("DEFRAGD_CRASH_MODES").unwrap_or_else(|_| "both".into());
    let modes: Vec<Mode> = match modes.as_str() {
        "both" => vec![Mode::Service, Mode::OneShot],
        "service" => vec![Mode::Service],
        "oneshot" => vec![Mode::OneShot],
        other => panic!("DEFRAGD_CRASH_MODES={other:?}: want both, service or oneshot"),
    };
    eprintln!(
        "crash: {trials} trials, seed {seed:#x} (DEFRAGD_CRASH_SEED={seed:#x} repeats the moments)"
    );
    let mut rng = Seeded::new(seed);
    let mut tpl = build_template();

    let mut by_kind = [0u64; 3];
    let mut by_mode = [0u64; 2];
    let mut failures: Vec<String> = Vec::new();
    let mut fail_by_kind = [0u64; 3];
    let mut total = TrialStats::default();
    let mut in_move = 0u64;
    for n in 0..trials {
        let kind = (n % 3) as usize;
        let fault = Fault::ALL[kind];
        let mode = modes[((n / 3) as usize) % modes.len()];
        by_kind[kind] += 1;
        by_mode[usize::from(mode == Mode::OneShot)] += 1;
        let mut s = TrialStats::default();
        let res = catch_unwind(AssertUnwindSafe(|| {
            trial(&mut tpl, n, fault, mode, &mut rng, &mut s)
        }));
        in_move += u64::from(s.in_move);
        total.partial_after += s.partial_after;
        total.reverted += s.reverted;
        total.orphans_deleted += s.orphans_deleted;
        total.resumed += s.resumed;
        total.files_verified += s.files_verified;
        total.bytes_verified += s.bytes_verified;
        total.fsck_runs += s.fsck_runs;
        total.free_delta_blocks = total.free_delta_blocks.max(s.free_delta_blocks.abs());
        if let Err(p) = res {
            let msg = panic_message(&*p);
            eprintln!("trial {n} FAILED: {msg}");
            fail_by_kind[kind] += 1;
            let tag = format!("trial {n} ({}, {})", mode.name(), fault.name());
            if msg.starts_with(&tag) {
                failures.push(msg);
            } else {
                failures.push(format!("{tag}: {msg}"));
            }
        }
        // The template must be mounted for the next duplicate.
        tpl.img.mount();
    }

    print_summary(
        "crash",
        &[
            ("seed", format!("{seed:#x}")),
            ("trials", trials.to_string()),
            ("service", by_mode[0].to_string()),
            ("oneshot", by_mode[1].to_string()),
            ("sigkill", by_kind[0].to_string()),
            ("shutdown_logflush", by_kind[1].to_string()),
            ("shutdown_nologflush", by_kind[2].to_string()),
            ("in_move", in_move.to_string()),
            ("partial_after", total.partial_after.to_string()),
            ("reverted", total.reverted.to_string()),
            ("orphans_deleted", total.orphans_deleted.to_string()),
            ("resumed", total.resumed.to_string()),
            ("files_verified", total.files_verified.to_string()),
            ("bytes_verified", total.bytes_verified.to_string()),
            ("fsck_runs", total.fsck_runs.to_string()),
            ("max_free_delta_blocks", total.free_delta_blocks.to_string()),
            ("failures", failures.len().to_string()),
            ("failed_sigkill", fail_by_kind[0].to_string()),
            ("failed_logflush", fail_by_kind[1].to_string()),
            ("failed_nologflush", fail_by_kind[2].to_string()),
            ("secs", format!("{:.0}", started.elapsed().as_secs_f64())),
        ],
    );
    assert!(
        failures.is_empty(),
        "{} of {trials} crash trials failed (seed {seed:#x}):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
