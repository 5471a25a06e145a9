//! Concurrent writers with verification while defragd moves the same
//! files, and file churn while the service works through its queue.
//!
//! Writers (one test each, each on its own 384 MiB image with three
//! fragmented 24 MiB targets and two fragmented bystanders of 16 and 8 MiB):
//!
//! - `fio_direct`: fio `ioengine=libaio direct=1 rw=randwrite bs=4k
//!   verify=crc32c verify_fatal=1 do_verify=1 verify_backlog=256` over the
//!   existing fragmented file in place (`--size` = its size,
//!   `--overwrite=1`), after one sequential fio pass gave every 4 KiB block
//!   a verify header (an overwrite in place: the layout stays fragmented).
//! - `fio_buffered`: the same through the page cache (`ioengine=psync`,
//!   `fsync=32`).
//! - `appender`: 4 KiB records, each followed by fsync.
//!
//! Each target is moved by another mover while its writer runs: `defragd
//! defrag` unthrottled, `defragd defrag --max-mib-per-s 16`, and the
//! service (16 MiB/s; the writer starts once the job's first chunk is
//! logged, since the service leaves files being written alone until they
//! are quiet). fio is stopped with SIGINT once the move is over; it must
//! report error 0 and no `verify:` line. Afterwards: `e2fsck -fn` clean;
//! after a remount (cold cache) every block of the fio targets must verify
//! again (fio `rw=read verify=crc32c`, direct I/O: what is on disk), every
//! appended record and the original data before it must be intact, the
//! bystanders' md5 unchanged, and every target defragmented.
//!
//! Churn (`churn_while_the_service_works_through_its_queue`): 17 fragmented
//! files of 4-6 MiB are queued by the service's crawl (12 MiB/s, so the
//! queue lasts ~6 s); meanwhile, two files each (one while its move is
//! under way, one while it waits in the queue) are deleted, renamed,
//! truncated, replaced by another fragmented file renamed over them,
//! deleted and re-created with other content, extended, and hole-punched;
//! three are left alone. The service must stay up and exit 0 on SIGTERM;
//! every file must hold exactly what the test expects (replacements keep
//! their md5 and their extent map: the old file's job never moved them;
//! punched ranges stay holes); e2fsck clean.
//!
//! Each test prints one `SUMMARY part=writers_<name> ...` line.
//! DEFRAGD_WRITERS_ROUNDS (default 1) repeats each test on fresh images;
//! DEFRAGD_WRITERS_SEED fixes the churn's random choices (else the clock).

use defragd_testkit as common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use nix::fcntl::{fallocate, FallocateFlags};

use common::*;

const THROTTLE_MIB_PER_S: u64 = 16;
const TARGET_SIZE: u64 = 24 * MIB;

/// Whether a service log line ends the job of `path` for now: done,
/// skipped, dropped, failed (a failed job is retried only 10 minutes
/// later).
fn ends_job(line: &str, path: &Path) -> bool {
    let p = path.display().to_string();
    line.contains(&format!("defragmented {p}: "))
        || line.contains(&format!("skipped {p}: "))
        || line.contains(&format!("failed {p} "))
        || line.contains(&format!("failed {p}:"))
        || (line.contains("dropped job ") && line.contains(&format!(" {p}: ")))
}

// ---------------------------------------------------------------------------
// Writers.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    FioDirect,
    FioBuffered,
    Appender,
}

impl Writer {
    fn name(self) -> &'static str {
        match self {
            Writer::FioDirect => "fio_direct",
            Writer::FioBuffered => "fio_buffered",
            Writer::Appender => "appender",
        }
    }
    fn is_fio(self) -> bool {
        self != Writer::Appender
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mover {
    OneShot,
    OneShotThrottled,
    Service,
}

impl Mover {
    const ALL: [Mover; 3] = [Mover::OneShot, Mover::OneShotThrottled, Mover::Service];
    fn name(self) -> &'static str {
        match self {
            Mover::OneShot => "oneshot",
            Mover::OneShotThrottled => "oneshot_16mibps",
            Mover::Service => "service_16mibps",
        }
    }
    fn target(self) -> &'static str {
        match self {
            Mover::OneShot => "w/oneshot.bin",
            Mover::OneShotThrottled => "w/throttled.bin",
            Mover::Service => "w/service.bin",
        }
    }
}

fn fio_common(path: &Path, size: u64) -> Vec<String> {
    vec![
        format!("--filename={}", path.display()),
        format!("--size={size}"),
        "--bs=4k".into(),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
    ]
}

/// One sequential pass that gives every 4 KiB block a verify header,
/// overwriting the file in place.
fn fio_format(path: &Path, size: u64) {
    let mut args = vec![
        "--name=format".to_string(),
        "--rw=write".into(),
        "--overwrite=1".into(),
        "--ioengine=libaio".into(),
        "--direct=1".into(),
        "--iodepth=32".into(),
        "--do_verify=0".into(),
    ];
    args.extend(fio_common(path, size));
    let r = run_fio(&args, secs(120));
    assert!(
        r.clean(),
        "formatting {} failed: {}",
        path.display(),
        r.describe()
    );
}

