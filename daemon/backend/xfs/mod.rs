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
//! XFS_IOC_START_COMMIT/COMMIT_RANGE (Linux 6.12+, filesystems made with
//! the exchange-range feature) is the newer form of the same checked
//! swap, range by range: where the geometry has the feature and a dry run
//! goes through, each chunk is copied and committed on its own, checked
//! against the file's freshness sampled just before its copy
//! ([`exchange::Mode`]). Elsewhere SWAPEXT, which every XFS has.
//!
//! Crash recovery: nothing to clean up. The donor is an orphan from birth,
//! which XFS frees at the next mount.
//!
//! - With SWAPEXT and no reverse-mapping btree the swap is one
//!   transaction: the file has its old blocks or its new ones. With it
//!   (`mkfs.xfs -m rmapbt=1`) the kernel swaps mapping by mapping in a chain
//!   of transactions, and a crash can leave the file partly in each; both
//!   hold the same data, since the donor is durable before the swap starts
//!   (tests/xfs/crash.rs saw 496 of 4,096 blocks swapped, md5 intact).
//!   Progress is not durable before the swap: a job that stops redoes its
//!   copy from the start.
//! - With COMMIT_RANGE each chunk's exchange is a logged intent chain that
//!   log recovery finishes, over donor data made durable before it: once
//!   the file's fsync has forced the log, every chunk before the cursor is
//!   the file's, and a resumed job starts there (a crash before that force
//!   redoes at most the chunks since the last checkpoint, whose old and new
//!   blocks hold the same data).
//!
//! Known kernel bug (6.18, SWAPEXT without rmapbt): after a crash that
//! leaves the swap of a btree-format file in the log, log recovery fails
//! and the filesystem does not mount until `xfs_repair`; xfs_fsr and
//! `xfs_io swapext` hit it too (tests/xfs/crash.rs,
//! `a_shutdown_after_a_swap_without_rmapbt_replays`). So SWAPEXT there is
//! opt-in (`[policy] xfs_swapext_without_rmapbt`, see `refuse_risky_swap`).

mod attr_fork;
mod copy;
mod eligibility;
mod exchange;

pub use eligibility::{refuse_donor, refuse_unmovable, FileFacts};
pub use exchange::{Exchange, ExchangeError, Mode};

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use crate::backend::Inspected;
use crate::filesystem::{find_mount, FsDetail, FsError, FsInfo, FsUuid};
use crate::outcome::SkipReason;
use crate::sys::{self, Flush};

/// The least chunk an XFS move copies (and commits) at a time.
pub const MIN_CHUNK_BYTES: u64 = 8 << 20;

/// XFS's statfs magic number.
pub const MAGIC: i64 = crate::xfs::MAGIC;

/// Probes the XFS filesystem `fd` lives on: its geometry (block size,
/// allocation groups, features) from XFS_IOC_FSGEOMETRY, which needs no
/// access to the block device.
pub fn probe(fd: BorrowedFd<'_>) -> Result<FsInfo, FsError> {
    let mount = find_mount(fd)?;
    // The ioctl needs a file opened for reading, and callers probe through
    // O_PATH pins: reopen it (the same inode, through /proc/self/fd).
    let readable = sys::reopen(fd, sys::Access::ReadOnly)?;
    let mut geometry = crate::xfs::geometry(readable.as_fd())?;
    // The feature flag came in 6.10, the commit ioctls in 6.12: ask the
    // kernel (START_COMMIT only reads the file's times).
    geometry.commit_range =
        geometry.exchange_range && crate::xfs::start_commit(readable.as_fd()).is_ok();
    Ok(FsInfo {
        dev: mount.dev,
        device: PathBuf::from(mount.source.clone().unwrap_or_default()),
        block_size: u64::from(geometry.block_size),
        uuid: FsUuid(geometry.uuid),
        read_only: mount.read_only,
        dax: mount.dax,
        max_extent_blocks: geometry.max_extent_blocks(),
        mount_point: mount.mount_point,
        detail: FsDetail::Xfs(geometry),
    })
}

/// Whether moves on the XFS filesystem `info` describes commit chunk by
/// chunk (COMMIT_RANGE), so that a stopped one resumes where it stopped.
pub fn commits_ranges(info: &FsInfo) -> bool {
    matches!(&info.detail, FsDetail::Xfs(geometry) if geometry.commits_ranges())
}

/// Why no file on the XFS filesystem `info` describes can be moved:
/// mounted read-only, or DAX (no page cache to copy through, and the swap
/// is refused there).
pub fn refuse_filesystem(info: &FsInfo) -> Result<(), SkipReason> {
    if info.read_only {
        return Err(SkipReason::ReadOnly);
    }
    if info.dax {
        return Err(SkipReason::Dax);
    }
    Ok(())
}

/// Refuses SWAPEXT where its crash recovery is broken on this kernel (no
/// reverse-mapping btree; see the module's doc), unless `allowed`. Where
/// the filesystem commits ranges (exchange-range), SWAPEXT is not used.
pub fn refuse_risky_swap(fs: &FsInfo, allowed: bool) -> Result<(), SkipReason> {
    match &fs.detail {
        FsDetail::Xfs(geometry) if !allowed && !geometry.rmapbt && !geometry.commits_ranges() => {
            Err(SkipReason::SwapextNotCrashSafe)
        }
        _ => Ok(()),
    }
}

/// Why `inspected`, a file on XFS, cannot be moved: its filesystem, then
/// its extended flags, map and use (see `eligibility`).
pub fn refuse_inspected(inspected: &Inspected) -> Result<(), SkipReason> {
    refuse_filesystem(&inspected.fs)?;
    let FsDetail::Xfs(geometry) = &inspected.fs.detail else {
        return Err(SkipReason::UnsupportedFilesystem(
            "the XFS backend was handed another type's filesystem; please report this".into(),
        ));
    };
    let file = inspected.file.as_fd();
    // Neither read can fail on an open XFS file but by a kernel fault; a
    // file that cannot be read so is not moved.
    let unreadable = |what: &str, e: sys::Error| {
        SkipReason::Busy(format!(
            "its {what} could not be read ({e}); trying again later"
        ))
    };
    let xattr = sys::get_fsxattr(file).map_err(|e| unreadable("extended flags", e))?;
    let extents = sys::fiemap(file, Flush::No).map_err(|e| unreadable("extent map", e))?;
    let facts = FileFacts {
        xattr,
        dax: inspected.flags.dax(),
        swapfile: sys::is_active_swapfile(inspected.dev, inspected.ino),
        size: inspected.size,
        extents: &extents,
    };
    refuse_unmovable(&facts, geometry)
}
