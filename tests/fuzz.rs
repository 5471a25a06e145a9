//! Property tests over random inputs (no root needed): thousands of seeded
//! cases each, the seed printed (replay one with DEFRAGD_FUZZ_SEED=0x...).
//! Each part ends in one `SUMMARY part seed=.. cases=N faults=M failures=F`
//! line; `faults` counts the malformed inputs among the cases (unsorted,
//! overlapping, zero-length or absurd extents, mutated config files, bad
//! environment values, hostile responses).
//!
//! Parts:
//! - `ExtentMap::from_fiemap` on random FIEMAP lists never panics, and its
//!   figures keep their invariants;
//! - `plan::chunks` covers exactly the blocks of the ranges at or after
//!   `resume_at`, never across a hole, in chunks of 1..=chunk_blocks;
//! - `clip_to_eof`, alone and in the pipeline map → ranges → clip → chunks;
//! - `config::load_from` on random and mutated TOML and environments never
//!   panics, and either loads (and what it loads renders and loads back the
//!   same) or returns one-line errors that each name their source;
//! - `defragd config check FILE` as a process: exit 0 or 78, never a panic;
//! - what defragctl does with whatever a socket answers: `decode_response`
//!   and `format::human` / `format::json` never panic, and text from the
//!   service cannot forge output lines or drive the terminal.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Command;

use common::{catch, fuzz_seed, quiet_panics, Tally, XorShift};
use defragd::assess::{clip_to_eof, e4defrag_best, Assessment, BlockRange, ExtentMap};
use defragd::config::{self, ConfigErrors, Origin};
use defragd::control::protocol::{
    CoveredFs, DefragReply, Done, HistoryLine, Moving, QueueEntry, Request, ResponseData,
    StatusReport,
};
use defragd::control::{client, format};
use defragd::ext4::{Extent, ExtentFlags};
use defragd::plan::{chunk_blocks, chunks};

/// Case counts, scaled by DEFRAGD_FUZZ_SCALE (default 1).
fn cases(base: u64) -> u64 {
    let scale: u64 = std::env::var("DEFRAGD_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    base * scale.max(1)
}

const BLOCK_SIZES: [u64; 5] = [1024, 2048, 4096, 16384, 65536];

// ---------------------------------------------------------------------------
// 1. ExtentMap::from_fiemap

/// How one random FIEMAP list is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapKind {
    /// What ext4 really reports: sorted, disjoint, block-aligned, holes.
    Realistic,
    /// Realistic, shuffled.
    Unsorted,
    /// Extents over the same logical blocks.
    Overlapping,
    /// Some extents of length 0.
    ZeroLength,
    /// Offsets and lengths at ext4's limits (2^32 blocks a file, 2^48 a
    /// filesystem).
    Extreme,
    /// Any u64 at all.
    Absurd,
    /// Realistic, with random flags and unaligned byte values.
    Noise,
}

const MAP_KINDS: [MapKind; 7] = [
    MapKind::Realistic,
    MapKind::Unsorted,
    MapKind::Overlapping,
    MapKind::ZeroLength,
    MapKind::Extreme,
    MapKind::Absurd,
    MapKind::Noise,
];

fn realistic_map(rng: &mut XorShift, bs: u64, n: usize) -> Vec<Extent> {
    let mut out = Vec::with_capacity(n);
    let mut logical = rng.below(4) * rng.below(1000);
    let mut physical = rng.range(1, 1 << 28);
    for i in 0..n {
        let max = if rng.chance(1, 20) { 32768 } else { 300 };
        let len = rng.range(1, max);
        if rng.chance(1, 3) {
            physical = rng.range(1, 1 << 28); // elsewhere on disk
        }
        let mut flags = 0;
        if rng.chance(1, 8) {
            flags |= ExtentFlags::UNWRITTEN;
        }
        if rng.chance(1, 30) {
            flags |= ExtentFlags::MERGED;
        }
        if i + 1 == n {
            flags |= ExtentFlags::LAST;
        }
        out.push(Extent {
            logical: logical * bs,
            physical: physical * bs,
            length: len * bs,
            flags: ExtentFlags::from_bits(flags),
        });
        logical += len;
        physical += len;
        if rng.chance(1, 4) {
            logical += rng.range(1, 5000); // a hole
        }
    }
    out
}

fn random_map(rng: &mut XorShift, kind: MapKind, bs: u64) -> Vec<Extent> {
    let n = match rng.below(10) {
        0 => 0,
        1 => 1,
        2..=7 => rng.range(2, 40) as usize,
        _ => rng.range(40, 600) as usize,
    };
    let mut v = realistic_map(rng, bs, n);
    match kind {
        MapKind::Realistic => {}
        MapKind::Unsorted => {
            for i in (1..v.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                v.swap(i, j);
            }
        }
        MapKind::Overlapping => {
            for e in &mut v {
                e.logical = rng.below(200) * bs;
                e.length = rng.range(1, 400) * bs;
            }
        }
        MapKind::ZeroLength => {
            for e in &mut v {
                if rng.chance(1, 3) {
                    e.length = 0;
                }
            }
        }
        MapKind::Extreme => {
            for e in &mut v {
                e.logical = rng.below(1 << 32) * bs;
                e.length = rng.range(1, 1 << 32) * bs;
                e.physical = rng.below(1 << 48) * bs;
            }
            v.sort_by_key(|e| e.logical);
        }
        MapKind::Absurd => {
            let pool = [
                0,
                1,
                bs - 1,
                bs,
                u64::MAX,
                u64::MAX - 1,
                1 << 63,
                u64::MAX / 2,
            ];
            for e in &mut v {
                for field in [&mut e.logical, &mut e.physical, &mut e.length] {
                    *field = if rng.chance(1, 2) {
                        *rng.pick(&pool)
                    } else {
                        rng.next_u64()
                    };
                }
                e.flags = ExtentFlags::from_bits(rng.next_u64() as u32);
            }
        }
        MapKind::Noise => {
            for e in &mut v {
                e.flags = ExtentFlags::from_bits(rng.next_u64() as u32);
                if rng.chance(1, 4) {
                    e.length += rng.below(bs);
                }
                if rng.chance(1, 4) {
                    e.logical += rng.below(bs);
                    e.physical += rng.below(bs);
                }
            }
        }
    }
    v
}

/// The flags that make a map unmovable as it is.
fn is_problem(flags: ExtentFlags) -> bool {
    let bits = ExtentFlags::DELALLOC
        | ExtentFlags::DATA_INLINE
        | ExtentFlags::DATA_TAIL
        | ExtentFlags::UNKNOWN
        | ExtentFlags::ENCODED
        | ExtentFlags::NOT_ALIGNED
        | ExtentFlags::DATA_ENCRYPTED;
    flags.bits() & bits != 0
}

