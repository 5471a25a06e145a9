//! The only place that talks to the kernel about files and ext4: ioctls and
//! raw syscalls behind safe, typed wrappers. Every errno is mapped to an
//! [`Error`] that says what it means; nothing above this module sees one.
//! This module decides nothing: policy and sequencing live above it.

mod convert;
mod donor;
mod error;
mod fiemap;
mod filesystem;
mod fsmap;
mod inode;
mod ioprio;
mod layout;
mod move_ext;
mod open;
mod pagecache;
mod swap;

pub use convert::{migrate_to_extents, take_read_lease, ReadLease};
pub use donor::{allocate, create_donor, punch_hole};
pub use error::{Call, Error, Result};
pub use fiemap::{fiemap, Extent, ExtentFlags, Flush};
pub use filesystem::{
    free_space, mounts, probe, FreeSpace, FsError, FsInfo, FsUuid, Layout, Superblock,
};
pub use fsmap::{free_extents, FreeExtent};
pub use inode::{generation, inode_flags, InodeFlags};
pub use ioprio::set_current_thread_idle;
pub use layout::Guess;
pub use move_ext::{move_extents, MoveFailed};
pub use open::{open_dir, open_dir_beneath, pin_beneath, reopen, stat_beneath, Access, EntryStat};
pub use pagecache::{drop_cached, page_size, read_ahead, residency, write_back, Residency, Wait};
pub use swap::is_active_swapfile;

/// fdatasync(2), so that delayed allocations get real blocks before the
/// file is mapped.
pub fn sync_data(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::unistd::fdatasync(fd).map_err(|errno| Error::of("fdatasync", errno))
}

/// fsync(2): also commits the journal, which makes the blocks that recent
/// moves freed allocatable again.
pub fn sync_all(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::unistd::fsync(fd).map_err(|errno| Error::of("fsync", errno))
}

/// Commits the journal's running transaction, and with it every metadata
/// change made before: MOVE_EXT's extent swaps among them. fsync of the
/// moved file alone does not always do that: where its extent tree is
/// deeper than the inode, a swap dirties only tree blocks, the inode's own
/// mark of its last transaction stays behind, and fsync finds nothing to
/// commit (a power cut after such an fsync undid moves in the crash soak).
/// Touching `scratch` (the donor: ours and unlinked, so its times matter
/// to nobody) puts an inode in the running transaction; its fsync commits it.
pub fn commit_journal(scratch: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    use nix::sys::time::TimeSpec;
    nix::sys::stat::futimens(scratch, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW)
        .map_err(|errno| Error::of("futimens", errno))?;
    sync_all(scratch)
}

/// syncfs(2): commits the whole filesystem, so that work the kernel split
/// over several journal transactions (a conversion to extents) is all on
/// disk.
pub fn sync_filesystem(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::unistd::syncfs(fd).map_err(|errno| Error::of("syncfs", errno))
}

/// fstat(2) of an open file.
pub fn stat(fd: std::os::fd::BorrowedFd<'_>) -> Result<nix::sys::stat::FileStat> {
    nix::sys::stat::fstat(fd).map_err(|errno| Error::of("fstat", errno))
}
