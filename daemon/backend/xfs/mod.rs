//! The XFS backend: xfs_fsr's method, with a donor no crash can leave
//! behind. The donor is an O_TMPFILE inode in the file's own directory (so
//! in the file's allocation group), preallocated over exactly the file's
//! data ranges (holes stay holes); the file's data is copied into it with
//! direct I/O, chunk by chunk, then XFS_IOC_SWAPEXT swaps the two data
//! forks in one transaction, only if the file's change and modify times
//! are still those taken before the copy began. Until that checked swap,
//! the copy is the donor's alone: no reader of the file ever sees it.
//!
//! - `eligibility`: what XFS refuses before anything is written (flags,
//!   shared extents, the map; a donor no better than the file);
//! - `exchange`: the donor, the copy and the swap;
//! - `attr_fork`: the donor's inode shaped like the file's, so that XFS
//!   accepts the swap;
//! - `copy`: the direct-I/O copy of one chunk.
//!
//! XFS_IOC_EXCHANGE_RANGE with START_COMMIT/COMMIT_RANGE is the newer
//! form of the same checked swap; [`crate::xfs::Geometry::exchange_range`]
//! says whether a filesystem has it. SWAPEXT works everywhere, so it is
//! the one used.
//!
//! Crash recovery: nothing to clean up. The donor is an orphan from birth,
//! which XFS frees at the next mount; before the swap's transaction is in
//! the log the file has its old blocks, after it its new ones, never a mix.
//! Progress is not durable before the swap: a job that stops redoes its
//! copy from the start.
//!
//! Not yet wired into [`crate::backend::Backend`]: it plugs in once the
//! backend seam takes a generic filesystem description.

mod attr_fork;
mod copy;
mod eligibility;
mod exchange;

pub use eligibility::{refuse_donor, refuse_unmovable, FileFacts};
pub use exchange::{Exchange, ExchangeError};

/// XFS's statfs magic number.
pub const MAGIC: i64 = crate::xfs::MAGIC;

/// Bytes of free space an exchange over `ranges` holds while it runs: the
/// whole donor, since both copies exist until the swap.
pub fn space_needed(ranges: &[crate::assess::BlockRange], block_size: u64) -> u64 {
    ranges
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.len))
        .saturating_mul(block_size)
}
