//! Measuring what one extent boundary costs a reader on a device, rather
//! than trusting the rotational flag (virtual disks often say rotational
//! whatever is under them).
//!
//! A fragmented file already there is read with direct I/O, 4 KiB at a
//! time: at the starts of its extents, in an order that jumps across the
//! device (each read lands megabytes from the last, as a reader crossing an
//! extent boundary does), and block after block inside one extent (each
//! read adjacent to the last). The difference of the two medians is what
//! one boundary costs: milliseconds on a disk, which must seek and wait for
//! the platter, and tens of microseconds on flash. About thirty reads and
//! no write: cheap and harmless on any device.
//!
//! Planning the reads and judging the timings are pure; only [`measure`]
//! reads.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use super::Medium;
use crate::assess::ExtentMap;
use crate::sys::{self, AlignedBuf};

/// Reads of this size, aligned to it (direct I/O wants the device's
/// logical block size; 4 KiB is a multiple of every one in use).
const READ_BYTES: u64 = 4096;
/// Jumps wanted, and the fewest that make a measurement.
const JUMPS: usize = 16;
const MIN_JUMPS: usize = 8;
/// Adjacent reads timed (after one more, which is itself a jump).
const ADJACENT: usize = 16;
/// Two jump reads land at least this far apart on the device: beyond what
/// a disk's own read-ahead cache holds after a read.
const MIN_GAP_BYTES: u64 = 4 << 20;
/// A boundary costing this much or more is a seek: a disk. Flash answers a
/// 4 KiB read anywhere within about a tenth of this.
pub const SEEK_MS: f64 = 1.0;

/// The byte offsets (in the file) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Far apart on the device, in reading order.
    pub jumps: Vec<u64>,
    /// One after another inside one extent; the first is not timed.
    pub adjacent: Vec<u64>,
}

impl Reads {
    pub fn count(&self) -> usize {
        self.jumps.len() + self.adjacent.len()
    }
}

/// What a measurement found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// The median read that jumped, in ms.
    pub jump_ms: f64,
    /// The median read adjacent to the last, in ms.
    pub adjacent_ms: f64,
}

impl Probe {
    /// What one extent boundary costs a reader, in ms.
    pub fn boundary_ms(&self) -> f64 {
        (self.jump_ms - self.adjacent_ms).max(0.0)
    }

    pub fn medium(&self) -> Medium {
        if self.boundary_ms() >= SEEK_MS {
            Medium::Hdd
        } else {
            Medium::Ssd
        }
    }
}

/// The reads that measure a device through `map`, a file on it with
/// `block_size`-byte blocks; None where the file is too compact (too few
/// extents far enough apart) or has no extent long enough to read along.
pub fn plan(map: &ExtentMap, block_size: u64) -> Option<Reads> {
    let aligned = |bytes: u64| bytes.div_ceil(READ_BYTES) * READ_BYTES;
    // Extents by place on the device, with the first aligned read in each.
    let mut places: Vec<(u64, u64, u64)> = map
        .extents
        .iter()
        .filter_map(|e| {
            let start = e.logical.checked_mul(block_size)?;
            let end = e.logical.checked_add(e.len)?.checked_mul(block_size)?;
            let physical = e.physical.checked_mul(block_size)?;
            let first = aligned(start);
            (first + READ_BYTES <= end).then_some((physical, first, end))
        })
        .collect();
    places.sort_unstable();
    // Spread: each at least MIN_GAP_BYTES past the one before on the device.
    let mut spread: Vec<u64> = Vec::new();
    let mut last: Option<u64> = None;
    for &(physical, first, _) in &places {
        if last.is_none_or(|l| physical >= l + MIN_GAP_BYTES) {
            spread.push(first);
            last = Some(physical);
        }
    }
    if spread.len() < MIN_JUMPS {
        return None;
    }
    // Evenly thinned to JUMPS, then read low half and high half in turn,
    // so that every read crosses about half the spread.
    let step = spread.len().div_ceil(JUMPS);
    let thinned: Vec<u64> = spread.into_iter().step_by(step).collect();
    let (low, high) = thinned.split_at(thinned.len().div_ceil(2));
    let mut jumps = Vec::with_capacity(thinned.len());
    for (i, &l) in low.iter().enumerate() {
        jumps.push(l);
        if let Some(&h) = high.get(i) {
            jumps.push(h);
        }
    }
    // Along the longest extent.
    let (_, first, end) = places.iter().max_by_key(|(_, first, end)| end - first)?;
    let wanted = (ADJACENT as u64 + 1) * READ_BYTES;
    if end - first < wanted {
        return None;
    }
    let adjacent = (0..=ADJACENT as u64)
        .map(|i| first + i * READ_BYTES)
        .collect();
    Some(Reads { jumps, adjacent })
}

