//! The chunk loop of one move, shared by the planned chunks and the
//! tail's: each chunk paced by the supervisor, moved with `moved_len`
//! checked, its page cache kept as it was found, and committed at
//! checkpoints, so that a cursor handed to the supervisor as durable never
//! names a block whose move a power cut could undo.
//!
//! Commits are I/O too. The moved data is already written back chunk by
//! chunk (the cache keeper), so a commit carries the journal's metadata
//! and a cache flush; on a busy disk it queues behind the foreground's
//! requests, and the foreground's own fsyncs queue behind it in the
//! journal. So commits are spaced by what they cost (one that took 300 ms
//! is followed by the next no sooner than 3 s later, each then covering
//! more of the move), and each one's time goes to the supervisor, whose
//! ramp slows the next chunks after a slow one.

use std::os::fd::BorrowedFd;

use super::cache::CacheKeeper;
use super::{Control, Progress, Supervisor};
use crate::backend::Relocation;
use crate::outcome::{FailReason, KernelError};
use crate::plan::Chunk;

/// Why a pass of chunks ended before its last.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Halt {
    /// Stopped on request between chunks; `next_block` is where to resume.
    Stopped {
        next_block: u64,
    },
    Failed(FailReason),
}

/// One move's chunks, the planned ones and the tail's, and what they share:
/// the byte counts and the checkpoint clock.
pub(super) struct Pass<'fd> {
    pub file: BorrowedFd<'fd>,
    pub block_size: u64,
    pub moved_bytes: u64,
    total_bytes: u64,
    since_checkpoint: u64,
    last_checkpoint: std::time::Instant,
    /// The time after a commit before the next is due: spaced by what the
    /// last one took.
    commit_every: std::time::Duration,
}

impl<'fd> Pass<'fd> {
    pub(super) fn new(file: BorrowedFd<'fd>, block_size: u64) -> Self {
        Pass {
            file,
            block_size,
            moved_bytes: 0,
            total_bytes: 0,
            since_checkpoint: 0,
            last_checkpoint: std::time::Instant::now(),
            commit_every: CHECKPOINT_EVERY,
        }
    }

    /// Relocates `chunks` one by one, paced by the supervisor, checking
    /// how much moved after every call and making the moves durable at
    /// checkpoints and after the last chunk.
    pub(super) fn move_chunks(
        &mut self,
        relocation: &mut Relocation,
        chunks: &[Chunk],
        supervisor: &mut dyn Supervisor,
    ) -> Result<(), Halt> {
        let (file, block_size) = (self.file, self.block_size);
        self.total_bytes += chunks.iter().map(|c| c.len.get()).sum::<u64>() * block_size;
        let mut cache = CacheKeeper::new(file, block_size, relocation.reads_through_cache());
        if let Some(first) = chunks.first() {
            cache.prepare(first);
        }
        for (index, chunk) in chunks.iter().enumerate() {
            let bytes = chunk.len.get() * block_size;
            if supervisor.wants_quiet_disk(bytes) {
                cache.settle_moved();
            }
            if supervisor.before_chunk(bytes) == Control::Stop {
                cache.finish_all();
                // What was moved must be on disk before anyone resumes after it.
                relocation
                    .make_durable(file)
                    .map_err(|e| Halt::Failed(FailReason::Kernel(e)))?;
                return Err(Halt::Stopped {
                    next_block: chunk.start,
                });
            }
            if let Some(next) = chunks.get(index + 1) {
                cache.prepare(next);
            }
            let started = std::time::Instant::now();
            let result = relocation.relocate(file, chunk, block_size);
            note_if_slow("moving the chunk at block", chunk.start, started);
            let moved_blocks = match &result {
                Ok(moved) => *moved,
                Err(failure) => failure.moved_blocks,
            };
            self.moved_bytes += moved_blocks.min(chunk.len.get()) * block_size;
            cache.moved(chunk);
            match result {
                Err(failure) => {
                    cache.finish_all();
                    return Err(Halt::Failed(FailReason::Kernel(failure.error)));
                }
                Ok(moved) if moved != chunk.len.get() => {
                    cache.finish_all();
                    return Err(Halt::Failed(FailReason::ShortMove {
                        at: chunk.start,
                        asked: chunk.len.get(),
                        moved,
                    }));
                }
                Ok(_) => {}
            }
            let last = index + 1 == chunks.len();
            let durable = match self.checkpoint(relocation, bytes, last, chunk.start, supervisor) {
                Ok(durable) => durable,
                Err(e) => {
                    cache.finish_all();
                    return Err(Halt::Failed(FailReason::Kernel(e)));
                }
            };
            supervisor.after_chunk(&Progress {
                chunk_bytes: moved_blocks * block_size,
                moved_bytes: self.moved_bytes,
                total_bytes: self.total_bytes,
                next_block: chunk.end(),
                offset_bytes: chunk.end() * block_size,
                durable,
            });
        }
        cache.finish_all();
        Ok(())
    }

