//! BTRFS_IOC_DEFRAG_RANGE: the kernel rewrites a byte range of a file so
//! that its small extents become large ones. What the kernel does with
//! each field (fs/btrfs/ioctl.c, btrfs_ioctl_defrag; fs/btrfs/defrag.c,
//! btrfs_defrag_file), which is what this wrapper relies on:
//!
//! - `start`, `len`: the byte range, cut at end of file and widened to
//!   whole sectors; `start` at or past end of file is EINVAL, an empty file
//!   is a no-op; a `len` with which `start + len` does not exceed `start`
//!   (0 or u64::MAX) means "to the end".
//! - `extent_thresh`: extents this long or longer are left where they are
//!   (0 means the kernel's 256 KiB). So are extents at their longest
//!   (128 KiB for a compressed one, 128 MiB otherwise), holes,
//!   preallocated extents, ranges with dirty pages, and a lone small
//!   extent that no neighbour in the range can merge with.
//! - shared extents: NOT skipped. A range whose extents a snapshot or a
//!   reflinked copy also uses is rewritten like any other, and the copy
//!   stops sharing it. The caller must pass only unshared ranges.
//! - `flags`: START_IO writes the rewritten pages out before returning
//!   (otherwise they are only dirtied, for the flusher to write later).
//!   COMPRESS compresses the rewrite with `compress_type` (0: zlib); the
//!   kernel then also forces START_IO and sets `extent_thresh` to the
//!   maximum, so every extent in the range is rewritten whatever its size.
//!   Without COMPRESS the rewrite is written like any write: compressed if
//!   the mount (`compress=`) or the file's property says so, plain if not,
//!   and a full-size compressed extent (128 KiB) is never rewritten. A flag
//!   the kernel does not know is EOPNOTSUPP.
//! - the return: 0 on success; the count of sectors rewritten stays in the
//!   kernel. EROFS: read-only mount or read-only subvolume (snapshot).
//!   ETXTBSY: an active swap file. EPERM: neither CAP_SYS_ADMIN nor write
//!   permission. EAGAIN: interrupted by a fatal signal. ENOSPC: no room
//!   for the new copy.
//!
//! The data never passes through user space, and a crash before the next
//! transaction commit (or fsync) leaves the old extents in place: btrfs
//! writes the new copy elsewhere and switches to it atomically.

use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::CompressType;
use crate::sys::error::{Error, Result};

const DEFRAG_RANGE_COMPRESS: u64 = 1;
const DEFRAG_RANGE_START_IO: u64 = 2;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct DefragRangeArgs {
    start: u64,
    len: u64,
    flags: u64,
    extent_thresh: u32,
    compress_type: u32,
    unused: [u32; 4],
}

// _IOW(0x94, 16, struct btrfs_ioctl_defrag_range_args)
nix::ioctl_write_ptr_bad!(btrfs_ioc_defrag_range, 0x4030_9410, DefragRangeArgs);

/// One DEFRAG_RANGE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defrag {
    /// Byte offset of the range.
    pub start: u64,
    /// Bytes in the range; never zero: the kernel takes any `len` for
    /// which `start + len` does not exceed `start` (0, or u64::MAX) as
    /// "to the end of the file".
    pub len: NonZeroU64,
    /// Extents at least this long are left alone, in bytes (at least 1).
    pub extent_thresh: u32,
    /// Compress the rewrite with this algorithm (which also rewrites every
    /// extent in the range); None: write it as any write would be.
    pub compress: Option<CompressType>,
}

/// Asks the kernel to defragment `request`'s range of `file`, with its
/// writes issued before it returns (START_IO). Returns when the range is
/// rewritten and its writes started; it is durable only after an fsync.
pub fn defrag_range(file: BorrowedFd<'_>, request: &Defrag) -> Result<()> {
    let mut args = DefragRangeArgs {
        start: request.start,
        len: request.len.get(),
        flags: DEFRAG_RANGE_START_IO,
        // 0 would mean the kernel's own 256 KiB, not "nothing".
        extent_thresh: request.extent_thresh.max(1),
        ..DefragRangeArgs::default()
    };
    if let Some(algorithm) = request.compress {
        args.flags |= DEFRAG_RANGE_COMPRESS;
        args.compress_type = algorithm.code();
    }
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_defrag_range_args
    // that the kernel only reads; the fd is open for the call's length.
    unsafe { btrfs_ioc_defrag_range(file.as_raw_fd(), &args) }
        .map(drop)
        .map_err(|errno| match errno {
            Errno::ETXTBSY => Error::Swapfile,
            other => Error::of("BTRFS_IOC_DEFRAG_RANGE", other),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_size_and_request_match_the_kernel_abi() {
        // sizeof(struct btrfs_ioctl_defrag_range_args) and
        // _IOW(0x94, 16, it), as <linux/btrfs.h> gives them.
        assert_eq!(std::mem::size_of::<DefragRangeArgs>(), 48);
        assert_eq!(
            nix::request_code_write!(0x94, 16, std::mem::size_of::<DefragRangeArgs>()),
            0x4030_9410
        );
    }
}
