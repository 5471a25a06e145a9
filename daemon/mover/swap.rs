//! The move on a filesystem whose kernel swaps a file's extents whole
//! (XFS's SWAPEXT): the data is copied into the donor chunk by chunk,
//! paced like any move and never visible to the file, then one call
//! swaps the donor's extents into the file. The kernel refuses the swap if
//! the file changed since the copy began (its ctime or mtime moved on), so
//! a concurrent writer costs a retry, never data.
//!
//! Nothing reaches the file before the swap, and the donor's data is
//! durable before it: a crash or a stop before it leaves the file as it
//! was, a crash during it (a chain of transactions on XFS with rmapbt)
//! leaves the same data in old blocks and new, and the donor (an
//! O_TMPFILE) is freed by the kernel. That is also why such
//! a move cannot resume mid-file: a resumed job copies from the start.

use std::os::fd::BorrowedFd;

use super::pass::Halt;
use super::{Control, Progress, Supervisor};
use crate::backend::Relocation;
use crate::outcome::FailReason;
use crate::plan::Chunk;
use crate::sys;

/// Copies `chunks` into the relocation's donor, paced by the supervisor,
/// then swaps it into `file` (of `size` bytes), leaving the file's page
/// cache as it was found. The bytes copied.
pub(super) fn copy_then_swap(
    file: BorrowedFd<'_>,
    mut relocation: Relocation,
    chunks: &[Chunk],
    block_size: u64,
    size: u64,
    supervisor: &mut dyn Supervisor,
) -> Result<u64, (Halt, u64)> {
    let total_bytes = chunks.iter().map(|c| c.len.get()).sum::<u64>() * block_size;
    let mut copied_bytes = 0;
    for chunk in chunks {
        let bytes = chunk.len.get() * block_size;
        // No `wants_quiet_disk` here, unlike the chunk loop of pass.rs: the
        // copy is direct I/O, complete when `relocate` returns, so the move
        // has no write-back of its own in flight when the supervisor
        // listens to the disk.
        if supervisor.before_chunk(bytes) == Control::Stop {
            if copied_bytes > 0 {
                tracing::info!(
                    "the copy into the donor stops at {copied_bytes} of {total_bytes} bytes; a \
                     whole-file swap cannot resume mid-file, so the copy starts over next time"
                );
            }
            return Err((Halt::Stopped { next_block: 0 }, copied_bytes));
        }
        match relocation.relocate(file, chunk, block_size) {
            Ok(copied) if copied == chunk.len.get() => {}
            Ok(copied) => {
                let halt = Halt::Failed(FailReason::ShortMove {
                    at: chunk.start,
                    asked: chunk.len.get(),
                    moved: copied,
                });
                return Err((halt, copied_bytes));
            }
            Err(failure) => {
                return Err((
                    Halt::Failed(FailReason::Kernel(failure.error)),
                    copied_bytes,
                ));
            }
        }
        copied_bytes += bytes;
        supervisor.after_chunk(&Progress {
            chunk_bytes: bytes,
            moved_bytes: copied_bytes,
            total_bytes,
            // Nothing is in the file before the swap: a resumed job starts
            // at the beginning, so no cursor is worth saving.
            next_block: 0,
            offset_bytes: chunk.end() * block_size,
            durable: false,
        });
    }
    // The swap writes the file's dirty pages back and drops its whole page
    // cache: note what was resident, to read it back afterwards.
    let resident = sys::residency(file, 0, size).ok();
    let started = std::time::Instant::now();
    let swapped = relocation.swap_in(file);
    let took = started.elapsed();
    if took >= std::time::Duration::from_millis(20) {
        tracing::debug!("the swap took {} ms", took.as_millis());
    }
    if let Err(error) = swapped {
        return Err((Halt::Failed(FailReason::Kernel(error)), copied_bytes));
    }
    if let Some(resident) = resident {
        if let Err(e) = sys::read_back_lost(file, &resident) {
            tracing::debug!("reading the file's cache back after the swap failed: {e}");
        }
    }
    Ok(copied_bytes)
}
