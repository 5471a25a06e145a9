//! Converting a block-mapped (ext3-era) file to extents with
//! EXT4_IOC_MIGRATE (the read lease that keeps writers out meanwhile is
//! generic: `crate::sys::take_read_lease`).
//! The kernel's conversion is not crash-safe; deciding whether to run it
//! at all is the mover's business, not this module's.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::sys::error::{Error, Result};

// _IO('f', 9)
nix::ioctl_none!(ext4_ioc_migrate, b'f', 9);

/// Converts the file to extents. EINVAL: the filesystem has no extent
/// feature, or the file is already extent-mapped or has inline data.
pub fn migrate_to_extents(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: the ioctl takes no argument; the fd is open for the call.
    unsafe { ext4_ioc_migrate(fd.as_raw_fd()) }
        .map(drop)
        .map_err(|errno| match errno {
            Errno::EINVAL => Error::CannotConvert,
            other => Error::of("EXT4_IOC_MIGRATE", other),
        })
}
