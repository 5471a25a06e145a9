//! The medium of each covered filesystem: the config's `[[filesystem]]
//! medium`, else measured once by reading a fragmented file there while the
//! disk is quiet (`crate::medium::probe`), else, until then or where it
//! cannot be measured, the kernel's rotational flag of its disk. Remembered
//! until the configuration or the set of filesystems changes.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::assess::ExtentMap;
use crate::config::Settings;
use crate::filesystem::FsUuid;
use crate::medium::probe::{self, Probe, Reads};
use crate::medium::{self, MediumChoice, MediumDecided};
use crate::mounts::Covered;
use crate::ramp;

use super::shared::lock;

/// Reads that fail this many times (direct I/O refused, say) end the
/// trying: the flag stands.
const MAX_FAILURES: u32 = 3;
/// After the disk was heard busy, the next try waits this long.
const BUSY_RETRY: Duration = Duration::from_secs(10);
/// Requests of others the probe tolerates while it reads (a stray
/// write-back); more, and the timings are theirs as much as the device's.
const TOLERATED_OTHERS: u64 = 2;

/// What the config says of the filesystem mounted at `fs`'s mount point.
pub fn choice_for(settings: &Settings, fs: &Covered) -> MediumChoice {
    settings
        .filesystems
        .iter()
        .find(|entry| entry.path == fs.mount_point)
        .map_or(MediumChoice::Auto, |entry| entry.medium)
}

/// What is known of one filesystem's medium.
#[derive(Debug, Clone, Copy)]
enum Known {
    Decided(MediumDecided),
    /// `auto`, not measured yet: failed reads so far, and no try before.
    Measuring {
        failures: u32,
        not_before: Instant,
    },
}

/// The media decided so far, by filesystem uuid.
#[derive(Default)]
pub struct Media(Mutex<HashMap<FsUuid, Known>>);

impl Media {
    /// `fs`'s medium as known now: decided, or the flag's until measured.
    pub fn of(&self, settings: &Settings, fs: &Covered) -> MediumDecided {
        let choice = choice_for(settings, fs);
        let mut known = lock(&self.0);
        let entry = known.entry(fs.uuid).or_insert_with(|| match choice {
            MediumChoice::Auto => Known::Measuring {
                failures: 0,
                not_before: Instant::now(),
            },
            choice => Known::Decided(medium::decide(
                choice,
                medium::rotational_flag(&fs.disk),
                None,
            )),
        });
        match *entry {
            Known::Decided(decided) => decided,
            Known::Measuring { .. } => {
                medium::decide(MediumChoice::Sysfs, medium::rotational_flag(&fs.disk), None)
            }
        }
    }

    /// Measures `fs`'s device through `file` (open, mapped as `map`) where
    /// its medium is still to be measured, the file lends itself to it and
    /// the disk is quiet; otherwise does nothing. Says what it found.
    pub fn measure_with(
        &self,
        settings: &Settings,
        fs: &Covered,
        file: BorrowedFd<'_>,
        map: &ExtentMap,
        block_size: u64,
    ) {
        self.of(settings, fs);
        let due = matches!(lock(&self.0).get(&fs.uuid),
            Some(Known::Measuring { not_before, .. }) if Instant::now() >= *not_before);
        if !due {
            return;
        }
        let Some(reads) = probe::plan(map, block_size) else {
            return;
        };
        let outcome = measure_quietly(fs, file, &reads);
        let mut known = lock(&self.0);
        let Some(Known::Measuring { failures, .. }) = known.get(&fs.uuid).copied() else {
            return;
        };
        let flag = medium::rotational_flag(&fs.disk);
        let next = match outcome {
            Measured::Found(found) => {
                let decided = medium::decide(MediumChoice::Auto, flag, Some(found));
                tracing::info!(
                    "{}: medium {decided}; reads that jump {:.2} ms, adjacent {:.2} ms",
                    fs.mount_point.display(),
                    found.jump_ms,
                    found.adjacent_ms
                );
                Known::Decided(decided)
            }
            Measured::Busy => Known::Measuring {
                failures,
                not_before: Instant::now() + BUSY_RETRY,
            },
            Measured::Failed(e) if failures + 1 >= MAX_FAILURES => {
                let decided = medium::decide(MediumChoice::Sysfs, flag, None);
                tracing::warn!(
                    "{}: cannot measure its device ({e}); taking it as {decided}; \
                     set [[filesystem]] medium to say what it is",
                    fs.mount_point.display()
                );
                Known::Decided(decided)
            }
            Measured::Failed(e) => {
                tracing::debug!(
                    "{}: measuring its device failed: {e}",
                    fs.mount_point.display()
                );
                Known::Measuring {
                    failures: failures + 1,
                    not_before: Instant::now(),
                }
            }
        };
        known.insert(fs.uuid, next);
    }

    /// Decides again at the next question (a reload, filesystems changed).
    pub fn forget(&self) {
        lock(&self.0).clear();
    }
}

enum Measured {
    Found(Probe),
    /// Others used the disk before or during the reads.
    Busy,
    Failed(crate::sys::Error),
}

/// Listens to the disk for a window first; measures only if nobody else
/// was heard, and keeps the result only if nobody else was heard during it
/// (the disk's counters cannot tell the probe's requests from others', but
/// the probe knows how many it made).
fn measure_quietly(fs: &Covered, file: BorrowedFd<'_>, reads: &Reads) -> Measured {
    let Some(before) = ramp::read_stat(&fs.disk) else {
        // No counters to listen with: measure all the same.
        return match probe::measure(file, reads) {
            Ok(found) => Measured::Found(found),
            Err(e) => Measured::Failed(e),
        };
    };
    std::thread::sleep(ramp::WINDOW);
    let Some(opened) = ramp::read_stat(&fs.disk) else {
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
    match ramp::read_stat(&fs.disk) {
        Some(after)
            if after.completed.saturating_sub(opened.completed) <= ours + TOLERATED_OTHERS =>
        {
            Measured::Found(found)
        }
        _ => Measured::Busy,
    }
}