/// Reads `reads` from the file `fd` refers to, with direct I/O (a new open
/// file description: `fd`'s own is untouched), and times them.
pub fn measure(fd: BorrowedFd<'_>, reads: &Reads) -> Result<Probe, sys::Error> {
    let direct = sys::reopen_direct_read(fd)?;
    let mut buf = AlignedBuf::new(READ_BYTES as usize, READ_BYTES as usize)
        .ok_or_else(|| sys::Error::of("allocating a read buffer", nix::errno::Errno::ENOMEM))?;
    let mut time = |offset: u64| -> Result<f64, sys::Error> {
        let started = Instant::now();
        sys::read_at(direct.as_fd(), &mut buf, offset)?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    let mut jumps = reads
        .jumps
        .iter()
        .map(|&offset| time(offset))
        .collect::<Result<Vec<f64>, _>>()?;
    let mut adjacent = reads
        .adjacent
        .iter()
        .map(|&offset| time(offset))
        .collect::<Result<Vec<f64>, _>>()?;
    // The first adjacent read came from wherever the last jump was.
    adjacent.remove(0);
    Ok(Probe {
        jump_ms: median(&mut jumps),
        adjacent_ms: median(&mut adjacent),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::BlockExtent;

    const BS: u64 = 4096;
    const MIB_BLOCKS: u64 = (1 << 20) / BS;

    fn map(extents: Vec<BlockExtent>) -> ExtentMap {
        ExtentMap {
            extents,
            problem: None,
        }
    }

    /// `n` extents of `len` blocks, each `gap` blocks after the last on
    /// the device.
    fn pieces(n: u64, len: u64, gap: u64) -> ExtentMap {
        map((0..n)
            .map(|i| BlockExtent {
                logical: i * len,
                physical: 1000 + i * (len + gap),
                len,
            })
            .collect())
    }

    #[test]
    fn jumps_cross_the_device_and_adjacent_reads_follow_one_extent() {
        // 64 pieces of 8 MiB, 8 MiB apart.
        let reads = plan(&pieces(64, 8 * MIB_BLOCKS, 8 * MIB_BLOCKS), BS).expect("a plan");
        assert_eq!(reads.jumps.len(), JUMPS);
        // Each jump lands at least half the spread from the last (the
        // pieces are laid out in file order, so file offsets show it).
        let span: u64 = 64 * (8 << 20);
        for pair in reads.jumps.windows(2) {
            assert!(pair[0].abs_diff(pair[1]) >= span / 4, "{:?}", reads.jumps);
        }
        let mut sorted = reads.jumps.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), JUMPS, "no place read twice");
        assert_eq!(reads.adjacent.len(), ADJACENT + 1);
        for pair in reads.adjacent.windows(2) {
            assert_eq!(pair[1] - pair[0], READ_BYTES);
        }
        assert!(reads
            .jumps
            .iter()
            .chain(&reads.adjacent)
            .all(|o| o % READ_BYTES == 0));
    }

    #[test]
    fn a_compact_file_or_one_without_a_long_extent_cannot_measure() {
        // Contiguous 1 MiB pieces: no two are MIN_GAP_BYTES apart... but
        // their starts are 1 MiB apart: only every fourth counts.
        assert!(plan(&pieces(16, MIB_BLOCKS, 0), BS).is_none());
        assert!(plan(&pieces(64, MIB_BLOCKS, 0), BS).is_some());
        // Far apart, but every piece shorter than 17 reads.
        assert!(plan(&pieces(64, 8, 8 * MIB_BLOCKS), BS).is_none());
        assert!(plan(&map(vec![]), BS).is_none());
        // 1 KiB blocks: reads start at the first 4 KiB boundary in a piece.
        let reads = plan(&pieces(32, 8 << 10, 16 << 10), 1024).expect("a plan");
        assert!(reads.jumps.iter().all(|o| o % READ_BYTES == 0));
    }

    #[test]
    fn a_seek_per_boundary_is_a_disk_and_tens_of_microseconds_flash() {
        let disk = Probe {
            jump_ms: 8.3,
            adjacent_ms: 0.4,
        };
        assert!((disk.boundary_ms() - 7.9).abs() < 1e-9);
        assert_eq!(disk.medium(), Medium::Hdd);
        let flash = Probe {
            jump_ms: 0.16,
            adjacent_ms: 0.12,
        };
        assert_eq!(flash.medium(), Medium::Ssd);
        // Adjacent slower than jumps (noise): no negative cost.
        let odd = Probe {
            jump_ms: 0.1,
            adjacent_ms: 0.3,
        };
        assert_eq!(odd.boundary_ms(), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
