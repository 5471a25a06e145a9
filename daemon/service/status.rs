//! What the service is doing, in one line a person reads at a glance (the
//! systemd STATUS= text and the first line of `defragctl status`), and in
//! full for `defragctl status --json`: with each filesystem's fragmentation
//! and what the service did today and in all, from the store.

use std::collections::HashMap;
use std::time::Duration;

use crate::control::protocol::{
    ActivityReport, CoveredFs, FragmentationReport, Moving, StatusReport,
};
use crate::escape::escaped;
use crate::filesystem::FsUuid;
use crate::outcome::Size;
use crate::store::{Activity, FsActivity, FsFragmentation};

use super::shared::{local_midnight, MovingNow, Pause, Shared, Slowed, Yielding};
use super::unix_now;
use crate::ramp::Verdict;

/// What keeps moves below the ceiling: I/O pressure's pace for every disk,
/// or one disk's ramp, whichever allows less.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Brake {
    Pressure(Slowed),
    Ramp { yielding: Yielding, pressure: f64 },
}

fn brake(
    slowed: Option<Slowed>,
    yielding: Option<Yielding>,
    pressure: Option<f64>,
) -> Option<Brake> {
    let ramp = |yielding| Brake::Ramp {
        yielding,
        pressure: pressure.unwrap_or(0.0),
    };
    match (slowed, yielding) {
        (Some(s), Some(y)) if y.bytes_per_s < s.bytes_per_s => Some(ramp(y)),
        (Some(s), _) => Some(Brake::Pressure(s)),
        (None, Some(y)) => Some(ramp(y)),
        (None, None) => None,
    }
}

impl Brake {
    fn bytes_per_s(&self) -> u64 {
        match self {
            Brake::Pressure(s) => s.bytes_per_s,
            Brake::Ramp { yielding, .. } => yielding.bytes_per_s,
        }
    }

    /// The state and headline while it holds moves back.
    fn holding(&self) -> (&'static str, String) {
        let pressure =
            |percent: f64| ("pressure", format!("held back: I/O pressure {percent:.0}%"));
        match *self {
            Brake::Pressure(s) => pressure(s.pressure),
            Brake::Ramp {
                yielding,
                pressure: percent,
            } => match yielding.verdict {
                Verdict::Pressure => pressure(percent),
                verdict => ("yielding", format!("waiting: {}", why(verdict))),
            },
        }
    }

    /// What is said after the moving line while it slows moves.
    fn slowing(&self) -> String {
        match *self {
            Brake::Pressure(s) => format!(
                ", slowed to {}/s by I/O pressure {:.0}%",
                Size(s.bytes_per_s),
                s.pressure
            ),
            Brake::Ramp { yielding, pressure } => {
                let rate = Size(yielding.bytes_per_s);
                match yielding.verdict {
                    Verdict::Pressure => {
                        format!(", slowed to {rate}/s by I/O pressure {pressure:.0}%")
                    }
                    Verdict::InUse { busy_share, .. } => format!(
                        ", at {rate}/s while others use the disk (busy {:.0}%)",
                        busy_share * 100.0
                    ),
                    verdict => format!(", slowed to {rate}/s: {}", why(verdict)),
                }
            }
        }
    }
}

/// Why a disk's ramp holds moves below the ceiling, for people.
fn why(verdict: Verdict) -> String {
    match verdict {
        Verdict::InUse { busy_share, .. } => format!(
            "others use the disk (busy {:.0}% of the last look)",
            busy_share * 100.0
        ),
        Verdict::Sharing { busy_share, .. } => format!(
            "sharing the disk with others (busy {:.0}% of the last look)",
            busy_share * 100.0
        ),
        Verdict::Latency {
            mean_ms,
            baseline_ms,
        } => format!(
            "the disk answers others slower than usual ({mean_ms:.1} ms against {baseline_ms:.1})"
        ),
        Verdict::SlowCommit {
            took_ms,
            usual_ms: Some(usual),
        } => format!("its last commit took {took_ms:.0} ms (usually {usual:.0})"),
        Verdict::SlowCommit { took_ms, .. } => format!("its last commit took {took_ms:.0} ms"),
        Verdict::Pressure => "I/O pressure".to_string(),
        Verdict::Quiet => "the disk is quiet".to_string(),
    }
}

