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
use crate::medium::probe;
use crate::medium::quiet::{measure_when_quiet, Measured};
use crate::medium::{self, MediumChoice, MediumDecided};
use crate::mounts::Covered;

use super::shared::lock;

/// Reads that fail this many times (direct I/O refused, say) end the
/// trying: the flag stands.
const MAX_FAILURES: u32 = 3;
/// After the disk was heard busy, the next try waits this long.
const BUSY_RETRY: Duration = Duration::from_secs(10);

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
        let outcome = measure_when_quiet(&fs.disk, file, &reads);
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
