//! XFS_IOC_SWAPEXT: the kernel swaps the whole data forks of a file and a
//! donor of the same size (in one transaction; with rmapbt, in a chain of
//! them, mapping by mapping), and only if the file's
//! change and modify times are still those of a stat taken before the
//! donor was filled (xfs_fsr's method). A file written meanwhile makes it
//! refuse with EBUSY: a concurrent writer costs a retry, never data.
//!
//! What the kernel checks (fs/xfs/xfs_ioctl.c, fs/xfs/xfs_bmap_util.c),
//! and the error each check gives here:
//! - both fds open for reading and writing, neither O_APPEND: EBADF,
//!   [`SwapError::NotReadWrite`];
//! - neither an active swap file, both on the same XFS, not the same
//!   inode, the same file type, both realtime or neither, no page cache
//!   left on the donor after a flush (it must be written with O_DIRECT),
//!   the donor in no more extents than the file, fork formats that fit
//!   each other (without rmapbt), equal owners and project when quotas
//!   are on: EINVAL, [`SwapError::Refused`];
//! - offset 0 and length equal to both files' on-disk size: EFAULT,
//!   [`SwapError::SizeChanged`];
//! - change and modify times unchanged, to the nanosecond: EBUSY,
//!   [`SwapError::Changed`];
//! - a filesystem shut down: EIO; read-only: EROFS; out of space for the
//!   transaction: ENOSPC ([`SwapError::Kernel`]).
//!
//! The file's own flags are not checked by the kernel (an immutable file
//! is swapped): eligibility refuses those before anything is written.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;

use crate::sys;

/// `xfs_bstime_t`: a `long` and an `s32` (16 bytes with padding on a
/// 64-bit machine).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct BsTime {
    tv_sec: libc::c_long,
    tv_nsec: i32,
}

/// `struct xfs_bstat` (xfs_fs.h), 136 bytes on a 64-bit machine.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Bstat {
    bs_ino: u64,
    bs_mode: u16,
    bs_nlink: u16,
    bs_uid: u32,
    bs_gid: u32,
    bs_rdev: u32,
    bs_blksize: i32,
    bs_size: i64,
    bs_atime: BsTime,
    bs_mtime: BsTime,
    bs_ctime: BsTime,
    bs_blocks: i64,
    bs_xflags: u32,
    bs_extsize: i32,
    pub(super) bs_extents: i32,
    bs_gen: u32,
    bs_projid_lo: u16,
    pub(super) bs_forkoff: u16,
    bs_projid_hi: u16,
    bs_sick: u16,
    bs_checked: u16,
    bs_pad: [u8; 2],
    bs_cowextsize: u32,
    bs_dmevmask: u32,
    bs_dmstate: u16,
    bs_aextents: u16,
}

/// `struct xfs_swapext`, 192 bytes on a 64-bit machine.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SwapExt {
    sx_version: i64,
    sx_fdtarget: i64,
    sx_fdtmp: i64,
    sx_offset: i64,
    sx_length: i64,
    sx_pad: [u8; 16],
    sx_stat: Bstat,
}

const XFS_SX_VERSION: i64 = 0;

// _IOWR('X', 109, struct xfs_swapext)
#[cfg(target_pointer_width = "64")]
nix::ioctl_readwrite_bad!(xfs_ioc_swapext, 0xC0C0_586D, SwapExt);
#[cfg(not(target_pointer_width = "64"))]
nix::ioctl_readwrite!(xfs_ioc_swapext, b'X', 109, SwapExt);

/// A timestamp to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: i64,
}

/// What the swap is checked against: the file as it was before the donor
/// was filled. Take it before the first byte is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub ino: u64,
    /// The file's size in bytes: the swap's length.
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl Snapshot {
    /// fstat(2) of `file` now. On kernels with fine-grained timestamps
    /// (6.13+) this stat also makes the next change of the file get a
    /// new ctime even within the same clock tick, so no write after it
    /// can go unseen.
    pub fn of(file: BorrowedFd<'_>) -> sys::Result<Snapshot> {
        let st = sys::stat(file)?;
        Ok(Snapshot {
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: Timestamp {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec,
            },
            ctime: Timestamp {
                sec: st.st_ctime,
                nsec: st.st_ctime_nsec,
            },
        })
    }
}

/// Why XFS_IOC_SWAPEXT swapped nothing. In every case the file is as it
/// was (or as its writer left it) and the donor is only the donor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    #[error(
        "the file was written during the move (EBUSY: its change or modify time is no longer \
         the one taken before the copy): nothing was swapped and the file keeps what was \
         written; retry later, when it is quiet"
    )]
    Changed,
    #[error(
        "the file's size changed during the move (EFAULT: the swap length is no longer its \
         size): nothing was swapped; retry later"
    )]
    SizeChanged,
    #[error(
        "the file or the donor is not open for reading and writing, or is open for appending \
         (EBADF): the swap needs both read-write"
    )]
    NotReadWrite,
    #[error(
        "XFS refused the swap (EINVAL): the file is an active swap file or realtime, the donor \
         is on another filesystem, still has cached pages, is in more extents than the file, \
         or its extent or attribute fork does not fit the file's, or their owners or project \
         differ under quotas; nothing was swapped (`dmesg` says which when it is the format)"
    )]
    Refused,
    #[error("{0}")]
    Kernel(sys::Error),
}

