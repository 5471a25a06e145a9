//! EXT4_IOC_MOVE_EXT: the kernel swaps a range of blocks between a file and
//! a donor while the file stays open and in use. Data never passes through
//! user space.

use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::error::{Call, Error};

#[repr(C)]
#[derive(Debug, Default)]
struct MoveExtent {
    reserved: u32,
    donor_fd: u32,
    orig_start: u64,
    donor_start: u64,
    len: u64,
    moved_len: u64,
}

// _IOWR('f', 15, struct move_extent)
nix::ioctl_readwrite_bad!(ext4_ioc_move_ext, 0xC028_660F, MoveExtent);

/// A MOVE_EXT call that failed, with how far it got first: the kernel fills
/// in `moved_len` even when it returns an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after moving {moved_blocks} blocks)")]
pub struct MoveFailed {
    pub moved_blocks: u64,
    pub error: Error,
}

/// Moves `len` blocks of `file` starting at block `start` into the blocks
/// the donor holds at the same offset, and returns how many blocks the
/// kernel says it moved (holes in the file count as moved; a hole in the
/// donor stops the call short). `len` cannot be zero: the kernel would read
/// zero as "to the end of the file".
pub fn move_extents(
    file: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    start: u64,
    len: NonZeroU64,
) -> Result<u64, MoveFailed> {
    let donor_fd = u32::try_from(donor.as_raw_fd()).map_err(|_| MoveFailed {
        moved_blocks: 0,
        error: Error::of("EXT4_IOC_MOVE_EXT", nix::errno::Errno::EBADF),
    })?;
    let mut request = MoveExtent {
        donor_fd,
        orig_start: start,
        donor_start: start,
        len: len.get(),
        ..MoveExtent::default()
    };
    // SAFETY: `request` is a valid, initialised struct move_extent that the
    // kernel reads and writes back; both fds are open for the call's length.
    let result = unsafe { ext4_ioc_move_ext(file.as_raw_fd(), &mut request) };
    match result {
        Ok(_) => Ok(request.moved_len),
        Err(errno) => Err(MoveFailed {
            moved_blocks: request.moved_len,
            error: Error::from_errno(Call::MoveExt, errno),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn struct_size_matches_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<super::MoveExtent>(), 40);
    }
}
