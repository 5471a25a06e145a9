//! ext4's own kernel interface: MOVE_EXT, MIGRATE, the superblock and the
//! device layout, behind safe, typed wrappers. Calls every filesystem shares live in [`crate::sys`]. Every
//! errno is mapped to a [`crate::sys::Error`] that says what it means;
//! nothing above sees one. This module decides nothing: the ext4 backend
//! (`crate::backend::ext4`) and the mover above it do.

mod convert;
mod filesystem;
mod layout;
mod move_ext;

pub use convert::migrate_to_extents;
pub use filesystem::{Ext4Detail, Layout, Superblock, EXT4_SUPER_MAGIC};
pub use layout::Guess;
pub use move_ext::{move_extents, MoveFailed};

/// Commits the journal's running transaction, and with it every metadata
/// change made before: MOVE_EXT's extent swaps among them. fsync of the
/// moved file alone does not always do that: where its extent tree is
/// deeper than the inode, a swap dirties only tree blocks, the inode's own
/// mark of its last transaction stays behind, and fsync finds nothing to
/// commit (a power cut after such an fsync undid moves in the crash soak).
/// Touching `scratch` (the donor: ours and unlinked, so its times matter
/// to nobody) puts an inode in the running transaction; its fsync commits it.
pub fn commit_journal(scratch: std::os::fd::BorrowedFd<'_>) -> crate::sys::Result<()> {
    use nix::sys::time::TimeSpec;
    nix::sys::stat::futimens(scratch, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW)
        .map_err(|errno| crate::sys::Error::of("futimens", errno))?;
    crate::sys::sync_all(scratch)
}