/// Reads every block of `path` with direct I/O and checks its header and
/// crc32c.
fn fio_read_verify(path: &Path, size: u64) -> FioResult {
    let mut args = vec![
        "--name=readverify".to_string(),
        "--rw=read".into(),
        "--ioengine=libaio".into(),
        "--direct=1".into(),
        "--iodepth=16".into(),
    ];
    args.extend(fio_common(path, size));
    run_fio(&args, secs(120))
}

fn spawn_fio_writer(kind: Writer, path: &Path, size: u64) -> FioRun {
    let mut args = vec![
        format!("--name={}", kind.name()),
        "--rw=randwrite".into(),
        "--overwrite=1".into(),
        "--do_verify=1".into(),
        "--verify_backlog=256".into(),
        "--time_based".into(),
        "--runtime=120".into(),
    ];
    match kind {
        Writer::FioDirect => args.extend([
            "--ioengine=libaio".to_string(),
            "--direct=1".into(),
            "--iodepth=16".into(),
        ]),
        Writer::FioBuffered => args.extend([
            "--ioengine=psync".to_string(),
            "--direct=0".into(),
            "--fsync=32".into(),
        ]),
        Writer::Appender => unreachable!("not a fio writer"),
    }
    args.extend(fio_common(path, size));
    spawn_fio(&args)
}

const RECORD: usize = 4096;
const MAGIC: &[u8; 8] = b"WRTRREC!";

/// Record `i` of the appender with tag `tag`: magic, tag, counter, then
/// bytes that depend on both.
fn record(tag: u64, i: u64) -> Vec<u8> {
    let mut r = Seeded::new(tag.rotate_left(32) ^ i ^ 0xa99e_0000_0000_0000).bytes(RECORD);
    r[..8].copy_from_slice(MAGIC);
    r[8..16].copy_from_slice(&tag.to_le_bytes());
    r[16..24].copy_from_slice(&i.to_le_bytes());
    r
}

struct Appender {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: thread::JoinHandle<Result<Duration, String>>,
}

/// Appends records to `path` (write, then fsync, then 2 ms), until told to
/// stop; returns the longest write+fsync.
fn start_appender(path: &Path, tag: u64) -> Appender {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for append: {e}", path.display()));
    let (stop2, written2) = (stop.clone(), written.clone());
    let handle = thread::spawn(move || {
        let mut longest = Duration::ZERO;
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let t = Instant::now();
            f.write_all(&record(tag, i))
                .map_err(|e| format!("append record {i}: {e}"))?;
            f.sync_all()
                .map_err(|e| format!("fsync after record {i}: {e}"))?;
            longest = longest.max(t.elapsed());
            i += 1;
            written2.store(i, Ordering::Relaxed);
            sleep(Duration::from_millis(2));
        }
        Ok(longest)
    });
    Appender {
        stop,
        written,
        handle,
    }
}

/// Checks an appended file: the original `orig_size` bytes have `orig_md5`,
/// then exactly `records` intact records. Returns the number of bad
/// records (a wrong length counts as one error).
fn verify_appended(
    path: &Path,
    orig_size: u64,
    orig_md5: &str,
    tag: u64,
    records: u64,
) -> (u64, String) {
    let data = read_all(path);
    let mut errors = 0;
    let mut first = String::new();
    let want = orig_size + records * RECORD as u64;
    if data.len() as u64 != want {
        errors += 1;
        first = format!(
            "{} is {} bytes, want {want} ({records} records)",
            path.display(),
            data.len()
        );
    }
    if md5_prefix(path, orig_size.min(data.len() as u64)) != orig_md5 {
        errors += 1;
        if first.is_empty() {
            first = format!("{}: the original data changed", path.display());
        }
    }
    for i in 0..records {
        let off = (orig_size + i * RECORD as u64) as usize;
        let ok = data
            .get(off..off + RECORD)
            .is_some_and(|got| got == record(tag, i));
        if !ok {
            errors += 1;
            if first.is_empty() {
                first = format!("{}: record {i} at offset {off} is damaged", path.display());
            }
        }
    }
    (errors, first)
}

enum Running {
    Fio(FioRun),
    Append(Appender),
}

/// What a writer did and found.
#[derive(Debug, Default)]
struct WriterReport {
    clean: bool,
    verify_errors: u64,
    bytes_written: u64,
    bytes_verified: u64,
    records: u64,
    detail: String,
}