/// The full status.
pub fn report(shared: &Shared) -> StatusReport {
    let moved_today = shared.moved_today();
    let covered = shared.covered();
    let (queued, next_crawl, fragmentation, activity) = {
        let store = shared.store();
        let queued = store.queue_len().unwrap_or(0);
        let interval = shared.settings().crawl.interval;
        let next_crawl = shared
            .covered()
            .keys()
            .filter_map(|uuid| store.crawl_cursor(*uuid).ok().flatten())
            .map(|c| match c.pass_finished_at {
                None => 0,
                Some(_) => {
                    c.pass_started_at + i64::try_from(interval.as_secs()).unwrap_or(i64::MAX)
                }
            })
            .min();
        let fragmentation: HashMap<FsUuid, FsFragmentation> = covered
            .keys()
            .filter_map(|uuid| Some((*uuid, store.fragmentation(*uuid).ok().flatten()?)))
            .collect();
        let activity: HashMap<FsUuid, FsActivity> = store
            .activity(local_midnight())
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.fs_uuid, a))
            .collect();
        (queued, next_crawl, fragmentation, activity)
    };
    // Only moves under way are moves: a job just taken (after a restart,
    // the one a crash interrupted) is still being checked, and may well be
    // left alone.
    let (moving, checking): (Vec<MovingNow>, Vec<MovingNow>) =
        shared.moving().into_iter().partition(|m| m.under_way);
    let pause = shared.pause();
    let brake = brake(shared.slowed(), shared.yielding_any(), shared.io_pressure());
    let spent = budget_spent_line(shared);
    let (state, headline) = match (pause, brake, moving.first()) {
        (Pause::Indefinitely, _, _) => ("paused", "paused by operator".to_string()),
        (Pause::Until(_, until), _, _) => {
            let left = Duration::from_secs(u64::try_from(until - unix_now()).unwrap_or(0));
            (
                "paused",
                format!("paused by operator for {}", human_duration(left)),
            )
        }
        (Pause::Running, Some(b), _) if b.bytes_per_s() == 0 => b.holding(),
        (Pause::Running, _, None) if !shared.until_window().is_zero() => (
            "window",
            format!(
                "outside the maintenance windows (they open in {})",
                human_duration(shared.until_window())
            ),
        ),
        (Pause::Running, _, None) if spent.is_some() => ("budget", spent.unwrap_or_default()),
        (Pause::Running, brake, Some(m)) => {
            let mut line = moving_line(m, moving.len());
            if let Some(b) = brake {
                line.push_str(&b.slowing());
            }
            ("moving", line)
        }
        (Pause::Running, _, None) => match checking.first() {
            Some(m) => ("checking", checking_line(m)),
            None => ("idle", idle_line(next_crawl)),
        },
    };
    let mut summary = format!(
        "{headline}, {queued} queued, {} moved today",
        Size(moved_today)
    );
    summary.push_str(&tracking_summary(shared));
    if shared.reload_error().is_some() {
        summary.push_str(
            "; the last reload failed (see the log); running on the previous configuration",
        );
    }
    StatusReport {
        state: state.to_string(),
        summary,
        paused_until: match pause {
            Pause::Until(_, until) => Some(until),
            _ => None,
        },
        moving: moving
            .into_iter()
            .map(|m| Moving {
                path: m.path,
                moved_bytes: m.moved_bytes,
                total_bytes: m.total_bytes,
            })
            .collect(),
        queued,
        bytes_moved_today: moved_today,
        // Every filesystem the store knows, covered now or not.
        today: sum(activity.values().map(|a| a.today)),
        total: sum(activity.values().map(|a| a.total)),
        filesystems: covered
            .into_values()
            .map(|fs| {
                let tracking = shared.tracking(fs.uuid);
                let done = activity.get(&fs.uuid);
                let medium = shared.medium(&fs);
                let (budget, spent, _) = shared.budget(&fs.disk);
                CoveredFs {
                    fragmentation: fragmentation.get(&fs.uuid).map(fragmentation_report),
                    today: done.map_or_else(ActivityReport::default, |a| report_of(a.today)),
                    total: done.map_or_else(ActivityReport::default, |a| report_of(a.total)),
                    write_budget_bytes: budget,
                    written_today_bytes: spent,
                    medium: medium.medium.as_str().to_string(),
                    medium_source: medium.source.as_str().to_string(),
                    medium_boundary_ms: medium.measured_boundary_ms(),
                    mount_point: fs.mount_point,
                    uuid: fs.uuid.to_string(),
                    subvolume: fs.subvolume,
                    disk: fs.disk.0,
                    tracking: tracking.mode().to_string(),
                    tracking_note: tracking.why(),
                }
            })
            .collect(),
    }
}

