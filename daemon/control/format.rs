//! How `defragctl` shows responses: aligned text for people, pretty JSON
//! for scripts. Pure functions of the response (and of "now" for relative
//! times), so they are tested without a service.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{BinaryBytes, HumanCount};

use crate::escape::escaped;

use super::protocol::{
    ActivityReport, CoveredFs, DefragReply, Done, FragmentationReport, HistoryLine, QueueEntry,
    ResponseData, StatusReport,
};

/// The human text for a response's data.
pub fn human(data: &ResponseData, now: i64) -> String {
    match data {
        ResponseData::Status(report) => status(report, now),
        ResponseData::Queue(entries) => queue(entries),
        ResponseData::History(lines) => history(lines, now),
        ResponseData::Defrag(replies) => defrag(replies),
        ResponseData::Done(done) => self::done(done),
    }
}

/// `--json` output: the response's data, pretty-printed.
pub fn json(data: &ResponseData) -> String {
    serde_json::to_string_pretty(data).unwrap_or_else(|e| json_error(&e.to_string()))
}

/// `--json` output when there is no data: `{"error": message}`.
pub fn json_error(message: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "error": message }))
        .unwrap_or_else(|_| r#"{"error": "unprintable error"}"#.to_string())
}

/// The summary first, then one labelled section per line or block.
pub fn status(report: &StatusReport, now: i64) -> String {
    let mut sections: Vec<(&str, Vec<String>)> = Vec::new();
    let state = match (report.paused_until, report.state.as_str()) {
        (Some(until), _) => format!(
            "paused until {} (in {})",
            timestamp(until),
            span(until.saturating_sub(now))
        ),
        (None, "paused") => "paused until resumed".to_string(),
        (None, other) => clean(other),
    };
    sections.push(("state", vec![state]));
    let moving = if report.moving.is_empty() {
        vec!["nothing".to_string()]
    } else {
        let rows: Vec<Vec<String>> = report
            .moving
            .iter()
            .map(|m| {
                vec![
                    disk_of(&m.path, &report.filesystems).map_or_else(|| "?".to_string(), clean),
                    percent(m.moved_bytes, m.total_bytes),
                    format!(
                        "{} of {}",
                        BinaryBytes(m.moved_bytes),
                        BinaryBytes(m.total_bytes)
                    ),
                    show_path(&m.path),
                ]
            })
            .collect();
        columns(
            &[Align::Left, Align::Right, Align::Right, Align::Left],
            &rows,
        )
    };
    sections.push(("moving", moving));
    sections.push(("queued", vec![count(report.queued, "file", "files")]));
    // Bytes as the worker moves them (a job under way included); files
    // as jobs finish.
    sections.push((
        "moved today",
        vec![format!(
            "{}, {} defragmented",
            BinaryBytes(report.bytes_moved_today),
            count(report.today.files_defragmented, "file", "files")
        )],
    ));
    sections.push(("in all", vec![activity(&report.total)]));
    let filesystems = if report.filesystems.is_empty() {
        vec!["none".to_string()]
    } else {
        let rows: Vec<Vec<String>> = report
            .filesystems
            .iter()
            .map(|fs| {
                vec![
                    show_path(&fs.mount_point),
                    clean(&fs.disk),
                    [
                        medium_words(&fs.medium, &fs.medium_source, fs.medium_boundary_ms),
                        budget_words(fs.written_today_bytes, fs.write_budget_bytes),
                    ]
                    .into_iter()
                    .filter(|words| !words.is_empty())
                    .collect::<Vec<_>>()
                    .join(", "),
                    clean(&fs.uuid),
                    fragmentation(fs.fragmentation.as_ref()),
                    format!("today {}", activity(&fs.today)),
                    format!("in all {}", activity(&fs.total)),
                    tracking_words(&fs.tracking, fs.tracking_note.is_some()),
                ]
            })
            .collect();
        columns(
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
            ],
            &rows,
        )
    };
    sections.push(("filesystems", filesystems));

    let width = sections
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    let mut out = clean(&report.summary);
    for (label, lines) in &sections {
        for (i, line) in lines.iter().enumerate() {
            let label = if i == 0 { *label } else { "" };
            out.push('\n');
            out.push_str(format!("{label:<width$}  {line}").trim_end());
        }
    }
    out
}