fn start_writer(kind: Writer, path: &Path, size: u64, tag: u64) -> Running {
    let mut w = match kind {
        Writer::Appender => Running::Append(start_appender(path, tag)),
        _ => Running::Fio(spawn_fio_writer(kind, path, size)),
    };
    // Under way before the move starts (or goes on).
    let t = Instant::now();
    match &mut w {
        Running::Append(a) => {
            while a.written.load(Ordering::Relaxed) < 25 {
                assert!(
                    !a.handle.is_finished() && t.elapsed() < secs(20),
                    "the appender did not get going"
                );
                sleep(Duration::from_millis(5));
            }
        }
        Running::Fio(f) => {
            sleep(Duration::from_millis(500));
            assert!(f.is_running(), "fio ended at once");
        }
    }
    w
}

fn stop_writer(w: Running) -> WriterReport {
    match w {
        Running::Fio(mut f) => {
            f.interrupt();
            let r = f.wait(secs(60));
            WriterReport {
                clean: r.clean_when_interrupted(),
                verify_errors: r.verify_errors,
                bytes_written: r.write_bytes,
                bytes_verified: r.read_bytes,
                records: 0,
                detail: r.describe(),
            }
        }
        Running::Append(a) => {
            a.stop.store(true, Ordering::Relaxed);
            let res = a.handle.join().expect("appender thread");
            let records = a.written.load(Ordering::Relaxed);
            let (clean, detail) = match res {
                Ok(longest) => (
                    true,
                    format!(
                        "{records} records, longest write+fsync {:.1} ms",
                        longest.as_secs_f64() * 1e3
                    ),
                ),
                Err(e) => (false, format!("the appender failed: {e}")),
            };
            WriterReport {
                clean,
                verify_errors: 0,
                bytes_written: records * RECORD as u64,
                bytes_verified: 0,
                records,
                detail,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The writer tests.

struct Target {
    mover: Mover,
    path: PathBuf,
    size: u64,
    md5: String,
    extents: u64,
    tag: u64,
    records: u64,
}

#[derive(Default)]
struct WriterTotals {
    rounds: u64,
    phases: u64,
    moved: u64,
    overlapped: u64,
    bytes_written: u64,
    bytes_verified_live: u64,
    verify_errors: u64,
    final_verified_bytes: u64,
    files_verified: u64,
    bytes_verified: u64,
    fsck_runs: u64,
    failures: Vec<String>,
}

fn writer_round(kind: Writer, round: u64, tot: &mut WriterTotals) {
    let t0 = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(384));
    let root = img.root().to_path_buf();
    fs::create_dir_all(root.join("w")).expect("mkdir w");
    fs::create_dir_all(root.join("other")).expect("mkdir other");
    let others: Vec<(PathBuf, u64, u64)> = vec![
        (root.join("other/o1.bin"), 16 * MIB, 0x01 + round * 16),
        (root.join("other/o2.bin"), 8 * MIB, 0x02 + round * 16),
    ];
    let mut targets: Vec<Target> = Mover::ALL
        .iter()
        .enumerate()
        .map(|(i, m)| Target {
            mover: *m,
            path: root.join(m.target()),
            size: TARGET_SIZE,
            md5: String::new(),
            extents: 0,
            tag: (round << 8) | i as u64,
            records: 0,
        })
        .collect();
    let mut specs: Vec<(&Path, u64, u64)> = targets
        .iter()
        .map(|t| (t.path.as_path(), t.size, 0x7a00 + t.tag))
        .collect();
    specs.extend(others.iter().map(|(p, s, seed)| (p.as_path(), *s, *seed)));
    make_fragmented_files(&root, &specs, 2 * MIB).delete_all(&root);
    img.settle();
    for t in targets.iter_mut() {
        let before = filefrag_extents(&t.path);
        if kind.is_fio() {
            fio_format(&t.path, t.size);
        }
        t.extents = filefrag_extents(&t.path);
        assert_eq!(
            t.extents,
            before,
            "formatting {} in place changed its layout",
            t.path.display()
        );
        t.md5 = md5(&t.path);
    }
    let other_md5: Vec<String> = others.iter().map(|(p, _, _)| md5(p)).collect();
    eprintln!(
        "{} round {round}: image ready in {:.1}s; targets in {:?} extents, others in {:?}",
        kind.name(),
        t0.elapsed().as_secs_f64(),
        targets.iter().map(|t| t.extents).collect::<Vec<_>>(),
        others
            .iter()
            .map(|(p, _, _)| filefrag_extents(p))
            .collect::<Vec<_>>()
    );

    let mut problems: Vec<String> = Vec::new();
    for t in targets.iter_mut() {
        tot.phases += 1;
        let label = format!("{} round {round} {}", kind.name(), t.mover.name());
        let (report, moved, overlapped, took) = match t.mover {
            Mover::OneShot | Mover::OneShotThrottled => {
                let w = start_writer(kind, &t.path, t.size, t.tag);
                let mut args: Vec<String> = vec!["defrag".into(), "--json".into()];
                if t.mover == Mover::OneShotThrottled {
                    args.extend(["--max-mib-per-s".into(), THROTTLE_MIB_PER_S.to_string()]);
                }
                args.push(t.path.display().to_string());
                let run = defragd(&args);
                sleep(Duration::from_millis(300));
                let report = stop_writer(w);
                let moved = if run.code == 0 {
                    let rep: DefragReport = run.json();
                    let f = rep.file(&t.path);
                    // Whether a file under a hostile writer gets moved at all is
                    // a matter of quality, printed; its data is asserted below.
                    if f.outcome != "defragmented" {
                        eprintln!(
                            "NOTE {label}: the one-shot did not move the file being written: {} ({:?})",
                            f.outcome, f.reason
                        );
                    }
                    f.outcome == "defragmented"
                } else if run.code == 1 && run.stdout.contains("\"outcome\": \"failed\"") {
                    // Exit 1 with an honest "failed" (the kernel kept finding
                    // the pages busy under the writer): quality, not safety.
                    eprintln!(
                        "NOTE {label}: defragd defrag reported a failure under the writer:\n{}",
                        run.stdout
                    );
                    false
                } else {
                    problems.push(format!(
                        "{label}: defragd defrag exited {}:\n{}\n{}",
                        run.code, run.stdout, run.stderr
                    ));
                    false
                };
                // The writer ran from before the command started to after
                // it ended.
                (report, moved, moved, run.elapsed)
            }
            Mover::Service => {
                let home = ServiceHome::new();
                let mut cfg = ServiceConfig::new(&root, &[]);
                cfg.max_mib_per_s = THROTTLE_MIB_PER_S;
                home.write_config(&cfg);
                let mut svc = home.start(&[]);
                svc.wait_for_log(&defragmenting(&t.path), secs(60));
                let started = Instant::now();
                let w = start_writer(kind, &t.path, t.size, t.tag);
                let overlapped = !svc.log().lines().any(|l| ends_job(l, &t.path));
                let end = svc.wait_for_line("the end of the target's job", secs(60), |l| {
                    ends_job(l, &t.path)
                });
                let took = started.elapsed();
                sleep(Duration::from_millis(300));
                let report = stop_writer(w);
                let moved = end.contains(&defragmented(&t.path));
                if !moved {
                    problems.push(format!(
                        "{label}: the service's job ended without a move: {end}"
                    ));
                }
                if !overlapped {
                    problems.push(format!(
                        "{label}: the job ended before the writer got going; the test needs a slower throttle"
                    ));
                }
                for (p, _, _) in &others {
                    svc.wait_for_line(
                        &format!("the end of {}'s job", p.display()),
                        secs(60),
                        |l| ends_job(l, p),
                    );
                }
                assert!(
                    !svc.log().contains("panicked"),
                    "{label}: the service panicked"
                );
                svc.stop(secs(15));
                (report, moved, overlapped, took)
            }
        };
        tot.moved += u64::from(moved);
        tot.overlapped += u64::from(overlapped);
        tot.bytes_written += report.bytes_written;
        tot.bytes_verified_live += report.bytes_verified;
        tot.verify_errors += report.verify_errors;
        t.records = report.records;
        eprintln!(
            "{label}: move {:.1}s (moved: {moved}, writer active throughout: {overlapped}); writer: {}",
            took.as_secs_f64(),
            if kind.is_fio() {
                report.detail.lines().next().unwrap_or_default().to_string()
            } else {
                report.detail.clone()
            }
        );
        if !report.clean || report.verify_errors > 0 {
            problems.push(format!(
                "{label}: the writer reported errors while the file was moved: {}",
                report.detail
            ));
        }
    }

    // e2fsck, then everything again from the disk (cold cache).
    img.unmount();
    let (ok, out) = fsck_image(img.image_path());
    tot.fsck_runs += 1;
    assert!(
        ok,
        "{} round {round}: e2fsck -fn is not clean:\n{out}",
        kind.name()
    );
    img.mount();
    for t in &targets {
        let label = format!("{} round {round} {}", kind.name(), t.mover.name());
        if kind.is_fio() {
            let r = fio_read_verify(&t.path, t.size);
            tot.final_verified_bytes += r.read_bytes;
            tot.verify_errors += r.verify_errors;
            if !r.clean() || r.read_bytes != t.size {
                problems.push(format!(
                    "{label}: after a remount the file does not verify: {}",
                    r.describe()
                ));
            }
        } else {
            let (errors, first) = verify_appended(&t.path, t.size, &t.md5, t.tag, t.records);
            tot.verify_errors += errors;
            tot.final_verified_bytes += t.size + t.records * RECORD as u64;
            if errors > 0 {
                problems.push(format!(
                    "{label}: after a remount, {errors} verification errors; first: {first}"
                ));
            }
        }
        tot.files_verified += 1;
        tot.bytes_verified += t.size;
        let after = filefrag_extents(&t.path);
        let ideal = ideal_extents(&t.path);
        eprintln!("{label}: filefrag {} -> {after} (ideal {ideal})", t.extents);
        if after * 4 > t.extents {
            eprintln!(
                "NOTE {label}: {} is in {after} extents after the move (before {}, ideal {ideal}): a writer competed for the space",
                t.path.display(),
                t.extents
            );
        }
    }
    for ((p, size, _), want) in others.iter().zip(&other_md5) {
        tot.files_verified += 1;
        tot.bytes_verified += size;
        if md5(p) != *want {
            problems.push(format!(
                "{} round {round}: {} (not written) changed",
                kind.name(),
                p.display()
            ));
        }
    }
    img.unmount();
    let (ok, out) = fsck_image(img.image_path());
    tot.fsck_runs += 1;
    assert!(
        ok,
        "{} round {round}: e2fsck -fn at the end:\n{out}",
        kind.name()
    );
    eprintln!(
        "{} round {round}: done in {:.1}s, {} problems",
        kind.name(),
        t0.elapsed().as_secs_f64(),
        problems.len()
    );
    tot.failures.extend(problems);
}

fn writer_test(kind: Writer) {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let rounds = env_count("DEFRAGD_WRITERS_ROUNDS", 1);
    let mut tot = WriterTotals::default();
    for round in 0..rounds {
        tot.rounds += 1;
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer_round(kind, round, &mut tot)
        }));
        if let Err(p) = res {
            tot.failures
                .push(format!("round {round}: {}", panic_message(&*p)));
        }
    }
    print_summary(
        &format!("writers_{}", kind.name()),
        &[
            ("rounds", tot.rounds.to_string()),
            ("phases", tot.phases.to_string()),
            ("moved", tot.moved.to_string()),
            ("overlapped", tot.overlapped.to_string()),
            ("bytes_written", tot.bytes_written.to_string()),
            ("bytes_verified_live", tot.bytes_verified_live.to_string()),
            ("bytes_verified_after", tot.final_verified_bytes.to_string()),
            ("verify_errors", tot.verify_errors.to_string()),
            ("files_verified", tot.files_verified.to_string()),
            ("bytes_verified", tot.bytes_verified.to_string()),
            ("fsck_runs", tot.fsck_runs.to_string()),
            ("failures", tot.failures.len().to_string()),
            ("secs", format!("{:.0}", started.elapsed().as_secs_f64())),
        ],
    );
    assert!(
        tot.failures.is_empty(),
        "{}: {} failures:\n- {}",
        kind.name(),
        tot.failures.len(),
        tot.failures.join("\n- ")
    );
}

