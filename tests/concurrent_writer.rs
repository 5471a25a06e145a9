//! A writer keeps appending to the file while it is being defragmented:
//! every record it wrote must be there, intact, and the original data too.
//! The longest single write+fsync stall is printed (the goal is ≤ 100 ms;
//! not asserted, as timing on a shared VM would flake), beside e4defrag's on
//! an identical copy.

use defragd_testkit as common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use common::*;

const RECORDS: Records = Records::new(b"DFRGREC!", 0x5eed_0000_0000_0000);

struct Sample {
    start: Instant,
    took: Duration,
}

struct Appender {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: thread::JoinHandle<Vec<Sample>>,
}

fn start_appender(path: &Path) -> Appender {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    let (stop2, written2) = (stop.clone(), written.clone());
    let handle = thread::spawn(move || {
        let mut samples = Vec::new();
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let rec = RECORDS.record(i);
            let start = Instant::now();
            f.write_all(&rec).expect("append record");
            f.sync_all().expect("fsync record");
            samples.push(Sample {
                start,
                took: start.elapsed(),
            });
            i += 1;
            written2.store(i, Ordering::Relaxed);
            sleep(Duration::from_millis(2));
        }
        samples
    });
    Appender {
        stop,
        written,
        handle,
    }
}

struct Outcome {
    records: u64,
    /// Records whose write+fsync overlapped the defragmenter's run.
    records_during: u64,
    stall_before: Duration,
    stall_during: Duration,
    intact: Result<(), String>,
}

/// Runs `work` while an appender writes to `path`; then checks the file:
/// original prefix unchanged, every record present and intact, nothing after.
fn with_appender<R>(
    path: &Path,
    orig_size: u64,
    orig_md5: &str,
    work: impl FnOnce() -> R,
) -> (R, Outcome) {
    let app = start_appender(path);
    while app.written.load(Ordering::Relaxed) < 25 {
        sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let r = work();
    let t1 = Instant::now();
    sleep(Duration::from_millis(100));
    app.stop.store(true, Ordering::Relaxed);
    let samples = app.handle.join().expect("appender thread panicked");
    let records = samples.len() as u64;

    let overlaps = |s: &Sample| s.start < t1 && s.start + s.took > t0;
    let records_during = samples.iter().filter(|s| overlaps(s)).count() as u64;
    let stall_during = samples
        .iter()
        .filter(|s| overlaps(s))
        .map(|s| s.took)
        .max()
        .unwrap_or_default();
    let stall_before = samples
        .iter()
        .filter(|s| s.start + s.took <= t0)
        .map(|s| s.took)
        .max()
        .unwrap_or_default();

    let intact = RECORDS.check_intact(path, orig_size, orig_md5, records);
    (
        r,
        Outcome {
            records,
            records_during,
            stall_before,
            stall_during,
            intact,
        },
    )
}

#[test]
fn appender_keeps_every_record_while_the_file_is_moved() {
    if !require_root() {
        return;
    }
    let spec = FixtureSpec {
        large_mib: 160,
        logs: 1,
        log_appends: 20,
        sparse: false,
        tiny: false,
        ..FixtureSpec::default()
    };
    let mut img_a = LoopImage::create(ImageSpec::ext4(1024));
    let fx = build_fixture(&mut img_a, &spec);
    let mut img_b = img_a.duplicate();
    let large_a = img_a.root().join(&fx.large);
    let large_b = img_b.root().join(&fx.large);
    let orig_size = std::fs::metadata(&large_a).expect("stat").len();
    let orig_md5 = md5(&large_a);
    let before_a = file_state(&large_a);
    let before_b = file_state(&large_b);
    eprintln!(
        "large file: {} MiB, {} extents",
        orig_size / MIB,
        before_a.extents
    );

    // Cold caches, as for a file a server wrote a while ago (and a move of
    // cached pages is over before the writer has written much).
    evict_file_cache(&large_a);
    evict_file_cache(&large_b);

    // defragd, default chunk size.
    let ((report, run), d) = with_appender(&large_a, orig_size, &orig_md5, || {
        defrag_json(&[], &[&large_a], 0)
    });
    let after_a = file_state(&large_a);
    let f = report.file(&large_a).clone();
    eprintln!(
        "defragd: {:.2}s, {:?} ({:?}), extents {:?} -> {:?}, filefrag {} -> {}; {} records appended ({} during the run); \
         longest write+fsync stall: before {:.1} ms, during {:.1} ms",
        run.elapsed.as_secs_f64(),
        f.outcome,
        f.reason_code,
        f.extents_before,
        f.extents_after,
        before_a.extents,
        after_a.extents,
        d.records,
        d.records_during,
        d.stall_before.as_secs_f64() * 1e3,
        d.stall_during.as_secs_f64() * 1e3
    );

    // e4defrag on the identical copy, same appender.
    let ((e4_ok, e4_time, e4_out), e) =
        with_appender(&large_b, orig_size, &orig_md5, || e4defrag(&[&large_b]));
    let after_b = file_state(&large_b);
    eprintln!(
        "e4defrag: {:.2}s, ok={e4_ok}, filefrag {} -> {}; {} records appended ({} during the run); longest \
         write+fsync stall: before {:.1} ms, during {:.1} ms; data intact: {:?}; {}",
        e4_time.as_secs_f64(),
        before_b.extents,
        after_b.extents,
        e.records,
        e.records_during,
        e.stall_before.as_secs_f64() * 1e3,
        e.stall_during.as_secs_f64() * 1e3,
        e.intact,
        e4defrag_summary(&e4_out)
    );
    eprintln!(
        "STALL (goal <= 100 ms): defragd {:.1} ms, e4defrag {:.1} ms",
        d.stall_during.as_secs_f64() * 1e3,
        e.stall_during.as_secs_f64() * 1e3
    );

    // The writer lost nothing, the data is intact, and the move happened.
    assert!(
        d.records > 25,
        "the appender wrote only {} records",
        d.records
    );
    if let Err(msg) = &d.intact {
        panic!("after defragd with a concurrent appender: {msg}");
    }
    assert_eq!(
        f.outcome, "defragmented",
        "defragd did not defragment the file being appended to: {f:?}"
    );
    assert!(
        after_a.extents < before_a.extents,
        "filefrag: {} -> {} extents although defragd reports defragmented",
        before_a.extents,
        after_a.extents
    );
    assert_eq!(after_a.ino, before_a.ino, "inode number changed");
    assert_eq!(
        after_a.generation, before_a.generation,
        "generation changed"
    );

    img_a.unmount_and_fsck();
    img_b.unmount_and_fsck();

    // The records and the original data are on disk, not only in the cache.
    img_a.mount();
    let data = read_all(&large_a);
    assert_eq!(
        data.len() as u64,
        orig_size + d.records * RECORD as u64,
        "file length after a remount"
    );
    assert_eq!(
        md5_prefix(&large_a, orig_size),
        orig_md5,
        "original data after a remount"
    );
    for i in 0..d.records {
        let off = (orig_size + i * RECORD as u64) as usize;
        assert!(
            data[off..off + RECORD] == RECORDS.record(i)[..],
            "record {i} damaged after a remount"
        );
    }
}
