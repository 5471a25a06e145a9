//! `defragd defrag`: defragment files or trees now, with the same safety as
//! the service; a progress bar on a terminal, plain lines otherwise, and an
//! honest outcome for every file.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::DefragArgs;
use crate::escape::{escaped, escaped_display};
use crate::inspect::Filesystems;
use crate::mover::{defragment, Control, MoveOptions, Progress, Supervisor};
use crate::outcome::{Outcome, Size, SkipReason};
use crate::sys;
use crate::target::Target;
use crate::throttle::TokenBucket;
use crate::walk::{walk, Depth, Found};

const MIB: u64 = 1 << 20;

#[derive(Debug, Serialize)]
struct FileReport {
    path: PathBuf,
    outcome: &'static str,
    reason: Option<String>,
    reason_code: Option<&'static str>,
    size_bytes: u64,
    extents_before: Option<u64>,
    extents_after: Option<u64>,
    ideal_extents: Option<u64>,
    bytes_moved: u64,
    elapsed_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    defragmented: u64,
    /// Converted to extents (not crash-safe), whether defragmented or not.
    converted: u64,
    would_defragment: u64,
    skipped: u64,
    failed: u64,
    bytes_moved: u64,
    extents_before: u64,
    extents_after: u64,
    skipped_by_reason: BTreeMap<&'static str, u64>,
    elapsed_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    files: Vec<FileReport>,
    summary: Summary,
}

/// Paces chunks with the token bucket and drives the progress bar.
struct OneShot {
    bucket: Option<TokenBucket>,
    bar: Option<ProgressBar>,
}

impl Supervisor for OneShot {
    fn before_chunk(&mut self, bytes: u64) -> Control {
        if let Some(bucket) = &mut self.bucket {
            let wait = bucket.take(bytes, Instant::now());
            if wait > Duration::ZERO {
                std::thread::sleep(wait);
            }
        }
        Control::Continue
    }

    fn after_chunk(&mut self, progress: &Progress) {
        if let Some(bar) = &self.bar {
            bar.set_length(progress.total_bytes);
            bar.set_position(progress.moved_bytes);
        }
    }
}

pub fn run(args: &DefragArgs) -> ExitCode {
    let started = Instant::now();
    if let Err(e) = sys::set_current_thread_idle() {
        tracing::warn!("cannot lower the I/O priority to idle ({e}); moving at normal priority");
    }
    let options = MoveOptions {
        chunk_bytes: args.chunk_mib * MIB,
        reserve_percent: args.reserve_percent,
        dry_run: args.dry_run,
        quiet_period: None,
        convert_block_mapped: args.convert_block_mapped,
        xfs_swapext_without_rmapbt: args.xfs_swapext_without_rmapbt,
        btrfs: crate::backend::btrfs::Policy {
            extent_thresh: args.extent_thresh_mib.saturating_mul(MIB as u32),
            allow_nocow: args.allow_nocow,
        },
    };
    let show_bar = !args.json && std::io::stderr().is_terminal();
    let mut supervisor = OneShot {
        bucket: args
            .max_mib_per_s
            .map(|rate| TokenBucket::new(rate * MIB, options.chunk_bytes, Instant::now())),
        bar: None,
    };
    let mut filesystems = Filesystems::default();
    let mut report = Report {
        files: Vec::new(),
        summary: Summary::default(),
    };
    let mut walk_errors = 0u64;

    for root in &args.paths {
        let walked = walk(root, Depth::Recursive, &mut |found| {
            let file = match found {
                Found::Refused { path, reason } => {
                    let report = skipped_report(path, reason);
                    if !args.json {
                        println!("{}", human_line(&report));
                    }
                    report
                }
                Found::File(target) => {
                    if show_bar {
                        supervisor.bar = Some(new_bar(&target));
                    }
                    let file_started = Instant::now();
                    let outcome =
                        defragment(&target, &mut filesystems, &options, 0, &mut supervisor);
                    if let Some(bar) = supervisor.bar.take() {
                        bar.finish_and_clear();
                    }
                    let explicit = target.expected_dev.is_none();
                    let report = file_report(target.path, &outcome, file_started.elapsed());
                    if !args.json && (explicit || worth_a_line(&outcome)) {
                        println!("{}", human_line(&report));
                    }
                    report
                }
            };
            tally(&mut report.summary, &file);
            report.files.push(file);
        });
        if let Err(e) = walked {
            walk_errors += 1;
            eprintln!("defragd: {}", escaped_display(&e));
        }
    }
    report.summary.elapsed_s = started.elapsed().as_secs_f64();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("defragd: cannot write JSON: {e}"),
        }
    } else {
        print_summary(&report.summary);
    }
    if report.summary.failed > 0 || walk_errors > 0 {
        ExitCode::from(super::EXIT_SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn new_bar(target: &Target) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(escaped(&target.path).to_string());
    bar
}

/// In a tree, files that were already fine are counted, not listed.
fn worth_a_line(outcome: &Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::Skipped {
            reason: SkipReason::AlreadyContiguous { .. } | SkipReason::TooSmall { .. },
            ..
        }
    )
}