#[test]
fn fio_direct_randwrite_verifies_while_the_file_is_moved() {
    writer_test(Writer::FioDirect);
}

#[test]
fn fio_buffered_randwrite_verifies_while_the_file_is_moved() {
    writer_test(Writer::FioBuffered);
}

#[test]
fn fsyncing_appender_keeps_every_record_while_the_file_is_moved() {
    writer_test(Writer::Appender);
}

// ---------------------------------------------------------------------------
// Churn.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Delete,
    Rename,
    Truncate,
    Replace,
    Recreate,
    Extend,
    PunchHole,
    Untouched,
}

impl Act {
    const CHURN: [Act; 7] = [
        Act::Delete,
        Act::Rename,
        Act::Truncate,
        Act::Replace,
        Act::Recreate,
        Act::Extend,
        Act::PunchHole,
    ];
    fn name(self) -> &'static str {
        match self {
            Act::Delete => "delete",
            Act::Rename => "rename",
            Act::Truncate => "truncate",
            Act::Replace => "replace",
            Act::Recreate => "recreate",
            Act::Extend => "extend",
            Act::PunchHole => "punch",
            Act::Untouched => "untouched",
        }
    }
}

/// When an act was meant to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    InMove,
    Queued,
}

/// Where the file's job stood when the act happened (from the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Queued,
    InMove,
    Done,
}

