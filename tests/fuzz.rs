//! Property tests over random inputs (no root needed), run under proptest:
//! thousands of cases a part, drawn from strategies by a runner keyed by
//! the part's seed, which is printed (replay a run with
//! DEFRAGD_FUZZ_SEED=0x...; DEFRAGD_FUZZ_SCALE=N runs N times the cases).
//! A property stops at its first failing case and shrinks it: proptest
//! simplifies the input (fewer extents, smaller numbers, fewer edits) while
//! it still fails, and the part fails with that minimal input.
//! Each part ends in one `SUMMARY part seed=.. cases=N faults=M failures=F`
//! line; `faults` counts the malformed inputs among the cases (unsorted,
//! overlapping, zero-length or absurd extents, mutated config files, bad
//! environment values, hostile responses); the runs of the shrinker are not
//! cases.
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

use defragd_testkit as common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Command;

use common::{catch, fuzz_seed, quiet_panics, Seeded, Tally};
use defragd::assess::{clip_to_eof, e4defrag_best, Assessment, BlockRange, ExtentMap};
use defragd::config::{self, ConfigErrors, Origin};
use defragd::control::protocol::{
    ActivityReport, CoveredFs, DefragReply, Done, FragmentationReport, HistoryLine, Moving,
    QueueEntry, Request, ResponseData, StatusReport,
};
use defragd::control::{client, format};
use defragd::ext4::{Extent, ExtentFlags};
use defragd::plan::{chunk_blocks, chunks};
use proptest::arbitrary::any;
use proptest::collection::vec;
use proptest::sample::{select, Index};
use proptest::strategy::{BoxedStrategy, Just, Strategy};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use proptest::{prop_compose, prop_oneof};

/// Case counts, scaled by DEFRAGD_FUZZ_SCALE (default 1).
fn cases(base: u64) -> u64 {
    let scale: u64 = std::env::var("DEFRAGD_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    base * scale.max(1)
}

/// One part of the suite: the tally behind its SUMMARY line, and the
/// generator that keys the runner of each of its properties.
struct Part {
    tally: RefCell<Tally>,
    rng: RefCell<Seeded>,
    /// Set at a property's first failing case: the runs after it are
    /// proptest shrinking that case, not new cases.
    shrinking: Cell<bool>,
}

impl Part {
    fn new(name: &str) -> Part {
        let seed = fuzz_seed(name);
        Part {
            tally: RefCell::new(Tally::new(name, Some(seed))),
            rng: RefCell::new(Seeded::new(seed)),
            shrinking: Cell::new(false),
        }
    }

    /// Counts a new case, and a fault when its input is malformed. False,
    /// and nothing counted, on a run of the shrinker.
    fn new_case(&self, fault: bool) -> bool {
        if self.shrinking.get() {
            return false;
        }
        let mut tally = self.tally.borrow_mut();
        tally.cases += 1;
        if fault {
            tally.faults += 1;
        }
        true
    }

    /// Checks `property` on `cases` inputs drawn from `inputs`; it returns
    /// what it found broken, nothing when the case passes. The first failing
    /// input is shrunk and becomes this part's failure, with the minimal
    /// input; a panic anywhere in the property is a failure that says so.
    fn check<S: Strategy>(
        &self,
        cases: u64,
        inputs: S,
        property: impl Fn(S::Value) -> Vec<String>,
    ) {
        let config = Config {
            cases: u32::try_from(cases).unwrap_or(u32::MAX),
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, self.rng.borrow_mut().fork().0);
        let outcome = quiet_panics(|| {
            runner.run(&inputs, |input| {
                let bad = catch(|| property(input))
                    .unwrap_or_else(|p| vec![format!("the property panicked: {p}")]);
                if bad.is_empty() {
                    return Ok(());
                }
                self.shrinking.set(true);
                Err(TestCaseError::fail(bad.join("; ")))
            })
        });
        self.shrinking.set(false);
        let mut tally = self.tally.borrow_mut();
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, minimal)) => {
                tally.kind(reason.message());
                tally.fail(format!(
                    "{reason}\n    minimal failing input (shrunk): {minimal:?}"
                ));
            }
            Err(TestError::Abort(why)) => tally.fail(format!("proptest gave up: {why}")),
        }
    }

    fn note(&self, key: &str, value: impl fmt::Display) {
        self.tally.borrow_mut().note(key, value);
    }

    fn finish(self) {
        self.tally.into_inner().finish();
    }
}

/// Any u64, of any magnitude (uniform bits would almost always be huge).
fn any_magnitude() -> impl Strategy<Value = u64> {
    (any::<u64>(), 0..64u32).prop_map(|(bits, shift)| bits >> shift)
}

const BLOCK_SIZES: &[u64] = &[1024, 2048, 4096, 16384, 65536];

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

const MAP_KINDS: &[MapKind] = &[
    MapKind::Realistic,
    MapKind::Unsorted,
    MapKind::Overlapping,
    MapKind::ZeroLength,
    MapKind::Extreme,
    MapKind::Absurd,
    MapKind::Noise,
];

/// One random FIEMAP list, with how it was made.
#[derive(Clone, Debug)]
struct FiemapCase {
    kind: MapKind,
    block_size: u64,
    extents: Vec<Extent>,
}

/// One extent of a realistic map before it is laid out.
#[derive(Clone, Debug)]
struct Step {
    /// In blocks.
    len: u64,
    /// Where it starts on disk, when not right after the one before.
    moved_to: Option<u64>,
    unwritten: bool,
    merged: bool,
    /// Blocks of hole after it.
    hole: Option<u64>,
}

prop_compose! {
    fn step()(
        len in prop_oneof![19 => 1..=300u64, 1 => 1..=32768u64],
        moved_to in proptest::option::weighted(1.0 / 3.0, 1..=1u64 << 28),
        unwritten in proptest::bool::weighted(1.0 / 8.0),
        merged in proptest::bool::weighted(1.0 / 30.0),
        hole in proptest::option::weighted(0.25, 1..=5000u64),
    ) -> Step {
        Step { len, moved_to, unwritten, merged, hole }
    }
}

