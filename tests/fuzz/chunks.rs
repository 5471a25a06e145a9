//! Parts 2 and 3: `plan::chunks` covers exactly the blocks of the ranges at
//! or after `resume_at`, never across a hole; `clip_to_eof`, alone and in the
//! mover's pipeline map → ranges → clip → chunks.

use super::fiemap::{ranges_from, realistic_map, realistic_ranges};
use super::*;

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