/// The mapped blocks as sorted, merged [start, end) intervals, computed
/// here independently of the product (u128: no overflow whatever the input).
fn union_of(extents: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut v: Vec<(u128, u128)> = extents
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(start, len)| (start, start + len))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Checks one map; returns the failures found.
fn check_map(raw: &[Extent], bs: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let map = match catch(|| ExtentMap::from_fiemap(raw, bs)) {
        Ok(map) => map,
        Err(p) => return vec![format!("from_fiemap panicked: {p}")],
    };
    // Conversion: one block extent per FIEMAP extent, sorted by logical.
    if map.extents.len() != raw.len() {
        bad.push(format!(
            "{} extents from {} entries",
            map.extents.len(),
            raw.len()
        ));
    }
    if map.extents.windows(2).any(|w| w[0].logical > w[1].logical) {
        bad.push("extents not sorted by logical block".into());
    }
    let mut want: Vec<(u64, u64, u64)> = raw
        .iter()
        .map(|e| (e.logical / bs, e.physical / bs, e.length.div_ceil(bs)))
        .collect();
    let mut got: Vec<(u64, u64, u64)> = map
        .extents
        .iter()
        .map(|e| (e.logical, e.physical, e.len))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        bad.push("block extents are not the FIEMAP extents in blocks".into());
    }
    let problem_expected = raw.iter().any(|e| is_problem(e.flags));
    if map.problem.is_some() != problem_expected {
        bad.push(format!(
            "problem {:?} but a problem flag is {}",
            map.problem,
            if problem_expected {
                "present"
            } else {
                "absent"
            }
        ));
    }
    // Figures: computed under catch_unwind (an overflow is a panic here).
    let figures = catch(|| {
        (
            map.fiemap_entries(),
            map.extent_count(),
            map.physical_runs(),
            map.data_ranges(),
            map.ideal_extents(),
            map.blocks(),
        )
    });
    let (entries, extents, runs, ranges, ideal, blocks) = match figures {
        Ok(f) => f,
        Err(p) => {
            bad.push(format!("a figure of the map panicked: {p}"));
            return bad;
        }
    };
    let nonzero = map.extents.iter().filter(|e| e.len > 0).count() as u64;
    if entries != raw.len() as u64 {
        bad.push(format!("fiemap_entries {entries} != {}", raw.len()));
    }
    if runs > entries {
        bad.push(format!("physical_runs {runs} > fiemap_entries {entries}"));
    }
    if runs > nonzero {
        bad.push(format!(
            "physical_runs {runs} > {nonzero} extents of non-zero length"
        ));
    }
    if extents > entries {
        bad.push(format!("extent_count {extents} > fiemap_entries {entries}"));
    }
    if entries > 0 && extents == 0 {
        bad.push("extent_count 0 for a non-empty map".into());
    }
    if nonzero > 0 && runs == 0 {
        bad.push("physical_runs 0 with data mapped".into());
    }
    // Data ranges: sorted, disjoint and apart (adjacent ones merge), none
    // empty, exactly the union of the extents.
    for w in ranges.windows(2) {
        if u128::from(w[0].start) + u128::from(w[0].len) >= u128::from(w[1].start) {
            bad.push(format!(
                "data_ranges not sorted and apart: {:?} then {:?}",
                w[0], w[1]
            ));
            break;
        }
    }
    if let Some(r) = ranges.iter().find(|r| r.len == 0) {
        bad.push(format!(
            "data_ranges holds an empty range {r:?} (from a zero-length extent)"
        ));
    }
    let blocks_union = union_of(
        &map.extents
            .iter()
            .map(|e| (u128::from(e.logical), u128::from(e.len)))
            .collect::<Vec<_>>(),
    );
    let ranges_union = union_of(
        &ranges
            .iter()
            .map(|r| (u128::from(r.start), u128::from(r.len)))
            .collect::<Vec<_>>(),
    );
    if blocks_union != ranges_union {
        bad.push("data_ranges do not cover exactly the mapped blocks".into());
    }
    if ranges.len() as u64 > nonzero {
        bad.push(format!(
            "{} data ranges from {nonzero} non-empty extents",
            ranges.len()
        ));
    }
    // Ideal: one extent per 32768 blocks of each range; never more than
    // the blocks, never fewer than the ranges.
    let want_ideal: u128 = ranges
        .iter()
        .map(|r| u128::from(r.len).div_ceil(32768))
        .sum();
    if u128::from(ideal) != want_ideal {
        bad.push(format!("ideal_extents {ideal} != {want_ideal}"));
    }
    if blocks > 0 && ideal > blocks {
        bad.push(format!("ideal_extents {ideal} > blocks {blocks}"));
    }
    let nonempty_ranges = ranges.iter().filter(|r| r.len > 0).count() as u64;
    if ideal < nonempty_ranges {
        bad.push(format!(
            "ideal_extents {ideal} < {nonempty_ranges} data ranges"
        ));
    }
    let sum: u128 = map.extents.iter().map(|e| u128::from(e.len)).sum();
    if u128::from(blocks) != sum {
        bad.push(format!("blocks {blocks} != sum of lengths {sum}"));
    }
    // Runs within ranges: the data ranges hold every block, so counting
    // within them changes nothing for disjoint extents; none within none.
    let disjoint = blocks_union.iter().map(|(s, e)| e - s).sum::<u128>() == sum;
    match catch(|| (map.physical_runs_in(&ranges), map.physical_runs_in(&[]))) {
        Ok((within, none)) => {
            if disjoint && within != runs {
                bad.push(format!(
                    "physical_runs_in(data_ranges) {within} != physical_runs {runs}"
                ));
            }
            if none != 0 {
                bad.push(format!("physical_runs_in(&[]) = {none}"));
            }
        }
        Err(p) => bad.push(format!("physical_runs_in panicked: {p}")),
    }
    // The assessment: a score in [0, 100), contiguous when runs fit ranges.
    match catch(|| Assessment::of(&map, raw.len() as u64 * bs)) {
        Ok(a) => {
            if !(a.score.is_finite() && (0.0..=100.0).contains(&a.score)) {
                bad.push(format!("score {} outside [0, 100]", a.score));
            }
            if a.extents <= a.ideal_extents && a.score != 0.0 {
                bad.push(format!(
                    "score {} for {} extents at ideal {}",
                    a.score, a.extents, a.ideal_extents
                ));
            }
            if a.excess_extents() > a.extents {
                bad.push("excess extents above extents".into());
            }
            let _ = a.is_contiguous();
        }
        Err(p) => bad.push(format!("Assessment::of panicked: {p}")),
    }
    bad
}