struct ChurnFile {
    path: PathBuf,
    act: Act,
    when: When,
    /// What the file must hold at the end (None: no file at `final_path`).
    expect: Option<Vec<u8>>,
    final_path: PathBuf,
    /// For Replace: the replacement's extent map, which nothing may change.
    replacement_map: Option<Vec<Extent>>,
    /// For PunchHole: the punched byte range, which must stay a hole.
    hole: Option<(u64, u64)>,
    extents_before: u64,
    seen: Option<Seen>,
    acted_at: Option<Instant>,
}

fn job_state(log: &str, path: &Path) -> Seen {
    if log.lines().any(|l| ends_job(l, path)) {
        Seen::Done
    } else if log.contains(&defragmenting(path))
        || log.contains(&format!(" {} at block ", path.display()))
    {
        Seen::InMove
    } else {
        Seen::Queued
    }
}

/// Does `f.act` to its file; sets what the file must hold afterwards.
fn act_on(f: &mut ChurnFile, spare: &Path, rng: &mut Seeded) {
    let p = f.path.clone();
    let orig = f.expect.clone().expect("original content known");
    match f.act {
        Act::Delete => {
            fs::remove_file(&p).expect("delete");
            f.expect = None;
        }
        Act::Rename => {
            let to = p.with_extension("renamed");
            fs::rename(&p, &to).expect("rename");
            f.final_path = to;
        }
        Act::Truncate => {
            let len = (orig.len() as u64 / 2 / 4096) * 4096 + 123;
            OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|file| {
                    file.set_len(len)?;
                    file.sync_all()
                })
                .expect("truncate");
            f.expect = Some(orig[..len as usize].to_vec());
        }
        Act::Replace => {
            // A fragmented file made beforehand (in a tree the service
            // excludes) is renamed over the queued one: a new inode at the
            // same path.
            let map = fiemap(spare);
            let data = read_all(spare);
            fs::rename(spare, &p).expect("rename the replacement over the file");
            f.replacement_map = Some(map);
            f.expect = Some(data);
        }
        Act::Recreate => {
            let old = fs::metadata(&p).expect("stat").ino();
            let old_gen = generation(&p);
            fs::remove_file(&p).expect("delete before re-create");
            let data = rng.bytes(orig.len() / 2 + 4096);
            write_fsynced(&p, &data, 256 * 1024);
            f.replacement_map = Some(fiemap(&p));
            f.expect = Some(data);
            eprintln!(
                "re-created {}: inode {old} generation {old_gen} -> inode {} generation {}",
                p.display(),
                fs::metadata(&p).expect("stat").ino(),
                generation(&p)
            );
        }
        Act::Extend => {
            let more = rng.bytes(MIB as usize + 1000);
            let mut file = OpenOptions::new()
                .append(true)
                .open(&p)
                .expect("open to extend");
            file.write_all(&more).expect("extend");
            file.sync_all().expect("fsync");
            let mut e = orig;
            e.extend_from_slice(&more);
            f.expect = Some(e);
        }
        Act::PunchHole => {
            let off = (orig.len() as u64 / 3 / 4096) * 4096;
            let len = MIB;
            let file = OpenOptions::new()
                .write(true)
                .open(&p)
                .expect("open to punch");
            fallocate(
                &file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            )
            .expect("punch a hole");
            file.sync_all().expect("fsync");
            let mut e = orig;
            e[off as usize..(off + len) as usize].fill(0);
            f.expect = Some(e);
            f.hole = Some((off, len));
        }
        Act::Untouched => {}
    }
}

