//! What a writer appended while a file was being moved. The planned
//! chunks cover the file as it was at the start; an appender's new blocks
//! land wherever the allocator finds room (often the scattered space
//! around the donor), and left there they can leave the whole file in more
//! extents than it started with. After the planned chunks, the tail past
//! the planned end is flushed, mapped and, when it is in more pieces than
//! it need be, moved into a donor of its own through the same chunk loop:
//! a few bounded rounds, since a writer may keep appending.
//!
//! It never fails a move that went well for a tail it cannot improve (no
//! room, a donor no better, a writer still writing): the tail is left as
//! it is, the log says why, and the whole file's result says what came of
//! it. Only a stop request or the filesystem failing (EIO, read-only)
//! ends the move here.

use std::os::fd::AsFd;

use super::{Halt, MoveOptions, Pass, Supervisor};
use crate::assess::{clip_to_eof, ideal_extents, BlockRange, ExtentMap};
use crate::backend::{Inspected, Relocation};
use crate::eligibility::check_free_space;
use crate::outcome::{FailReason, KernelErrorKind, Refusal, SkipReason};
use crate::sys::{self, Flush};
use crate::target::Target;

/// Rounds of tail moves after the planned chunks: each moves what was
/// appended during the one before, so a writer slower than MOVE_EXT is
/// caught up with in one or two, and a faster one is not chased for ever.
pub(super) const MAX_ROUNDS: u32 = 3;

/// What one look at the tail found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Look {
    /// Nothing past the end already handled.
    Nothing,
    /// Appended data that is already as few pieces as it can be (or is all
    /// hole): nothing to gain from moving it.
    Fine,
    /// Appended data in more pieces than its ideal: worth a donor.
    Move { ranges: Vec<BlockRange>, runs: u64 },
}

/// Decides what to do with the blocks of `map` from `from` up to
/// `eof_block`: a pure function over the map.
pub(super) fn look(map: &ExtentMap, from: u64, eof_block: u64, longest: u64) -> Look {
    if eof_block <= from {
        return Look::Nothing;
    }
    let ranges = super::from_block(&clip_to_eof(&map.data_ranges(), eof_block), from);
    let runs = map.extent_count_in(&ranges);
    if runs <= ideal_extents(&ranges, longest) {
        return Look::Fine;
    }
    Look::Move { ranges, runs }
}

/// Why the tail was left as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LeftBehind {
    /// The writer kept appending past the last round.
    Outpaced,
    /// A donor could not be had or was no better.
    NoBetterSpace(String),
    /// Data without blocks after fdatasync: written right now.
    Unsettled,
}

/// How one round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Round {
    /// Nothing was appended past the end already handled.
    NothingNew,
    /// What was appended was already in as few pieces as it can be: the
    /// writer's blocks land well, no need to chase them.
    Fine,
    /// Blocks up to this one were moved.
    Moved(u64),
    /// The tail stays as it is.
    LeftBehind(LeftBehind),
}

/// The tail's part of one move.
pub(super) struct Tail<'a> {
    pub target: &'a Target,
    pub inspected: &'a Inspected,
    pub options: &'a MoveOptions,
    pub chunk_blocks: std::num::NonZeroU64,
}

