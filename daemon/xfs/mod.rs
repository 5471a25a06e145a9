//! XFS's own kernel interface: the geometry (XFS_IOC_FSGEOMETRY), the
//! shape of an inode's forks (XFS_IOC_FSBULKSTAT_SINGLE) and the checked
//! swap of a file's data with a donor's (XFS_IOC_SWAPEXT, or range by
//! range with XFS_IOC_START_COMMIT/COMMIT_RANGE), behind safe,
//! typed wrappers. Calls every filesystem shares (FIEMAP, the extended
//! flags, xattrs, direct I/O, O_TMPFILE) live in [`crate::sys`]. Every
//! errno is mapped to an error that says what it means; nothing above
//! sees one. This module decides nothing: the XFS backend does.

mod bulkstat;
mod commit_range;
mod geometry;
mod handle;
mod swapext;

pub use bulkstat::{forks, Forks};
pub use commit_range::{
    commit_length, commit_range, probe as probe_commit_range, start_commit, CommitError,
    CommitRequest, Freshness,
};
pub use geometry::{geometry, Geometry, MAX_BMBT_EXTLEN};
pub use handle::open_invisible;
pub use swapext::{swap_extents, Snapshot, SwapError, Timestamp};

/// XFS's statfs magic number ("XFSB").
pub const MAGIC: i64 = 0x5846_5342;