    /// Commits when one is due, and always after a pass's last chunk: a
    /// cursor is only worth saving once the moves before it are committed
    /// (a power cut reverts uncommitted moves, and a resume after a
    /// reverted cursor would skip blocks that are back in place). Whether
    /// everything moved so far is committed; an error only where the
    /// commit was the last one.
    fn checkpoint(
        &mut self,
        relocation: &Relocation,
        bytes: u64,
        last: bool,
        at_block: u64,
        supervisor: &mut dyn Supervisor,
    ) -> Result<bool, KernelError> {
        self.since_checkpoint += bytes;
        let due = self.since_checkpoint >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= self.commit_every
            || relocation.durable_each_chunk();
        if !due && !last {
            return Ok(false);
        }
        self.since_checkpoint = 0;
        let started = std::time::Instant::now();
        let committed = relocation.make_durable(self.file);
        let took = started.elapsed();
        note_if_slow("committing after the chunk at block", at_block, started);
        self.last_checkpoint = std::time::Instant::now();
        self.commit_every = commit_spacing(took);
        supervisor.committed(took);
        match committed {
            Ok(()) => Ok(true),
            // The pass is done only once it is all committed.
            Err(e) if last => Err(e),
            Err(_) => Ok(false),
        }
    }
}

/// The time from a commit that took `took` to the next one: at least
/// [`CHECKPOINT_EVERY`], and long enough that commits hold the disk at most
/// a tenth of the time; never more than [`CHECKPOINT_MOST_EVERY`], the
/// most a resume after a power cut would redo at a slow rate.
fn commit_spacing(took: std::time::Duration) -> std::time::Duration {
    (took * COMMIT_SPACING).clamp(CHECKPOINT_EVERY, CHECKPOINT_MOST_EVERY)
}

/// Logs (at debug) a step that took long enough for a writer beside it to
/// notice: what to look at when a workload feels the mover.
fn note_if_slow(what: &str, block: u64, started: std::time::Instant) {
    let took = started.elapsed();
    if took >= SLOW_STEP {
        tracing::debug!("{what} {block} took {} ms", took.as_millis());
    }
}

const SLOW_STEP: std::time::Duration = std::time::Duration::from_millis(20);

/// The file is committed (fsync) after this much is moved, or this much
/// time passed, whichever comes first: the most a crash can make a resumed
/// job redo.
const CHECKPOINT_BYTES: u64 = 64 << 20;
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Commits are spaced by this many times what the last one took.
const COMMIT_SPACING: u32 = 10;
const CHECKPOINT_MOST_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commits_are_spaced_by_what_the_last_one_cost() {
        let ms = Duration::from_millis;
        assert_eq!(
            commit_spacing(ms(5)),
            ms(1000),
            "a quick commit: every second"
        );
        assert_eq!(
            commit_spacing(ms(300)),
            ms(3000),
            "at most a tenth of the time"
        );
        assert_eq!(commit_spacing(ms(1800)), ms(18000));
        assert_eq!(commit_spacing(ms(9000)), ms(30000), "never further apart");
    }
}
