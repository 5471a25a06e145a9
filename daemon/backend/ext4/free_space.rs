//! What the free space holds right before a donor is made (GETFSMAP):
//! the largest free runs, cut at ext4's longest extent, and the free
//! buddy chunks; from them, the fewest extents any placement could have.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::{Mutex, PoisonError};

use super::buddy::{BuddyChunks, Geometry};
use super::MAX_EXTENT_BLOCKS;
use crate::assess::BlockRange;
use crate::backend::Inspected;
use crate::sys;

/// What the free space holds right before a donor is made, read with
/// GETFSMAP. Reading it also changes where ext4 allocates: to answer, it
/// loads the buddy bitmap of every block group, which it otherwise does
/// only for groups it has searched since the mount, and for all of them
/// about a minute after it (its background prefetch). Until then its fast
/// searches skip the others and a large donor gets small pieces: on a
/// fresh mount 120 extents for 500 MiB where, once the map was read (or a
/// minute later), the same call got 14.
#[derive(Debug, Clone)]
pub(super) struct FreeSpace {
    /// The largest free runs, cut at ext4's longest extent, longest first:
    /// just enough to hold the data. None when the free space cannot hold
    /// it or is too scattered to count.
    pub(super) largest: Option<Vec<u64>>,
    pub(super) chunks: BuddyChunks,
}

impl FreeSpace {
    /// The fewest extents any placement of `blocks` could have.
    pub(super) fn fewest(&self, blocks: u64) -> Option<u64> {
        let mut held = 0;
        let mut count = 0;
        for &len in self.largest.as_ref()? {
            if held >= blocks {
                break;
            }
            held += len;
            count += 1;
        }
        (held >= blocks).then_some(count)
    }

    /// Reads the free space of the filesystem `inspected` lives on, with
    /// the blocks of `freeing` (sorted) counted free. None when GETFSMAP is
    /// not there (kernels before 4.12) or fails: the donor is then
    /// allocated as if nothing were known.
    pub(super) fn read(
        inspected: &Inspected,
        data_blocks: u64,
        freeing: &[BlockRange],
    ) -> Option<FreeSpace> {
        let sb = super::superblock(&inspected.fs).ok()?;
        let block_size = inspected.fs.block_size;
        let mut runs = Runs {
            chunks: BuddyChunks::new(Geometry::of(sb)),
            largest: LargestRuns::new(data_blocks),
            current: None,
        };
        let mut freeing = freeing.iter().peekable();
        let read = sys::free_extents(inspected.file.as_fd(), |e| {
            let start = e.physical / block_size;
            while let Some(r) = freeing.next_if(|r| r.start < start) {
                runs.add(*r);
            }
            runs.add(BlockRange {
                start,
                len: e.length / block_size,
            });
        });
        if let Err(e) = read {
            tracing::debug!("free space map not available, the donor is allocated blind: {e}");
            return None;
        }
        freeing.for_each(|r| runs.add(*r));
        Some(runs.finish())
    }
}

/// Has ext4 index the free space of every block group of the filesystem
/// `inspected` lives on, once per mount of it in this process, by reading
/// the free space map (see `FreeSpace`). ext4 does so itself about a
/// minute after a mount; a donor made sooner (a service started at boot, a
/// job resumed after a reboot, a filesystem mounted again while the
/// service runs) would otherwise be served from the groups searched so
/// far.
pub(super) fn index_block_groups(inspected: &Inspected) {
    static INDEXED: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());
    // Before Linux 6.8 a new mount can get the id of one unmounted before
    // it (its first minute is then left to ext4), and before 5.8 there is
    // no id at all: once per device.
    let mount = sys::unique_mount_id(inspected.file.as_fd()).unwrap_or(0);
    let first = INDEXED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((inspected.dev, mount));
    if first {
        let started = std::time::Instant::now();
        match sys::free_extents(inspected.file.as_fd(), |_| {}) {
            Ok(()) => tracing::debug!(
                "read the free space map of device {:#x} (mount {mount}) in {:.0?}: ext4 has \
                 indexed all of its block groups",
                inspected.dev,
                started.elapsed()
            ),
            Err(e) => {
                tracing::debug!("free space map not available, block groups left to ext4: {e}")
            }
        }
    }
}

