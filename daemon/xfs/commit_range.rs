//! XFS_IOC_START_COMMIT and XFS_IOC_COMMIT_RANGE (Linux 6.12+, on
//! filesystems made with the exchange-range feature): the checked swap of
//! one range of a file's data with the same range of a donor's. START_COMMIT
//! samples the file's freshness (filesystem id, inode number and
//! generation, change and modify times); COMMIT_RANGE exchanges the
//! ranges' mappings only if the file still matches that sample, in a
//! logged, restartable chain of transactions.
//!
//! What the kernel checks (fs/xfs/xfs_exchrange.c), and the error each
//! check gives here:
//! - the freshness blob is not one START_COMMIT made on this filesystem,
//!   or the file changed since (ino, generation, ctime, mtime): EBUSY,
//!   [`CommitError::Changed`];
//! - both files on the same mount: EXDEV; both regular: EINVAL (EISDIR
//!   for a directory); both open read-write and neither O_APPEND: EBADF,
//!   [`CommitError::NotReadWrite`];
//! - the filesystem lacks the exchange-range feature: EOPNOTSUPP, a kernel
//!   without the ioctl: ENOTTY ([`CommitError::Unsupported`]);
//! - unknown flags, ranges starting past either file's end, offsets not
//!   block aligned, a length not block aligned unless the range ends at
//!   one file's end, a range past either file's end, both realtime or
//!   neither: EINVAL ([`CommitError::Refused`]);
//! - immutable: EPERM; an active swap file: ETXTBSY; shut down: EIO.
//!
//! START_COMMIT checks nothing of the filesystem's features: it answers on
//! any XFS of a kernel that has it. COMMIT_RANGE updates both files'
//! change and modify times unless their fds forbid it (FMODE_NOCMTIME).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::sys;

/// `struct xfs_commit_range` (xfs_fs.h, Linux 6.12+), 88 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawCommitRange {
    file1_fd: i32,
    pad: u32,
    file1_offset: u64,
    file2_offset: u64,
    length: u64,
    flags: u64,
    file2_freshness: [u64; 6],
}

// XFS_EXCHANGE_RANGE_DSYNC (1 << 1), a synchronous transaction per call,
// is not used: the mover forces the log at its checkpoints (fsync of the
// file), one log force for many chunks.
/// XFS_EXCHANGE_RANGE_DRY_RUN: every check, no change.
const FLAG_DRY_RUN: u64 = 1 << 2;

// _IOR('X', 130, struct xfs_commit_range) and _IOW('X', 131, ...).
nix::ioctl_read_bad!(xfs_ioc_start_commit, 0x8058_5882, RawCommitRange);
nix::ioctl_write_ptr_bad!(xfs_ioc_commit_range, 0x4058_5883, RawCommitRange);

/// The file's freshness as START_COMMIT sampled it: opaque, only the
/// kernel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness([u64; 6]);

/// Why START_COMMIT or COMMIT_RANGE exchanged nothing. The file is as it
/// was (or as its writer left it) in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error(
        "this kernel or filesystem has no XFS_IOC_COMMIT_RANGE ({0}): the exchange-range \
         feature needs Linux 6.12+ and a filesystem made with it; SWAPEXT is used instead"
    )]
    Unsupported(Errno),
    #[error(
        "the file was written since its freshness was sampled (EBUSY): nothing was exchanged \
         and the file keeps what was written; retry that range later, when it is quiet"
    )]
    Changed,
    #[error(
        "the file or the donor is not open for reading and writing, or is open for appending \
         (EBADF): the exchange needs both read-write"
    )]
    NotReadWrite,
    #[error(
        "XFS refused the exchange (EINVAL): a range is not block aligned, starts or ends past \
         a file's end, or one file is realtime and the other not; nothing was exchanged"
    )]
    Refused,
    #[error("{0}")]
    Kernel(sys::Error),
}

impl CommitError {
    fn from_errno(what: &'static str, errno: Errno) -> CommitError {
        match errno {
            Errno::EOPNOTSUPP | Errno::ENOTTY => CommitError::Unsupported(errno),
            Errno::EBUSY => CommitError::Changed,
            Errno::EBADF => CommitError::NotReadWrite,
            Errno::EINVAL => CommitError::Refused,
            other => CommitError::Kernel(sys::Error::of(what, other)),
        }
    }

    /// Whether SWAPEXT may be used instead: the call is unknown to the
    /// kernel or the filesystem, or refused as malformed, which a kernel
    /// that does not know the call can answer too. Only before any range
    /// was exchanged.
    pub fn calls_for_swapext(&self) -> bool {
        matches!(self, CommitError::Unsupported(_) | CommitError::Refused)
    }
}

/// Samples `file`'s freshness for a later [`commit_range`]. Any fd of the
/// file will do.
pub fn start_commit(file: BorrowedFd<'_>) -> Result<Freshness, CommitError> {
    let mut raw = RawCommitRange::default();
    // SAFETY: `raw` is a valid, writable struct xfs_commit_range (88 bytes,
    // the size the request number encodes).
    unsafe { xfs_ioc_start_commit(file.as_raw_fd(), &mut raw) }
        .map_err(|errno| CommitError::from_errno("XFS_IOC_START_COMMIT", errno))?;
    Ok(Freshness(raw.file2_freshness))
}