/// "; writes tracked on 2 filesystems", or where some fall back, which.
fn tracking_summary(shared: &Shared) -> String {
    let covered = shared.covered();
    if covered.is_empty() {
        return String::new();
    }
    let mut fallback: Vec<String> = covered
        .values()
        .filter_map(|fs| match shared.tracking(fs.uuid) {
            whole if whole.sees_whole_filesystem() => None,
            other => Some(format!(
                "{} on {}",
                match other {
                    super::tracker::Tracking::CrawlOnly { .. } => "crawl only",
                    _ => other.mode(),
                },
                escaped(&fs.mount_point)
            )),
        })
        .collect();
    fallback.sort();
    let whole = covered.len() - fallback.len();
    let mut line = String::new();
    if whole > 0 {
        line.push_str(&format!(
            "; writes tracked on {whole} whole filesystem{}",
            if whole == 1 { "" } else { "s" }
        ));
    }
    if !fallback.is_empty() {
        line.push_str(&format!("; write tracking: {}", fallback.join(", ")));
    }
    line
}

fn report_of(a: Activity) -> ActivityReport {
    ActivityReport {
        files_defragmented: a.files_defragmented,
        bytes_moved: a.bytes_moved,
    }
}

fn sum(all: impl Iterator<Item = Activity>) -> ActivityReport {
    all.fold(ActivityReport::default(), |sum, a| ActivityReport {
        files_defragmented: sum.files_defragmented + a.files_defragmented,
        bytes_moved: sum.bytes_moved + a.bytes_moved,
    })
}

/// The newest measurement as the status shows it, with the one before.
pub fn fragmentation_report(f: &FsFragmentation) -> FragmentationReport {
    let t = f.latest.tally;
    FragmentationReport {
        score: t.score(),
        files: t.files,
        extents: t.extents,
        ideal_extents: t.ideal_extents,
        measured_at: f.latest.measured_at,
        previous_score: f.previous.map(|p| p.tally.score()),
        previous_measured_at: f.previous.map(|p| p.measured_at),
    }
}

fn moving_line(m: &MovingNow, workers: usize) -> String {
    let percent = (m.moved_bytes * 100)
        .checked_div(m.total_bytes)
        .unwrap_or(0);
    let more = if workers > 1 {
        format!(" (and {} more)", workers - 1)
    } else {
        String::new()
    };
    let mut line = format!(
        "defragmenting {} {percent}% ({} of {}){more}",
        escaped(&m.path),
        Size(m.moved_bytes),
        Size(m.total_bytes)
    );
    if let Some(held) = m.stalled_for() {
        line.push_str(&format!(
            ", waiting for the kernel for {} (is the filesystem frozen?)",
            human_duration(held)
        ));
    }
    line
}

