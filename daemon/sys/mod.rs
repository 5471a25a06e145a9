//! Generic syscalls that no single filesystem owns, behind safe, typed
//! wrappers: safe opening (openat2, O_PATH pins, reopening through /proc),
//! stat, the inode flags and generation, FIEMAP, GETFSMAP, fadvise and
//! mincore, O_TMPFILE and fallocate, fsync and syncfs, extended flags
//! (FS_IOC_FSGETXATTR) and xattrs, direct I/O with aligned buffers,
//! ioprio, fanotify in file-identifier mode and opening a file by its
//! handle. Every backend shares them. Like the backends, this decides
//! nothing; every errno is mapped to an [`Error`] that says what it means,
//! and nothing above sees one.

mod aligned;
mod direct;
pub mod error;
pub mod fanotify;
mod fiemap;
pub mod fsmap;
mod fsxattr;
pub mod handle;
mod inode;
mod ioprio;
mod lease;
mod open;
mod pagecache;
mod signal;
mod swap;
mod tmpfile;
mod xattr;

pub use aligned::AlignedBuf;
pub use direct::{read_at, reopen_direct_read, set_direct_io, set_len, write_at};
pub use error::{Call, Error, Result};
pub use fanotify::{Event, Fanotify, FanotifyError, FsId};
pub use fiemap::{fiemap, fiemap_range, Extent, ExtentFlags, Flush};
pub use fsmap::{free_extents, FreeExtent};
pub use fsxattr::{get_fsxattr, set_fsxattr, Fsxattr, XFlags};
pub use handle::{fs_id, open_by_handle, FileHandle, HandleError};
pub use inode::{generation, inode_flags, InodeFlags};
pub use ioprio::set_current_thread_idle;
pub use lease::{take_read_lease, ReadLease};
pub use open::{
    is_mount_root, open_dir, open_dir_beneath, pin_beneath, reopen, stat_beneath, Access, EntryStat,
};
pub use pagecache::{
    drop_cached, page_size, read_ahead, read_back_lost, read_into_cache, residency, write_back,
    Residency, Wait,
};
pub use signal::end_on_broken_pipe;
pub use swap::is_active_swapfile;
pub use tmpfile::{allocate, create_tmpfile, punch_hole};
pub use xattr::set_xattr;

/// fdatasync(2), so that delayed allocations get real blocks before the
/// file is mapped.
pub fn sync_data(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::unistd::fdatasync(fd).map_err(|errno| Error::of("fdatasync", errno))
}

/// fsync(2): on a journaling filesystem also commits the journal, which
/// makes the blocks that recent moves freed allocatable again.
pub fn sync_all(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::unistd::fsync(fd).map_err(|errno| Error::of("fsync", errno))
}

/// syncfs(2): commits the whole filesystem, so that work the kernel split
/// over several journal transactions (a conversion to extents) is all on
/// disk.
pub fn sync_filesystem(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::unistd::syncfs(fd).map_err(|errno| Error::of("syncfs", errno))
}

/// fstat(2) of an open file.
pub fn stat(fd: std::os::fd::BorrowedFd<'_>) -> Result<nix::sys::stat::FileStat> {
    nix::sys::stat::fstat(fd).map_err(|errno| Error::of("fstat", errno))
}

/// The id of the mount `fd` was opened through (statx's STATX_MNT_ID),
/// which /proc/self/mountinfo lists as its first field. Unlike st_dev it
/// names the mount on every filesystem type: on btrfs, st_dev is the
/// subvolume's anonymous device, which mountinfo never shows.
pub fn mount_id(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    // Kernels before 5.8 do not report it.
    statx_mount_id(fd, nix::libc::STATX_MNT_ID)
}

/// An id of the mount `fd` was opened through that no later mount will
/// have (statx's STATX_MNT_ID_UNIQUE, Linux 6.8): the plain id is given
/// again to the next mount once one is unmounted. On older kernels, the
/// plain id.
pub fn unique_mount_id(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    statx_mount_id(fd, nix::libc::STATX_MNT_ID_UNIQUE).or_else(|_| mount_id(fd))
}

/// statx's stx_mnt_id, asked for with `flag`; EOPNOTSUPP where the kernel
/// does not answer it.
fn statx_mount_id(fd: std::os::fd::BorrowedFd<'_>, flag: u32) -> Result<u64> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    // SAFETY: statx is plain integers; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated literal and `st` is writable;
    // both outlive the call. AT_EMPTY_PATH works on O_PATH fds too.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            flag,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(Error::of("statx", nix::errno::Errno::last()));
    }
    if st.stx_mask & flag == 0 {
        return Err(Error::of("statx", nix::errno::Errno::EOPNOTSUPP));
    }
    Ok(st.stx_mnt_id)
}

/// This process's mounts, in mount order (/proc/self/mountinfo); None
/// when it cannot be read (no /proc).
pub fn mounts() -> Option<Vec<procfs_core::process::MountInfo>> {
    use procfs_core::FromBufRead;
    let file = std::fs::File::open("/proc/self/mountinfo").ok()?;
    procfs_core::process::MountInfos::from_buf_read(std::io::BufReader::new(file))
        .ok()
        .map(|m| m.0)
}

/// The statfs magic number of the filesystem `fd` lives on: its type.
pub fn fs_magic(fd: std::os::fd::BorrowedFd<'_>) -> Result<i64> {
    let s = nix::sys::statfs::fstatfs(fd).map_err(|errno| Error::of("fstatfs", errno))?;
    Ok(s.filesystem_type().0 as i64)
}

/// Free space as an unprivileged writer sees it (without the root reserve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// statfs(2) of the filesystem `fd` lives on.
pub fn free_space(fd: std::os::fd::BorrowedFd<'_>) -> Result<FreeSpace> {
    let s = nix::sys::statfs::fstatfs(fd).map_err(|errno| Error::of("fstatfs", errno))?;
    let block = s.block_size() as u64;
    Ok(FreeSpace {
        total_bytes: s.blocks().saturating_mul(block),
        available_bytes: s.blocks_available().saturating_mul(block),
    })
}