/// One exchange: `length` bytes at `offset` of the donor and of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRequest {
    pub offset: u64,
    pub length: u64,
    /// XFS_EXCHANGE_RANGE_* flags.
    pub flags: u64,
}

/// Exchanges `request`'s range of `donor` (file1) with the same range of
/// `file` (file2, the fd the call is made on) if `file` still matches
/// `fresh`. Both open read-write, not O_APPEND, on the same mount.
pub fn commit_range(
    file: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    request: CommitRequest,
    fresh: &Freshness,
) -> Result<(), CommitError> {
    let raw = RawCommitRange {
        file1_fd: donor.as_raw_fd(),
        pad: 0,
        file1_offset: request.offset,
        file2_offset: request.offset,
        length: request.length,
        flags: request.flags,
        file2_freshness: fresh.0,
    };
    // SAFETY: `raw` is a valid, initialised struct xfs_commit_range the
    // kernel only reads; both fds are open for the call's length.
    unsafe { xfs_ioc_commit_range(file.as_raw_fd(), &raw) }
        .map(|_| ())
        .map_err(|errno| CommitError::from_errno("XFS_IOC_COMMIT_RANGE", errno))
}

/// Whether COMMIT_RANGE works between `file` and `donor` (both read-write)
/// on this kernel and filesystem, asked without changing anything: a dry
/// run of an empty range, which the kernel answers after its feature and
/// file checks and before touching either file's cache or times.
pub fn probe(file: BorrowedFd<'_>, donor: BorrowedFd<'_>) -> Result<(), CommitError> {
    let fresh = start_commit(file)?;
    let request = CommitRequest {
        offset: 0,
        length: 0,
        flags: FLAG_DRY_RUN,
    };
    commit_range(file, donor, request, &fresh)
}

/// The bytes COMMIT_RANGE must be asked to exchange for the blocks
/// `start..end` (of `block` bytes) of a file of `size` bytes: the range
/// cut at the file's end, where the kernel wants the exact end (a length
/// reaching past it is refused). None when nothing of the range lies
/// inside the file.
pub fn commit_length(start: u64, end: u64, size: u64, block: u64) -> Option<(u64, u64)> {
    let block = block.max(1);
    let offset = start.checked_mul(block)?;
    let stop = end.checked_mul(block)?.min(size);
    (stop > offset).then(|| (offset, stop - offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn struct_layout_matches_xfs_fs_h() {
        // Linux's fs/xfs/libxfs/xfs_fs.h (6.12+): s32, u32, four u64, u64[6].
        assert_eq!(size_of::<RawCommitRange>(), 88);
        assert_eq!(offset_of!(RawCommitRange, pad), 4);
        assert_eq!(offset_of!(RawCommitRange, file1_offset), 8);
        assert_eq!(offset_of!(RawCommitRange, file2_offset), 16);
        assert_eq!(offset_of!(RawCommitRange, length), 24);
        assert_eq!(offset_of!(RawCommitRange, flags), 32);
        assert_eq!(offset_of!(RawCommitRange, file2_freshness), 40);
    }

    #[test]
    fn ioctl_numbers_encode_direction_and_size() {
        let ioc = |dir: u32, nr: u32| (dir << 30) | (88 << 16) | (u32::from(b'X') << 8) | nr;
        // _IOR is direction 2 (the kernel writes), _IOW 1.
        assert_eq!(ioc(2, 130), 0x8058_5882);
        assert_eq!(ioc(1, 131), 0x4058_5883);
    }

    #[test]
    fn errnos_have_their_exchange_meaning() {
        let e = |errno| CommitError::from_errno("XFS_IOC_COMMIT_RANGE", errno);
        assert_eq!(e(Errno::EBUSY), CommitError::Changed);
        assert_eq!(e(Errno::EBADF), CommitError::NotReadWrite);
        assert!(e(Errno::EOPNOTSUPP).calls_for_swapext());
        assert!(e(Errno::ENOTTY).calls_for_swapext());
        assert!(e(Errno::EINVAL).calls_for_swapext());
        assert!(!e(Errno::EBUSY).calls_for_swapext());
        assert!(!e(Errno::EIO).calls_for_swapext());
        assert!(e(Errno::EOPNOTSUPP).to_string().contains("SWAPEXT"));
    }

    #[test]
    fn lengths_are_whole_blocks_but_the_files_exact_end() {
        // Mid-file: whole blocks.
        assert_eq!(commit_length(2, 6, 1 << 20, 4096), Some((8192, 16_384)));
        // A 10,000-byte file: the last block ends at byte 10,000, not 12,288.
        assert_eq!(commit_length(0, 3, 10_000, 4096), Some((0, 10_000)));
        assert_eq!(commit_length(2, 3, 10_000, 4096), Some((8192, 1808)));
        // A chunk planned past the end (the file shrank): nothing.
        assert_eq!(commit_length(3, 5, 10_000, 4096), None);
        // A chunk ending exactly at a block-aligned end.
        assert_eq!(commit_length(0, 4, 16_384, 4096), Some((0, 16_384)));
        assert_eq!(commit_length(u64::MAX, u64::MAX, 1, 4096), None);
    }
}