fn checking_line(m: &MovingNow) -> String {
    let mut line = format!("checking {} before moving it", escaped(&m.path));
    if let Some(held) = m.stalled_for() {
        line.push_str(&format!(
            ", waiting for the kernel for {} (is the filesystem frozen?)",
            human_duration(held)
        ));
    }
    line
}

fn idle_line(next_crawl: Option<i64>) -> String {
    match next_crawl {
        Some(0) => "idle, crawling".to_string(),
        Some(at) => {
            let left = Duration::from_secs(u64::try_from(at - unix_now()).unwrap_or(0));
            format!("idle, next crawl in {}", human_duration(left))
        }
        None => "idle".to_string(),
    }
}

/// "4m", "2h 5m", "45s", "1d 3h": rounded to what a person needs.
pub fn human_duration(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let secs = d.as_secs();
    // The largest unit that fits and the one below it: "1d 3h", "2h 5m".
    let Some(first) = UNITS.iter().position(|(unit, _)| secs >= *unit) else {
        return "0s".to_string();
    };
    let mut parts = Vec::new();
    for (i, (unit, name)) in UNITS.iter().enumerate().skip(first).take(2) {
        let above = if i == first { u64::MAX } else { UNITS[i - 1].0 };
        let count = secs % above / unit;
        if count > 0 {
            parts.push(format!("{count}{name}"));
        }
    }
    parts.join(" ")
}

/// Says which devices have spent their daily write budget and when moves
/// go on; None when none has.
fn budget_spent_line(shared: &Shared) -> Option<String> {
    let mut disks: Vec<_> = shared.covered().into_values().map(|fs| fs.disk).collect();
    disks.sort_by(|a, b| a.0.cmp(&b.0));
    disks.dedup();
    let spent: Vec<(String, u64, i64)> = disks
        .iter()
        .filter_map(|disk| match shared.budget(disk) {
            (Some(limit), _, crate::budget::Standing::Spent { until }) => {
                Some((disk.0.clone(), limit, until))
            }
            _ => None,
        })
        .collect();
    budget_spent_words(&spent, unix_now())
}

