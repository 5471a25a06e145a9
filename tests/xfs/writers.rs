//! A writer on the file while defragd copies it into the donor (the ext4
//! equivalents: tests/concurrent_writer.rs, tests/live_appender.rs,
//! tests/writers/). On XFS nothing reaches the file before the swap, and
//! the kernel refuses the swap if the file's ctime or mtime moved since
//! the copy began: defragd must report the file busy (a retry) or, had
//! the writer been quiet, defragmented; never a lost write. The copy is
//! slowed (`--max-mib-per-s`) so that the writer overlaps it.
//!
//! Writers: fio `rw=randwrite verify=crc32c verify_fatal=1 do_verify=1
//! verify_backlog=256` over the file in place, with direct I/O (libaio)
//! and buffered (psync, fsync=32), after a sequential pass gave every
//! 4 KiB block a verify header; and an appender of fsync'd records. After:
//! fio reads every block back and verifies it (direct I/O, after a
//! remount: what is on disk), every record is intact, `xfs_repair -n` is
//! clean, and a rerun without the writer defragments the file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep};
use std::time::Duration;

use super::common::*;
use super::{wait_for_written, xfs_with_fragmented};

const FILE_BYTES: u64 = 48 * MIB;
/// 48 MiB at 8 MiB/s: a 6 s copy.
const COPY_MIB_PER_S: u64 = 8;

/// Every block of `path` read back with direct I/O and verified.
fn read_verify(path: &Path) {
    let r = fio_read_verify(path, FILE_BYTES, secs(120));
    assert!(
        r.clean(),
        "fio read-verify on {}: {}",
        path.display(),
        r.describe()
    );
}

/// Waits for the one-shot's end; its report of `path`.
fn finished(p: &mut Proc, path: &Path) -> DefragFile {
    p.wait_exit(secs(120))
        .expect("defragd did not end within 120 s");
    report_of(p, path)
}

/// Busy: the swap refused because the file changed (or the file was found
/// being written); the detail says so.
fn is_busy(f: &DefragFile) -> bool {
    let reason = f.reason.as_deref().unwrap_or_default();
    f.outcome != "defragmented"
        && (f.reason_code.as_deref() == Some("busy")
            || reason.contains("written during the move")
            || reason.contains("size changed"))
}

/// The file once the writer is gone: a rerun without it defragments it.
fn rerun_defragments(path: &Path, before: u64) {
    let (report, _) = defrag_json(&[], &[path], 0);
    let f = report.file(path);
    let after = xfs_bmap_extents(path);
    eprintln!(
        "rerun: {} {:?}; xfs_bmap {before} -> {after}",
        f.outcome, f.reason_code
    );
    assert_eq!(f.outcome, "defragmented", "{f:?}");
    assert!(after * 16 <= before, "{after} extents left of {before}");
}

fn fio_writer_during_the_copy(direct: bool) {
    let (mut img, paths) = xfs_with_fragmented(384, &[("target.bin", FILE_BYTES, 0xf10)]);
    let path = &paths[0];
    // Every block gets a verify header; an overwrite in place, so the
    // file stays fragmented.
    fio_format_in_place(path, FILE_BYTES, secs(120));
    let before = xfs_bmap_extents(path);
    let work = tempdir();
    let mut defrag = spawn_defrag_json(path, COPY_MIB_PER_S, work.path());
    let copied = wait_for_written(defrag.pid, 4 * MIB, secs(30), || defrag.is_running());
    assert!(
        copied >= 4 * MIB,
        "the copy did not start: {copied} bytes written"
    );
    let (name, writes) = if direct {
        ("direct", FioWrites::Direct)
    } else {
        ("buffered", FioWrites::Buffered)
    };
    let mut fio = spawn_verified_writer(name, writes, path, FILE_BYTES, secs(60));
    let f = finished(&mut defrag, path);
    sleep(Duration::from_millis(200));
    fio.interrupt();
    let r = fio.wait(secs(60));
    eprintln!(
        "{name}: {} {:?} {:?}; fio wrote {} MiB, read {} MiB",
        f.outcome,
        f.reason_code,
        f.reason,
        r.write_bytes / MIB,
        r.read_bytes / MIB
    );
    assert!(r.clean_when_interrupted(), "fio: {}", r.describe());
    assert!(r.write_bytes > 0, "fio wrote nothing");
    assert!(
        is_busy(&f) || f.outcome == "defragmented",
        "neither busy nor defragmented: {f:?}"
    );
    read_verify(path);
    img.unmount_and_fsck();
    img.mount();
    read_verify(path);
    rerun_defragments(path, before);
    read_verify(path);
    img.unmount_and_fsck();
}

#[test]
fn fio_direct_writes_during_the_copy_make_the_swap_refuse_and_verify() {
    if !require_root() {
        return;
    }
    fio_writer_during_the_copy(true);
}

#[test]
fn fio_buffered_writes_during_the_copy_make_the_swap_refuse_and_verify() {
    if !require_root() {
        return;
    }
    fio_writer_during_the_copy(false);
}

const RECORDS: Records = Records::new(b"XFSAPPND", 0x0a99_0000_0000_0000);

#[test]
fn an_appender_during_the_copy_keeps_every_record() {
    if !require_root() {
        return;
    }
    let (mut img, paths) = xfs_with_fragmented(384, &[("journal.log", FILE_BYTES, 0xa99)]);
    let path = &paths[0];
    let sum = md5(path);
    let before = xfs_bmap_extents(path);
    let work = tempdir();
    let mut defrag = spawn_defrag_json(path, COPY_MIB_PER_S, work.path());
    let copied = wait_for_written(defrag.pid, 4 * MIB, secs(30), || defrag.is_running());
    assert!(
        copied >= 4 * MIB,
        "the copy did not start: {copied} bytes written"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut out = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    let stop2 = stop.clone();
    let appender = thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            out.write_all(&RECORDS.record(i)).expect("append");
            out.sync_all().expect("fsync");
            i += 1;
            sleep(Duration::from_millis(5));
        }
        i
    });
    let f = finished(&mut defrag, path);
    stop.store(true, Ordering::Relaxed);
    let records = appender.join().expect("appender thread");
    eprintln!(
        "appender: {records} records; defragd: {} {:?} {:?}",
        f.outcome, f.reason_code, f.reason
    );
    assert!(is_busy(&f), "the file grew during the copy, yet: {f:?}");
    if let Err(e) = RECORDS.check_intact(path, FILE_BYTES, &sum, records) {
        panic!("after the refused swap: {e}");
    }
    img.unmount_and_fsck();
    img.mount();
    if let Err(e) = RECORDS.check_intact(path, FILE_BYTES, &sum, records) {
        panic!("after a remount: {e}");
    }
    rerun_defragments(path, before);
    if let Err(e) = RECORDS.check_intact(path, FILE_BYTES, &sum, records) {
        panic!("after the rerun: {e}");
    }
    img.unmount_and_fsck();
}
