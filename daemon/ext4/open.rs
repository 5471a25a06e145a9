//! Opening files without being tricked: every entry is opened relative to
//! a directory fd, never through a symlink and never across a mount, and a
//! file is first pinned with O_PATH (which runs no driver code, so a FIFO or
//! device swapped in is never really opened) and only then reopened for I/O.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::Mode;

use super::error::{Error, Result};

/// How a pinned file is reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// For measuring: reads do not touch atime.
    ReadOnly,
    /// For MOVE_EXT, which needs the file open for writing.
    ReadWrite,
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// Opens an operator-given directory without following a symlink in any
/// component: a user who can write a directory on the way could otherwise
/// point it at another filesystem.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(AT_FDCWD, path, how).map_err(|errno| Error::of("open directory", errno))
}

/// Opens the directory `name` below `dir`: no symlink anywhere on the way,
/// no mount crossed, nothing outside `dir`.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, name: &Path) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(beneath());
    openat2(dir, name, how).map_err(|errno| Error::of("open directory", errno))
}

/// Pins the entry `name` below `dir` with O_PATH, under the same rules. A
/// symlink as the last component is pinned as the link itself, so the
/// caller sees it is a link and refuses it.
pub fn pin_beneath(dir: BorrowedFd<'_>, name: &Path) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(beneath());
    openat2(dir, name, how).map_err(|errno| Error::of("open", errno))
}

/// Reopens a pinned regular file for I/O. Going through /proc/self/fd gives
/// exactly the inode that was pinned, whatever happened to its name since.
pub fn reopen(pinned: BorrowedFd<'_>, access: Access) -> Result<OwnedFd> {
    let proc_path = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let common = OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let flags = match access {
        Access::ReadOnly => common | OFlag::O_RDONLY | OFlag::O_NOATIME,
        Access::ReadWrite => common | OFlag::O_RDWR,
    };
    match openat(AT_FDCWD, proc_path.as_str(), flags, Mode::empty()) {
        // O_NOATIME is refused for files of other users without CAP_FOWNER.
        Err(nix::errno::Errno::EPERM) if access == Access::ReadOnly => openat(
            AT_FDCWD,
            proc_path.as_str(),
            flags & !OFlag::O_NOATIME,
            Mode::empty(),
        ),
        other => other,
    }
    .map_err(|errno| Error::of("reopen", errno))
}