/// The steps as ext4 reports them: in bytes, sorted by logical offset, the
/// last one flagged LAST.
fn lay_out(bs: u64, mut logical: u64, mut physical: u64, steps: &[Step]) -> Vec<Extent> {
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            physical = step.moved_to.unwrap_or(physical);
            let mut flags = 0;
            if step.unwritten {
                flags |= ExtentFlags::UNWRITTEN;
            }
            if step.merged {
                flags |= ExtentFlags::MERGED;
            }
            if i + 1 == steps.len() {
                flags |= ExtentFlags::LAST;
            }
            let extent = Extent {
                logical: logical * bs,
                physical: physical * bs,
                length: step.len * bs,
                flags: ExtentFlags::from_bits(flags),
            };
            logical += step.len + step.hole.unwrap_or(0);
            physical += step.len;
            extent
        })
        .collect()
}

/// A list made by `element`: mostly a few elements, sometimes none or one,
/// sometimes hundreds. Every size range starts at `min`, so that a failing
/// list shrinks down to its fewest elements.
fn few_or_many<S: Strategy>(
    min: usize,
    element: impl Fn() -> S,
) -> impl Strategy<Value = Vec<S::Value>> {
    prop_oneof![
        2 => vec(element(), min..=min.max(1)),
        6 => vec(element(), min..=40),
        2 => vec(element(), min..=600),
    ]
}

/// A realistic map of at least `min` extents, each then changed by
/// `change` with a value drawn from `values` for it.
fn changed_map<V>(
    bs: u64,
    min: usize,
    values: V,
    change: impl Fn(&mut Extent, V::Value) + 'static,
) -> BoxedStrategy<Vec<Extent>>
where
    V: Strategy + Clone + 'static,
{
    let start = (prop_oneof![Just(0), 0..3000u64], 1..=1u64 << 28);
    (start, few_or_many(min, move || (step(), values.clone())))
        .prop_map(move |((logical, physical), list)| {
            let (steps, values): (Vec<Step>, Vec<V::Value>) = list.into_iter().unzip();
            let mut map = lay_out(bs, logical, physical, &steps);
            for (extent, value) in map.iter_mut().zip(values) {
                change(extent, value);
            }
            map
        })
        .boxed()
}

/// A map as ext4 reports it, of at least `min` extents.
fn realistic_map(bs: u64, min: usize) -> BoxedStrategy<Vec<Extent>> {
    changed_map(bs, min, Just(()), |_, ()| {})
}

/// FIEMAP lists of one kind, in blocks of `bs` bytes.
fn map_of(kind: MapKind, bs: u64) -> BoxedStrategy<Vec<Extent>> {
    match kind {
        MapKind::Realistic => realistic_map(bs, 0),
        MapKind::Unsorted => realistic_map(bs, 0).prop_shuffle().boxed(),
        MapKind::Overlapping => changed_map(bs, 0, (0..200u64, 1..=400u64), move |e, (at, len)| {
            e.logical = at * bs;
            e.length = len * bs;
        }),
        MapKind::ZeroLength => {
            changed_map(bs, 0, proptest::bool::weighted(1.0 / 3.0), |e, empty| {
                if empty {
                    e.length = 0;
                }
            })
        }
        MapKind::Extreme => {
            let values = (0..1u64 << 32, 1..=1u64 << 32, 0..1u64 << 48);
            changed_map(bs, 0, values, move |e, (at, len, disk)| {
                e.logical = at * bs;
                e.length = len * bs;
                e.physical = disk * bs;
            })
            .prop_map(|mut map| {
                map.sort_by_key(|e| e.logical);
                map
            })
            .boxed()
        }
        MapKind::Absurd => {
            let pool = vec![
                0,
                1,
                bs - 1,
                bs,
                u64::MAX,
                u64::MAX - 1,
                1 << 63,
                u64::MAX / 2,
            ];
            let value = prop_oneof![select(pool), any::<u64>()];
            let values = (value.clone(), value.clone(), value, any::<u32>());
            changed_map(bs, 0, values, |e, (logical, physical, length, flags)| {
                *e = Extent {
                    logical,
                    physical,
                    length,
                    flags: ExtentFlags::from_bits(flags),
                };
            })
        }
        MapKind::Noise => {
            let values = (
                any::<u32>(),
                proptest::option::weighted(0.25, 0..bs),
                proptest::option::weighted(0.25, (0..bs, 0..bs)),
            );
            changed_map(bs, 0, values, |e, (flags, longer, shifted)| {
                e.flags = ExtentFlags::from_bits(flags);
                e.length += longer.unwrap_or(0);
                if let Some((logical, physical)) = shifted {
                    e.logical += logical;
                    e.physical += physical;
                }
            })
        }
    }
}

fn fiemap_cases() -> impl Strategy<Value = FiemapCase> {
    (select(MAP_KINDS), select(BLOCK_SIZES)).prop_flat_map(|(kind, block_size)| {
        map_of(kind, block_size).prop_map(move |extents| FiemapCase {
            kind,
            block_size,
            extents,
        })
    })
}