#[test]
fn from_fiemap_never_panics_and_keeps_its_invariants() {
    let seed = fuzz_seed("fuzz/from_fiemap");
    let mut rng = XorShift::new(seed);
    let mut tally = Tally::new("fuzz/from_fiemap", Some(seed));
    let mut per_kind = [0u64; MAP_KINDS.len()];
    let mut failed_kinds = BTreeSet::new();
    quiet_panics(|| {
        for case in 0..cases(20_000) {
            let k = rng.below(MAP_KINDS.len() as u64) as usize;
            let kind = MAP_KINDS[k];
            let bs = *rng.pick(&BLOCK_SIZES);
            let raw = random_map(&mut rng, kind, bs);
            tally.cases += 1;
            per_kind[k] += 1;
            if kind != MapKind::Realistic {
                tally.faults += 1;
            }
            let bad = check_map(&raw, bs);
            for b in &bad {
                tally.kind(&format!("{kind:?} {b}"));
            }
            if !bad.is_empty() {
                failed_kinds.insert(format!("{kind:?}"));
                let shown: Vec<&Extent> = raw.iter().take(6).collect();
                tally.fail(format!(
                    "case {case} ({kind:?}, block size {bs}, {} extents, first {shown:?}): {}",
                    raw.len(),
                    bad.join("; ")
                ));
            }
            // e4defrag's best count, on any figures.
            let blocks = rng.next_u64() >> rng.below(64);
            let bpg = [0u32, 1, 8192, 32768, u32::MAX][rng.below(5) as usize];
            let gpf = [None, Some(0u32), Some(1), Some(16), Some(u32::MAX)][rng.below(5) as usize];
            if let Err(p) = catch(|| e4defrag_best(blocks, bpg, gpf)) {
                tally.fail(format!(
                    "e4defrag_best({blocks}, {bpg}, {gpf:?}) panicked: {p}"
                ));
            }
        }
    });
    let kinds: Vec<String> = MAP_KINDS
        .iter()
        .zip(per_kind)
        .map(|(k, n)| format!("{k:?}:{n}"))
        .collect();
    tally.note("per_kind", kinds.join(","));
    tally.note(
        "kinds_failing",
        failed_kinds.into_iter().collect::<Vec<_>>().join(","),
    );
    tally.finish();
}

/// The realistic map of a file as a plain list; used by the later parts.
fn realistic_ranges(rng: &mut XorShift) -> Vec<BlockRange> {
    let n = rng.range(0, 30) as usize;
    let mut out = Vec::with_capacity(n);
    let mut at = rng.below(3) * rng.below(5000);
    for _ in 0..n {
        let max = if rng.chance(1, 5) { 100_000 } else { 2000 };
        let len = rng.range(1, max);
        out.push(BlockRange { start: at, len });
        at += len + rng.range(1, 3000);
    }
    out
}

// ---------------------------------------------------------------------------
// 2. plan::chunks

/// Sorted, disjoint, non-empty ranges apart from each other, as
/// `data_ranges` makes them; sometimes up against u64::MAX.
fn well_formed_ranges(rng: &mut XorShift) -> Vec<BlockRange> {
    match rng.below(4) {
        0 | 1 => realistic_ranges(rng),
        2 => {
            // Large values.
            let n = rng.range(1, 12);
            let mut at = rng.below(1 << 40);
            let mut out = Vec::new();
            for _ in 0..n {
                let len = rng.range(1, 1 << 36);
                out.push(BlockRange { start: at, len });
                at += len + rng.range(1, 1 << 30);
            }
            out
        }
        _ => {
            // Ending at (or near) u64::MAX.
            let n = rng.range(1, 6);
            let mut out = Vec::new();
            let mut end = u64::MAX - rng.below(3);
            for _ in 0..n {
                let len = rng.range(1, 1 << 20);
                let start = end - len;
                out.push(BlockRange { start, len });
                let gap = rng.range(1, 1 << 20);
                if start < gap + (1 << 21) {
                    break;
                }
                end = start - gap;
            }
            out.reverse();
            out
        }
    }
}

/// Ranges as no caller should pass them: unsorted, overlapping, empty.
fn malformed_ranges(rng: &mut XorShift) -> Vec<BlockRange> {
    let n = rng.range(1, 20);
    (0..n)
        .map(|_| BlockRange {
            start: rng.below(5000),
            len: if rng.chance(1, 4) { 0 } else { rng.below(3000) },
        })
        .collect()
}

fn random_chunk_blocks(rng: &mut XorShift) -> NonZeroU64 {
    let v = match rng.below(6) {
        0 => 1,
        1 => 256,
        2 => rng.range(1, 64),
        3 => rng.range(1, 100_000),
        4 => u64::MAX,
        _ => 1 << rng.below(64),
    };
    NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN)
}

fn random_resume(rng: &mut XorShift, ranges: &[BlockRange]) -> u64 {
    match (rng.below(6), ranges.first(), ranges.last()) {
        (0, _, _) => 0,
        (1, _, _) => u64::MAX,
        (2, Some(_), Some(_)) => {
            // Inside a range.
            let r = rng.pick(ranges);
            r.start + rng.below(r.len)
        }
        (3, Some(_), Some(_)) => {
            // At a range's start or end (a hole after it).
            let r = rng.pick(ranges);
            if rng.chance(1, 2) {
                r.start
            } else {
                r.start + r.len
            }
        }
        (4, Some(first), Some(last)) => rng.range(first.start, last.start + last.len),
        _ => rng.next_u64() >> rng.below(64),
    }
}