fn skipped_report(path: PathBuf, reason: SkipReason) -> FileReport {
    FileReport {
        path,
        outcome: "skipped",
        reason: Some(reason.to_string()),
        reason_code: Some(reason.code()),
        size_bytes: 0,
        extents_before: None,
        extents_after: None,
        ideal_extents: None,
        bytes_moved: 0,
        elapsed_s: 0.0,
    }
}

fn file_report(path: PathBuf, outcome: &Outcome, elapsed: Duration) -> FileReport {
    let mut report = FileReport {
        path,
        outcome: outcome.word(),
        reason: None,
        reason_code: None,
        size_bytes: 0,
        extents_before: None,
        extents_after: None,
        ideal_extents: None,
        bytes_moved: 0,
        elapsed_s: elapsed.as_secs_f64(),
    };
    let before = match outcome {
        Outcome::Defragmented(moved) => {
            report.extents_after = Some(moved.after.extents);
            report.bytes_moved = moved.bytes_moved;
            Some(moved.before)
        }
        Outcome::WouldDefragment(before) => Some(*before),
        Outcome::Skipped { reason, before } => {
            report.reason = Some(reason.to_string());
            report.reason_code = Some(reason.code());
            *before
        }
        Outcome::Failed {
            reason,
            before,
            bytes_moved,
        } => {
            report.reason = Some(reason.to_string());
            report.reason_code = Some(reason.code());
            report.extents_after = reason.extents_after();
            report.bytes_moved = *bytes_moved;
            *before
        }
        Outcome::Interrupted {
            before,
            bytes_moved,
            ..
        } => {
            report.reason = Some("stopped on request".into());
            report.bytes_moved = *bytes_moved;
            Some(*before)
        }
        Outcome::Converted { before, reason } => {
            report.reason = Some(format!(
                "converted to extents, but not defragmented: it {reason}"
            ));
            Some(*before)
        }
    };
    if let Some(before) = before {
        report.size_bytes = before.size_bytes;
        report.extents_before = Some(before.extents);
        report.ideal_extents = Some(before.ideal_extents);
    }
    report
}

/// One line per file, whatever its name holds (the JSON keeps it exact).
fn human_line(r: &FileReport) -> String {
    let path = escaped(&r.path);
    let extents = match (r.extents_before, r.extents_after, r.ideal_extents) {
        (Some(b), Some(a), Some(i)) => format!("extents {b} -> {a} (ideal {i})"),
        (Some(b), None, Some(i)) => format!("extents {b} (ideal {i})"),
        _ => String::new(),
    };
    match r.outcome {
        "defragmented" => format!(
            "defragmented      {path}  {}  {extents}  in {:.1} s",
            Size(r.size_bytes),
            r.elapsed_s
        ),
        "converted_and_defragmented" => format!(
            "converted and defragmented  {path}  {}  {extents}  in {:.1} s",
            Size(r.size_bytes),
            r.elapsed_s
        ),
        "would_defragment" => format!(
            "would defragment  {path}  {}  {extents}",
            Size(r.size_bytes)
        ),
        word => format!(
            "{word:<17} {path}  {}",
            escaped(r.reason.as_deref().unwrap_or(""))
        ),
    }
}

fn tally(summary: &mut Summary, file: &FileReport) {
    summary.bytes_moved += file.bytes_moved;
    match file.outcome {
        "defragmented" | "converted_and_defragmented" => {
            summary.defragmented += 1;
            summary.converted += u64::from(file.outcome == "converted_and_defragmented");
            summary.extents_before += file.extents_before.unwrap_or(0);
            summary.extents_after += file.extents_after.unwrap_or(0);
        }
        "would_defragment" => summary.would_defragment += 1,
        "converted" => summary.converted += 1,
        "skipped" => {
            summary.skipped += 1;
            *summary
                .skipped_by_reason
                .entry(file.reason_code.unwrap_or("unknown"))
                .or_default() += 1;
        }
        _ => summary.failed += 1,
    }
}

fn print_summary(s: &Summary) {
    let mut line = format!(
        "\n{} defragmented ({} moved, extents {} -> {}), ",
        s.defragmented,
        Size(s.bytes_moved),
        s.extents_before,
        s.extents_after
    );
    if s.would_defragment > 0 {
        line.push_str(&format!("{} would be defragmented, ", s.would_defragment));
    }
    if s.converted > 0 {
        line.push_str(&format!("{} converted to extents, ", s.converted));
    }
    line.push_str(&format!(
        "{} skipped, {} failed in {:.1} s",
        s.skipped, s.failed, s.elapsed_s
    ));
    println!("{line}");
    if !s.skipped_by_reason.is_empty() {
        let reasons: Vec<String> = s
            .skipped_by_reason
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        println!("skipped: {}", reasons.join(", "));
    }
}