/// "12 files, 1.20 GiB": what finished jobs did.
fn activity(a: &ActivityReport) -> String {
    format!(
        "{}, {}",
        count(a.files_defragmented, "file", "files"),
        BinaryBytes(a.bytes_moved)
    )
}

/// A filesystem's score and how it changed since the pass before, in
/// points and over how long: "score 12.5, -3.1 in 1d 0h".
fn fragmentation(f: Option<&FragmentationReport>) -> String {
    let Some(f) = f else {
        return "score not measured yet".to_string();
    };
    match (f.change(), f.previous_measured_at) {
        (Some(change), Some(before)) => format!(
            "score {:.1}, {change:+.1} in {}",
            f.score,
            span(f.measured_at.saturating_sub(before))
        ),
        _ => format!("score {:.1} (first pass)", f.score),
    }
}

/// The queue as a table, highest priority first as the service sent it.
pub fn queue(entries: &[QueueEntry]) -> String {
    if entries.is_empty() {
        return "the queue is empty".to_string();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                clean(&e.state),
                BinaryBytes(e.size_bytes).to_string(),
                format!("{}→{}", e.extents, e.ideal_extents),
                format!("{:.2}", e.score),
                show_path(&e.path),
            ]
        })
        .collect();
    table(
        &[
            ("ID", Align::Right),
            ("STATE", Align::Left),
            ("SIZE", Align::Right),
            ("EXTENTS", Align::Right),
            ("SCORE", Align::Right),
            ("PATH", Align::Left),
        ],
        &rows,
    )
}

/// Finished jobs as a table, newest first as the service sent them.
pub fn history(lines: &[HistoryLine], now: i64) -> String {
    if lines.is_empty() {
        return "no job has finished yet".to_string();
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|h| {
            let after = h
                .extents_after
                .map_or_else(|| "?".to_string(), |n| n.to_string());
            let reason = h
                .reason
                .as_deref()
                .or(h.reason_code.as_deref())
                .unwrap_or("");
            vec![
                format!("{} ago", span(now.saturating_sub(h.finished_at))),
                clean(&h.outcome),
                format!("{}→{after}", h.extents_before),
                BinaryBytes(h.bytes_moved).to_string(),
                show_path(&h.path),
                clean(reason),
            ]
        })
        .collect();
    table(
        &[
            ("FINISHED", Align::Right),
            ("OUTCOME", Align::Left),
            ("EXTENTS", Align::Right),
            ("MOVED", Align::Right),
            ("PATH", Align::Left),
            ("REASON", Align::Left),
        ],
        &rows,
    )
}

/// One line per path given: what became of it, and why. An empty result
/// shows as "?", so that no reply is left without its line.
pub fn defrag(replies: &[DefragReply]) -> String {
    let rows: Vec<Vec<String>> = replies
        .iter()
        .map(|r| {
            let result = if r.result.is_empty() {
                "?".to_string()
            } else {
                clean(&r.result)
            };
            vec![result, show_path(&r.path), clean(&r.message)]
        })
        .collect();
    columns(&[Align::Left, Align::Left, Align::Left], &rows).join("\n")
}

/// The service's word on a command; "done" if it said nothing.
pub fn done(done: &Done) -> String {
    if done.message.is_empty() {
        return "done".to_string();
    }
    clean(&done.message)
}

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows under a header, each column as wide as its widest cell.
pub fn table(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let aligns: Vec<Align> = header.iter().map(|(_, a)| *a).collect();
    let mut all = Vec::with_capacity(rows.len() + 1);
    all.push(header.iter().map(|(h, _)| h.to_string()).collect());
    all.extend_from_slice(rows);
    columns(&aligns, &all).join("\n")
}