#[test]
fn chunks_cover_exactly_the_ranges_from_resume_never_across_a_hole() {
    let seed = fuzz_seed("fuzz/plan_chunks");
    let mut rng = XorShift::new(seed);
    let mut tally = Tally::new("fuzz/plan_chunks", Some(seed));
    quiet_panics(|| {
        for case in 0..cases(20_000) {
            let malformed = rng.chance(1, 5);
            let ranges = if malformed {
                tally.faults += 1;
                malformed_ranges(&mut rng)
            } else {
                well_formed_ranges(&mut rng)
            };
            let mut cb = random_chunk_blocks(&mut rng);
            let resume = random_resume(&mut rng, &ranges);
            // At most ~100k chunks a case (memory and time), by larger chunks.
            let due: u128 = ranges
                .iter()
                .map(|r| {
                    (u128::from(r.start) + u128::from(r.len))
                        .saturating_sub(u128::from(r.start.max(resume)))
                })
                .sum();
            if due / u128::from(cb.get()) > 100_000 {
                let min = u64::try_from(due / 100_000 + 1).unwrap_or(u64::MAX);
                cb = NonZeroU64::new(min.max(cb.get())).unwrap_or(NonZeroU64::MIN);
            }
            tally.cases += 1;
            let got = match catch(|| chunks(&ranges, cb, resume)) {
                Ok(c) => c,
                Err(p) => {
                    tally.fail(format!(
                        "case {case}: chunks({ranges:?}, {cb}, {resume}) panicked: {p}"
                    ));
                    continue;
                }
            };
            let mut bad = Vec::new();
            for c in &got {
                if c.len.get() > cb.get() {
                    bad.push(format!("chunk {c:?} longer than {cb}"));
                }
                if c.start < resume {
                    bad.push(format!("chunk {c:?} before resume_at {resume}"));
                }
                let inside = ranges.iter().any(|r| {
                    c.start >= r.start
                        && u128::from(c.start) + u128::from(c.len.get())
                            <= u128::from(r.start) + u128::from(r.len)
                });
                if !inside {
                    bad.push(format!(
                        "chunk {c:?} is not inside one range (crosses a hole)"
                    ));
                }
            }
            if !malformed {
                for w in got.windows(2) {
                    if u128::from(w[0].start) + u128::from(w[0].len.get()) > u128::from(w[1].start)
                    {
                        bad.push(format!(
                            "chunks overlap or go backwards: {:?} {:?}",
                            w[0], w[1]
                        ));
                    }
                }
                let covered: u128 = got.iter().map(|c| u128::from(c.len.get())).sum();
                let due: u128 = ranges
                    .iter()
                    .map(|r| {
                        let end = u128::from(r.start) + u128::from(r.len);
                        end.saturating_sub(u128::from(r.start.max(resume)))
                    })
                    .sum();
                if covered != due {
                    bad.push(format!(
                        "chunks cover {covered} blocks; {due} are at or after resume_at"
                    ));
                }
                let fewest: u128 = ranges
                    .iter()
                    .map(|r| {
                        let end = u128::from(r.start) + u128::from(r.len);
                        end.saturating_sub(u128::from(r.start.max(resume)))
                            .div_ceil(u128::from(cb.get()))
                    })
                    .sum();
                if got.len() as u128 != fewest {
                    bad.push(format!("{} chunks where {fewest} suffice", got.len()));
                }
            }
            if !bad.is_empty() {
                tally.fail(format!(
                    "case {case}: chunks({:?}, {cb}, {resume}): {}",
                    ranges.iter().take(5).collect::<Vec<_>>(),
                    bad.join("; ")
                ));
            }
        }
        // chunk_blocks: never zero, whatever the sizes.
        for _ in 0..cases(2000) {
            let bytes = rng.next_u64() >> rng.below(64);
            let bs = [0u64, 1, 1024, 4096, 65536, u64::MAX][rng.below(6) as usize];
            tally.cases += 1;
            match catch(|| chunk_blocks(bytes, bs)) {
                Ok(n) => tally.check(n.get() == (bytes / bs.max(1)).max(1), || {
                    format!("chunk_blocks({bytes}, {bs}) = {n}")
                }),
                Err(p) => tally.fail(format!("chunk_blocks({bytes}, {bs}) panicked: {p}")),
            }
        }
    });
    tally.finish();
}

// ---------------------------------------------------------------------------
// 3. clip_to_eof

#[test]
fn clip_to_eof_keeps_exactly_what_lies_below_eof() {
    let seed = fuzz_seed("fuzz/clip_to_eof");
    let mut rng = XorShift::new(seed);
    let mut tally = Tally::new("fuzz/clip_to_eof", Some(seed));
    quiet_panics(|| {
        for case in 0..cases(10_000) {
            let ranges = well_formed_ranges(&mut rng);
            let eof = match rng.below(5) {
                0 => 0,
                1 => u64::MAX,
                2 => random_resume(&mut rng, &ranges),
                3 => ranges.last().map_or(0, |r| r.start + r.len),
                _ => rng.next_u64() >> rng.below(64),
            };
            tally.cases += 1;
            let got = match catch(|| clip_to_eof(&ranges, eof)) {
                Ok(g) => g,
                Err(p) => {
                    tally.fail(format!("case {case}: clip_to_eof panicked: {p}"));
                    continue;
                }
            };
            let mut bad = Vec::new();
            for r in &got {
                if r.len == 0 {
                    bad.push(format!("empty range {r:?}"));
                }
                if u128::from(r.start) + u128::from(r.len) > u128::from(eof) {
                    bad.push(format!("{r:?} reaches past eof {eof}"));
                }
                if !ranges.iter().any(|s| s.start == r.start && r.len <= s.len) {
                    bad.push(format!("{r:?} is not the head of an input range"));
                }
            }
            let want: Vec<(u128, u128)> = ranges
                .iter()
                .filter(|r| r.start < eof)
                .map(|r| {
                    let end = (u128::from(r.start) + u128::from(r.len)).min(u128::from(eof));
                    (u128::from(r.start), end)
                })
                .collect();
            let have: Vec<(u128, u128)> = got
                .iter()
                .map(|r| (u128::from(r.start), u128::from(r.start) + u128::from(r.len)))
                .collect();
            if want != have {
                bad.push(format!("kept {have:?}, want {want:?}"));
            }
            if !bad.is_empty() {
                tally.fail(format!(
                    "case {case}: clip_to_eof({:?}, {eof}): {}",
                    ranges.iter().take(5).collect::<Vec<_>>(),
                    bad.join("; ")
                ));
            }
        }

        // The mover's pipeline on real-looking maps: data_ranges → clip at
        // EOF → chunks from a resume point. Every chunk lies on mapped
        // blocks below EOF; every such block at or after resume is in one.
        for case in 0..cases(5000) {
            let bs = *rng.pick(&BLOCK_SIZES);
            let n = rng.range(1, 80) as usize;
            let raw = random_map(&mut rng, MapKind::Realistic, bs);
            let raw = if raw.is_empty() {
                realistic_map(&mut rng, bs, n)
            } else {
                raw
            };
            tally.cases += 1;
            let map = ExtentMap::from_fiemap(&raw, bs);
            let ranges = map.data_ranges();
            let last_end = ranges.last().map_or(0, |r| r.start + r.len);
            // EOF anywhere, including inside preallocation past the data.
            let eof = rng.range(0, last_end + 10);
            let clipped = clip_to_eof(&ranges, eof);
            let cb = NonZeroU64::new(rng.range(1, 600)).unwrap_or(NonZeroU64::MIN);
            let resume = rng.range(0, last_end + 1);
            let got = chunks(&clipped, cb, resume);
            let mapped = |b: u64| ranges.iter().any(|r| b >= r.start && b < r.start + r.len);
            let mut covered: u64 = 0;
            let mut bad = None;
            for c in &got {
                if !(mapped(c.start) && mapped(c.end() - 1)) || c.end() > eof {
                    bad = Some(format!("chunk {c:?} on a hole or past eof {eof}"));
                    break;
                }
                covered += c.len.get();
            }
            let due: u64 = ranges
                .iter()
                .map(|r| {
                    let lo = r.start.max(resume);
                    let hi = (r.start + r.len).min(eof);
                    hi.saturating_sub(lo)
                })
                .sum();
            if bad.is_none() && covered != due {
                bad = Some(format!("chunks cover {covered} blocks of {due}"));
            }
            if let Some(b) = bad {
                tally.fail(format!("pipeline case {case}: {b}"));
            }
        }
    });
    tally.finish();
}

// ---------------------------------------------------------------------------
// 4. config::load_from

const SHIPPED_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/defragd.toml");

