//! `defragd check`: a fragmentation report, per file and in total, and on
//! request e4defrag's own score, labelled as the different measure it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use serde::Serialize;

use super::check_media::Devices;
use super::table::{render, Align};
use super::CheckArgs;
use crate::assess::{e4defrag_best, E4defragScore};
use crate::config::PolicySettings;
use crate::escape::{escaped, escaped_display};
use crate::inspect::{measure, Filesystems};
use crate::medium::{Medium, MediumDecided};
use crate::outcome::Refusal;
use crate::outcome::{FailReason, Size};
use crate::policy::excess_read_cost_ms;
use crate::target::Target;
use crate::walk::{walk_parallel, Depth, Found};

/// How many files a tree's report lists unless --all.
const TOP: usize = 20;

#[derive(Debug, Serialize)]
struct FileReport {
    path: PathBuf,
    size_bytes: u64,
    extents: u64,
    physical_runs: u64,
    ideal_extents: u64,
    score: f64,
    block_mapped: bool,
    /// Bytes it shares with a snapshot or a reflinked copy (btrfs, XFS):
    /// left as they are by every move, so that they stay shared.
    shared_bytes: u64,
    /// What its device is taken to be ("ssd" or "hdd"): see its
    /// filesystem's `medium_source`.
    medium: Medium,
    /// What its excess extents cost one full read of it there, in ms.
    read_cost_ms: f64,
    #[serde(skip)]
    dev: u64,
}

#[derive(Debug, Default, Serialize)]
struct Total {
    files: u64,
    size_bytes: u64,
    extents: u64,
    physical_runs: u64,
    ideal_extents: u64,
    block_mapped: u64,
    shared_bytes: u64,
    e4defrag_score: f64,
    /// What the fragmentation costs one full read of every file, in ms.
    read_cost_ms: f64,
}

/// Per filesystem: how many files, how many still block-mapped.
#[derive(Debug, Default, Serialize)]
struct PerFilesystem {
    mount_point: PathBuf,
    files: u64,
    block_mapped: u64,
    /// Where its layout came from: "superblock" (the block device), or
    /// "kernel" (the device could not be read; see `layout_note`).
    layout: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    layout_note: Option<String>,
    /// Its device as `read_cost_ms` takes it: "ssd" or "hdd".
    medium: Medium,
    /// Where that came from: "measured", "sysfs" (the kernel's rotational
    /// flag), "config" (--medium), "assumed" (no flag: a disk).
    medium_source: &'static str,
    /// What one extent boundary was measured to cost there, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    medium_boundary_ms: Option<f64>,
    /// What one excess extent costs a full read there as `read_cost_ms`
    /// counts it, in ms: the policy's `boundary_ms_hdd` or
    /// `boundary_ms_ssd` (their defaults) for the medium. Not the measured
    /// cost above, which only decides the medium.
    read_cost_per_excess_extent_ms: f64,
    /// The medium and its source in words.
    #[serde(skip)]
    medium_words: String,
    #[serde(skip)]
    dev: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    files: Vec<FileReport>,
    filesystems: Vec<PerFilesystem>,
    total: Total,
}

/// What the walk learnt of one entry, in walk order.
enum Row {
    File {
        report: FileReport,
        mount_point: PathBuf,
        layout: &'static str,
        /// e4defrag's best extent count for it, 0 for a file with no blocks.
        e4defrag_best: u64,
        blocks: u64,
    },
    /// Passed over, with a word for the operator.
    Skipped(String),
    /// Passed over without a word: not a file to measure, in a tree.
    PassedOver,
    Failed(String),
    /// Not measured because its filesystem cannot be worked on: said once
    /// per filesystem, not once per file.
    FilesystemFailed(String),
}

/// One walking thread's state.
#[derive(Default)]
struct Scan {
    filesystems: Filesystems,
    /// Devices whose layout note this thread has already handed in.
    noted: HashSet<u64>,
    /// Devices of which `Devices` wants to hear no more.
    settled: HashSet<u64>,
}