/// Aligned lines, columns two spaces apart, no trailing spaces.
fn columns(aligns: &[Align], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths = vec![0; aligns.len()];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(aligns.iter().zip(&widths))
                .map(|(cell, (align, &width))| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The disk of the filesystem that holds `path`: the deepest mount point
/// it lies under.
/// "ssd (sysfs)", "ssd (measured: 0.05 ms a boundary)": the medium and who
/// decided it; nothing from a service that does not say.
fn medium_words(medium: &str, source: &str, boundary_ms: Option<f64>) -> String {
    match (clean(medium), clean(source), boundary_ms) {
        (medium, _, _) if medium.is_empty() => String::new(),
        (medium, source, _) if source.is_empty() => medium,
        (medium, source, Some(ms)) => format!("{medium} ({source}: {ms:.2} ms a boundary)"),
        (medium, source, None) => format!("{medium} ({source})"),
    }
}

/// "1.00 GiB of 16.0 GiB today": a device's daily write budget; nothing
/// where there is none.
fn budget_words(written: u64, budget: Option<u64>) -> String {
    budget.map_or_else(String::new, |budget| {
        format!("{} of {} today", BinaryBytes(written), BinaryBytes(budget))
    })
}

/// How written files are found on a filesystem, in words. A note beside
/// fanotify means a btrfs subvolume seen through its top level's mark.
fn tracking_words(mode: &str, noted: bool) -> String {
    match mode {
        "fanotify" if noted => {
            "writes: whole filesystem (through the top level's mark)".to_string()
        }
        "fanotify" => "writes: whole filesystem".to_string(),
        "inotify" => "writes: watch trees (inotify)".to_string(),
        "crawl" => "writes: crawl only".to_string(),
        "" => String::new(),
        other => clean(other),
    }
}

fn disk_of<'a>(path: &Path, filesystems: &'a [CoveredFs]) -> Option<&'a str> {
    filesystems
        .iter()
        .filter(|fs| path.starts_with(&fs.mount_point))
        .max_by_key(|fs| fs.mount_point.components().count())
        .map(|fs| fs.disk.as_str())
}

fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_string();
    }
    let pct = (done.min(total) as u128 * 100 / total as u128) as u64;
    format!("{pct}%")
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", HumanCount(n), if n == 1 { one } else { many })
}