fn shipped() -> String {
    std::fs::read_to_string(SHIPPED_PATH).expect("read etc/defragd.toml")
}

/// Keys as `section.key` (or top-level `key`).
const KEYS: &[&str] = &[
    "state_dir",
    "throttle.max_mib_per_s",
    "throttle.chunk_mib",
    "throttle.pressure_percent",
    "throttle.windows",
    "policy.quiet_period",
    "policy.min_size",
    "policy.min_excess_extents",
    "policy.min_score",
    "policy.exclude",
    "policy.reserve_percent",
    "policy.convert_block_mapped",
    "crawl.interval",
    "crawl.files_per_second",
    "watch.max_watches",
    "service.log_level",
    "control.socket",
    "control.group",
    "metrics.listen",
    "filesystem",
    "bogus.key",
    "throttle.bogus",
    "policy",
];

/// A value as TOML text: valid ones for some key, and everything else.
fn toml_value(rng: &mut XorShift) -> String {
    let pool: &[&str] = &[
        "0",
        "1",
        "64",
        "-1",
        "100000",
        "100001",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "99999999999999999999999999",
        "1.5",
        "1e308",
        "-0.0",
        "nan",
        "inf",
        "-inf",
        "true",
        "false",
        "\"\"",
        "\"30s\"",
        "\"0s\"",
        "\"7d\"",
        "\"8d\"",
        "\"1h 30m\"",
        "\"1MiB\"",
        "\"1 MB\"",
        "\"-1MiB\"",
        "\"99999999999999999999EiB\"",
        "\"info\"",
        "\"trace\"",
        "\"loud\"",
        "\"/srv\"",
        "\"relative/path\"",
        "\"/\"",
        "\"/run/defragd/control.sock\"",
        "\"unix:/run/m.sock\"",
        "\"127.0.0.1:9321\"",
        "\"[::1]:9321\"",
        "\"0.0.0.0:80\"",
        "\"wheel\"",
        "\"no-such-group-xyz\"",
        "\"4242\"",
        "[]",
        "[\"01:00-05:00\"]",
        "[\"22:00-06:00\", \"12:00-13:00\"]",
        "[\"24:00-01:00\"]",
        "[\"1:00-2:00\"]",
        "[\"01:00-01:00\"]",
        "[\"*.tmp\", \"/srv/**\"]",
        "[\"[\"]",
        "[\"relative/**\"]",
        "[1, 2]",
        "[[]]",
        "{}",
        "{ path = \"/srv\" }",
        "[{ path = \"/srv\", watch = [\"/srv/db\"] }]",
        "[{ path = \"/srv\" }, { path = \"/srv\" }]",
        "[{ path = 5 }]",
        "[{ nope = 1 }]",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "'''multi\nline'''",
        "\"\\u0000\"",
        "\"\\u001b[31mred\"",
        "\"a\\nb\"",
    ];
    match rng.below(10) {
        0 => format!("\"{}\"", random_text(rng, 40).replace(['"', '\\'], "")),
        1 => format!("{}", rng.next_u64() as i64),
        2 => format!("[{}]", {
            let n = rng.below(4);
            (0..n)
                .map(|_| rng.pick(pool).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }),
        _ => rng.pick(pool).to_string(),
    }
}

/// Text with a bit of everything: ASCII, controls, quotes, unicode.
fn random_text(rng: &mut XorShift, max: u64) -> String {
    let n = rng.below(max + 1);
    (0..n)
        .map(|_| match rng.below(10) {
            0 => char::from_u32(rng.below(32) as u32).unwrap_or('x'),
            1 => *rng.pick(&['"', '\\', '\'', '[', ']', '=', '#', '.', '\n', '\u{7f}']),
            2 => *rng.pick(&['é', '€', '𝄞', '\u{202e}', '\u{feff}', 'ß']),
            _ => (b'a' + rng.below(26) as u8) as char,
        })
        .collect()
}

/// A random TOML-ish document built from sections, keys and values.
fn random_toml(rng: &mut XorShift) -> String {
    let sections = [
        "",
        "throttle",
        "policy",
        "crawl",
        "watch",
        "service",
        "control",
        "metrics",
        "[filesystem]",
        "bogus",
        "throttle.sub",
        "\"quoted key\"",
    ];
    let keys = [
        "state_dir",
        "max_mib_per_s",
        "chunk_mib",
        "pressure_percent",
        "windows",
        "quiet_period",
        "min_size",
        "min_excess_extents",
        "min_score",
        "exclude",
        "reserve_percent",
        "convert_block_mapped",
        "interval",
        "files_per_second",
        "max_watches",
        "log_level",
        "socket",
        "group",
        "listen",
        "path",
        "watch",
        "filesystem",
        "\"x[99999999]\"",
        "a.b.c",
        "typo_key",
    ];
    let mut out = String::new();
    for _ in 0..rng.range(0, 8) {
        let s = rng.pick(&sections);
        // "[filesystem]" in brackets makes the [[filesystem]] header.
        if !s.is_empty() {
            out.push_str(&format!("[{s}]\n"));
        }
        for _ in 0..rng.range(0, 5) {
            out.push_str(&format!("{} = {}\n", rng.pick(&keys), toml_value(rng)));
        }
    }
    out
}

/// The shipped file, changed a little.
fn mutate(text: &str, rng: &mut XorShift) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let rounds = rng.range(1, 4);
    for _ in 0..rounds {
        let n = lines.len().max(1) as u64;
        let i = rng.below(n) as usize;
        match rng.below(12) {
            0 if !lines.is_empty() => {
                lines.remove(i);
            }
            1 if !lines.is_empty() => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 if !lines.is_empty() => {
                // Uncomment a line (enables the [[filesystem]] example).
                lines[i] = lines[i].trim_start_matches(['#', ' ']).to_string();
            }
            3 if !lines.is_empty() => {
                // A new value for a `key = value` line.
                if let Some((k, _)) = lines[i].split_once(" = ") {
                    lines[i] = format!("{k} = {}", toml_value(rng));
                }
            }
            4 => {
                let k = rng.pick(KEYS);
                let line = match k.split_once('.') {
                    Some((s, key)) => format!("[{s}]\n{key} = {}", toml_value(rng)),
                    None => format!("{k} = {}", toml_value(rng)),
                };
                lines.insert(i.min(lines.len()), line);
            }
            5 if lines.len() > 1 => {
                let j = rng.below(n) as usize;
                lines.swap(i, j);
            }
            6 => lines.push(random_toml(rng)),
            7 => {
                // Truncate anywhere (a half-written file).
                let text = lines.join("\n");
                let cut = rng.below(text.len() as u64 + 1) as usize;
                let cut = (0..=cut)
                    .rev()
                    .find(|c| text.is_char_boundary(*c))
                    .unwrap_or(0);
                lines = text[..cut].lines().map(str::to_string).collect();
            }
            8 if !lines.is_empty() => {
                // Flip, insert or delete one byte of a line.
                let mut bytes = lines[i].clone().into_bytes();
                let at = rng.below(bytes.len() as u64 + 1) as usize;
                match rng.below(3) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(7),
                    1 => bytes.insert(at, rng.next_u64() as u8 & 0x7f),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            9 => lines.insert(i.min(lines.len()), random_text(rng, 60)),
            _ if !lines.is_empty() => {
                // A line's value in another type: a number quoted, a
                // string bare.
                if let Some((k, v)) = lines[i].clone().split_once(" = ") {
                    let v = v.trim();
                    lines[i] = if let Some(inner) =
                        v.strip_prefix('"').and_then(|s| s.strip_suffix('"'))
                    {
                        format!("{k} = {inner}")
                    } else {
                        format!("{k} = \"{v}\"")
                    };
                }
            }
            _ => {}
        }
    }
    let mut out = lines.join("\n");
    if rng.chance(3, 4) {
        out.push('\n');
    }
    out
}

/// The environment variable name of a key.
fn env_name(key: &str) -> String {
    format!("DEFRAGD__{}", key.replace('.', "__").to_uppercase())
}

fn random_env(rng: &mut XorShift) -> Vec<(String, String)> {
    let n = match rng.below(4) {
        0 => 0,
        1 => 1,
        _ => rng.range(1, 6),
    };
    (0..n)
        .map(|_| {
            let name = match rng.below(10) {
                0 => env_name(rng.pick::<&str>(KEYS)).to_lowercase(),
                1 => "DEFRAGD__".to_string(),
                2 => "DEFRAGD____THROTTLE".to_string(),
                3 => format!("DEFRAGD__{}", random_text(rng, 12)),
                4 => "DEFRAGD_LOG".to_string(),
                5 => "PATH".to_string(),
                6 => "DEFRAGD__THROTTLE__CHUNK_MIB__EXTRA".to_string(),
                _ => env_name(rng.pick::<&str>(KEYS)),
            };
            let value = match rng.below(6) {
                0 => random_text(rng, 30),
                1 => String::new(),
                2 => format!("{}", rng.next_u64()),
                3 => [
                    "[",
                    "[[",
                    "]",
                    "[\"a\", 1]",
                    "[{ path = \"/srv\" }]",
                    "[1,",
                    "{}",
                    "\u{0}",
                ][rng.below(8) as usize]
                    .to_string(),
                _ => toml_value(rng).trim_matches('"').to_string(),
            };
            (name, value)
        })
        .collect()
}

/// Whether every error names its source and is one line. `sources`: the
/// origins the load could have read.
fn check_errors(errors: &ConfigErrors, sources: &[Origin]) -> Vec<String> {
    let mut bad = Vec::new();
    if errors.0.is_empty() {
        bad.push("an Err with no errors in it".into());
    }
    let prefixes: Vec<String> = sources.iter().map(|o| format!("{o}: ")).collect();
    for e in &errors.0 {
        let msg = e.to_string();
        if msg.contains('\n') || msg.contains('\r') {
            bad.push(format!("an error message of several lines: {msg:?}"));
        }
        if !prefixes.iter().any(|p| msg.starts_with(p.as_str())) {
            bad.push(format!("an error that names no source it read: {msg:?}"));
        }
        if msg.chars().any(|c| c.is_control()) {
            bad.push(format!("a control character in an error message: {msg:?}"));
        }
    }
    bad
}

struct ConfigCase {
    dir: tempfile::TempDir,
    main: PathBuf,
    drop_in: Option<PathBuf>,
}

impl ConfigCase {
    fn new(main_text: &[u8], drop_in: Option<&[u8]>) -> ConfigCase {
        let dir = tempfile::tempdir().expect("temp dir");
        let main = dir.path().join("defragd.toml");
        std::fs::write(&main, main_text).expect("write config");
        let drop_in = drop_in.map(|text| {
            let d = dir.path().join("conf.d");
            std::fs::create_dir_all(&d).expect("mkdir conf.d");
            let p = d.join("50-fuzz.toml");
            std::fs::write(&p, text).expect("write drop-in");
            p
        });
        ConfigCase { dir, main, drop_in }
    }

    fn sources(&self, env: &[(String, String)]) -> Vec<Origin> {
        let mut v = vec![
            Origin::File(self.main.clone()),
            Origin::File(self.dir.path().join("conf.d")),
        ];
        if let Some(p) = &self.drop_in {
            v.push(Origin::File(p.clone()));
        }
        v.extend(env.iter().map(|(k, _)| Origin::Env(k.clone())));
        v
    }
}

/// A random config file's bytes: mutated shipped file, random TOML, or
/// random bytes (not even UTF-8).
fn random_config_bytes(rng: &mut XorShift, shipped: &str) -> (Vec<u8>, bool) {
    match rng.below(10) {
        0 => (shipped.as_bytes().to_vec(), false),
        1 => {
            let n = rng.below(300) as usize;
            (rng.bytes(n), true)
        }
        2 | 3 => (random_toml(rng).into_bytes(), true),
        _ => (mutate(shipped, rng).into_bytes(), true),
    }
}

#[test]
fn config_load_never_panics_and_names_the_source_of_every_error() {
    let seed = fuzz_seed("fuzz/config_load");
    let mut rng = XorShift::new(seed);
    let mut tally = Tally::new("fuzz/config_load", Some(seed));
    let shipped = shipped();
    let (mut loaded, mut refused) = (0u64, 0u64);
    quiet_panics(|| {
        for case in 0..cases(2500) {
            let (main, main_fault) = random_config_bytes(&mut rng, &shipped);
            let drop_in = rng
                .chance(1, 4)
                .then(|| random_config_bytes(&mut rng, &shipped).0);
            let env = random_env(&mut rng);
            tally.cases += 1;
            if main_fault || drop_in.is_some() || !env.is_empty() {
                tally.faults += 1;
            }
            let c = ConfigCase::new(&main, drop_in.as_deref());
            let result = catch(|| config::load_from(Some(&c.main), env.clone()));
            let describe = || {
                format!(
                    "case {case}: main {:?}, drop-in {:?}, env {env:?}",
                    String::from_utf8_lossy(&main)
                        .chars()
                        .take(400)
                        .collect::<String>(),
                    drop_in
                        .as_ref()
                        .map(|d| String::from_utf8_lossy(d).into_owned())
                )
            };
            match result {
                Err(p) => tally.fail(format!("load_from panicked ({p}); {}", describe())),
                Ok(Ok(settings)) => {
                    loaded += 1;
                    // What loads renders to a file that loads the same.
                    let text = settings.render();
                    let again = ConfigCase::new(text.as_bytes(), None);
                    match catch(|| config::load_from(Some(&again.main), Vec::new())) {
                        Ok(Ok(back)) if back == settings => {}
                        Ok(Ok(back)) => tally.fail(format!(
                            "rendered settings load back different: {settings:?} vs {back:?}; {}",
                            describe()
                        )),
                        Ok(Err(e)) => tally.fail(format!(
                            "rendered settings do not load ({e}):\n{text}\n{}",
                            describe()
                        )),
                        Err(p) => tally.fail(format!("reloading the render panicked: {p}")),
                    }
                }
                Ok(Err(errors)) => {
                    refused += 1;
                    let bad = check_errors(&errors, &c.sources(&env));
                    for b in &bad {
                        tally.kind(b);
                    }
                    if !bad.is_empty() {
                        tally.fail(format!("{}; {}", bad.join("; "), describe()));
                    }
                }
            }
        }
    });
    tally.note("loaded", loaded);
    tally.note("refused", refused);
    tally.finish();
}

// ---------------------------------------------------------------------------
// 5. `defragd config check FILE` as a process.

#[test]
fn config_check_exits_0_or_78_and_never_panics() {
    let seed = fuzz_seed("fuzz/config_check_process");
    let mut rng = XorShift::new(seed);
    let shipped = shipped();
    let n = cases(300);
    // Inputs made up front, run on two threads.
    let mut inputs = Vec::new();
    for _ in 0..n {
        let (main, fault) = random_config_bytes(&mut rng, &shipped);
        let drop_in = rng
            .chance(1, 5)
            .then(|| random_config_bytes(&mut rng, &shipped).0);
        let mut env: Vec<(OsString, OsString)> = random_env(&mut rng)
            .into_iter()
            // A NUL cannot be passed to a process at all.
            .filter(|(k, v)| {
                !k.contains('\0') && !v.contains('\0') && !k.is_empty() && !k.contains('=')
            })
            // Not the process's own PATH.
            .filter(|(k, _)| k != "PATH")
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        if rng.chance(1, 10) {
            // Not UTF-8: the loader must refuse it, not skip it.
            env.push((
                OsString::from("DEFRAGD__THROTTLE__CHUNK_MIB"),
                OsString::from_vec(vec![b'4', 0xff, 0xfe]),
            ));
        }
        inputs.push((main, fault, drop_in, env));
    }
    let results: Vec<Vec<Result<i32, String>>> = std::thread::scope(|s| {
        let halves: Vec<_> = inputs
            .chunks(inputs.len().div_ceil(2).max(1))
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, (main, _, drop_in, env))| {
                            run_config_check(i, main, drop_in.as_deref(), env)
                        })
                        .collect::<Vec<Result<i32, String>>>()
                })
            })
            .collect();
        halves
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut tally = Tally::new("fuzz/config_check_process", Some(seed));
    tally.cases = inputs.len() as u64;
    tally.faults = inputs
        .iter()
        .filter(|(_, fault, drop_in, env)| *fault || drop_in.is_some() || !env.is_empty())
        .count() as u64;
    let (mut valid, mut invalid) = (0, 0);
    for result in results.into_iter().flatten() {
        match result {
            Ok(0) => valid += 1,
            Ok(_) => invalid += 1,
            Err(failure) => tally.fail(failure),
        }
    }
    tally.note("exit0", valid);
    tally.note("exit78", invalid);
    tally.finish();
}

