//! The ext4 backend: moves a file's data with EXT4_IOC_MOVE_EXT into a
//! donor (an O_TMPFILE inode of the same filesystem) allocated over exactly
//! the file's data ranges, and makes the moves durable by committing the
//! journal.
//!
//! - `eligibility`: what ext4 refuses (flags, map, features, mount options);
//! - `donor`: the donor strategy (a plain donor, and one guided by the free
//!   space map when the plain one is far from what the space allows);
//! - `donor_layout`, `free_space`, `buddy`: the model of ext4's allocator
//!   the donor is asked for by;
//! - `relocate`: MOVE_EXT chunk by chunk, and the journal commit.
//!
//! Crash recovery: nothing to clean up. The donor is an orphan from birth,
//! which the kernel frees at the next mount; a cursor is saved only once
//! the moves before it are committed, and redoing a chunk is safe.

mod buddy;
mod donor;
mod donor_layout;
mod eligibility;
mod free_space;
mod relocate;

pub use donor::Donor;
pub use eligibility::{block_mapped, refuse_filesystem, refuse_unmovable};

use std::os::fd::BorrowedFd;

use crate::assess::BlockRange;
use crate::ext4::{Ext4Detail, Superblock};
use crate::filesystem::{find_mount, FsDetail, FsError, FsInfo};
use crate::outcome::{FailReason, Refusal};
use donor_layout::DonorLayout;

/// ext4's statfs magic number.
pub const MAGIC: i64 = crate::ext4::EXT4_SUPER_MAGIC;

/// The longest extent ext4 can record (written extents; unwritten ones are
/// one block shorter).
pub const MAX_EXTENT_BLOCKS: u64 = 32768;

/// Probes the ext4 filesystem `fd` lives on.
pub fn probe(fd: BorrowedFd<'_>) -> Result<FsInfo, FsError> {
    let mount = find_mount(fd)?;
    let (device, detail) = Ext4Detail::probe(fd, &mount)?;
    Ok(FsInfo {
        dev: mount.dev,
        device,
        block_size: u64::from(detail.superblock.block_size),
        uuid: detail.superblock.uuid,
        read_only: mount.read_only,
        dax: mount.dax,
        max_extent_blocks: MAX_EXTENT_BLOCKS,
        mount_point: mount.mount_point,
        detail: FsDetail::Ext4(detail),
    })
}

/// Bytes a donor for `ranges` needs at the least: its data (a span, with
/// its holes, is allocated only where the free space holds it; see
/// `DonorLayout::for_ranges`).
pub fn space_needed(ranges: &[BlockRange], block_size: u64) -> u64 {
    DonorLayout::PerRange.allocated_blocks(ranges, None) * block_size
}

/// The superblock of `fs`, which the ext4 backend is only ever handed for
/// an ext4 filesystem; a failure rather than a panic should that change.
fn superblock(fs: &FsInfo) -> Result<&Superblock, Refusal> {
    fs.detail.ext4().map(|d| &d.superblock).ok_or_else(|| {
        Refusal::Fail(FailReason::Filesystem(format!(
            "{}: the ext4 backend was handed a filesystem that is not ext4; please report this",
            crate::escape::escaped(&fs.mount_point)
        )))
    })
}