/// What is said once per filesystem, whichever thread meets it first:
/// mount point -> note.
type Notes = Mutex<BTreeMap<PathBuf, String>>;

fn row(target: Target, scan: &mut Scan, notes: &Notes, devices: &Devices) -> Row {
    match measure(&target, &mut scan.filesystems) {
        Ok(mut m) => {
            if m.fs.layout_from_kernel() && scan.noted.insert(m.dev) {
                if let (Some(note), Ok(mut notes)) = (m.fs.layout_note(), notes.lock()) {
                    notes.entry(m.fs.mount_point.clone()).or_insert(note);
                }
            }
            if !scan.settled.contains(&m.dev) && devices.offer(&mut m) {
                scan.settled.insert(m.dev);
            }
            let a = m.assessment;
            Row::File {
                mount_point: m.fs.mount_point.clone(),
                layout: if m.fs.layout_from_kernel() {
                    "kernel"
                } else {
                    "superblock"
                },
                e4defrag_best: e4defrag_best(a.blocks, m.fs.group_blocks()),
                blocks: a.blocks,
                report: FileReport {
                    path: target.path,
                    size_bytes: a.size_bytes,
                    extents: a.extents,
                    physical_runs: a.physical_runs,
                    ideal_extents: a.ideal_extents,
                    score: a.score,
                    block_mapped: m.block_mapped,
                    shared_bytes: m.shared_bytes,
                    // Known once the walk is done (see `Devices`).
                    medium: Medium::default(),
                    read_cost_ms: 0.0,
                    dev: m.dev,
                },
            }
        }
        // Explicitly named files get a word; in a tree, what is not a
        // measurable file is passed over, as e4defrag does.
        Err(Refusal::Skip(reason)) if target.expected_dev.is_none() => Row::Skipped(format!(
            "{}: {}",
            escaped(&target.path),
            escaped_display(&reason)
        )),
        Err(Refusal::Skip(_)) => Row::PassedOver,
        Err(Refusal::Fail(FailReason::Filesystem(reason))) => Row::FilesystemFailed(reason),
        Err(Refusal::Fail(reason)) => Row::Failed(format!(
            "{}: {}",
            escaped(&target.path),
            escaped_display(&reason)
        )),
    }
}

/// Most of a scan is the kernel looking names up and reading inodes:
/// two threads per core keep the cores busy while some wait for a read.
fn scan_threads() -> NonZeroUsize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new((cores * 2).min(MAX_THREADS)).unwrap_or(NonZeroUsize::MIN)
}

/// Past this many threads, a scan only adds contention.
const MAX_THREADS: usize = 16;