impl SwapError {
    fn from_errno(errno: Errno) -> SwapError {
        match errno {
            Errno::EBUSY => SwapError::Changed,
            Errno::EFAULT => SwapError::SizeChanged,
            Errno::EBADF => SwapError::NotReadWrite,
            Errno::EINVAL => SwapError::Refused,
            other => SwapError::Kernel(sys::Error::of("XFS_IOC_SWAPEXT", other)),
        }
    }
}

/// Swaps the data of `file` (open read-write, not O_APPEND) with that of
/// `donor` (the same size, written with O_DIRECT and synced), if `file`
/// has not changed since `before` was taken. The whole file: XFS swaps
/// data forks, offset 0 and length its size.
pub fn swap_extents(
    file: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    before: &Snapshot,
) -> Result<(), SwapError> {
    let too_big = || SwapError::Kernel(sys::Error::of("XFS_IOC_SWAPEXT", Errno::EFBIG));
    let length = i64::try_from(before.size).map_err(|_| too_big())?;
    // The kernel compares these two pairs of times to the nanosecond;
    // the rest of the stat is for the record only.
    let time = |t: Timestamp| BsTime {
        tv_sec: t.sec as libc::c_long,
        tv_nsec: t.nsec as i32,
    };
    let mut request = SwapExt {
        sx_version: XFS_SX_VERSION,
        sx_fdtarget: i64::from(file.as_raw_fd()),
        sx_fdtmp: i64::from(donor.as_raw_fd()),
        sx_offset: 0,
        sx_length: length,
        sx_stat: Bstat {
            bs_ino: before.ino,
            bs_size: length,
            bs_mtime: time(before.mtime),
            bs_ctime: time(before.ctime),
            ..Bstat::default()
        },
        ..SwapExt::default()
    };
    // SAFETY: `request` is a valid, initialised struct xfs_swapext that
    // the kernel reads (and may write back); both fds are open for the
    // call's length.
    unsafe { xfs_ioc_swapext(file.as_raw_fd(), &mut request) }
        .map(|_| ())
        .map_err(SwapError::from_errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn struct_layout_matches_xfs_fs_h() {
        // Sizes and offsets as gcc computes them from xfsprogs' xfs_fs.h.
        assert_eq!(size_of::<BsTime>(), 16);
        assert_eq!(size_of::<Bstat>(), 136);
        assert_eq!(size_of::<SwapExt>(), 192);
        assert_eq!(offset_of!(Bstat, bs_size), 32);
        assert_eq!(offset_of!(Bstat, bs_atime), 40);
        assert_eq!(offset_of!(Bstat, bs_mtime), 56);
        assert_eq!(offset_of!(Bstat, bs_ctime), 72);
        assert_eq!(offset_of!(Bstat, bs_blocks), 88);
        assert_eq!(offset_of!(Bstat, bs_xflags), 96);
        assert_eq!(offset_of!(Bstat, bs_gen), 108);
        assert_eq!(offset_of!(Bstat, bs_forkoff), 114);
        assert_eq!(offset_of!(Bstat, bs_cowextsize), 124);
        assert_eq!(offset_of!(Bstat, bs_aextents), 134);
        assert_eq!(offset_of!(SwapExt, sx_offset), 24);
        assert_eq!(offset_of!(SwapExt, sx_length), 32);
        assert_eq!(offset_of!(SwapExt, sx_stat), 56);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn ioctl_number_encodes_the_struct_size() {
        let readwrite = (3u32 << 30) | (192 << 16) | (u32::from(b'X') << 8) | 109;
        assert_eq!(readwrite, 0xC0C0_586D);
    }

    #[test]
    fn errnos_have_their_swap_meaning() {
        assert_eq!(SwapError::from_errno(Errno::EBUSY), SwapError::Changed);
        assert_eq!(SwapError::from_errno(Errno::EFAULT), SwapError::SizeChanged);
        assert_eq!(SwapError::from_errno(Errno::EBADF), SwapError::NotReadWrite);
        assert_eq!(SwapError::from_errno(Errno::EINVAL), SwapError::Refused);
        assert_eq!(
            SwapError::from_errno(Errno::EIO),
            SwapError::Kernel(sys::Error::Io)
        );
        assert!(SwapError::Changed.to_string().contains("retry later"));
    }
}
