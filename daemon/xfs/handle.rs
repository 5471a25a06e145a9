//! XFS_IOC_FD_TO_HANDLE then XFS_IOC_OPEN_BY_HANDLE: the file opened
//! again, read-write, through XFS's own handle interface, which marks the
//! new open file "invisible" (FMODE_NOCMTIME, O_NOATIME; fs/xfs/
//! xfs_handle.c). A COMMIT_RANGE made through it leaves the file's change
//! and modify times alone, as SWAPEXT does: a defragmented file's content
//! did not change, and backups and the quiet-period policy must not think
//! it did. xfs_fsr opens files the same way. Needs CAP_SYS_ADMIN.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::libc;

use crate::sys;

/// `struct xfs_fsop_handlereq` (xfs_fs.h), 56 bytes on a 64-bit machine.
#[repr(C)]
struct HandleReq {
    fd: u32,
    path: *mut libc::c_void,
    oflags: u32,
    ihandle: *mut libc::c_void,
    ihandlen: u32,
    ohandle: *mut libc::c_void,
    ohandlen: *mut u32,
}

impl HandleReq {
    fn empty() -> HandleReq {
        HandleReq {
            fd: 0,
            path: std::ptr::null_mut(),
            oflags: 0,
            ihandle: std::ptr::null_mut(),
            ihandlen: 0,
            ohandle: std::ptr::null_mut(),
            ohandlen: std::ptr::null_mut(),
        }
    }
}

/// `xfs_handle_t` is 24 bytes; room to spare for the kernel's answer.
const HANDLE_MAX: usize = 64;

// _IOWR('X', 106, struct xfs_fsop_handlereq) and _IOWR('X', 107, ...).
#[cfg(target_pointer_width = "64")]
nix::ioctl_readwrite_bad!(xfs_ioc_fd_to_handle, 0xC038_586A, HandleReq);
#[cfg(target_pointer_width = "64")]
nix::ioctl_readwrite_bad!(xfs_ioc_open_by_handle, 0xC038_586B, HandleReq);
#[cfg(not(target_pointer_width = "64"))]
nix::ioctl_readwrite!(xfs_ioc_fd_to_handle, b'X', 106, HandleReq);
#[cfg(not(target_pointer_width = "64"))]
nix::ioctl_readwrite!(xfs_ioc_open_by_handle, b'X', 107, HandleReq);

/// `file` (any fd of a regular file on XFS) opened again read-write,
/// without change or modify time updates by what is done through it, and
/// close-on-exec. The same inode and generation: the handle is the file's
/// own. `dir` is a directory on the same mount: the kernel opens handles
/// only through one (ENOTDIR otherwise), on its mount.
pub fn open_invisible(file: BorrowedFd<'_>, dir: BorrowedFd<'_>) -> sys::Result<OwnedFd> {
    let fd = u32::try_from(file.as_raw_fd())
        .map_err(|_| sys::Error::of("XFS_IOC_FD_TO_HANDLE", nix::errno::Errno::EBADF))?;
    let mut handle = [0u8; HANDLE_MAX];
    let mut handle_len: u32 = 0;
    let mut ask = HandleReq {
        fd,
        ohandle: handle.as_mut_ptr().cast(),
        ohandlen: &mut handle_len,
        ..HandleReq::empty()
    };
    // SAFETY: `ask` is a valid struct xfs_fsop_handlereq whose output
    // pointers name `handle` (64 bytes, more than the 24 of a handle) and
    // `handle_len`, both alive for the call.
    unsafe { xfs_ioc_fd_to_handle(file.as_raw_fd(), &mut ask) }
        .map_err(|errno| sys::Error::of("XFS_IOC_FD_TO_HANDLE", errno))?;
    if handle_len as usize > HANDLE_MAX {
        return Err(sys::Error::of(
            "XFS_IOC_FD_TO_HANDLE",
            nix::errno::Errno::EOVERFLOW,
        ));
    }
    let mut open = HandleReq {
        oflags: (libc::O_RDWR | libc::O_LARGEFILE) as u32,
        ihandle: handle.as_mut_ptr().cast(),
        ihandlen: handle_len,
        ..HandleReq::empty()
    };
    // SAFETY: `open` names `handle_len` bytes of `handle`, as the kernel
    // filled them; the call returns a new fd on success.
    let raw = unsafe { xfs_ioc_open_by_handle(dir.as_raw_fd(), &mut open) }
        .map_err(|errno| sys::Error::of("XFS_IOC_OPEN_BY_HANDLE", errno))?;
    // SAFETY: the kernel just installed `raw` for this process; nothing
    // else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    // The kernel installs it without close-on-exec.
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|errno| sys::Error::of("fcntl(FD_CLOEXEC)", errno))?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn struct_layout_matches_xfs_fs_h() {
        // As gcc computes them from xfsprogs' xfs_fs.h.
        assert_eq!(size_of::<HandleReq>(), 56);
        assert_eq!(offset_of!(HandleReq, path), 8);
        assert_eq!(offset_of!(HandleReq, oflags), 16);
        assert_eq!(offset_of!(HandleReq, ihandle), 24);
        assert_eq!(offset_of!(HandleReq, ihandlen), 32);
        assert_eq!(offset_of!(HandleReq, ohandle), 40);
        assert_eq!(offset_of!(HandleReq, ohandlen), 48);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn ioctl_numbers_encode_the_struct_size() {
        let readwrite = |nr: u32| (3u32 << 30) | (56 << 16) | (u32::from(b'X') << 8) | nr;
        assert_eq!(readwrite(106), 0xC038_586A);
        assert_eq!(readwrite(107), 0xC038_586B);
    }
}
