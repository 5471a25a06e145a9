//! Why a file on ext4 cannot be moved, from its inode flags (GETFLAGS),
//! its map and its filesystem's features and mount options: each reason a
//! stable code that an operator can act on.

use crate::assess::MapProblem;
use crate::backend::Inspected;
use crate::filesystem::FsInfo;
use crate::outcome::SkipReason;
use crate::sys::InodeFlags;

/// Whether `fs` is bigalloc and mounted data=journal.
fn bigalloc_and_data_journal(fs: &FsInfo) -> (bool, bool) {
    fs.detail
        .ext4()
        .map_or((false, false), |d| (d.superblock.bigalloc, d.data_journal))
}

/// Why no file on the filesystem `info` describes can be moved: mounted
/// read-only, bigalloc, DAX or data=journal.
pub fn refuse_filesystem(info: &FsInfo) -> Result<(), SkipReason> {
    let (bigalloc, data_journal) = bigalloc_and_data_journal(info);
    let checks = [
        (info.read_only, SkipReason::ReadOnly),
        (bigalloc, SkipReason::Bigalloc),
        (info.dax, SkipReason::Dax),
        (data_journal, SkipReason::DataJournal),
    ];
    match checks.into_iter().find(|(refused, _)| *refused) {
        Some((_, reason)) => Err(reason),
        None => Ok(()),
    }
}

/// Why `inspected` cannot be moved by MOVE_EXT; Ok when nothing in its
/// flags, map or filesystem stands in the way.
pub fn refuse_unmovable(inspected: &Inspected) -> Result<(), SkipReason> {
    let (fs, flags) = (&inspected.fs, inspected.flags);
    let (bigalloc, data_journal) = bigalloc_and_data_journal(fs);
    let checks = [
        (fs.read_only, SkipReason::ReadOnly),
        (bigalloc, SkipReason::Bigalloc),
        (
            data_journal || flags.journal_data(),
            SkipReason::DataJournal,
        ),
        (fs.dax || flags.dax(), SkipReason::Dax),
        (flags.immutable(), SkipReason::Immutable),
        (flags.append_only(), SkipReason::AppendOnly),
        (flags.encrypted() || flags.verity(), SkipReason::Encrypted),
        (flags.inline_data(), SkipReason::InlineData),
        (
            inspected.size < fs.block_size,
            SkipReason::TooSmall {
                size: inspected.size,
            },
        ),
        (!flags.extent_mapped(), SkipReason::BlockMapped),
    ];
    if let Some((_, reason)) = checks.into_iter().find(|(refused, _)| *refused) {
        return Err(reason);
    }
    match inspected.map.problem {
        Some(MapProblem::DelayedAllocation) => Err(SkipReason::Busy(
            "it is being written right now (unallocated data after fdatasync)".into(),
        )),
        Some(MapProblem::Inline) => Err(SkipReason::InlineData),
        Some(MapProblem::UnknownLocation) => Err(SkipReason::Encrypted),
        None => Ok(()),
    }
}

/// Whether a file is mapped by indirect blocks: from its flags when it was
/// opened, else from the filesystem (one without the extent feature has
/// no extent-mapped file).
pub fn block_mapped(fs: &FsInfo, flags: Option<InodeFlags>) -> bool {
    match flags {
        Some(flags) => !flags.extent_mapped() && !flags.inline_data(),
        None => fs.detail.ext4().is_some_and(|d| !d.superblock.has_extents),
    }
}