#[test]
fn churn_while_the_service_works_through_its_queue() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let rounds = env_count("DEFRAGD_WRITERS_ROUNDS", 1);
    let seed = env_seed("DEFRAGD_WRITERS_SEED");
    eprintln!("churn: seed {seed:#x} (DEFRAGD_WRITERS_SEED={seed:#x} repeats the choices)");
    let mut rng = Seeded::new(seed);
    let mut failures: Vec<String> = Vec::new();
    let mut acts: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    let mut counts = ChurnCounts::default();
    for round in 0..rounds {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            churn_round(round, &mut rng, &mut acts, &mut counts)
        }));
        match res {
            Ok(problems) => failures.extend(problems),
            Err(p) => failures.push(format!("round {round}: {}", panic_message(&*p))),
        }
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("seed", format!("{seed:#x}")),
        ("rounds", rounds.to_string()),
        ("files", counts.files.to_string()),
    ];
    let names: Vec<(String, u64)> = acts
        .iter()
        .map(|((a, s), n)| (format!("{a}_{s}"), *n))
        .collect();
    for (k, v) in &names {
        fields.push((k.as_str(), v.to_string()));
    }
    fields.extend([
        ("defragmented", counts.defragmented.to_string()),
        ("dropped", counts.dropped.to_string()),
        ("failed_jobs", counts.failed_jobs.to_string()),
        ("skipped", counts.skipped.to_string()),
        ("files_verified", counts.files_verified.to_string()),
        ("bytes_verified", counts.bytes_verified.to_string()),
        ("fsck_runs", counts.fsck_runs.to_string()),
        ("failures", failures.len().to_string()),
        ("secs", format!("{:.0}", started.elapsed().as_secs_f64())),
    ]);
    print_summary("writers_churn", &fields);
    assert!(
        failures.is_empty(),
        "churn: {} failures (seed {seed:#x}):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

#[derive(Default)]
struct ChurnCounts {
    files: u64,
    defragmented: u64,
    dropped: u64,
    failed_jobs: u64,
    skipped: u64,
    files_verified: u64,
    bytes_verified: u64,
    fsck_runs: u64,
}

fn churn_round(
    round: u64,
    rng: &mut Seeded,
    acts: &mut BTreeMap<(&'static str, &'static str), u64>,
    counts: &mut ChurnCounts,
) -> Vec<String> {
    let t0 = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(384));
    let root = img.root().to_path_buf();
    let q = root.join("q");
    let spare_dir = root.join("spare");
    fs::create_dir_all(&q).expect("mkdir q");
    fs::create_dir_all(&spare_dir).expect("mkdir spare");

    // Two files per churn act (one acted on mid-move, one while queued),
    // three left alone, in a seeded order.
    let mut plan: Vec<(Act, When)> = Act::CHURN
        .iter()
        .flat_map(|a| [(*a, When::InMove), (*a, When::Queued)])
        .collect();
    plan.extend([(Act::Untouched, When::Queued); 3]);
    for i in (1..plan.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        plan.swap(i, j);
    }
    let sizes: Vec<u64> = plan
        .iter()
        .map(|_| rng.range(4, 6) * MIB + rng.range(0, 15) * 4096)
        .collect();
    let paths: Vec<PathBuf> = (0..plan.len())
        .map(|i| q.join(format!("f{i:02}.bin")))
        .collect();
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| spare_dir.join(format!("r{i}.bin")))
        .collect();
    let mut specs: Vec<(&Path, u64, u64)> = paths
        .iter()
        .zip(&sizes)
        .enumerate()
        .map(|(i, (p, s))| (p.as_path(), *s, 0xc4_0000 + round * 100 + i as u64))
        .collect();
    for (i, s) in spares.iter().enumerate() {
        specs.push((s.as_path(), 3 * MIB, 0x5a_0000 + round * 100 + i as u64));
    }
    make_fragmented_files(&root, &specs, 2 * MIB).delete_all(&root);
    img.settle();
    let mut files: Vec<ChurnFile> = plan
        .iter()
        .zip(&paths)
        .map(|((act, when), p)| ChurnFile {
            path: p.clone(),
            act: *act,
            when: *when,
            expect: Some(read_all(p)),
            final_path: p.clone(),
            replacement_map: None,
            hole: None,
            extents_before: filefrag_extents(p),
            seen: None,
            acted_at: None,
        })
        .collect();
    counts.files += files.len() as u64;
    let mut spare_iter = spares.clone().into_iter();
    let spare_for: Vec<Option<PathBuf>> = files
        .iter()
        .map(|f| {
            if f.act == Act::Replace {
                spare_iter.next()
            } else {
                None
            }
        })
        .collect();
    let spare_md5: Vec<String> = spares.iter().map(|p| md5(p)).collect();
    eprintln!(
        "churn round {round}: {} files ready in {:.1}s; plan: {}",
        files.len(),
        t0.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|f| format!(
                "{} {}/{:?} ({} extents)",
                f.path.file_name().unwrap_or_default().to_string_lossy(),
                f.act.name(),
                f.when,
                f.extents_before
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = 12;
    home.write_config(&cfg);
    let exclude = format!("[{}]", toml_str(&format!("{}/**", spare_dir.display())));
    let mut svc = home.start(&[("DEFRAGD__POLICY__EXCLUDE", exclude.as_str())]);
    svc.wait_for_log(&format!("crawl of {}: pass done", root.display()), secs(60));

    let mut problems: Vec<String> = Vec::new();
    // Queued acts first, on files whose job has not started; then the
    // mid-move ones as their jobs start, each after a random part of its
    // expected length (size / 12 MiB/s).
    let log = svc.log();
    for (i, f) in files.iter_mut().enumerate() {
        if f.when == When::Queued && f.act != Act::Untouched {
            let seen = job_state(&log, &f.path);
            if seen == Seen::Queued {
                f.seen = Some(seen);
                act_on(f, spare_for[i].as_deref().unwrap_or(Path::new("")), rng);
                f.acted_at = Some(Instant::now());
            }
        }
    }
    let deadline = Instant::now() + secs(60);
    loop {
        let log = svc.log();
        let mut pending = 0;
        for (i, f) in files.iter_mut().enumerate() {
            if f.act == Act::Untouched || f.acted_at.is_some() {
                continue;
            }
            let seen = job_state(&log, &f.path);
            let due = match (f.when, seen) {
                (_, Seen::InMove) => true,
                // A queued act whose job had already started, or any act
                // whose job is over: do it now, and say so.
                (When::Queued, _) | (When::InMove, Seen::Done) => true,
                (When::InMove, Seen::Queued) => false,
            };
            if !due {
                pending += 1;
                continue;
            }
            if seen == Seen::InMove {
                let expected = f.expect.as_ref().map_or(0, Vec::len) as f64 / (12.0 * MIB as f64);
                sleep(Duration::from_secs_f64(
                    expected * 0.6 * (rng.next_u64() % 1000) as f64 / 1000.0,
                ));
            }
            // What the log says at the moment of the act.
            f.seen = Some(job_state(&svc.log(), &f.path));
            act_on(f, spare_for[i].as_deref().unwrap_or(Path::new("")), rng);
            f.acted_at = Some(Instant::now());
        }
        if pending == 0 {
            break;
        }
        if !svc.is_running() {
            problems.push(format!(
                "round {round}: the service died during the churn:\n{}",
                svc.tail(40)
            ));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: the churn did not finish in 60 s"
        );
        sleep(Duration::from_millis(10));
    }
    for f in &files {
        if f.act != Act::Untouched {
            let seen = f.seen.map_or("never", |s| match s {
                Seen::Queued => "queued",
                Seen::InMove => "in_move",
                Seen::Done => "after",
            });
            *acts.entry((f.act.name(), seen)).or_default() += 1;
        }
    }

    // Every job ends (a failed one is retried only after 10 minutes).
    if svc.is_running() {
        for f in &files {
            let p = f.path.clone();
            svc.wait_for_line(
                &format!("the end of {}'s job", p.display()),
                secs(60),
                |l| ends_job(l, &p),
            );
        }
    }
    let log = svc.log();
    let mut job_lines: Vec<String> = Vec::new();
    for f in &files {
        for l in log.lines().filter(|l| ends_job(l, &f.path)) {
            if l.contains("defragmented ") {
                counts.defragmented += 1;
            } else if l.contains("dropped job ") {
                counts.dropped += 1;
            } else if l.contains("failed ") {
                counts.failed_jobs += 1;
            } else {
                counts.skipped += 1;
            }
            job_lines.push(format!(
                "{}/{:?}: {}",
                f.act.name(),
                f.seen,
                l.split_once("  ").map_or(l, |x| x.1).trim()
            ));
        }
    }
    eprintln!(
        "churn round {round}: job outcomes:\n  {}",
        job_lines.join("\n  ")
    );
    if log.contains("panicked") {
        problems.push(format!(
            "round {round}: the service panicked:\n{}",
            svc.tail(40)
        ));
    }
    if svc.is_running() {
        svc.stop(secs(15));
    } else {
        problems.push(format!(
            "round {round}: the service is not running at the end"
        ));
    }
    drop(svc);

    // Content, identity, holes.
    for (i, f) in files.iter().enumerate() {
        let label = format!(
            "round {round}: {} ({}, {:?} at the act)",
            f.path.file_name().unwrap_or_default().to_string_lossy(),
            f.act.name(),
            f.seen
        );
        match &f.expect {
            None => {
                if f.final_path.exists() {
                    problems.push(format!("{label}: deleted, yet the path exists again"));
                }
            }
            Some(want) => {
                let got = read_all(&f.final_path);
                counts.files_verified += 1;
                counts.bytes_verified += got.len() as u64;
                if got != *want {
                    let first_diff = got
                        .iter()
                        .zip(want.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()));
                    problems.push(format!(
                        "{label}: content differs from what the test wrote ({} bytes, want {}; first difference at byte {first_diff})",
                        got.len(),
                        want.len()
                    ));
                }
            }
        }
        if f.act == Act::Rename && f.path.exists() {
            problems.push(format!(
                "{label}: the old name exists again after the rename"
            ));
        }
        if let Some(map) = &f.replacement_map {
            let now = fiemap(&f.final_path);
            if now != *map {
                problems.push(format!(
                    "{label}: the file now at the path (a new inode, never queued) was moved: extent map changed from {} to {} extents — the old file's job moved the wrong file",
                    map.len(),
                    now.len()
                ));
            }
            if f.act == Act::Replace {
                let k = spares
                    .iter()
                    .position(|s| Some(s) == spare_for[i].as_ref())
                    .expect("spare");
                if md5(&f.final_path) != spare_md5[k] {
                    problems.push(format!("{label}: the replacement's md5 changed"));
                }
            }
        }
        if let Some((off, len)) = f.hole {
            let (b0, b1) = (off / 4096, (off + len) / 4096);
            let mapped: Vec<Extent> = fiemap(&f.final_path)
                .into_iter()
                .filter(|e| e.logical < b1 && e.logical + e.len > b0)
                .collect();
            if !mapped.is_empty() {
                problems.push(format!(
                    "{label}: the punched blocks {b0}..{b1} are mapped again: {mapped:?}"
                ));
            }
        }
        if f.act == Act::Untouched {
            let after = filefrag_extents(&f.final_path);
            let ideal = ideal_extents(&f.final_path);
            if after > (ideal + 2).max(f.extents_before / 16) {
                problems.push(format!(
                    "{label}: left alone, yet not defragmented: {} -> {after} extents (ideal {ideal})",
                    f.extents_before
                ));
            }
        }
    }
    img.unmount();
    let (ok, out) = fsck_image(img.image_path());
    counts.fsck_runs += 1;
    if !ok {
        problems.push(format!("round {round}: e2fsck -fn is not clean:\n{out}"));
    }
    eprintln!(
        "churn round {round}: done in {:.1}s, {} problems",
        t0.elapsed().as_secs_f64(),
        problems.len()
    );
    problems
}