/// The figures e4defrag computes its best count from: any block count, the
/// group sizes a filesystem may report.
fn e4defrag_figures() -> impl Strategy<Value = (u64, u32, Option<u32>)> {
    (
        any_magnitude(),
        select(vec![0u32, 1, 8192, 32768, u32::MAX]),
        select(vec![None, Some(0u32), Some(1), Some(16), Some(u32::MAX)]),
    )
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
    let part = Part::new("fuzz/from_fiemap");
    let per_kind: [Cell<u64>; MAP_KINDS.len()] = Default::default();
    // The kinds of the inputs found failing, the shrinker's included.
    let failing_kinds = RefCell::new(BTreeSet::new());
    let inputs = (fiemap_cases(), e4defrag_figures());
    part.check(cases(20_000), inputs, |(case, figures)| {
        let kind = case.kind;
        if part.new_case(kind != MapKind::Realistic) {
            let n = &per_kind[kind as usize];
            n.set(n.get() + 1);
        }
        let mut bad: Vec<String> = check_map(&case.extents, case.block_size)
            .into_iter()
            .map(|b| format!("{kind:?} {b}"))
            .collect();
        if !bad.is_empty() {
            failing_kinds.borrow_mut().insert(format!("{kind:?}"));
        }
        // e4defrag's best count, on any figures.
        let (blocks, per_group, groups_per_flex) = figures;
        if let Err(p) = catch(|| e4defrag_best(blocks, per_group, groups_per_flex)) {
            bad.push(format!(
                "e4defrag_best({blocks}, {per_group}, {groups_per_flex:?}) panicked: {p}"
            ));
        }
        bad
    });
    let kinds: Vec<String> = MAP_KINDS
        .iter()
        .zip(&per_kind)
        .map(|(k, n)| format!("{k:?}:{}", n.get()))
        .collect();
    part.note("per_kind", kinds.join(","));
    part.note(
        "kinds_failing",
        failing_kinds
            .into_inner()
            .into_iter()
            .collect::<Vec<_>>()
            .join(","),
    );
    part.finish();
}

/// Ranges laid out from `start`, each given as (length, gap after it).
fn ranges_from(start: u64, runs: &[(u64, u64)]) -> Vec<BlockRange> {
    let mut at = start;
    runs.iter()
        .map(|&(len, gap)| {
            let range = BlockRange { start: at, len };
            at += len + gap;
            range
        })
        .collect()
}

/// The realistic map of a file as a plain list; used by the later parts.
fn realistic_ranges() -> impl Strategy<Value = Vec<BlockRange>> {
    let run = (
        prop_oneof![4 => 1..=2000u64, 1 => 1..=100_000u64],
        1..=3000u64,
    );
    (prop_oneof![Just(0), 0..10_000u64], vec(run, 0..=30))
        .prop_map(|(start, runs)| ranges_from(start, &runs))
}

// ---------------------------------------------------------------------------
// 2. plan::chunks

/// Ranges laid out downwards, the last one ending at `end`, each given as
/// (length, gap before it); as many as fit well above block 0.
fn ranges_ending_at(mut end: u64, runs: &[(u64, u64)]) -> Vec<BlockRange> {
    let mut out = Vec::new();
    for &(len, gap) in runs {
        let start = end - len;
        out.push(BlockRange { start, len });
        if start < gap + (1 << 21) {
            break;
        }
        end = start - gap;
    }
    out.reverse();
    out
}

/// Sorted, disjoint, non-empty ranges apart from each other, as
/// `data_ranges` makes them; sometimes up against u64::MAX.
fn well_formed_ranges() -> BoxedStrategy<Vec<BlockRange>> {
    let large = (0..1u64 << 40, vec((1..=1u64 << 36, 1..=1u64 << 30), 1..=12))
        .prop_map(|(start, runs)| ranges_from(start, &runs));
    let near_max = (0..3u64, vec((1..=1u64 << 20, 1..=1u64 << 20), 1..=6))
        .prop_map(|(short, runs)| ranges_ending_at(u64::MAX - short, &runs));
    prop_oneof![2 => realistic_ranges(), 1 => large, 1 => near_max].boxed()
}

/// Ranges as no caller should pass them: unsorted, overlapping, empty.
fn malformed_ranges() -> impl Strategy<Value = Vec<BlockRange>> {
    let range = (0..5000u64, prop_oneof![1 => Just(0), 3 => 0..3000u64])
        .prop_map(|(start, len)| BlockRange { start, len });
    vec(range, 1..=20)
}

fn chunk_sizes() -> impl Strategy<Value = NonZeroU64> {
    prop_oneof![
        Just(1),
        Just(256),
        1..=64u64,
        1..=100_000u64,
        Just(u64::MAX),
        (0..64u32).prop_map(|shift| 1 << shift),
    ]
    .prop_map(|n| NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
}

/// A block relative to a list of ranges, found by `at` once the list is
/// known: an `Index` picks a range or a block in one whatever the list's
/// length, and shrinks toward the first.
#[derive(Clone, Copy, Debug)]
enum Point {
    Zero,
    Max,
    /// Inside a range.
    Inside(Index, Index),
    /// At a range's start.
    Start(Index),
    /// At a range's end (a hole after it).
    End(Index),
    /// Between the first range's start and the last one's end.
    Between(Index),
    /// At the last range's end.
    EndOfLast,
    Anywhere(u64),
}

impl Point {
    fn at(self, ranges: &[BlockRange]) -> u64 {
        let end = |r: &BlockRange| r.start + r.len;
        // A block in [0, n); 0 when there is none.
        let below = |i: Index, n: u64| {
            if n == 0 {
                0
            } else {
                i.index(n as usize) as u64
            }
        };
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return match self {
                Point::Max => u64::MAX,
                Point::Anywhere(n) => n,
                _ => 0,
            };
        };
        match self {
            Point::Zero => 0,
            Point::Max => u64::MAX,
            Point::Inside(r, offset) => {
                let r = r.get(ranges);
                r.start + below(offset, r.len)
            }
            Point::Start(r) => r.get(ranges).start,
            Point::End(r) => end(r.get(ranges)),
            Point::Between(offset) => {
                first.start + below(offset, end(last).saturating_sub(first.start))
            }
            Point::EndOfLast => end(last),
            Point::Anywhere(n) => n,
        }
    }
}

