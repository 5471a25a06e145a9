//! How ext4 relocates a range: EXT4_IOC_MOVE_EXT swaps the file's blocks
//! with the donor's, chunk by chunk, and a commit of the journal makes the
//! swaps so far survive a power cut.

use std::os::fd::BorrowedFd;

use crate::ext4;
use crate::plan::Chunk;
use crate::sys::{self, Wait};

/// Makes the moves so far survive a power cut: the file's data written to
/// its new blocks, then the journal, with the extent swaps, committed.
pub(super) fn commit(file: BorrowedFd<'_>, donor: BorrowedFd<'_>) -> sys::Result<()> {
    sys::sync_all(file)?;
    ext4::commit_journal(donor)
}

/// How often a chunk is tried again when the kernel finds its pages busy
/// (a writer's pages under writeback): the condition passes in milliseconds.
const BUSY_RETRIES: u32 = 20;

/// Moves one chunk; when the kernel answers EBUSY, writes the chunk back
/// and tries the rest again, a few times, with a short backoff.
pub(super) fn move_chunk(
    file: BorrowedFd<'_>,
    donor: BorrowedFd<'_>,
    chunk: &Chunk,
    block_size: u64,
) -> Result<u64, ext4::MoveFailed> {
    let mut done = 0u64;
    let mut attempt = 0;
    loop {
        let remaining = chunk.len.get() - done;
        let Some(len) = std::num::NonZeroU64::new(remaining) else {
            return Ok(done);
        };
        match ext4::move_extents(file, donor, chunk.start + done, len) {
            Ok(moved) => return Ok(done + moved),
            Err(failure) if failure.error == sys::Error::Busy && attempt < BUSY_RETRIES => {
                done += failure.moved_blocks.min(remaining);
                attempt += 1;
                let (offset, bytes) = (
                    (chunk.start + done) * block_size,
                    (chunk.len.get() - done) * block_size,
                );
                let _ = sys::write_back(file, offset, bytes, Wait::Yes);
                std::thread::sleep(std::time::Duration::from_millis(
                    (20 * u64::from(attempt)).min(200),
                ));
            }
            Err(failure) => {
                return Err(ext4::MoveFailed {
                    moved_blocks: done + failure.moved_blocks,
                    error: failure.error,
                })
            }
        }
    }
}
