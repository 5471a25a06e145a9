//! fio writing a file with `--verify` while `defragd defrag` rewrites it
//! on btrfs (the ext4 and XFS equivalents: tests/concurrent_writer.rs,
//! tests/xfs/writers.rs). btrfs' defragmenter rewrites a range through the
//! page cache, copy-on-write, under the file's locks: a concurrent write
//! lands before or after it, never lost. defragd must end the move as
//! defragmented, or stop it for the writer (busy, writer_outpaced,
//! no_improvement), never with an error; fio must find every block it
//! wrote, while it runs, after, and after a remount; `btrfs check` clean;
//! and a rerun without the writer defragments the file.
//!
//! The file is made by fio itself (random 4 KiB direct writes, each block
//! once with a verify header): on copy-on-write btrfs each lands where the
//! allocator is at the time, so the file is in thousands of extents.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use defragd_testkit as common;
use defragd_testkit::{
    defrag_json, filefrag_extents, fio_read_verify, report_of, run_fio_verified_clean,
    spawn_defrag_json, spawn_verified_writer, FioWrites, ImageSpec, LoopImage, MIB,
};

const FILE_BYTES: u64 = 48 * MIB;
/// 48 MiB at 8 MiB/s: a 6 s move, for the writer to overlap.
const MOVE_MIB_PER_S: u64 = 8;

/// Every block of `path` read back with direct I/O and verified.
fn read_verify(path: &Path) {
    let r = fio_read_verify(path, FILE_BYTES, Duration::from_secs(180));
    assert!(
        r.clean(),
        "fio read-verify on {}: {}",
        path.display(),
        r.describe()
    );
}

fn fio_writer_during_the_move(direct: bool) {
    if !common::require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::btrfs(512));
    let path = img.root().join("target.bin");
    run_fio_verified_clean(
        "format",
        &[
            "--name=format",
            "--rw=randwrite",
            "--ioengine=libaio",
            "--direct=1",
            "--iodepth=16",
            "--do_verify=0",
            // No preallocation: btrfs writes into preallocated extents in
            // place, and the file would stay in one piece.
            "--fallocate=none",
        ],
        &path,
        FILE_BYTES,
        Duration::from_secs(180),
    );
    let before = filefrag_extents(&path);
    assert!(
        before > 1000,
        "fixture: {} in only {before} extents",
        path.display()
    );

    let work = common::tempdir();
    let mut defrag = spawn_defrag_json(&path, MOVE_MIB_PER_S, work.path());
    sleep(Duration::from_millis(1500));
    assert!(
        defrag.is_running(),
        "the move ended before the writer could start: {}",
        defrag.stdout()
    );
    let (name, writes) = if direct {
        ("direct", FioWrites::Direct)
    } else {
        ("buffered", FioWrites::Buffered)
    };
    let mut fio = spawn_verified_writer(name, writes, &path, FILE_BYTES, Duration::from_secs(60));
    defrag
        .wait_exit(Duration::from_secs(120))
        .expect("defragd did not end within 120 s");
    let f = report_of(&defrag, &path);
    sleep(Duration::from_millis(200));
    fio.interrupt();
    let r = fio.wait(Duration::from_secs(60));
    eprintln!(
        "{name}: {} {:?} {:?}; {before} extents before; fio wrote {} MiB, read {} MiB",
        f.outcome,
        f.reason_code,
        f.reason,
        r.write_bytes / MIB,
        r.read_bytes / MIB
    );
    assert!(r.clean_when_interrupted(), "fio: {}", r.describe());
    assert!(r.write_bytes > 0, "fio wrote nothing");
    let stopped_for_the_writer = matches!(
        f.reason_code.as_deref(),
        Some("busy" | "writer_outpaced" | "no_improvement")
    );
    assert!(
        f.outcome == "defragmented" || stopped_for_the_writer,
        "neither defragmented nor stopped for the writer: {f:?}"
    );

    read_verify(&path);
    img.unmount_and_fsck();
    img.mount();
    read_verify(&path);
    let written = filefrag_extents(&path);
    let (report, _) = defrag_json(&[], &[&path], 0);
    let rerun = report.file(&path);
    let after = filefrag_extents(&path);
    eprintln!(
        "rerun: {} {:?}; extents {written} -> {after}",
        rerun.outcome, rerun.reason_code
    );
    assert_eq!(rerun.outcome, "defragmented", "{rerun:?}");
    assert!(after * 16 <= written, "{after} extents left of {written}");
    read_verify(&path);
    img.unmount_and_fsck();
}

#[test]
fn fio_direct_writes_during_a_move_lose_nothing() {
    fio_writer_during_the_move(true);
}

#[test]
fn fio_buffered_writes_during_a_move_lose_nothing() {
    fio_writer_during_the_move(false);
}
