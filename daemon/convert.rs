//! Converting a block-mapped (ext3-era) file to extents before moving it,
//! when the operator asked for it. The kernel's EXT4_IOC_MIGRATE is not
//! crash-safe (a crash in the middle can leave an inode for e2fsck to
//! reclaim), so the conversion is opt-in, never done while anyone has the
//! file open for writing (a read lease proves it and keeps writers out),
//! never done on a file written within the quiet period, preceded by
//! fdatasync, and announced to the supervisor before and after so the
//! service can record it durably.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use crate::backend::Inspected;
use crate::eligibility::{refuse_in_use, refuse_unmovable};
use crate::ext4;
use crate::filesystem::FsDetail;
use crate::outcome::{Refusal, SkipReason};
use crate::sys;
use crate::target::Target;

/// What is about to be converted, for the supervisor's record.
#[derive(Debug, Clone, Copy)]
pub struct Converting<'a> {
    pub ino: u64,
    pub generation: u32,
    pub path: &'a Path,
    /// The block device, where `e2fsck` would have to run after a crash.
    pub device: &'a Path,
}

/// Where a conversion is announced, before and after: the service records
/// it durably, so that after a crash it can name the file.
pub trait ConversionLog {
    /// Right before the kernel converts `file`.
    fn converting(&mut self, file: &Converting<'_>);
    /// Once the conversion is over (done or refused).
    fn converted(&mut self);
}

/// Converts the block-mapped file `inspected` to extents, unless a reason
/// not to touch it comes first. With `dry_run`, checks only. Ok also when
/// the file needs no conversion.
pub fn convert(
    target: &Target,
    inspected: &Inspected,
    quiet_period: Option<Duration>,
    dry_run: bool,
    log: &mut dyn ConversionLog,
) -> Result<(), Refusal> {
    // Every other reason not to touch the file comes first.
    match refuse_unmovable(inspected) {
        Err(SkipReason::BlockMapped) => {}
        Err(reason) => return Err(Refusal::Skip(reason)),
        Ok(()) => return Ok(()),
    }
    // Only ext4 has block-mapped files, and only ext4 converts them.
    let has_extents = match &inspected.fs.detail {
        FsDetail::Ext4(detail) => detail.superblock.has_extents,
        FsDetail::Xfs(_) | FsDetail::Btrfs(_) => {
            return Err(Refusal::Skip(SkipReason::BlockMapped))
        }
    };
    if !has_extents {
        return Err(Refusal::Skip(SkipReason::NoExtentFeature));
    }
    refuse_in_use(inspected, quiet_period)?;
    if dry_run {
        return Ok(());
    }
    let kernel = |e: sys::Error| Refusal::Fail(e.into());
    // Granted only if nobody has the file open for writing; a writer that
    // comes while it is held waits for it.
    let lease = sys::take_read_lease(inspected.file.as_fd()).map_err(|e| match e {
        sys::Error::OpenForWriting => Refusal::Skip(SkipReason::Busy(
            "it is open for writing by another process, so it is not converted to extents".into(),
        )),
        other => kernel(other),
    })?;
    sys::sync_data(inspected.file.as_fd()).map_err(kernel)?;
    log.converting(&Converting {
        ino: inspected.ino,
        generation: inspected.generation,
        path: &target.path,
        device: &inspected.fs.device,
    });
    // The kernel spreads a conversion over several journal transactions:
    // it is over only once the whole filesystem is committed. Until then
    // (and after any failure but a clean refusal) the record stays open,
    // so that a crash is reported after the restart.
    let result = ext4::migrate_to_extents(inspected.file.as_fd())
        .and_then(|()| sys::sync_filesystem(inspected.file.as_fd()));
    if matches!(result, Ok(()) | Err(sys::Error::CannotConvert)) {
        log.converted();
    }
    drop(lease);
    result.map_err(|e| match e {
        sys::Error::CannotConvert => Refusal::Skip(SkipReason::NoExtentFeature),
        other => kernel(other),
    })
}
