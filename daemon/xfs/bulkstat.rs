//! XFS_IOC_FSBULKSTAT_SINGLE: what XFS itself knows of one inode, beyond
//! stat(2): where its attribute fork begins, and how many extents it has.
//! SWAPEXT swaps data forks only, and checks that each fits the other
//! inode's literal area; the donor must be shaped to match.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::swapext::Bstat;
use crate::sys::{Error, Result};

/// `struct xfs_fsop_bulkreq`, 32 bytes on a 64-bit machine.
#[repr(C)]
struct BulkReq {
    lastip: *mut u64,
    icount: i32,
    ubuffer: *mut Bstat,
    ocount: *mut i32,
}

// _IOWR('X', 102, struct xfs_fsop_bulkreq)
#[cfg(target_pointer_width = "64")]
nix::ioctl_readwrite_bad!(xfs_ioc_fsbulkstat_single, 0xC020_5866, BulkReq);
#[cfg(not(target_pointer_width = "64"))]
nix::ioctl_readwrite!(xfs_ioc_fsbulkstat_single, b'X', 102, BulkReq);

/// The shape of an inode's forks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forks {
    /// Where the attribute fork begins in the literal area, in bytes: the
    /// size of the data fork's room in the inode. 0: no attribute fork.
    pub attr_offset: u32,
    /// Data fork extents.
    pub extents: u32,
}

/// The forks of inode `ino` of the XFS filesystem `fs` (any fd on it).
/// Needs CAP_SYS_ADMIN.
pub fn forks(fs: BorrowedFd<'_>, ino: u64) -> Result<Forks> {
    let mut last = ino;
    let mut stat = Bstat::default();
    let mut count = 0i32;
    let mut request = BulkReq {
        lastip: &mut last,
        icount: 1,
        ubuffer: &mut stat,
        ocount: &mut count,
    };
    // SAFETY: the request points at a u64, one struct xfs_bstat and an
    // i32, all alive and writable for the call's length, as icount = 1
    // tells the kernel.
    unsafe { xfs_ioc_fsbulkstat_single(fs.as_raw_fd(), &mut request) }
        .map_err(|errno| Error::of("XFS_IOC_FSBULKSTAT_SINGLE", errno))?;
    Ok(Forks {
        attr_offset: u32::from(stat.bs_forkoff),
        extents: u32::try_from(stat.bs_extents).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn request_layout_and_number_match_xfs_fs_h() {
        assert_eq!(std::mem::size_of::<super::BulkReq>(), 32);
        let readwrite = (3u32 << 30) | (32 << 16) | (u32::from(b'X') << 8) | 102;
        assert_eq!(readwrite, 0xC020_5866);
    }
}