fn run_config_check(
    i: usize,
    main: &[u8],
    drop_in: Option<&[u8]>,
    env: &[(OsString, OsString)],
) -> Result<i32, String> {
    let c = ConfigCase::new(main, drop_in);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defragd"));
    cmd.args(["config", "check"]).arg(&c.main);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("DEFRAGD")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = common::run_raw(&mut cmd);
    let code = out.status.code();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let describe = || {
        format!(
            "input {i}: exit {code:?}; env {env:?}; config {:?}; stderr {:?}",
            String::from_utf8_lossy(main)
                .chars()
                .take(300)
                .collect::<String>(),
            stderr.chars().take(600).collect::<String>()
        )
    };
    if stderr.contains("panicked") || code.is_none() {
        return Err(format!(
            "defragd config check panicked or died: {}",
            describe()
        ));
    }
    if !matches!(code, Some(0) | Some(78)) {
        return Err(format!("exit status not 0 or 78: {}", describe()));
    }
    // The same decision as in this process (all-UTF-8 environments only).
    // A process has one value per name: the last one set.
    let mut unique: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in env {
        unique.retain(|(name, _)| name != k);
        unique.push((k.clone(), v.clone()));
    }
    let utf8: Option<Vec<(String, String)>> = unique
        .iter()
        .map(|(k, v)| Some((k.clone().into_string().ok()?, v.clone().into_string().ok()?)))
        .collect();
    if let Some(env) = utf8 {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.to_ascii_uppercase().starts_with("DEFRAGD__"))
            .collect();
        let here = config::load_from(Some(&c.main), env);
        if here.is_ok() != (code == Some(0)) {
            return Err(format!(
                "the process and load_from disagree (here: {}): {}",
                if here.is_ok() { "valid" } else { "invalid" },
                describe()
            ));
        }
    } else if code != Some(78) {
        return Err(format!(
            "a non-UTF-8 DEFRAGD__ variable was accepted: {}",
            describe()
        ));
    }
    if code == Some(0) {
        // What it prints is a config that loads.
        let again = ConfigCase::new(stdout.as_bytes(), None);
        if let Err(e) = config::load_from(Some(&again.main), Vec::new()) {
            return Err(format!("its output does not load ({e}): {}", describe()));
        }
    } else if !stderr.contains("not valid") {
        return Err(format!("exit 78 without saying why: {}", describe()));
    }
    Ok(code.unwrap_or(-1))
}