impl Tail<'_> {
    /// Moves what was appended past `planned_end` (a block) in up to
    /// `MAX_ROUNDS` rounds, each over what was appended during the one
    /// before; it stops at a round that finds nothing new, or finds it in
    /// as few pieces as it can be. A halt (stop requested, a kernel
    /// failure) is the move's; anything else that keeps the tail as it is
    /// is logged, and the whole file's measure judges the move.
    pub(super) fn follow(
        &self,
        pass: &mut Pass<'_>,
        planned_end: u64,
        supervisor: &mut dyn Supervisor,
    ) -> Result<(), Halt> {
        let mut handled = planned_end;
        for round in 1..=MAX_ROUNDS {
            match self.round(pass, handled, supervisor)? {
                Round::Moved(end) => {
                    tracing::debug!(
                        "{}: tail round {round} moved blocks {handled}..{end}",
                        crate::escape::escaped(&self.target.path)
                    );
                    handled = end;
                }
                Round::NothingNew | Round::Fine => return Ok(()),
                Round::LeftBehind(left) => {
                    self.note_left_behind(pass, handled, &left);
                    return Ok(());
                }
            }
        }
        let size = self.size(pass).map_err(kernel)?;
        if size.div_ceil(pass.block_size) > handled {
            self.note_left_behind(pass, handled, &LeftBehind::Outpaced);
        }
        Ok(())
    }

    /// One round over what lies past block `handled`.
    fn round(
        &self,
        pass: &mut Pass<'_>,
        handled: u64,
        supervisor: &mut dyn Supervisor,
    ) -> Result<Round, Halt> {
        let (file, block_size) = (pass.file, pass.block_size);
        // The size first: what was written before the fdatasync has its
        // blocks after it; what comes later is the next round's.
        let eof_block = self.size(pass).map_err(kernel)?.div_ceil(block_size);
        if eof_block <= handled {
            return Ok(Round::NothingNew);
        }
        sys::sync_data(file).map_err(kernel)?;
        let raw = sys::fiemap(file, Flush::No).map_err(kernel)?;
        let unsettled = raw.iter().any(|e| {
            e.flags.is_delalloc() && e.logical / block_size < eof_block && {
                let end = (e.logical + e.length).div_ceil(block_size);
                end > handled
            }
        });
        if unsettled {
            return Ok(Round::LeftBehind(LeftBehind::Unsettled));
        }
        let map = self.inspected.backend.extent_map(&raw, block_size);
        let (ranges, runs) = match look(
            &map,
            handled,
            eof_block,
            self.inspected.fs.max_extent_blocks,
        ) {
            Look::Nothing => return Ok(Round::NothingNew),
            Look::Fine => return Ok(Round::Fine),
            Look::Move { ranges, runs } => (ranges, runs),
        };
        let mut relocation = match self.relocation(&ranges, runs)? {
            Ok(relocation) => relocation,
            Err(why) => return Ok(Round::LeftBehind(LeftBehind::NoBetterSpace(why))),
        };
        let chunks = relocation.chunks(&ranges, self.chunk_blocks, 0);
        pass.move_chunks(&mut relocation, &chunks, supervisor)?;
        Ok(Round::Moved(eof_block))
    }

    /// A donor over exactly `ranges` (holes stay holes), within the same
    /// free-space reserve as the file's, in fewer pieces than `runs`; or
    /// why there is none. The filesystem failing (EIO, read-only) halts
    /// the move: that is no tail's business.
    fn relocation(
        &self,
        ranges: &[BlockRange],
        runs: u64,
    ) -> Result<Result<Relocation, String>, Halt> {
        let block_size = self.inspected.fs.block_size;
        let backend = self.inspected.backend;
        let need = backend.space_needed(ranges, block_size);
        let reserve = self.options.reserve_percent;
        let built = check_free_space(self.inspected.file.as_fd(), need, reserve).and_then(|()| {
            // Committed first: blocks freed since the move began (the
            // writer's own churn, a file deleted) are free for the
            // allocator only then.
            backend.relocation(self.target, self.inspected, ranges, reserve, true)
        });
        match built {
            Ok(relocation) if relocation.extents() < runs => Ok(Ok(relocation)),
            Ok(relocation) => Ok(Err(format!(
                "the best donor for it has {} pieces, the tail has {runs}",
                relocation.extents()
            ))),
            Err(Refusal::Fail(FailReason::Kernel(e))) if halts(e.kind) => {
                Err(Halt::Failed(FailReason::Kernel(e)))
            }
            // (An EROFS comes back as this skip.)
            Err(Refusal::Skip(SkipReason::ReadOnly)) => {
                Err(Halt::Failed(sys::Error::ReadOnly.into()))
            }
            Err(Refusal::Skip(reason)) => Ok(Err(reason.to_string())),
            Err(Refusal::Fail(reason)) => Ok(Err(reason.to_string())),
        }
    }

    fn size(&self, pass: &Pass<'_>) -> sys::Result<u64> {
        Ok(u64::try_from(sys::stat(pass.file)?.st_size).unwrap_or(0))
    }

    fn note_left_behind(&self, pass: &Pass<'_>, handled: u64, left: &LeftBehind) {
        let size = self.size(pass).unwrap_or(0);
        let bytes = size.saturating_sub(handled * pass.block_size);
        let why = match left {
            LeftBehind::Outpaced => {
                format!("the writer kept appending through {MAX_ROUNDS} rounds of moving its tail")
            }
            LeftBehind::NoBetterSpace(why) => why.clone(),
            LeftBehind::Unsettled => "it is being written right now".into(),
        };
        tracing::info!(
            "{}: {} appended during the move left where the writer put it: {why}",
            crate::escape::escaped(&self.target.path),
            crate::outcome::Size(bytes)
        );
    }
}

/// Errors that say the filesystem itself is in trouble, not this donor.
fn halts(kind: KernelErrorKind) -> bool {
    matches!(kind, KernelErrorKind::Io | KernelErrorKind::ReadOnly)
}

fn kernel(e: sys::Error) -> Halt {
    Halt::Failed(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::BlockExtent;

    const LONGEST: u64 = crate::backend::ext4::MAX_EXTENT_BLOCKS;

    fn map(extents: &[(u64, u64, u64)]) -> ExtentMap {
        ExtentMap {
            extents: extents
                .iter()
                .map(|&(logical, physical, len)| BlockExtent {
                    logical,
                    physical,
                    len,
                })
                .collect(),
            problem: None,
        }
    }

    #[test]
    fn nothing_past_the_planned_end_is_nothing_to_do() {
        let m = map(&[(0, 1000, 100)]);
        assert_eq!(look(&m, 100, 100, LONGEST), Look::Nothing);
        assert_eq!(look(&m, 100, 90, LONGEST), Look::Nothing);
    }

    #[test]
    fn a_tail_in_one_piece_is_left_alone() {
        let m = map(&[(0, 1000, 100), (100, 5000, 20)]);
        assert_eq!(look(&m, 100, 120, LONGEST), Look::Fine);
        // All hole (extended by truncate): nothing to move either.
        assert_eq!(look(&map(&[(0, 1000, 100)]), 100, 400, LONGEST), Look::Fine);
    }

    #[test]
    fn a_scattered_tail_is_moved_over_its_data_ranges_only() {
        // Appended in three pieces, a hole in between, and a fourth piece
        // past the size seen (the next round's).
        let m = map(&[
            (0, 1000, 100),
            (100, 7000, 4),
            (104, 9000, 4),
            (110, 3000, 6),
            (116, 8000, 4),
        ]);
        assert_eq!(
            look(&m, 100, 116, LONGEST),
            Look::Move {
                ranges: vec![
                    BlockRange { start: 100, len: 8 },
                    BlockRange { start: 110, len: 6 }
                ],
                runs: 3,
            }
        );
        // From a later round's start: only what lies past it.
        assert_eq!(look(&m, 110, 116, LONGEST), Look::Fine);
    }
}
