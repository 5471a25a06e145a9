//! fsetxattr(2): an extended attribute on an open file.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::error::{Error, Result};

/// Sets the extended attribute `name` (with its namespace, e.g.
/// `trusted.x`) of `fd` to `value`, creating or replacing it.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` is valid for its
    // length; both outlive the call.
    let rc = unsafe {
        nix::libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(Error::of("fsetxattr", nix::errno::Errno::last()));
    }
    Ok(())
}