fn resume_points() -> BoxedStrategy<Point> {
    prop_oneof![
        2 => Just(Point::Zero),
        2 => Just(Point::Max),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(r, offset)| Point::Inside(r, offset)),
        1 => any::<Index>().prop_map(Point::Start),
        1 => any::<Index>().prop_map(Point::End),
        2 => any::<Index>().prop_map(Point::Between),
        2 => any_magnitude().prop_map(Point::Anywhere),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct ChunksCase {
    /// Ranges as no caller should pass them.
    malformed: bool,
    ranges: Vec<BlockRange>,
    chunk_blocks: NonZeroU64,
    resume_at: u64,
}

fn chunks_cases() -> impl Strategy<Value = ChunksCase> {
    let ranges = prop_oneof![
        4 => well_formed_ranges().prop_map(|r| (false, r)),
        1 => malformed_ranges().prop_map(|r| (true, r)),
    ];
    (ranges, chunk_sizes(), resume_points()).prop_map(
        |((malformed, ranges), chunk_blocks, resume)| ChunksCase {
            malformed,
            resume_at: resume.at(&ranges),
            ranges,
            chunk_blocks,
        },
    )
}

#[test]
fn chunks_cover_exactly_the_ranges_from_resume_never_across_a_hole() {
    let part = Part::new("fuzz/plan_chunks");
    part.check(cases(20_000), chunks_cases(), |case| {
        part.new_case(case.malformed);
        let ChunksCase {
            malformed,
            ranges,
            chunk_blocks: mut cb,
            resume_at: resume,
        } = case;
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
        let got = match catch(|| chunks(&ranges, cb, resume)) {
            Ok(c) => c,
            Err(p) => return vec![format!("chunks(.., {cb}, {resume}) panicked: {p}")],
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
                if u128::from(w[0].start) + u128::from(w[0].len.get()) > u128::from(w[1].start) {
                    bad.push(format!(
                        "chunks overlap or go backwards: {:?} {:?}",
                        w[0], w[1]
                    ));
                }
            }
            let covered: u128 = got.iter().map(|c| u128::from(c.len.get())).sum();
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
        bad
    });
    // chunk_blocks: never zero, whatever the sizes.
    let sizes = (
        any_magnitude(),
        select(vec![0u64, 1, 1024, 4096, 65536, u64::MAX]),
    );
    part.check(cases(2000), sizes, |(bytes, bs)| {
        part.new_case(false);
        match catch(|| chunk_blocks(bytes, bs)) {
            Ok(n) if n.get() == (bytes / bs.max(1)).max(1) => Vec::new(),
            Ok(n) => vec![format!("chunk_blocks({bytes}, {bs}) = {n}")],
            Err(p) => vec![format!("chunk_blocks({bytes}, {bs}) panicked: {p}")],
        }
    });
    part.finish();
}

// ---------------------------------------------------------------------------
// 3. clip_to_eof

#[derive(Clone, Debug)]
struct ClipCase {
    ranges: Vec<BlockRange>,
    eof: u64,
}

fn clip_cases() -> impl Strategy<Value = ClipCase> {
    let eof = prop_oneof![
        Just(Point::Zero),
        Just(Point::Max),
        resume_points(),
        Just(Point::EndOfLast),
        any_magnitude().prop_map(Point::Anywhere),
    ];
    (well_formed_ranges(), eof).prop_map(|(ranges, eof)| ClipCase {
        eof: eof.at(&ranges),
        ranges,
    })
}

/// A case of the mover's pipeline: a realistic map, its data ranges
/// clipped at EOF, chunked from a resume point. EOF and the resume point are
/// picked once the map's end is known.
#[derive(Clone, Debug)]
struct PipelineCase {
    block_size: u64,
    extents: Vec<Extent>,
    chunk_blocks: NonZeroU64,
    eof: Index,
    resume_at: Index,
}

fn pipeline_cases() -> impl Strategy<Value = PipelineCase> {
    let map = select(BLOCK_SIZES).prop_flat_map(|bs| (Just(bs), realistic_map(bs, 1)));
    let chunk_blocks = (1..=600u64).prop_map(|n| NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN));
    (map, chunk_blocks, any::<Index>(), any::<Index>()).prop_map(
        |((block_size, extents), chunk_blocks, eof, resume_at)| PipelineCase {
            block_size,
            extents,
            chunk_blocks,
            eof,
            resume_at,
        },
    )
}

