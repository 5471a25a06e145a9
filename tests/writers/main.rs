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
//! The writers live in the module `writer`, the churn in `churn`.
//!
//! Each test prints one `SUMMARY part=writers_<name> ...` line.
//! DEFRAGD_WRITERS_ROUNDS (default 1) repeats each test on fresh images;
//! DEFRAGD_WRITERS_SEED fixes the churn's random choices (else the clock).

use defragd_testkit as common;

mod churn;
mod writer;

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