/// A duration in its two largest units: "45s", "9m 59s", "3h 12m", "2d 4h".
fn span(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Unix seconds as RFC 3339 in UTC.
fn timestamp(unix: i64) -> String {
    // RFC 3339 stops at the year 9999 (humantime panics past it).
    const LAST_RFC3339_SECOND: i64 = 253_402_300_799;
    if !(0..=LAST_RFC3339_SECOND).contains(&unix) {
        return format!("{unix} (unix time)");
    }
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn show_path(path: &Path) -> String {
    escaped(path).to_string()
}

/// Text from the service, escaped (see `crate::escape`): a file named
/// with a newline or an escape sequence cannot forge table lines or drive
/// the terminal.
fn clean(text: &str) -> String {
    escaped(text).to_string()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::control::protocol::Moving;

    const NOW: i64 = 1_700_000_000;

    fn report() -> StatusReport {
        StatusReport {
            state: "moving".into(),
            summary: "moving 1 file on sda; 12 queued".into(),
            paused_until: None,
            moving: vec![Moving {
                path: "/srv/db/big.ibd".into(),
                moved_bytes: 1_288_490_189,
                total_bytes: 2_899_102_925,
            }],
            queued: 1234,
            bytes_moved_today: 3 << 30,
            filesystems: vec![
                CoveredFs {
                    subvolume: 0,
                    mount_point: "/".into(),
                    uuid: "11111111-2222".into(),
                    disk: "nvme0n1".into(),
                    tracking: "fanotify".into(),
                    tracking_note: None,
                    fragmentation: None,
                    today: ActivityReport::default(),
                    total: ActivityReport::default(),
                    medium: "ssd".into(),
                    medium_source: "measured".into(),
                    medium_boundary_ms: Some(0.046),
                    write_budget_bytes: Some(16 << 30),
                    written_today_bytes: 1 << 30,
                },
                CoveredFs {
                    subvolume: 0,
                    mount_point: "/srv".into(),
                    uuid: "33333333-4444".into(),
                    disk: "sda".into(),
                    tracking: "fanotify".into(),
                    tracking_note: None,
                    fragmentation: Some(FragmentationReport {
                        score: 12.5,
                        files: 40_000,
                        extents: 80_000,
                        ideal_extents: 70_000,
                        measured_at: NOW - 3600,
                        previous_score: Some(15.625),
                        previous_measured_at: Some(NOW - 3600 - 86_400),
                    }),
                    today: ActivityReport {
                        files_defragmented: 3,
                        bytes_moved: 1 << 30,
                    },
                    total: ActivityReport {
                        files_defragmented: 1234,
                        bytes_moved: 56 << 30,
                    },
                    medium: "hdd".into(),
                    medium_source: "config".into(),
                    medium_boundary_ms: None,
                    write_budget_bytes: None,
                    written_today_bytes: 0,
                },
            ],
            today: ActivityReport {
                files_defragmented: 3,
                bytes_moved: 1 << 30,
            },
            total: ActivityReport {
                files_defragmented: 1234,
                bytes_moved: 56 << 30,
            },
        }
    }

    #[test]
    fn status_lines_align_and_name_the_disk() {
        assert_eq!(
            status(&report(), NOW),
            "moving 1 file on sda; 12 queued\n\
             state        moving\n\
             moving       sda  44%  1.20 GiB of 2.70 GiB  /srv/db/big.ibd\n\
             queued       1,234 files\n\
             moved today  3.00 GiB, 3 files defragmented\n\
             in all       1,234 files, 56.00 GiB\n\
             filesystems  /     nvme0n1  ssd (measured: 0.05 ms a boundary), 1.00 GiB of 16.00 GiB today  11111111-2222  score not measured yet     today 0 files, 0 B       in all 0 files, 0 B            writes: whole filesystem\n\
             \x20            /srv  sda      hdd (config)                                                     33333333-4444  score 12.5, -3.1 in 1d 0h  today 3 files, 1.00 GiB  in all 1,234 files, 56.00 GiB  writes: whole filesystem"
        );
    }

    #[test]
    fn a_first_pass_has_no_change_to_show() {
        let mut r = report();
        if let Some(f) = r.filesystems[1].fragmentation.as_mut() {
            f.previous_score = None;
            f.previous_measured_at = None;
            f.score = 30.0;
        }
        assert!(
            status(&r, NOW).contains("score 30.0 (first pass)  today"),
            "{}",
            status(&r, NOW)
        );
    }

    #[test]
    fn status_when_paused_and_idle() {
        let mut r = report();
        r.state = "paused".into();
        r.paused_until = Some(NOW + 599);
        r.moving.clear();
        r.queued = 1;
        let text = status(&r, NOW);
        assert!(
            text.contains("state        paused until 2023-11-14T22:23:19Z (in 9m 59s)"),
            "{text}"
        );
        assert!(text.contains("moving       nothing"), "{text}");
        assert!(text.contains("queued       1 file\n"), "{text}");
        r.paused_until = None;
        assert!(status(&r, NOW).contains("paused until resumed"));
    }

    #[test]
    fn queue_table() {
        let entries = vec![
            QueueEntry {
                id: 7,
                path: "/srv/db/big.ibd".into(),
                size_bytes: 2_899_102_925,
                extents: 1234,
                ideal_extents: 22,
                score: 0.934,
                priority: 2.0,
                state: "running".into(),
                next_block: 100,
                attempts: 1,
            },
            QueueEntry {
                id: 12,
                path: "/var/log/app.log".into(),
                size_bytes: 900,
                extents: 3,
                ideal_extents: 1,
                score: 0.5,
                priority: 1.0,
                state: "queued".into(),
                next_block: 0,
                attempts: 0,
            },
        ];
        assert_eq!(
            queue(&entries),
            "ID  STATE        SIZE  EXTENTS  SCORE  PATH\n\
             \x207  running  2.70 GiB  1234→22   0.93  /srv/db/big.ibd\n\
             12  queued      900 B      3→1   0.50  /var/log/app.log"
        );
        assert_eq!(queue(&[]), "the queue is empty");
    }

    #[test]
    fn history_table() {
        let lines = vec![
            HistoryLine {
                path: "/srv/a".into(),
                outcome: "defragmented".into(),
                reason_code: None,
                reason: None,
                extents_before: 40,
                extents_after: Some(1),
                bytes_moved: 1 << 20,
                finished_at: NOW - 300,
            },
            HistoryLine {
                path: "/srv/b\nforged".into(),
                outcome: "skipped".into(),
                reason_code: Some("donor_not_better".into()),
                reason: None,
                extents_before: 5,
                extents_after: None,
                bytes_moved: 0,
                finished_at: NOW - 2 * 86_400 - 3600,
            },
        ];
        assert_eq!(
            history(&lines, NOW),
            " FINISHED  OUTCOME       EXTENTS     MOVED  PATH            REASON\n\
             5m 0s ago  defragmented     40→1  1.00 MiB  /srv/a\n\
             2d 1h ago  skipped           5→?       0 B  /srv/b\\nforged  donor_not_better"
        );
        assert_eq!(history(&[], NOW), "no job has finished yet");
    }

    #[test]
    fn defrag_lines() {
        let replies = vec![
            DefragReply {
                path: "/srv/a".into(),
                result: "queued".into(),
                message: "40 extents, ideal 1".into(),
            },
            DefragReply {
                path: "/srv/longer".into(),
                result: "left".into(),
                message: "already contiguous".into(),
            },
        ];
        assert_eq!(
            defrag(&replies),
            "queued  /srv/a       40 extents, ideal 1\nleft    /srv/longer  already contiguous"
        );
    }

    #[test]
    fn service_text_cannot_forge_lines_or_drive_the_terminal() {
        let mut r = report();
        r.filesystems[1].disk = "sda\u{1b}[31m".into();
        let text = status(&r, NOW);
        assert!(text.contains("moving       sda\\u{1b}[31m  44%"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let replies = [DefragReply {
            path: "/x\nqueued  /etc/shadow".into(),
            result: String::new(),
            message: String::new(),
        }];
        assert_eq!(defrag(&replies), "?  /x\\nqueued  /etc/shadow");
        let quiet = Done {
            message: String::new(),
        };
        assert_eq!(done(&quiet), "done");
    }

    #[test]
    fn json_is_the_data_itself() {
        let data = ResponseData::Done(Done {
            message: "paused".into(),
        });
        assert_eq!(json(&data), "{\n  \"message\": \"paused\"\n}");
        assert_eq!(json_error("boom"), "{\n  \"error\": \"boom\"\n}");
        let empty = ResponseData::History(vec![]);
        assert_eq!(json(&empty), "[]");
    }

    #[test]
    fn small_pieces() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(599), "9m 59s");
        assert_eq!(span(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(span(-5), "0s");
        assert_eq!(percent(1, 0), "-");
        assert_eq!(percent(5, 4), "100%");
        assert_eq!(clean("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\\tc");
        let fs = report().filesystems;
        assert_eq!(disk_of(&PathBuf::from("/srv/x"), &fs), Some("sda"));
        assert_eq!(disk_of(&PathBuf::from("/srvx/y"), &fs), Some("nvme0n1"));
        assert_eq!(disk_of(&PathBuf::from("relative"), &fs), None);
    }
}