/// Free runs in disk order, joined where they touch (ext4 reports a run
/// crossing a block group edge in pieces), counted as they come.
pub(super) struct Runs {
    chunks: BuddyChunks,
    largest: LargestRuns,
    current: Option<BlockRange>,
}

impl Runs {
    pub(super) fn add(&mut self, r: BlockRange) {
        match self.current.as_mut() {
            Some(current) if current.end() == r.start => current.len += r.len,
            _ => {
                if let Some(done) = self.current.replace(r) {
                    self.count(done);
                }
            }
        }
    }

    pub(super) fn count(&mut self, run: BlockRange) {
        self.chunks.add_run(run);
        self.largest.add(run.len);
    }

    pub(super) fn finish(mut self) -> FreeSpace {
        if let Some(done) = self.current.take() {
            self.count(done);
        }
        FreeSpace {
            largest: self.largest.into_longest_first(),
            chunks: self.chunks,
        }
    }
}

/// The largest free runs, each cut at ext4's longest extent, just enough
/// of them to hold `need` blocks: their number is the fewest extents any
/// placement of that many blocks could have.
#[derive(Debug, Clone)]
pub(super) struct LargestRuns {
    pub(super) need: u64,
    /// Lengths, smallest on top.
    pub(super) held: std::collections::BinaryHeap<std::cmp::Reverse<u64>>,
    pub(super) total: u64,
    /// More than LIMIT runs would be needed.
    pub(super) too_many: bool,
}

impl LargestRuns {
    /// Past this many runs the count stops being useful (and its memory
    /// bounded): the free space is just too scattered.
    const LIMIT: usize = 1 << 16;

    pub(super) fn new(need: u64) -> Self {
        LargestRuns {
            need,
            held: std::collections::BinaryHeap::new(),
            total: 0,
            too_many: false,
        }
    }

    pub(super) fn add(&mut self, len: u64) {
        // More whole pieces than would hold `need` never count.
        let whole = (len / MAX_EXTENT_BLOCKS).min(self.need.div_ceil(MAX_EXTENT_BLOCKS));
        let pieces = std::iter::repeat_n(MAX_EXTENT_BLOCKS, whole as usize)
            .chain(Some(len % MAX_EXTENT_BLOCKS).filter(|&rest| rest > 0));
        for piece in pieces {
            self.held.push(std::cmp::Reverse(piece));
            self.total += piece;
            while let Some(&std::cmp::Reverse(smallest)) = self.held.peek() {
                let over_limit = self.held.len() > Self::LIMIT;
                if self.total - smallest < self.need && !over_limit {
                    break;
                }
                self.too_many |= over_limit && self.total - smallest < self.need;
                self.held.pop();
                self.total -= smallest;
            }
        }
    }

    pub(super) fn into_longest_first(self) -> Option<Vec<u64>> {
        if self.total < self.need || self.too_many {
            return None;
        }
        let mut runs: Vec<u64> = self.held.into_iter().map(|r| r.0).collect();
        runs.sort_unstable_by(|a, b| b.cmp(a));
        Some(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::buddy::testing::*;
    use super::*;

    #[test]
    fn the_largest_runs_count_the_fewest_extents_possible() {
        let fewest = |need, runs: &[u64]| {
            let mut l = LargestRuns::new(need);
            runs.iter().for_each(|&len| l.add(len));
            let free = FreeSpace {
                largest: l.into_longest_first(),
                chunks: chunks(&[]),
            };
            free.fewest(need)
        };
        assert_eq!(fewest(100, &[30, 50, 10, 40, 70]), Some(2));
        assert_eq!(fewest(100, &[10, 10, 100]), Some(1));
        assert_eq!(fewest(100, &[60, 39]), None);
        // Cut at ext4's longest extent.
        assert_eq!(fewest(70000, &[100_000]), Some(3));
        assert_eq!(fewest(65536, &[1 << 40]), Some(2));
        // And for part of the data.
        let mut l = LargestRuns::new(120);
        [70, 10, 50].iter().for_each(|&len| l.add(len));
        let free = FreeSpace {
            largest: l.into_longest_first(),
            chunks: chunks(&[]),
        };
        assert_eq!(
            (free.fewest(60), free.fewest(120), free.fewest(121)),
            (Some(1), Some(2), None)
        );
    }
}