// ---------------------------------------------------------------------------
// 6. What defragctl does with whatever comes back.

fn random_path(rng: &mut XorShift) -> PathBuf {
    let mut s = String::from("/");
    s.push_str(&random_text(rng, 30));
    if rng.chance(1, 4) {
        s.push_str("\ndefragmented /etc/shadow: forged");
    }
    PathBuf::from(s)
}

fn extreme_u64(rng: &mut XorShift) -> u64 {
    match rng.below(4) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.below(1 << 40),
        _ => rng.next_u64(),
    }
}

fn extreme_i64(rng: &mut XorShift) -> i64 {
    match rng.below(5) {
        0 => 0,
        1 => i64::MAX,
        2 => i64::MIN,
        3 => 1_700_000_000 + rng.below(1 << 30) as i64,
        _ => rng.next_u64() as i64,
    }
}

fn random_data(rng: &mut XorShift) -> ResponseData {
    let text = |rng: &mut XorShift| random_text(rng, 40);
    match rng.below(5) {
        0 => ResponseData::Status(StatusReport {
            state: [
                "moving".to_string(),
                "idle".into(),
                "paused".into(),
                text(rng),
            ][rng.below(4) as usize]
                .clone(),
            summary: text(rng),
            paused_until: rng.chance(1, 2).then(|| extreme_i64(rng)),
            moving: (0..rng.below(3))
                .map(|_| Moving {
                    path: random_path(rng),
                    moved_bytes: extreme_u64(rng),
                    total_bytes: extreme_u64(rng),
                })
                .collect(),
            queued: extreme_u64(rng),
            bytes_moved_today: extreme_u64(rng),
            filesystems: (0..rng.below(3))
                .map(|_| CoveredFs {
                    mount_point: random_path(rng),
                    uuid: text(rng),
                    disk: text(rng),
                })
                .collect(),
        }),
        1 => ResponseData::Queue(
            (0..rng.below(5))
                .map(|_| QueueEntry {
                    id: extreme_i64(rng),
                    path: random_path(rng),
                    size_bytes: extreme_u64(rng),
                    extents: extreme_u64(rng),
                    ideal_extents: extreme_u64(rng),
                    score: [f64::NAN, f64::INFINITY, -1.0, 50.0, 1e300][rng.below(5) as usize],
                    priority: rng.next_u64() as f64,
                    state: text(rng),
                    next_block: extreme_u64(rng),
                    attempts: rng.next_u64() as u32,
                })
                .collect(),
        ),
        2 => ResponseData::History(
            (0..rng.below(5))
                .map(|_| HistoryLine {
                    path: random_path(rng),
                    outcome: text(rng),
                    reason_code: rng.chance(1, 2).then(|| text(rng)),
                    reason: rng.chance(1, 2).then(|| text(rng)),
                    extents_before: extreme_u64(rng),
                    extents_after: rng.chance(1, 2).then(|| extreme_u64(rng)),
                    bytes_moved: extreme_u64(rng),
                    finished_at: extreme_i64(rng),
                })
                .collect(),
        ),
        3 => ResponseData::Defrag(
            (0..rng.below(5))
                .map(|_| DefragReply {
                    path: random_path(rng),
                    result: text(rng),
                    message: text(rng),
                })
                .collect(),
        ),
        _ => ResponseData::Done(Done { message: text(rng) }),
    }
}