pub fn run(args: &CheckArgs) -> ExitCode {
    let depth = if args.recursive {
        Depth::Recursive
    } else {
        Depth::Shallow
    };
    let threads = scan_threads();
    let mut files = Vec::new();
    let mut e4defrag = E4defragScore::default();
    let mut errors = 0u64;
    let mut per_fs: BTreeMap<PathBuf, PerFilesystem> = Default::default();
    let notes = Notes::default();
    let devices = Devices::new(args.medium);
    // Filesystem failure -> files it kept from being measured, in the
    // order first met.
    let mut fs_failures: Vec<(String, u64)> = Vec::new();
    let mut fs_failure_index: HashMap<String, usize> = HashMap::new();
    for root in &args.paths {
        let rows = walk_parallel(
            root,
            depth,
            threads,
            Scan::default,
            |scan, found| match found {
                Found::Refused { path, reason } => {
                    Row::Skipped(format!("{}: {}", escaped(&path), escaped_display(&reason)))
                }
                Found::File(target) => row(target, scan, &notes, &devices),
            },
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                errors += 1;
                eprintln!("defragd: {}", escaped_display(&e));
                continue;
            }
        };
        for r in rows {
            match r {
                Row::File {
                    report,
                    mount_point,
                    layout,
                    e4defrag_best,
                    blocks,
                } => {
                    if blocks > 0 {
                        e4defrag.add(report.extents, e4defrag_best, blocks);
                    }
                    let fs = per_fs
                        .entry(mount_point)
                        .or_insert_with_key(|m| PerFilesystem {
                            mount_point: m.clone(),
                            layout,
                            dev: report.dev,
                            ..PerFilesystem::default()
                        });
                    fs.files += 1;
                    fs.block_mapped += u64::from(report.block_mapped);
                    files.push(report);
                }
                Row::PassedOver => {}
                Row::Skipped(word) => eprintln!("{word}"),
                Row::Failed(word) => {
                    errors += 1;
                    eprintln!("{word}");
                }
                Row::FilesystemFailed(reason) => {
                    errors += 1;
                    match fs_failure_index.get(&reason) {
                        Some(&i) => fs_failures[i].1 += 1,
                        None => {
                            fs_failure_index.insert(reason.clone(), fs_failures.len());
                            fs_failures.push((reason, 1));
                        }
                    }
                }
            }
        }
    }
    for (reason, files) in &fs_failures {
        eprintln!(
            "defragd: {} (so {files} file{} could not be measured)",
            escaped_display(reason),
            if *files == 1 { "" } else { "s" }
        );
    }
    let notes = notes
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (mount_point, note) in notes {
        eprintln!("defragd: note: {note}");
        if let Some(fs) = per_fs.get_mut(&mount_point) {
            fs.layout_note = Some(note);
        }
    }
    // After the walk, so that a measurement hears the device alone.
    let media = devices.decide();
    let benefit = PolicySettings::default();
    for f in &mut files {
        if let Some(decided) = media.get(&f.dev) {
            f.medium = decided.medium;
            let boundary_ms = benefit.benefit(decided.medium).boundary_ms;
            let excess = f.extents.saturating_sub(f.ideal_extents);
            f.read_cost_ms = excess_read_cost_ms(excess, boundary_ms);
        }
    }
    for fs in per_fs.values_mut() {
        if let Some(decided) = media.get(&fs.dev) {
            set_medium(fs, decided, benefit.benefit(decided.medium).boundary_ms);
        }
    }
    files.sort_by(|a, b| {
        let excess = |f: &FileReport| f.extents.saturating_sub(f.ideal_extents);
        excess(b)
            .cmp(&excess(a))
            .then(b.score.total_cmp(&a.score))
            .then(a.path.cmp(&b.path))
    });
    let total = Total {
        files: files.len() as u64,
        size_bytes: files.iter().map(|f| f.size_bytes).sum(),
        extents: files.iter().map(|f| f.extents).sum(),
        physical_runs: files.iter().map(|f| f.physical_runs).sum(),
        ideal_extents: files.iter().map(|f| f.ideal_extents).sum(),
        block_mapped: files.iter().filter(|f| f.block_mapped).count() as u64,
        shared_bytes: files.iter().map(|f| f.shared_bytes).sum(),
        e4defrag_score: (e4defrag.score() * 10.0).round() / 10.0,
        read_cost_ms: files.iter().map(|f| f.read_cost_ms).sum(),
    };
    let report = Report {
        files,
        filesystems: per_fs.into_values().collect(),
        total,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("defragd: cannot write JSON: {e}"),
        }
    } else {
        print_human(&report, args);
    }
    if report.files.is_empty() && !args.recursive {
        // Where nothing was measured, a directory's subdirectories may be
        // all it holds: say how to reach them.
        for dir in args.paths.iter().filter(|p| p.is_dir()) {
            eprintln!(
                "defragd: note: only the files directly in {} were checked; -r walks its subdirectories too",
                escaped(dir)
            );
        }
    }
    if errors > 0 {
        ExitCode::from(super::EXIT_SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn set_medium(fs: &mut PerFilesystem, decided: &MediumDecided, boundary_ms: f64) {
    fs.medium = decided.medium;
    fs.medium_source = decided.source.as_str();
    fs.medium_boundary_ms = decided.measured_boundary_ms();
    fs.read_cost_per_excess_extent_ms = boundary_ms;
    fs.medium_words = decided.to_string();
}

fn print_human(report: &Report, args: &CheckArgs) {
    let shown = if args.all || !args.recursive {
        report.files.len()
    } else {
        TOP.min(report.files.len())
    };
    let rows: Vec<Vec<String>> = report.files[..shown]
        .iter()
        .map(|f| {
            vec![
                escaped(&f.path).to_string(),
                Size(f.size_bytes).to_string(),
                f.extents.to_string(),
                f.physical_runs.to_string(),
                f.ideal_extents.to_string(),
                format!("{:.1}", f.score),
                format!("{} {}", milliseconds(f.read_cost_ms), f.medium),
                if f.block_mapped {
                    "block-mapped".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let header = [
        ("file", Align::Left),
        ("size", Align::Right),
        ("extents", Align::Right),
        ("runs", Align::Right),
        ("ideal", Align::Right),
        ("score", Align::Right),
        ("read cost", Align::Right),
        ("", Align::Left),
    ];
    if !rows.is_empty() {
        println!("{}", render(&header, &rows));
    }
    if shown < report.files.len() {
        println!(
            "... {} more files (--all lists every one)",
            report.files.len() - shown
        );
    }
    let t = &report.total;
    println!();
    println!(
        "{} files, {}: {} extents in {} physical runs, ideal {}{}",
        t.files,
        Size(t.size_bytes),
        t.extents,
        t.physical_runs,
        t.ideal_extents,
        if t.block_mapped > 0 {
            format!(", {} block-mapped", t.block_mapped)
        } else {
            String::new()
        }
    );
    println!(
        "read cost: about {} more per full read of these files than in their ideal shape \
         (each excess extent a seek on hdd, one more request on ssd)",
        milliseconds(t.read_cost_ms)
    );
    for fs in &report.filesystems {
        println!(
            "medium of {}: {}; the read cost counts {} per excess extent there",
            escaped(&fs.mount_point),
            fs.medium_words,
            milliseconds(fs.read_cost_per_excess_extent_ms)
        );
    }
    if t.shared_bytes > 0 {
        let sharing = report.files.iter().filter(|f| f.shared_bytes > 0).count();
        println!(
            "shared: {} of {} files' data is shared with a snapshot or a reflinked copy; \
             defragmenting leaves it as it is, so that it stays shared",
            Size(t.shared_bytes),
            sharing
        );
    }
    for fs in report.filesystems.iter().filter(|fs| fs.block_mapped > 0) {
        println!(
            "{}: {} of {} files block-mapped (MOVE_EXT cannot move them; see policy.convert_block_mapped)",
            escaped(&fs.mount_point),
            fs.block_mapped,
            fs.files
        );
    }
    println!(
        "score: the share of a file's extents that are excess, from 0 (the file is in its ideal \
         shape) towards 100 (nearly every extent is excess)"
    );
    if args.e4defrag_score {
        // e4defrag's figure weighs excess extents against the size of
        // everything checked: a large file in many extents can score 99.9
        // above and still leave this low. Both are right; they measure
        // different things, which the label must say.
        println!(
            "e4defrag -c fragmentation score: {:.0} [0-30 no problem: 31-55 a little bit \
             fragmented: 56- needs defrag]",
            t.e4defrag_score
        );
        println!(
            "  (e4defrag's own measure over everything checked: excess extents per 100 blocks of \
             data, so large files in many extents can still score low; not the score column)"
        );
    }
}

/// "0.4 ms", "12 ms", "3.2 s".
fn milliseconds(ms: f64) -> String {
    // + 0.0 turns the -0.0 of an empty sum (no files) into 0.
    let ms = ms + 0.0;
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod read_cost_tests {
    use super::milliseconds;

    #[test]
    fn read_costs_are_shown_in_a_readable_unit() {
        assert_eq!(milliseconds(0.0), "0.0 ms");
        assert_eq!(
            milliseconds(std::iter::empty::<f64>().sum()),
            "0.0 ms",
            "no files: no minus sign"
        );
        assert_eq!(milliseconds(0.45), "0.5 ms");
        assert_eq!(milliseconds(183.1), "183 ms");
        assert_eq!(milliseconds(14_656.0), "14.7 s");
    }
}
