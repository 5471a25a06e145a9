//! Opening files without being tricked: every entry is opened relative to
//! a directory fd, never through a symlink and never across a mount, and a
//! file is first pinned with O_PATH (which runs no driver code, so a FIFO or
//! device swapped in is never really opened) and only then reopened for I/O.
//! An entry can also be stat'ed, by name below its directory, unopened.

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

/// What statx(2) says about one directory entry, the entry itself: a
/// symlink is not followed, an automount is not triggered, nothing is
/// opened (so a FIFO or a device swapped in runs no driver code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStat {
    /// The file type bits of st_mode (`S_IFMT`).
    pub file_type: u32,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Space allocated, in 512-byte units (st_blocks): data, delayed
    /// allocations, and an external xattr block if there is one.
    pub blocks_512: u64,
    /// Last data change, seconds since the epoch.
    pub mtime: i64,
    /// Last inode change, seconds since the epoch: any write moves it, and
    /// unlike mtime no user can set it back.
    pub ctime: i64,
    /// Something is mounted on this entry, or the kernel cannot say (it
    /// predates STATX_ATTR_MOUNT_ROOT): either way, not on the parent's
    /// mount for certain.
    pub maybe_mount_root: bool,
}

/// Stats the entry `name` of `dir`. `name` must be a single component, so
/// that no symlink can be followed on the way to it.
pub fn stat_beneath(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<EntryStat> {
    use nix::libc;
    use std::os::unix::ffi::OsStrExt;
    if name.as_bytes().contains(&b'/') {
        return Err(Error::of("statx", nix::errno::Errno::EINVAL));
    }
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| Error::of("statx", nix::errno::Errno::EINVAL))?;
    // SAFETY: statx is plain integers; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is writable; both outlive the call.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(Error::of("statx", nix::errno::Errno::last()));
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(EntryStat {
        file_type: u32::from(st.stx_mode) & libc::S_IFMT,
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        size: st.stx_size,
        blocks_512: st.stx_blocks,
        mtime: st.stx_mtime.tv_sec,
        ctime: st.stx_ctime.tv_sec,
        maybe_mount_root: st.stx_attributes & mount_root != 0
            || st.stx_attributes_mask & mount_root == 0,
    })
}
/// Whether the directory `dir` is the root of a mount (statx's
/// STATX_ATTR_MOUNT_ROOT, on every filesystem type). On kernels before
/// 5.8, which do not report it, a directory on another device than its
/// parent, or its own parent (`/`), is taken as one.
pub fn is_mount_root(dir: BorrowedFd<'_>) -> Result<bool> {
    use nix::libc;
    // SAFETY: statx is plain integers; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated literal and `st` is writable;
    // both outlive the call.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(Error::of("statx", nix::errno::Errno::last()));
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if st.stx_attributes_mask & mount_root != 0 {
        return Ok(st.stx_attributes & mount_root != 0);
    }
    let parent = nix::sys::stat::fstatat(dir, "..", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|errno| Error::of("fstatat", errno))?;
    let dev = libc::makedev(st.stx_dev_major, st.stx_dev_minor);
    Ok(parent.st_dev != dev || parent.st_ino == st.stx_ino)
}
