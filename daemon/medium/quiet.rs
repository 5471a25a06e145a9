//! Measuring a device only while nobody else uses it: others' requests
//! would stand in the probe's timings (a jump read waiting behind a
//! writer's looks like a seek). Shared by the service and `defragd check`.

use std::os::fd::BorrowedFd;

use super::probe::{self, Probe, Reads};
use crate::mounts::DiskId;
use crate::ramp;
use crate::sys;

/// Requests of others the probe tolerates while it reads (a stray
/// write-back); more, and the timings are theirs as much as the device's.
const TOLERATED_OTHERS: u64 = 2;

/// What a try at measuring came to.
#[derive(Debug)]
pub enum Measured {
    Found(Probe),
    /// Others used the disk before or during the reads.
    Busy,
    Failed(sys::Error),
}

/// Listens to `disk` for a window first; measures through `file` only if
/// nobody else was heard, and keeps the result only if nobody else was
/// heard during it (the disk's counters cannot tell the probe's requests
/// from others', but the probe knows how many it made).
pub fn measure_when_quiet(disk: &DiskId, file: BorrowedFd<'_>, reads: &Reads) -> Measured {
    let Some(before) = ramp::read_stat(disk) else {
        // No counters to listen with: measure all the same.
        return match probe::measure(file, reads) {
            Ok(found) => Measured::Found(found),
            Err(e) => Measured::Failed(e),
        };
    };
    std::thread::sleep(ramp::WINDOW);
    let Some(opened) = ramp::read_stat(disk) else {
        return Measured::Busy;
    };
    if ramp::heard(&before, &opened).is_none_or(|h| h.requests > TOLERATED_OTHERS) {
        return Measured::Busy;
    }
    let found = match probe::measure(file, reads) {
        Ok(found) => found,
        Err(e) => return Measured::Failed(e),
    };
    let ours = reads.count() as u64;
    match ramp::read_stat(disk) {
        Some(after)
            if after.completed.saturating_sub(opened.completed) <= ours + TOLERATED_OTHERS =>
        {
            Measured::Found(found)
        }
        _ => Measured::Busy,
    }
}