#[test]
fn clip_to_eof_keeps_exactly_what_lies_below_eof() {
    let part = Part::new("fuzz/clip_to_eof");
    part.check(cases(10_000), clip_cases(), |ClipCase { ranges, eof }| {
        part.new_case(false);
        let got = match catch(|| clip_to_eof(&ranges, eof)) {
            Ok(g) => g,
            Err(p) => return vec![format!("clip_to_eof panicked: {p}")],
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
        bad
    });

    // The mover's pipeline on real-looking maps: data_ranges → clip at
    // EOF → chunks from a resume point. Every chunk lies on mapped
    // blocks below EOF; every such block at or after resume is in one.
    part.check(cases(5000), pipeline_cases(), |case| {
        part.new_case(false);
        let map = ExtentMap::from_fiemap(&case.extents, case.block_size);
        let ranges = map.data_ranges();
        let last_end = ranges.last().map_or(0, |r| r.start + r.len);
        // EOF anywhere in 0..=last_end + 10, including inside preallocation
        // past the data; resume anywhere in 0..=last_end + 1.
        let eof = case.eof.index(last_end as usize + 11) as u64;
        let resume = case.resume_at.index(last_end as usize + 2) as u64;
        let cb = case.chunk_blocks;
        let clipped = clip_to_eof(&ranges, eof);
        let got = chunks(&clipped, cb, resume);
        let mapped = |b: u64| ranges.iter().any(|r| b >= r.start && b < r.start + r.len);
        let mut covered: u64 = 0;
        for c in &got {
            if !(mapped(c.start) && mapped(c.end() - 1)) || c.end() > eof {
                return vec![format!(
                    "chunk {c:?} on a hole or past eof {eof} (resume {resume})"
                )];
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
        if covered != due {
            return vec![format!(
                "chunks cover {covered} blocks of {due} (eof {eof}, resume {resume})"
            )];
        }
        Vec::new()
    });
    part.finish();
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

/// Values as TOML text: valid ones for some key, and everything else.
const TOML_VALUES: &[&str] = &[
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

/// A value as TOML text.
fn toml_values() -> BoxedStrategy<String> {
    prop_oneof![
        7 => select(TOML_VALUES).prop_map(str::to_string),
        1 => random_text(40).prop_map(|t| format!("\"{}\"", t.replace(['"', '\\'], ""))),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => vec(select(TOML_VALUES), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
    .boxed()
}

/// Text with a bit of everything: ASCII, controls, quotes, unicode.
fn random_text(max: usize) -> BoxedStrategy<String> {
    let char = prop_oneof![
        7 => proptest::char::range('a', 'z'),
        1 => proptest::char::range('\0', '\u{1f}'),
        1 => select(vec!['"', '\\', '\'', '[', ']', '=', '#', '.', '\n', '\u{7f}']),
        1 => select(vec!['é', '€', '𝄞', '\u{202e}', '\u{feff}', 'ß']),
    ];
    vec(char, 0..=max).prop_map(String::from_iter).boxed()
}

/// Section headers of a random document ("[filesystem]" in brackets makes
/// the [[filesystem]] header).
const SECTIONS: &[&str] = &[
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

/// Keys of a random document: the real ones, in any section, and others.
const DOCUMENT_KEYS: &[&str] = &[
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

/// A random TOML-ish document built from sections, keys and values.
fn random_toml() -> BoxedStrategy<String> {
    let line = (select(DOCUMENT_KEYS), toml_values());
    vec((select(SECTIONS), vec(line, 0..=5)), 0..=8)
        .prop_map(|sections| {
            let mut out = String::new();
            for (section, lines) in sections {
                if !section.is_empty() {
                    out.push_str(&format!("[{section}]\n"));
                }
                for (key, value) in lines {
                    out.push_str(&format!("{key} = {value}\n"));
                }
            }
            out
        })
        .boxed()
}

/// One byte of a text changed, as a flipped bit or a bad copy would. The
/// `Index` picks a place in the text whatever its length.
#[derive(Clone, Copy, Debug)]
enum ByteEdit {
    Set(Index, u8),
    Xor(Index, u8),
    Insert(Index, u8),
    Remove(Index),
}

impl ByteEdit {
    fn apply(self, bytes: &mut Vec<u8>) {
        // A place in 0..=len: an insert may append; the others need a byte.
        let len = bytes.len();
        let at = |i: Index| i.index(len + 1);
        match self {
            ByteEdit::Set(i, b) => {
                if let Some(byte) = bytes.get_mut(at(i)) {
                    *byte = b;
                }
            }
            ByteEdit::Xor(i, b) => {
                if let Some(byte) = bytes.get_mut(at(i)) {
                    *byte ^= b;
                }
            }
            ByteEdit::Insert(i, b) => bytes.insert(at(i), b),
            ByteEdit::Remove(i) => {
                if at(i) < len {
                    bytes.remove(at(i));
                }
            }
        }
    }
}

/// One change to the shipped file. Lines are numbered in the file as the
/// edits before left it; a number past its end means the last line (or,
/// to insert, the end).
#[derive(Clone, Debug)]
enum Edit {
    Remove(usize),
    Duplicate(usize),
    /// Uncomment a line (enables the [[filesystem]] example).
    Uncomment(usize),
    /// A new value for a `key = value` line.
    Revalue(usize, String),
    /// A `key = value` line for any key, under its section's header.
    Insert(usize, &'static str, String),
    Swap(usize, usize),
    /// A random document after the end.
    Append(String),
    /// Cut anywhere (a half-written file).
    Truncate(Index),
    /// A byte of a line flipped, inserted or deleted.
    Byte(usize, ByteEdit),
    /// A line of random text.
    InsertText(usize, String),
    /// A line's value in another type: a number quoted, a string bare.
    Retype(usize),
}

fn edits(lines: usize) -> BoxedStrategy<Edit> {
    let line = 0..lines.max(1);
    let byte = prop_oneof![
        (any::<Index>(), 0..7u32).prop_map(|(at, bit)| ByteEdit::Xor(at, 1 << bit)),
        (any::<Index>(), 0..0x80u8).prop_map(|(at, b)| ByteEdit::Insert(at, b)),
        any::<Index>().prop_map(ByteEdit::Remove),
    ];
    prop_oneof![
        1 => line.clone().prop_map(Edit::Remove),
        1 => line.clone().prop_map(Edit::Duplicate),
        1 => line.clone().prop_map(Edit::Uncomment),
        1 => (line.clone(), toml_values()).prop_map(|(i, v)| Edit::Revalue(i, v)),
        1 => (line.clone(), select(KEYS), toml_values()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
        1 => (line.clone(), line.clone()).prop_map(|(i, j)| Edit::Swap(i, j)),
        1 => random_toml().prop_map(Edit::Append),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (line.clone(), byte).prop_map(|(i, e)| Edit::Byte(i, e)),
        1 => (line.clone(), random_text(60)).prop_map(|(i, t)| Edit::InsertText(i, t)),
        2 => line.prop_map(Edit::Retype),
    ]
    .boxed()
}

/// `text` changed by `edits`, with or without a newline at the end.
fn edited(text: &str, edits: &[Edit], newline: bool) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for edit in edits {
        // The line numbered `i`, if the file has any; the place to insert
        // before it.
        let line = |i: usize| lines.len().checked_sub(1).map(|last| i.min(last));
        let place = |i: usize| i.min(lines.len());
        match edit {
            Edit::Remove(i) => {
                if let Some(i) = line(*i) {
                    lines.remove(i);
                }
            }
            Edit::Duplicate(i) => {
                if let Some(i) = line(*i) {
                    lines.insert(i, lines[i].clone());
                }
            }
            Edit::Uncomment(i) => {
                if let Some(i) = line(*i) {
                    lines[i] = lines[i].trim_start_matches(['#', ' ']).to_string();
                }
            }
            Edit::Revalue(i, value) => {
                if let Some(i) = line(*i) {
                    if let Some((key, _)) = lines[i].split_once(" = ") {
                        lines[i] = format!("{key} = {value}");
                    }
                }
            }
            Edit::Insert(i, key, value) => {
                let new = match key.split_once('.') {
                    Some((section, key)) => format!("[{section}]\n{key} = {value}"),
                    None => format!("{key} = {value}"),
                };
                lines.insert(place(*i), new);
            }
            Edit::Swap(i, j) => {
                if let (Some(i), Some(j)) = (line(*i), line(*j)) {
                    lines.swap(i, j);
                }
            }
            Edit::Append(document) => lines.push(document.clone()),
            Edit::Truncate(cut) => {
                let text = lines.join("\n");
                let cut = cut.index(text.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|c| text.is_char_boundary(*c))
                    .unwrap_or(0);
                lines = text[..cut].lines().map(str::to_string).collect();
            }
            Edit::Byte(i, change) => {
                if let Some(i) = line(*i) {
                    let mut bytes = lines[i].clone().into_bytes();
                    change.apply(&mut bytes);
                    lines[i] = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            Edit::InsertText(i, text) => lines.insert(place(*i), text.clone()),
            Edit::Retype(i) => {
                if let Some(i) = line(*i) {
                    if let Some((key, value)) = lines[i].clone().split_once(" = ") {
                        let value = value.trim();
                        lines[i] = match value.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                            Some(inner) => format!("{key} = {inner}"),
                            None => format!("{key} = \"{value}\""),
                        };
                    }
                }
            }
        }
    }
    let mut out = lines.join("\n");
    if newline {
        out.push('\n');
    }
    out
}

/// A config file: the shipped one, the shipped one edited, a random
/// document, or random bytes (not even UTF-8).
#[derive(Clone, Debug)]
enum ConfigText {
    Shipped,
    Edited { edits: Vec<Edit>, newline: bool },
    Document(String),
    Bytes(Vec<u8>),
}

impl ConfigText {
    fn bytes(&self, shipped: &str) -> Vec<u8> {
        match self {
            ConfigText::Shipped => shipped.as_bytes().to_vec(),
            ConfigText::Edited { edits, newline } => edited(shipped, edits, *newline).into_bytes(),
            ConfigText::Document(text) => text.as_bytes().to_vec(),
            ConfigText::Bytes(bytes) => bytes.clone(),
        }
    }
}

/// Config files; `lines`: the shipped file's.
fn config_texts(lines: usize) -> BoxedStrategy<ConfigText> {
    let edited = (vec(edits(lines), 1..=3), proptest::bool::weighted(0.75))
        .prop_map(|(edits, newline)| ConfigText::Edited { edits, newline });
    prop_oneof![
        1 => Just(ConfigText::Shipped),
        6 => edited,
        2 => random_toml().prop_map(ConfigText::Document),
        1 => vec(any::<u8>(), 0..300).prop_map(ConfigText::Bytes),
    ]
    .boxed()
}

/// The environment variable name of a key.
fn env_name(key: &str) -> String {
    format!("DEFRAGD__{}", key.replace('.', "__").to_uppercase())
}

/// Environments: none, or a few DEFRAGD__ variables (and a few others)
/// with good and bad values.
fn environments() -> BoxedStrategy<Vec<(String, String)>> {
    let name = prop_oneof![
        3 => select(KEYS).prop_map(env_name),
        1 => select(KEYS).prop_map(|k| env_name(k).to_lowercase()),
        1 => Just("DEFRAGD__".to_string()),
        1 => Just("DEFRAGD____THROTTLE".to_string()),
        1 => random_text(12).prop_map(|t| format!("DEFRAGD__{t}")),
        1 => Just("DEFRAGD_LOG".to_string()),
        1 => Just("PATH".to_string()),
        1 => Just("DEFRAGD__THROTTLE__CHUNK_MIB__EXTRA".to_string()),
    ];
    let broken = vec![
        "[",
        "[[",
        "]",
        "[\"a\", 1]",
        "[{ path = \"/srv\" }]",
        "[1,",
        "{}",
        "\u{0}",
    ];
    let value = prop_oneof![
        2 => toml_values().prop_map(|v| v.trim_matches('"').to_string()),
        1 => random_text(30),
        1 => Just(String::new()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => select(broken).prop_map(str::to_string),
    ];
    let variable = (name, value);
    prop_oneof![
        1 => Just(Vec::new()),
        1 => vec(variable.clone(), 1..=1),
        2 => vec(variable, 1..=6),
    ]
    .boxed()
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

/// What `config::load_from` is given: a main file, maybe a drop-in, an
/// environment.
#[derive(Clone, Debug)]
struct ConfigInput {
    main: ConfigText,
    drop_in: Option<ConfigText>,
    env: Vec<(String, String)>,
}

impl ConfigInput {
    fn is_malformed(&self) -> bool {
        !matches!(self.main, ConfigText::Shipped) || self.drop_in.is_some() || !self.env.is_empty()
    }

    /// The files written for it.
    fn files(&self, shipped: &str) -> ConfigCase {
        let drop_in = self.drop_in.as_ref().map(|d| d.bytes(shipped));
        ConfigCase::new(&self.main.bytes(shipped), drop_in.as_deref())
    }
}

/// Config inputs, with a drop-in at odds `drop_in`.
fn config_inputs(shipped: &str, drop_in: f64) -> impl Strategy<Value = ConfigInput> {
    let lines = shipped.lines().count();
    (
        config_texts(lines),
        proptest::option::weighted(drop_in, config_texts(lines)),
        environments(),
    )
        .prop_map(|(main, drop_in, env)| ConfigInput { main, drop_in, env })
}

#[test]
fn config_load_never_panics_and_names_the_source_of_every_error() {
    let part = Part::new("fuzz/config_load");
    let shipped = shipped();
    let (loaded, refused) = (Cell::new(0u64), Cell::new(0u64));
    part.check(cases(2500), config_inputs(&shipped, 0.25), |input| {
        let new = part.new_case(input.is_malformed());
        let count = |n: &Cell<u64>| n.set(n.get() + u64::from(new));
        let c = input.files(&shipped);
        match catch(|| config::load_from(Some(&c.main), input.env.clone())) {
            Err(p) => vec![format!("load_from panicked: {p}")],
            Ok(Ok(settings)) => {
                count(&loaded);
                // What loads renders to a file that loads the same.
                let text = settings.render();
                let again = ConfigCase::new(text.as_bytes(), None);
                match catch(|| config::load_from(Some(&again.main), Vec::new())) {
                    Ok(Ok(back)) if back == settings => Vec::new(),
                    Ok(Ok(back)) => vec![format!(
                        "rendered settings load back different: {settings:?} vs {back:?}"
                    )],
                    Ok(Err(e)) => vec![format!("rendered settings do not load ({e}):\n{text}")],
                    Err(p) => vec![format!("reloading the render panicked: {p}")],
                }
            }
            Ok(Err(errors)) => {
                count(&refused);
                check_errors(&errors, &c.sources(&input.env))
            }
        }
    });
    part.note("loaded", loaded.get());
    part.note("refused", refused.get());
    part.finish();
}

// ---------------------------------------------------------------------------
// 5. `defragd config check FILE` as a process.

#[derive(Clone, Debug)]
struct ProcessCase {
    config: ConfigInput,
    /// A DEFRAGD__ variable that is not UTF-8: the loader must refuse it,
    /// not skip it.
    non_utf8_variable: bool,
}

impl ProcessCase {
    /// The environment as a process can be given it.
    fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .config
            .env
            .iter()
            // A NUL cannot be passed to a process at all.
            .filter(|(k, v)| {
                !k.contains('\0') && !v.contains('\0') && !k.is_empty() && !k.contains('=')
            })
            // Not the process's own PATH.
            .filter(|(k, _)| k != "PATH")
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        if self.non_utf8_variable {
            env.push((
                OsString::from("DEFRAGD__THROTTLE__CHUNK_MIB"),
                OsString::from_vec(vec![b'4', 0xff, 0xfe]),
            ));
        }
        env
    }
}

#[test]
fn config_check_exits_0_or_78_and_never_panics() {
    let part = Part::new("fuzz/config_check_process");
    let shipped = shipped();
    let (valid, invalid) = (Cell::new(0u64), Cell::new(0u64));
    let inputs = (config_inputs(&shipped, 0.2), proptest::bool::weighted(0.1)).prop_map(
        |(config, non_utf8_variable)| ProcessCase {
            config,
            non_utf8_variable,
        },
    );
    part.check(cases(300), inputs, |case| {
        let env = case.env();
        let config = &case.config;
        let malformed = !matches!(config.main, ConfigText::Shipped)
            || config.drop_in.is_some()
            || !env.is_empty();
        let new = part.new_case(malformed);
        match run_config_check(&config.files(&shipped), &env) {
            Ok(code) => {
                let n = if code == 0 { &valid } else { &invalid };
                n.set(n.get() + u64::from(new));
                Vec::new()
            }
            Err(failure) => vec![failure],
        }
    });
    part.note("exit0", valid.get());
    part.note("exit78", invalid.get());
    part.finish();
}

/// Runs `defragd config check` on the files of `c`: its exit status, or
/// what is wrong with what it did.
fn run_config_check(c: &ConfigCase, env: &[(OsString, OsString)]) -> Result<i32, String> {
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
            "exit {code:?}; stderr {:?}",
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

fn text() -> BoxedStrategy<String> {
    random_text(40)
}

/// A path as the service may send it, sometimes with a forged line in it.
fn paths() -> impl Strategy<Value = PathBuf> {
    (random_text(30), proptest::bool::weighted(0.25)).prop_map(|(name, forged)| {
        let mut s = format!("/{name}");
        if forged {
            s.push_str("\ndefragmented /etc/shadow: forged");
        }
        PathBuf::from(s)
    })
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), 0..1u64 << 40, any::<u64>()]
}

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(i64::MAX),
        Just(i64::MIN),
        1_700_000_000..1_700_000_000 + (1i64 << 30),
        any::<i64>(),
    ]
}

prop_compose! {
    fn moving()(path in paths(), moved_bytes in extreme_u64(), total_bytes in extreme_u64()) -> Moving {
        Moving { path, moved_bytes, total_bytes }
    }
}

prop_compose! {
    fn activity()(files_defragmented in extreme_u64(), bytes_moved in extreme_u64()) -> ActivityReport {
        ActivityReport { files_defragmented, bytes_moved }
    }
}

prop_compose! {
    fn fragmentation()(
        score in select(vec![f64::NAN, f64::INFINITY, -1.0, 12.5, 1e300]),
        files in extreme_u64(),
        extents in extreme_u64(),
        ideal_extents in extreme_u64(),
        measured_at in extreme_i64(),
        previous_score in proptest::option::of(select(vec![f64::NAN, f64::NEG_INFINITY, 0.0, 99.9])),
        previous_measured_at in proptest::option::of(extreme_i64()),
    ) -> FragmentationReport {
        FragmentationReport {
            score, files, extents, ideal_extents, measured_at, previous_score, previous_measured_at,
        }
    }
}

prop_compose! {
    fn covered_fs()(
        mount_point in paths(),
        uuid in text(),
        disk in text(),
        fragmentation in proptest::option::of(fragmentation()),
        today in activity(),
        total in activity(),
        tracking in text(),
        tracking_note in proptest::option::of(text()),
        medium in text(),
        medium_source in text(),
        write_budget_bytes in proptest::option::of(any::<u64>()),
        written_today_bytes in any::<u64>(),
    ) -> CoveredFs {
        CoveredFs {
            mount_point, uuid, disk, fragmentation, today, total, tracking, tracking_note,
            medium, medium_source, write_budget_bytes, written_today_bytes,
        }
    }
}

prop_compose! {
    fn status()(
        state in prop_oneof![
            select(vec!["moving", "idle", "paused"]).prop_map(str::to_string),
            text(),
        ],
        summary in text(),
        paused_until in proptest::option::of(extreme_i64()),
        moving in vec(moving(), 0..3),
        queued in extreme_u64(),
        bytes_moved_today in extreme_u64(),
        filesystems in vec(covered_fs(), 0..3),
        today in activity(),
        total in activity(),
    ) -> StatusReport {
        StatusReport {
            state, summary, paused_until, moving, queued, bytes_moved_today, filesystems, today, total,
        }
    }
}

prop_compose! {
    fn queue_entry()(
        id in extreme_i64(),
        path in paths(),
        size_bytes in extreme_u64(),
        extents in extreme_u64(),
        ideal_extents in extreme_u64(),
        score in select(vec![f64::NAN, f64::INFINITY, -1.0, 50.0, 1e300]),
        priority in any::<u64>().prop_map(|n| n as f64),
        state in text(),
        next_block in extreme_u64(),
        attempts in any::<u32>(),
    ) -> QueueEntry {
        QueueEntry {
            id, path, size_bytes, extents, ideal_extents, score, priority, state, next_block, attempts,
        }
    }
}

prop_compose! {
    fn history_line()(
        path in paths(),
        outcome in text(),
        reason_code in proptest::option::of(text()),
        reason in proptest::option::of(text()),
        extents_before in extreme_u64(),
        extents_after in proptest::option::of(extreme_u64()),
        bytes_moved in extreme_u64(),
        finished_at in extreme_i64(),
    ) -> HistoryLine {
        HistoryLine {
            path, outcome, reason_code, reason, extents_before, extents_after, bytes_moved, finished_at,
        }
    }
}

prop_compose! {
    fn defrag_reply()(path in paths(), result in text(), message in text()) -> DefragReply {
        DefragReply { path, result, message }
    }
}

/// What a service may answer, with the most hostile text and figures.
fn response_data() -> impl Strategy<Value = ResponseData> {
    prop_oneof![
        text().prop_map(|message| ResponseData::Done(Done { message })),
        status().prop_map(ResponseData::Status),
        vec(queue_entry(), 0..5).prop_map(ResponseData::Queue),
        vec(history_line(), 0..5).prop_map(ResponseData::History),
        vec(defrag_reply(), 0..5).prop_map(ResponseData::Defrag),
    ]
}

/// Lines `format::human` must print for `data`: one per item, whatever
/// newlines the service's text holds.
fn expected_lines(data: &ResponseData) -> usize {
    match data {
        // Summary, state, moving, queued, moved today, in all, filesystems.
        ResponseData::Status(s) => {
            1 + 1 + s.moving.len().max(1) + 1 + 1 + 1 + s.filesystems.len().max(1)
        }
        ResponseData::Queue(q) if q.is_empty() => 1,
        ResponseData::Queue(q) => 1 + q.len(),
        ResponseData::History(h) if h.is_empty() => 1,
        ResponseData::History(h) => 1 + h.len(),
        ResponseData::Defrag(d) => d.len(),
        ResponseData::Done(_) => 1,
    }
}

/// Response lines a socket may send: well-formed ones, some a few bytes
/// off, and random bytes.
const RESPONSE_LINES: &[&str] = &[
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

/// A line of bytes (shown as text, where it is text).
#[derive(Clone)]
struct Line(Vec<u8>);

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn response_lines() -> impl Strategy<Value = Line> {
    let byte = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Set(at, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Insert(at, b)),
        any::<Index>().prop_map(ByteEdit::Remove),
    ];
    let edited = (
        select(RESPONSE_LINES),
        proptest::option::of(vec(byte, 1..=3)),
    )
        .prop_map(|(line, edits)| {
            let mut line = line.as_bytes().to_vec();
            for edit in edits.into_iter().flatten() {
                edit.apply(&mut line);
            }
            line
        });
    prop_oneof![9 => edited, 1 => vec(any::<u8>(), 0..200)].prop_map(Line)
}

#[test]
fn defragctl_output_never_panics_and_cannot_be_forged() {
    let part = Part::new("fuzz/control_format");
    part.check(cases(5000), (response_data(), extreme_i64()), |(data, now)| {
        part.new_case(true);
        let mut bad = Vec::new();
        match catch(|| format::human(&data, now)) {
            Err(p) => bad.push(format!("format::human panicked: {p}")),
            Ok(text) => {
                let lines = text.lines().count();
                let want = expected_lines(&data);
                if lines != want {
                    bad.push(format!(
                        "human output has more lines than items: {lines} lines printed for {want} items (a forged line?): {text:?}"
                    ));
                }
                if text.chars().any(|c| c.is_control() && c != '\n') {
                    bad.push(format!(
                        "a raw control character reaches the terminal: {text:?}"
                    ));
                }
            }
        }
        match catch(|| format::json(&data)) {
            Err(p) => bad.push(format!("format::json panicked: {p}")),
            Ok(text) => {
                if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                    bad.push(format!("--json output is not JSON: {text}"));
                }
            }
        }
        bad
    });
    // A response line as any socket might send it.
    let requests = vec![
        Request::Status,
        Request::Queue { limit: None },
        Request::History { limit: Some(3) },
        Request::Defrag {
            paths: vec![PathBuf::from("/x")],
        },
        Request::Pause { for_secs: None },
        Request::Reload,
    ];
    part.check(
        cases(5000),
        (response_lines(), select(requests)),
        |(line, req)| {
            part.new_case(true);
            match catch(|| client::decode_response(&req, &line.0)) {
                Err(p) => vec![format!("decode_response panicked: {p}")],
                Ok(Ok(defragd::control::Response::Ok { data, .. })) => {
                    match catch(|| format::human(&data, 1_700_000_000)) {
                        Err(p) => {
                            vec![format!("a decoded response makes format::human panic: {p}")]
                        }
                        Ok(_) => Vec::new(),
                    }
                }
                Ok(_) => Vec::new(),
            }
        },
    );
    part.finish();
}
