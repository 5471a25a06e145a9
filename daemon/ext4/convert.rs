//! Converting a block-mapped (ext3-era) file to extents with
//! EXT4_IOC_MIGRATE, and the read lease that keeps writers out meanwhile.
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

/// A read lease on a file: it was granted only because no process had the
/// file open for writing, and while it is held, a process that opens the
/// file for writing waits until it is released.
#[derive(Debug)]
pub struct ReadLease<'fd> {
    fd: BorrowedFd<'fd>,
}

/// Takes a read lease through `fd`, which must be open read-only.
pub fn take_read_lease(fd: BorrowedFd<'_>) -> Result<ReadLease<'_>> {
    set_lease(fd, nix::libc::F_RDLCK).map_err(|errno| match errno {
        Errno::EAGAIN | Errno::EBUSY => Error::OpenForWriting,
        other => Error::of("F_SETLEASE", other),
    })?;
    Ok(ReadLease { fd })
}

fn set_lease(fd: BorrowedFd<'_>, kind: nix::libc::c_int) -> nix::Result<()> {
    // SAFETY: fcntl(F_SETLEASE) takes an integer argument.
    let rc = unsafe { nix::libc::fcntl(fd.as_raw_fd(), nix::libc::F_SETLEASE, kind) };
    Errno::result(rc).map(drop)
}

impl Drop for ReadLease<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_lease(self.fd, nix::libc::F_UNLCK) {
            tracing::debug!("releasing a read lease failed ({e}); closing the file releases it");
        }
    }
}
