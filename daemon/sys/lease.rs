//! Read leases (fcntl F_SETLEASE): whether any process has a file open
//! for writing, and keeping writers out for a moment. Generic: ext4's
//! conversion holds one while it runs, the btrfs backend takes one to
//! tell whether a file has a writer.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::error::{Error, Result};

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