/// "daily write budget spent on 8:0 (16.0 GiB/day); moves wait for the
/// next day (in 5h 3m)", for the devices in `spent` (disk, budget, until
/// when), at `now`; None when there are none.
fn budget_spent_words(spent: &[(String, u64, i64)], now: i64) -> Option<String> {
    let until = spent.iter().map(|s| s.2).min()?;
    let which: Vec<String> = spent
        .iter()
        .map(|(disk, limit, _)| format!("{} ({}/day)", escaped(disk), Size(*limit)))
        .collect();
    let left = Duration::from_secs(u64::try_from(until - now).unwrap_or(0));
    Some(format!(
        "daily write budget spent on {}; moves wait for the next day (in {})",
        which.join(", "),
        human_duration(left)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_lower_of_pressure_and_the_ramp_says_what_holds_moves() {
        let pressure = Slowed {
            pressure: 35.0,
            bytes_per_s: 3 * MIB,
        };
        // The ramp halved below 1 MiB/s for pressure and waits, while the
        // pace would still allow 3 MiB/s: held back by pressure, not
        // "slowed to 3 MiB/s".
        let held = Yielding {
            verdict: Verdict::Pressure,
            bytes_per_s: 0,
        };
        let b = brake(Some(pressure), Some(held), Some(35.0)).expect("a brake");
        assert_eq!(b.bytes_per_s(), 0);
        assert_eq!(
            b.holding(),
            ("pressure", "held back: I/O pressure 35%".to_string())
        );
        let others = Yielding {
            verdict: Verdict::InUse {
                requests: 300,
                busy_share: 0.9,
            },
            bytes_per_s: 0,
        };
        assert_eq!(
            brake(None, Some(others), None).map(|b| b.holding()),
            Some((
                "yielding",
                "waiting: others use the disk (busy 90% of the last look)".to_string()
            ))
        );
        // A slow commit halves the ramp below the pace: the ramp says why.
        let commit = Yielding {
            verdict: Verdict::SlowCommit {
                took_ms: 640.0,
                usual_ms: Some(12.0),
            },
            bytes_per_s: 2 * MIB,
        };
        assert_eq!(
            brake(Some(pressure), Some(commit), Some(35.0)).map(|b| b.slowing()),
            Some(", slowed to 2.00 MiB/s: its last commit took 640 ms (usually 12)".to_string())
        );
        // The pace is the lower: pressure says it.
        let fast = Yielding {
            bytes_per_s: 32 * MIB,
            ..commit
        };
        assert_eq!(
            brake(Some(pressure), Some(fast), Some(35.0)).map(|b| b.slowing()),
            Some(", slowed to 3.00 MiB/s by I/O pressure 35%".to_string())
        );
        assert_eq!(brake(None, None, Some(35.0)), None);
    }

    #[test]
    fn a_spent_budget_says_which_device_and_when_moves_go_on() {
        assert_eq!(budget_spent_words(&[], 0), None);
        let spent = [
            ("8:0".to_string(), 16u64 << 30, 7_200),
            ("8:16".to_string(), 1 << 30, 3_600),
        ];
        let line = budget_spent_words(&spent, 0).unwrap_or_default();
        assert!(
            line.starts_with("daily write budget spent on 8:0 ("),
            "{line}"
        );
        assert!(line.contains("8:16 ("), "{line}");
        assert!(
            line.ends_with("moves wait for the next day (in 1h)"),
            "{line}"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(Duration::from_secs(240)), "4m");
        assert_eq!(human_duration(Duration::from_secs(7_530)), "2h 5m");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(
            human_duration(Duration::from_secs(86_400 + 3 * 3600 + 59)),
            "1d 3h"
        );
        assert_eq!(human_duration(Duration::from_secs(2 * 86_400)), "2d");
        assert_eq!(human_duration(Duration::from_secs(245)), "4m 5s");
        assert_eq!(human_duration(Duration::from_secs(40 * 86_400 + 7)), "40d");
        assert_eq!(human_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn a_move_shows_path_percent_and_sizes() {
        let m = MovingNow::starting("/srv/db/x.ibd".into(), 43 << 20, 100 << 20);
        assert_eq!(
            moving_line(&m, 1),
            "defragmenting /srv/db/x.ibd 43% (43.00 MiB of 100.00 MiB)"
        );
        assert!(moving_line(&m, 3).ends_with("(and 2 more)"));
    }

    #[test]
    fn a_job_taken_but_not_under_way_is_not_called_a_move() {
        let shared = Shared::new(
            crate::store::Store::open_in_memory().expect("in-memory store"),
            crate::config::Settings::default(),
        );
        let disk = crate::mounts::DiskId("7:0".into());
        shared.set_moving(
            &disk,
            Some(MovingNow::checking("/srv/db/journal.db".into(), 0, 1 << 20)),
        );
        let r = report(&shared);
        assert_eq!(r.state, "checking");
        assert!(
            r.summary
                .starts_with("checking /srv/db/journal.db before moving it"),
            "{}",
            r.summary
        );
        assert!(r.moving.is_empty(), "{:?}", r.moving);
        shared.move_under_way(&disk);
        let r = report(&shared);
        assert_eq!(r.state, "moving");
        assert!(
            r.summary.starts_with("defragmenting /srv/db/journal.db 0%"),
            "{}",
            r.summary
        );
        assert_eq!(r.moving.len(), 1);
    }

    #[test]
    fn a_move_the_kernel_holds_says_so() {
        let mut m = MovingNow::starting("/srv/x".into(), 0, 100 << 20);
        m.in_kernel_since = std::time::Instant::now().checked_sub(Duration::from_secs(75));
        assert!(
            moving_line(&m, 1)
                .ends_with(", waiting for the kernel for 1m 15s (is the filesystem frozen?)"),
            "{}",
            moving_line(&m, 1)
        );
        m.in_kernel_since = None;
        assert!(!moving_line(&m, 1).contains("waiting"));
    }
}