/// Lines `format::human` must print for `data`: one per item, whatever
/// newlines the service's text holds.
fn expected_lines(data: &ResponseData) -> usize {
    match data {
        ResponseData::Status(s) => {
            1 + 1 + s.moving.len().max(1) + 1 + 1 + s.filesystems.len().max(1)
        }
        ResponseData::Queue(q) if q.is_empty() => 1,
        ResponseData::Queue(q) => 1 + q.len(),
        ResponseData::History(h) if h.is_empty() => 1,
        ResponseData::History(h) => 1 + h.len(),
        ResponseData::Defrag(d) => d.len(),
        ResponseData::Done(_) => 1,
    }
}

fn random_response_line(rng: &mut XorShift) -> Vec<u8> {
    let templates: &[&str] = &[
        r#"{"ok":true,"data":{}}"#,
        r#"{"ok":true,"data":[]}"#,
        r#"{"ok":true,"data":null}"#,
        r#"{"ok":true}"#,
        r#"{"ok":false}"#,
        r#"{"ok":false,"error":5}"#,
        r#"{"ok":false,"error":"permission denied: x"}"#,
        r#"{"ok":"yes","data":1}"#,
        r#"[]"#,
        r#"null"#,
        r#"{"ok":true,"data":{"state":"moving","summary":"s","paused_until":9223372036854775807,"moving":[],"queued":1,"bytes_moved_today":2,"filesystems":[]}}"#,
        r#"{"ok":true,"data":[{"id":1,"path":"/x","size_bytes":1,"extents":1,"ideal_extents":1,"score":1.0,"priority":1.0,"state":"q","next_block":0,"attempts":0}]}"#,
        r#"{"ok":true,"data":{"message":"m"}}"#,
    ];
    let mut line = rng.pick(templates).as_bytes().to_vec();
    if rng.chance(1, 2) {
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(line.len() as u64 + 1) as usize;
            match rng.below(3) {
                0 if at < line.len() => line[at] = rng.next_u64() as u8,
                1 => line.insert(at, rng.next_u64() as u8),
                _ if at < line.len() => {
                    line.remove(at);
                }
                _ => {}
            }
        }
    }
    if rng.chance(1, 10) {
        let n = rng.below(200) as usize;
        line = rng.bytes(n);
    }
    line
}

#[test]
fn defragctl_output_never_panics_and_cannot_be_forged() {
    let seed = fuzz_seed("fuzz/control_format");
    let mut rng = XorShift::new(seed);
    let mut tally = Tally::new("fuzz/control_format", Some(seed));
    let requests = [
        Request::Status,
        Request::Queue { limit: None },
        Request::History { limit: Some(3) },
        Request::Defrag {
            paths: vec![PathBuf::from("/x")],
        },
        Request::Pause { for_secs: None },
        Request::Reload,
    ];
    quiet_panics(|| {
        for case in 0..cases(5000) {
            let data = random_data(&mut rng);
            let now = extreme_i64(&mut rng);
            tally.cases += 1;
            tally.faults += 1;
            match catch(|| format::human(&data, now)) {
                Err(p) => {
                    tally.kind(&format!("format::human panicked: {p}"));
                    tally.fail(format!(
                        "case {case}: format::human panicked ({p}) on {data:?} at now={now}"
                    ))
                }
                Ok(text) => {
                    let lines = text.lines().count();
                    let want = expected_lines(&data);
                    if lines != want {
                        tally.kind("human output has more lines than items");
                    }
                    tally.check(lines == want, || {
                        format!("case {case}: {lines} lines printed for {want} items (a forged line?): {text:?}")
                    });
                    tally.check(!text.chars().any(|c| c.is_control() && c != '\n'), || {
                        format!(
                            "case {case}: a raw control character reaches the terminal: {text:?}"
                        )
                    });
                }
            }
            match catch(|| format::json(&data)) {
                Err(p) => tally.fail(format!("case {case}: format::json panicked: {p}")),
                Ok(text) => tally.check(
                    serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                    || format!("case {case}: --json output is not JSON: {text}"),
                ),
            }
            // A response line as any socket might send it.
            let line = random_response_line(&mut rng);
            let req = rng.pick(&requests).clone();
            tally.cases += 1;
            tally.faults += 1;
            match catch(|| client::decode_response(&req, &line)) {
                Err(p) => tally.fail(format!(
                    "case {case}: decode_response panicked ({p}) on {:?}",
                    String::from_utf8_lossy(&line)
                )),
                Ok(Ok(defragd::control::Response::Ok { data, .. })) => {
                    if let Err(p) = catch(|| format::human(&data, 1_700_000_000)) {
                        tally.kind(&format!(
                            "a decoded response makes format::human panic: {p}"
                        ));
                        tally.fail(format!(
                            "case {case}: a decoded response ({}) makes format::human panic: {p}",
                            String::from_utf8_lossy(&line)
                        ));
                    }
                }
                Ok(_) => {}
            }
        }
    });
    tally.finish();
}
