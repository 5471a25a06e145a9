//! Direct I/O (O_DIRECT): reads and writes that go between the disk and
//! the caller's buffer without the page cache. A backend that copies data
//! itself (XFS's donor) uses it so that the copy neither fills the cache
//! nor leaves pages behind on the donor (XFS_IOC_SWAPEXT refuses a donor
//! with cached pages). Offsets, lengths and buffer addresses must be
//! aligned: see [`super::AlignedBuf`].

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, openat, FcntlArg, OFlag, AT_FDCWD};
use nix::sys::stat::Mode;

use super::error::{off_t, Error, Result};

/// Reopens the file `fd` refers to (a pin or an open file) read-only with
/// O_DIRECT, through /proc/self/fd so that it is exactly that inode. Reads
/// do not touch atime where the kernel allows it. A new open file
/// description: the caller's own fd keeps its flags.
pub fn reopen_direct_read(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = OFlag::O_RDONLY
        | OFlag::O_DIRECT
        | OFlag::O_NOATIME
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK;
    match openat(AT_FDCWD, proc_path.as_str(), flags, Mode::empty()) {
        // O_NOATIME is refused for files of other users without CAP_FOWNER.
        Err(nix::errno::Errno::EPERM) => openat(
            AT_FDCWD,
            proc_path.as_str(),
            flags & !OFlag::O_NOATIME,
            Mode::empty(),
        ),
        other => other,
    }
    .map_err(|errno| Error::of("reopen with O_DIRECT", errno))
}

/// Turns O_DIRECT on for an open file description this process owns alone
/// (a donor it created): every fd sharing the description is affected.
pub fn set_direct_io(fd: BorrowedFd<'_>) -> Result<()> {
    let bits = fcntl(fd, FcntlArg::F_GETFL).map_err(|errno| Error::of("fcntl(F_GETFL)", errno))?;
    let flags = OFlag::from_bits_truncate(bits) | OFlag::O_DIRECT;
    fcntl(fd, FcntlArg::F_SETFL(flags))
        .map_err(|errno| Error::of("fcntl(F_SETFL, O_DIRECT)", errno))?;
    Ok(())
}

/// pread(2) at `offset`: the bytes read, 0 at the end of the file.
pub fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize> {
    loop {
        match nix::sys::uio::pread(fd, buf, off_t("pread", offset)?) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(|errno| Error::of("pread", errno)),
        }
    }
}

/// pwrite(2) at `offset`: the bytes written.
pub fn write_at(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize> {
    loop {
        match nix::sys::uio::pwrite(fd, buf, off_t("pwrite", offset)?) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(|errno| Error::of("pwrite", errno)),
        }
    }
}

/// ftruncate(2): sets the size of `fd` to `size` bytes.
pub fn set_len(fd: BorrowedFd<'_>, size: u64) -> Result<()> {
    nix::unistd::ftruncate(fd, off_t("ftruncate", size)?)
        .map_err(|errno| Error::of("ftruncate", errno))
}
