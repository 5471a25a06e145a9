//! Donors: an O_TMPFILE inode in the same filesystem, whose fresh blocks a
//! backend swaps into the file. It is an orphan from birth, so a crash
//! frees its blocks at the next mount and no name is ever left behind.

use std::os::fd::{BorrowedFd, OwnedFd};

use nix::fcntl::{fallocate, openat, FallocateFlags, OFlag};
use nix::sys::stat::Mode;

use super::error::{off_t, Error, Result};

/// Creates an unnamed donor inode in `dir`. The directory steers ext4's
/// allocator: the file's own directory gets the most contiguous space.
pub fn create_tmpfile(dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    openat(
        dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|errno| Error::of("create donor (O_TMPFILE)", errno))
}

/// Allocates `len` bytes at `offset` (unwritten extents; i_size grows).
pub fn allocate(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<()> {
    let to_off = |v: u64| off_t("fallocate", v);
    fallocate(fd, FallocateFlags::empty(), to_off(offset)?, to_off(len)?)
        .map_err(|errno| Error::of("fallocate", errno))
}

/// Frees `len` bytes at `offset` (a hole; i_size is kept).
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<()> {
    let to_off = |v: u64| off_t("fallocate", v);
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, mode, to_off(offset)?, to_off(len)?)
        .map_err(|errno| Error::of("fallocate (punch hole)", errno))
}
