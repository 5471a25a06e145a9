//! The plan of one move: which ranges the donor gets (the file's data
//! ranges, so holes stay holes) and the bounded chunks MOVE_EXT is called
//! on, so that a writer to the same file stalls for milliseconds.

use std::num::NonZeroU64;

use crate::assess::BlockRange;

/// One MOVE_EXT call: `len` blocks from logical block `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub len: NonZeroU64,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.start + self.len.get()
    }
}

/// Cuts `ranges` into chunks of at most `chunk_blocks`, never across a hole,
/// starting at block `resume_at` (earlier blocks were moved already).
pub fn chunks(ranges: &[BlockRange], chunk_blocks: NonZeroU64, resume_at: u64) -> Vec<Chunk> {
    let mut out = Vec::new();
    for range in ranges {
        let mut start = range.start.max(resume_at);
        while start < range.end() {
            let len = (range.end() - start).min(chunk_blocks.get());
            if let Some(len) = NonZeroU64::new(len) {
                out.push(Chunk { start, len });
            }
            start += len;
        }
    }
    out
}

/// Chunk length in blocks for a chunk size in bytes (at least one block).
pub fn chunk_blocks(chunk_bytes: u64, block_size: u64) -> NonZeroU64 {
    NonZeroU64::new(chunk_bytes / block_size.max(1)).unwrap_or(NonZeroU64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(v: u64) -> NonZeroU64 {
        NonZeroU64::new(v).expect("non-zero")
    }

    #[test]
    fn chunks_never_cross_holes_and_cover_every_block() {
        let ranges = [
            BlockRange { start: 0, len: 600 },
            BlockRange {
                start: 1000,
                len: 10,
            },
        ];
        let c = chunks(&ranges, nz(256), 0);
        let got: Vec<(u64, u64)> = c.iter().map(|c| (c.start, c.len.get())).collect();
        assert_eq!(got, vec![(0, 256), (256, 256), (512, 88), (1000, 10)]);
    }

    #[test]
    fn resume_skips_moved_blocks() {
        let ranges = [
            BlockRange { start: 0, len: 600 },
            BlockRange {
                start: 1000,
                len: 10,
            },
        ];
        let c = chunks(&ranges, nz(256), 300);
        let got: Vec<(u64, u64)> = c.iter().map(|c| (c.start, c.len.get())).collect();
        assert_eq!(got, vec![(300, 256), (556, 44), (1000, 10)]);
        assert!(chunks(&ranges, nz(256), 5000).is_empty());
    }

    #[test]
    fn chunk_blocks_is_never_zero() {
        assert_eq!(chunk_blocks(1 << 20, 4096).get(), 256);
        assert_eq!(chunk_blocks(100, 4096).get(), 1);
    }
}
