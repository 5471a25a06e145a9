//! Part 1: `ExtentMap::from_fiemap` on random FIEMAP lists (realistic maps,
//! maps changed one field at a time, garbage) never panics, and its figures
//! keep their invariants.

use super::*;

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
            let mut flags = ExtentFlags::empty();
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
                flags,
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
pub(super) fn realistic_map(bs: u64, min: usize) -> BoxedStrategy<Vec<Extent>> {
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
                    flags: ExtentFlags::from_bits_retain(flags),
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
                e.flags = ExtentFlags::from_bits_retain(flags);
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
    let problems = ExtentFlags::DELALLOC
        | ExtentFlags::DATA_INLINE
        | ExtentFlags::DATA_TAIL
        | ExtentFlags::UNKNOWN
        | ExtentFlags::ENCODED
        | ExtentFlags::NOT_ALIGNED
        | ExtentFlags::DATA_ENCRYPTED;
    flags.intersects(problems)
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
            map.ideal_extents(32768),
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
    match catch(|| Assessment::of(&map, raw.len() as u64 * bs, 32768)) {
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
        // The span is ext4's flex group, as `Ext4Detail::group_blocks` has it.
        let (blocks, per_group, groups_per_flex) = figures;
        let span = u64::from(per_group) * u64::from(groups_per_flex.unwrap_or(1));
        if let Err(p) = catch(|| e4defrag_best(blocks, span)) {
            bad.push(format!(
                "e4defrag_best({blocks}, {span}) ({per_group} × {groups_per_flex:?}) panicked: {p}"
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
pub(super) fn ranges_from(start: u64, runs: &[(u64, u64)]) -> Vec<BlockRange> {
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
pub(super) fn realistic_ranges() -> impl Strategy<Value = Vec<BlockRange>> {
    let run = (
        prop_oneof![4 => 1..=2000u64, 1 => 1..=100_000u64],
        1..=3000u64,
    );
    (prop_oneof![Just(0), 0..10_000u64], vec(run, 0..=30))
        .prop_map(|(start, runs)| ranges_from(start, &runs))
}
