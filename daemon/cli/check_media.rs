//! `defragd check`'s media: what each device checked is, decided once the
//! walk is done, so that the probe's reads time the device rather than
//! the walk's own reads beside them. With `--medium auto` the device is
//! measured through the first fragmented file met there
//! (`crate::medium::probe`, only while the disk is quiet), else, or where
//! it cannot be measured, the kernel's rotational flag decides.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::escape::escaped;
use crate::inspect::Measured;
use crate::medium::probe::{self, Probe, Reads};
use crate::medium::quiet::{measure_when_quiet, Measured as Probed};
use crate::medium::{self, MediumChoice, MediumDecided};
use crate::mounts::DiskId;

/// Tries at measuring a device heard busy, and the wait between them.
const BUSY_TRIES: u32 = 5;
const BUSY_WAIT: Duration = Duration::from_millis(500);

/// The devices met so far, shared by the walking threads.
pub(super) struct Devices {
    choice: MediumChoice,
    met: Mutex<HashMap<u64, Device>>,
}

struct Device {
    disk: DiskId,
    mount_point: PathBuf,
    /// A file to measure the device through, once one is met.
    probe: Option<ProbeFile>,
}

struct ProbeFile {
    file: OwnedFd,
    reads: Reads,
}

impl Devices {
    pub(super) fn new(choice: MediumChoice) -> Devices {
        Devices {
            choice,
            met: Mutex::default(),
        }
    }

    /// Hears of `m`, a file measured on its device: the device is noted,
    /// and the file kept to measure the device through if it is the first
    /// one there that lends itself to it. True once nothing more is
    /// wanted from that device's files.
    pub(super) fn offer(&self, m: &mut Measured<'_>) -> bool {
        let mut met = self.met.lock().unwrap_or_else(|p| p.into_inner());
        let device = met.entry(m.dev).or_insert_with(|| Device {
            disk: crate::mounts::disk_of_fs(m.fs),
            mount_point: m.fs.mount_point.clone(),
            probe: None,
        });
        if self.choice != MediumChoice::Auto || device.probe.is_some() {
            return true;
        }
        if m.assessment.extents > 1 {
            if let Some(opened) = m.opened.take() {
                if let Some(reads) = probe::plan(&opened.map, m.fs.block_size) {
                    device.probe = Some(ProbeFile {
                        file: opened.file,
                        reads,
                    });
                    return true;
                }
            }
        }
        false
    }

    /// Each device's medium, by device number. Says on stderr where a
    /// device that was to be measured could not be.
    pub(super) fn decide(self) -> HashMap<u64, MediumDecided> {
        let met = self.met.into_inner().unwrap_or_else(|p| p.into_inner());
        met.into_iter()
            .map(|(dev, device)| (dev, decide(self.choice, device)))
            .collect()
    }
}

fn decide(choice: MediumChoice, device: Device) -> MediumDecided {
    let flag = medium::rotational_flag(&device.disk);
    if choice != MediumChoice::Auto {
        return medium::decide(choice, flag, None);
    }
    let by_flag = medium::decide(MediumChoice::Sysfs, flag, None);
    let Some(probe) = device.probe else {
        // No file there fragmented enough to read across: nothing to
        // measure with, and little for the medium to weigh.
        return by_flag;
    };
    match measure(&device.disk, &probe) {
        Ok(found) => medium::decide(MediumChoice::Auto, flag, Some(found)),
        Err(why) => {
            eprintln!(
                "defragd: note: {}: its device could not be measured ({why}); taking it as \
                 {by_flag}; --medium says what it is",
                escaped(&device.mount_point)
            );
            by_flag
        }
    }
}

/// Measures `disk` through `probe`'s file, waiting a little for quiet
/// where the disk is busy; why not, where it cannot.
fn measure(disk: &DiskId, probe: &ProbeFile) -> Result<Probe, String> {
    for _ in 0..BUSY_TRIES {
        match measure_when_quiet(disk, probe.file.as_fd(), &probe.reads) {
            Probed::Found(found) => return Ok(found),
            Probed::Busy => std::thread::sleep(BUSY_WAIT),
            Probed::Failed(e) => return Err(format!("reading it failed: {e}")),
        }
    }
    Err("others kept the disk busy".to_string())
}
