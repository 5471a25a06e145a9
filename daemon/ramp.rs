//! The ramp: moves yield the disk to everyone else. Before its first chunk
//! and then every [`LISTEN_EVERY`], a move listens: its own write-back is
//! waited for, then the disk's counters (`/sys/block/DISK/stat`) are read
//! over a window in which the move issues nothing, so every request the
//! disk serves then is someone else's. Heard busy (a quarter of the time
//! or more), the disk gets the floor rate (0 by default: moves wait);
//! heard using it lightly, the job's start rate; heard quiet, the rate
//! starts at the start rate and doubles at each quiet listen, up to the
//! ceiling.
//! Where the others' requests take longer than usual even in the move's
//! silence (the disk still digesting its writes), the rate halves; so it
//! does after one of the move's own commits that took much longer than its
//! usual (a commit is I/O too: it waits behind the foreground's requests,
//! and the foreground's fsyncs wait behind it in the journal).
//!
//! Why listen rather than trust the idle I/O class the worker runs in:
//! only the BFQ scheduler honours it; with `none` or mq-deadline (the usual
//! choice for flash and virtual disks) an idle-class move competes with
//! the foreground as an equal. And why not read the counters while moving:
//! they count the move's own requests, which a 4 KiB foreground request
//! waiting behind a 1 MiB write cannot be told apart from.
//!
//! The controller is pure, over injected samples; reading the counters is
//! the only side effect here.

use std::time::{Duration, Instant};

use crate::mounts::DiskId;

/// How often a move listens: a foreground that starts is yielded to within
/// this (and [`WINDOW`]).
pub const LISTEN_EVERY: Duration = Duration::from_millis(500);
/// After the move's write-back has landed, what it read ahead may still be
/// in flight for a few milliseconds: the window opens after this.
pub const SETTLE: Duration = Duration::from_millis(10);
/// The shortest window: long enough for a 4 KiB reader at queue depth 1
/// to complete hundreds of requests, short enough to cost a fast move
/// about a tenth of its time.
pub const WINDOW: Duration = Duration::from_millis(50);
/// Others keep the disk busy this share of a window or more, in at least
/// [`HEARD_REQUESTS`] requests: they are there, and the move shares the
/// disk with them at its start rate, not faster. (The kernel counts busy
/// time in ticks of a few ms, so one stray request can show 8%.)
const HEARD_SHARE: f64 = 0.05;
const HEARD_REQUESTS: u64 = 2;
/// Others keep the disk busy this share of a window or more: they need it,
/// and the move goes at the floor (0 by default: it waits). Between the
/// two, a database committing 40 times a second (about 8% here): waiting
/// for it to stop would mean never moving beside it.
const IN_USE_SHARE: f64 = 0.25;
const MIB: u64 = 1 << 20;
/// Others' requests this much slower than usual (as a factor)...
const TOLERATED_FACTOR: f64 = 1.5;
/// ...and by more than this many ms: the disk is still busy with the
/// move's writes although the move is silent.
const TOLERATED_MS: f64 = 0.5;

/// A commit this many times slower than the job's usual...
const SLOW_COMMIT_FACTOR: f64 = 3.0;
/// ...and by this many ms more is slow: the disk queued it behind others.
const SLOW_COMMIT_MS: f64 = 50.0;
/// A commit this long is slow whatever came before: a writer's fsync
/// queued behind it waited about as long.
const SLOW_COMMIT_ANY_MS: f64 = 500.0;

/// The cumulative counters of one disk at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskSample {
    pub at: Instant,
    /// Requests completed, reads and writes.
    pub completed: u64,
    /// Time requests spent in flight, summed over requests, in ms
    /// (`time_in_queue`, the 11th field).
    pub in_flight_ms: u64,
    /// Time the disk had any request in flight, in ms (`io_ticks`, the
    /// 10th field).
    pub busy_ms: u64,
}

/// Reads the fields of a `/sys/block/DISK/stat` line: reads completed
/// (1st), writes completed (5th), io_ticks (10th), time in queue (11th).
pub fn parse_stat(text: &str, at: Instant) -> Option<DiskSample> {
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(DiskSample {
        at,
        completed: fields.first()?.saturating_add(*fields.get(4)?),
        busy_ms: *fields.get(9)?,
        in_flight_ms: *fields.get(10)?,
    })
}

/// `disk`'s counters now; None where sysfs does not have them.
pub fn read_stat(disk: &DiskId) -> Option<DiskSample> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{}/stat", disk.0)).ok()?;
    parse_stat(&text, Instant::now())
}

/// What a listen window heard: the requests of everyone but the move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heard {
    /// Requests completed in the window.
    pub requests: u64,
    /// The share of the window the disk was busy with them, 0 to 1.
    pub busy_share: f64,
    /// Their mean time in flight, in ms; None when none completed.
    pub mean_ms: Option<f64>,
}

/// What the disk did between two samples; None when the counters went
/// backwards (the device was replaced) or no time passed.
pub fn heard(from: &DiskSample, to: &DiskSample) -> Option<Heard> {
    let requests = to.completed.checked_sub(from.completed)?;
    let busy = to.busy_ms.checked_sub(from.busy_ms)?;
    let in_flight = to.in_flight_ms.checked_sub(from.in_flight_ms)?;
    let window_ms = to.at.checked_duration_since(from.at)?.as_secs_f64() * 1e3;
    (window_ms > 0.0).then(|| Heard {
        requests,
        busy_share: (busy as f64 / window_ms).min(1.0),
        mean_ms: (requests > 0).then(|| in_flight as f64 / requests as f64),
    })
}

/// One job's ramp on one disk.
#[derive(Debug, Clone)]
pub struct Ramp {
    rate: u64,
    start: u64,
    floor: u64,
    ceiling: u64,
    /// Others' usual latency: the lowest heard, drifting up slowly so a
    /// lasting change of workload is followed.
    baseline_ms: Option<f64>,
    /// The job's usual commit, followed the same way.
    usual_commit_ms: Option<f64>,
    last_listen: Option<Instant>,
    last_verdict: Option<Verdict>,
}

/// What one listen said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Nobody else was heard, or hardly: faster.
    Quiet,
    /// Others use the disk lightly: the start rate, no faster.
    Sharing { requests: u64, busy_share: f64 },
    /// Others use the disk: the floor.
    InUse { requests: u64, busy_share: f64 },
    /// Others' requests were slower than usual: halved.
    Latency { mean_ms: f64, baseline_ms: f64 },
    /// I/O pressure above its threshold: halved.
    Pressure,
    /// The move's last commit took much longer than its usual (None: it
    /// was the first, and long whatever the usual): halved.
    SlowCommit { took_ms: f64, usual_ms: Option<f64> },
}

impl Ramp {
    /// A job's ramp: it listens before its first chunk; heard quiet, it
    /// goes at `start` bytes per second, then faster up to `ceiling`;
    /// heard busy, at `floor` (0: it waits).
    pub fn new(start: u64, floor: u64, ceiling: u64) -> Ramp {
        let ceiling = ceiling.max(1);
        let floor = floor.min(ceiling);
        let start = start.clamp(floor.max(1), ceiling);
        Ramp {
            rate: start,
            start,
            floor,
            ceiling,
            baseline_ms: None,
            usual_commit_ms: None,
            last_listen: None,
            last_verdict: None,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// What the last listen said; None before the first.
    pub fn last_verdict(&self) -> Option<Verdict> {
        self.last_verdict
    }

    /// Whether the move should listen before its next chunk.
    pub fn due(&self, now: Instant) -> bool {
        self.last_listen
            .is_none_or(|last| now.saturating_duration_since(last) >= LISTEN_EVERY)
    }

    /// Whether the move listens at the end of the throttle's `wait` before
    /// its next chunk (from `now`), the window taken out of the wait: where
    /// the wait holds a window and a listen falls due by its end. A
    /// foreground that starts while the move waits is then heard before the
    /// chunk rather than after it (at 2 MiB/s in 1 MiB chunks, half a
    /// second later).
    pub fn listens_through(&self, wait: Duration, now: Instant) -> bool {
        wait >= SETTLE + WINDOW && self.due(now + wait)
    }

    /// Takes what a listen window heard, ending at `now`, and whether I/O
    /// pressure is above its threshold; returns the new rate (0: wait)
    /// with what the window said.
    pub fn observe(&mut self, heard: Heard, pressured: bool, now: Instant) -> (u64, Verdict) {
        self.last_listen = Some(now);
        let heard_others = heard.busy_share >= HEARD_SHARE && heard.requests >= HEARD_REQUESTS;
        let in_use = heard_others && heard.busy_share >= IN_USE_SHARE;
        let verdict = match (heard.mean_ms, self.baseline_ms) {
            // Heard first: others' own I/O raises pressure too, and it
            // asks for the floor, not a halving.
            _ if in_use => Verdict::InUse {
                requests: heard.requests,
                busy_share: heard.busy_share,
            },
            _ if pressured => Verdict::Pressure,
            (Some(mean), Some(baseline))
                if mean > baseline * TOLERATED_FACTOR && mean > baseline + TOLERATED_MS =>
            {
                Verdict::Latency {
                    mean_ms: mean,
                    baseline_ms: baseline,
                }
            }
            _ if heard_others => Verdict::Sharing {
                requests: heard.requests,
                busy_share: heard.busy_share,
            },
            _ => Verdict::Quiet,
        };
        if let Some(mean) = heard.mean_ms {
            self.baseline_ms = Some(follow_lowest(self.baseline_ms, mean));
        }
        self.rate = match verdict {
            Verdict::Quiet if self.rate < self.start => self.start,
            Verdict::Quiet => self.rate.saturating_mul(2).min(self.ceiling),
            Verdict::Sharing { .. } => self.start.max(self.floor),
            Verdict::InUse { .. } => self.floor,
            Verdict::Latency { .. } | Verdict::Pressure | Verdict::SlowCommit { .. } => {
                self.halved()
            }
        };
        self.last_verdict = Some(verdict);
        (self.rate, verdict)
    }

    /// Takes how long one of the move's commits took. A slow one halves
    /// the rate until the next listen: the next chunks go slower rather
    /// than the next commit queueing behind the foreground again. Returns
    /// the new rate and the verdict where it was slow.
    pub fn committed(&mut self, took: Duration) -> Option<(u64, Verdict)> {
        let took_ms = took.as_secs_f64() * 1e3;
        let slow = took_ms >= SLOW_COMMIT_ANY_MS
            || self.usual_commit_ms.is_some_and(|usual| {
                took_ms > usual * SLOW_COMMIT_FACTOR && took_ms > usual + SLOW_COMMIT_MS
            });
        let verdict = Verdict::SlowCommit {
            took_ms,
            usual_ms: self.usual_commit_ms,
        };
        self.usual_commit_ms = Some(follow_lowest(self.usual_commit_ms, took_ms));
        if !slow {
            return None;
        }
        self.rate = self.halved();
        self.last_verdict = Some(verdict);
        Some((self.rate, verdict))
    }

    /// Half the rate, within the floor; never a crawl of a few bytes a
    /// second (a chunk would wait for hours, deaf to the disk meanwhile):
    /// below 1 MiB/s, the floor, which is 0 (wait, listening) or at least
    /// 1 MiB/s.
    fn halved(&self) -> u64 {
        match (self.rate / 2).max(self.floor) {
            halved if halved < MIB => self.floor,
            halved => halved,
        }
    }
}

/// A usual value: the lowest seen, moving up by 2% of the difference at
/// each higher one, so that a lasting change is followed.
fn follow_lowest(usual: Option<f64>, seen: f64) -> f64 {
    match usual {
        None => seen,
        Some(usual) if seen < usual => seen,
        Some(usual) => usual + (seen - usual) * 0.02,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Heard {
        Heard {
            requests: 0,
            busy_share: 0.0,
            mean_ms: None,
        }
    }

    fn others(requests: u64, busy_share: f64, mean_ms: f64) -> Heard {
        Heard {
            requests,
            busy_share,
            mean_ms: Some(mean_ms),
        }
    }

    #[test]
    fn a_job_listens_first_then_doubles_while_the_disk_is_quiet() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(4 * MIB, 0, 64 * MIB);
        assert!(ramp.due(t0), "the first chunk waits for a listen");
        let mut rates = vec![];
        let mut now = t0;
        for _ in 0..6 {
            rates.push(ramp.observe(quiet(), false, now).0);
            now += LISTEN_EVERY;
        }
        assert_eq!(
            rates,
            [8, 16, 32, 64, 64, 64].map(|m| m * MIB),
            "doubling from the start rate to the ceiling"
        );
    }

    #[test]
    fn others_busy_on_the_disk_bring_the_rate_to_the_floor_at_once() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(4 * MIB, 0, 64 * MIB);
        for i in 0..5 {
            ramp.observe(quiet(), false, t0 + LISTEN_EVERY * i);
        }
        assert_eq!(ramp.rate(), 64 * MIB);
        // A QD1 reader: hundreds of requests, the disk busy all the window.
        let (rate, verdict) = ramp.observe(others(350, 0.98, 0.14), false, t0);
        assert_eq!(rate, 0, "the default floor: wait");
        assert_eq!(
            verdict,
            Verdict::InUse {
                requests: 350,
                busy_share: 0.98
            }
        );
        // Quiet again: back to the start rate, not straight to the ceiling.
        assert_eq!(ramp.observe(quiet(), false, t0).0, 4 * MIB);
        // A configured floor keeps a move going beside a busy disk.
        let mut ramp = Ramp::new(4 * MIB, MIB, 64 * MIB);
        assert_eq!(ramp.observe(others(350, 0.98, 0.14), false, t0).0, MIB);
    }

    #[test]
    fn others_using_the_disk_lightly_hold_the_move_at_its_start_rate() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(4 * MIB, 0, 64 * MIB);
        for i in 0..5 {
            ramp.observe(quiet(), false, t0 + LISTEN_EVERY * i);
        }
        // A database committing 40 times a second: 4 requests a commit,
        // the disk busy 8% of the window.
        let (rate, verdict) = ramp.observe(others(8, 0.08, 0.6), false, t0);
        assert_eq!(rate, 4 * MIB, "the start rate, not the ceiling");
        assert_eq!(
            verdict,
            Verdict::Sharing {
                requests: 8,
                busy_share: 0.08
            }
        );
        assert_eq!(
            ramp.observe(others(8, 0.08, 0.6), false, t0).0,
            4 * MIB,
            "no doubling beside them"
        );
        // A quarter of the disk or more: the floor.
        assert_eq!(ramp.observe(others(60, 0.3, 0.6), false, t0).0, 0);
        // A floor above the start rate is kept.
        let mut ramp = Ramp::new(MIB, 2 * MIB, 64 * MIB);
        assert_eq!(ramp.observe(others(8, 0.08, 0.6), false, t0).0, 2 * MIB);
    }

    #[test]
    fn one_stray_request_or_a_sliver_of_busy_time_is_not_a_foreground() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(4 * MIB, 0, 64 * MIB);
        // One request shows a whole tick of busy time.
        let (_, verdict) = ramp.observe(others(1, 0.08, 4.0), false, t0);
        assert_eq!(verdict, Verdict::Quiet);
        let (_, verdict) = ramp.observe(others(3, 0.02, 0.5), false, t0);
        assert_eq!(verdict, Verdict::Quiet);
        assert_eq!(ramp.rate(), 16 * MIB);
    }

    #[test]
    fn others_slower_than_usual_halve_the_rate_and_pressure_too() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(64 * MIB, 4 * MIB, 64 * MIB);
        ramp.observe(others(1, 0.01, 2.0), false, t0);
        assert_eq!(ramp.rate(), 64 * MIB);
        let (rate, verdict) = ramp.observe(others(1, 0.04, 6.0), false, t0);
        assert_eq!(rate, 32 * MIB);
        assert!(
            matches!(verdict, Verdict::Latency { mean_ms, baseline_ms }
                if (mean_ms - 6.0).abs() < 1e-9 && (baseline_ms - 2.0).abs() < 1e-9),
            "{verdict:?}"
        );
        // 2 -> 2.4 ms is under the 0.5 ms tolerated: noise.
        let (_, verdict) = ramp.observe(others(1, 0.01, 2.4), false, t0);
        assert_eq!(verdict, Verdict::Quiet);
        let before = ramp.rate();
        let (rate, verdict) = ramp.observe(quiet(), true, t0);
        assert_eq!((rate, verdict), (before / 2, Verdict::Pressure));
        for _ in 0..10 {
            ramp.observe(quiet(), true, t0);
        }
        assert_eq!(ramp.rate(), 4 * MIB, "never below the floor");
        assert_eq!(ramp.last_verdict(), Some(Verdict::Pressure));
        // With a floor of 0: halved down to 1 MiB/s, then it waits.
        let mut ramp = Ramp::new(4 * MIB, 0, 64 * MIB);
        let rates: Vec<u64> = (0..4).map(|_| ramp.observe(quiet(), true, t0).0).collect();
        assert_eq!(rates, [2 * MIB, MIB, 0, 0]);
        // Quiet again: the start rate.
        assert_eq!(ramp.observe(quiet(), false, t0).0, 4 * MIB);
    }

    #[test]
    fn a_commit_much_slower_than_usual_halves_the_rate_until_the_next_listen() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(64 * MIB, 0, 64 * MIB);
        ramp.observe(quiet(), false, t0);
        assert_eq!(ramp.committed(Duration::from_millis(20)), None);
        // 3x and 50 ms over the usual 20 ms: neither alone is slow.
        assert_eq!(ramp.committed(Duration::from_millis(59)), None);
        assert_eq!(ramp.committed(Duration::from_millis(65)), None);
        let (rate, verdict) = ramp
            .committed(Duration::from_millis(300))
            .expect("300 ms against a usual of about 20 is slow");
        assert_eq!(rate, 32 * MIB);
        assert!(
            matches!(verdict, Verdict::SlowCommit { took_ms, usual_ms: Some(usual) }
                if (took_ms - 300.0).abs() < 1e-9 && (20.0..25.0).contains(&usual)),
            "{verdict:?}"
        );
        assert_eq!(ramp.last_verdict(), Some(verdict));
        // The next quiet listen goes on doubling from there.
        assert_eq!(ramp.observe(quiet(), false, t0).0, 64 * MIB);
        // A first commit that long is slow with nothing to compare.
        let mut ramp = Ramp::new(4 * MIB, 0, 64 * MIB);
        let (rate, verdict) = ramp
            .committed(Duration::from_millis(1500))
            .expect("1.5 s is slow on any disk");
        assert_eq!(rate, 2 * MIB);
        assert!(matches!(
            verdict,
            Verdict::SlowCommit { usual_ms: None, .. }
        ));
    }

    #[test]
    fn a_wait_that_ends_when_a_listen_is_due_is_listened_through() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(2 * MIB, 0, 64 * MIB);
        ramp.observe(quiet(), false, t0);
        let wait = Duration::from_millis(450);
        // Due by the end of the wait: listened through.
        assert!(ramp.listens_through(wait, t0 + Duration::from_millis(100)));
        // Not due by its end: a plain sleep, the next listen before the
        // chunk after.
        assert!(!ramp.listens_through(wait, t0));
        // Too short to hold a window, however due.
        assert!(!ramp.listens_through(WINDOW, t0 + LISTEN_EVERY));
        assert!(!ramp.listens_through(Duration::ZERO, t0 + LISTEN_EVERY));
    }

    #[test]
    fn listens_are_due_every_interval() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(MIB, 0, MIB);
        assert!(ramp.due(t0));
        ramp.observe(quiet(), false, t0);
        assert!(!ramp.due(t0 + LISTEN_EVERY / 2));
        assert!(ramp.due(t0 + LISTEN_EVERY));
    }

    #[test]
    fn the_start_rate_is_kept_within_floor_and_ceiling() {
        assert_eq!(Ramp::new(0, 0, 64 * MIB).rate(), 1);
        assert_eq!(Ramp::new(MIB, 4 * MIB, 64 * MIB).rate(), 4 * MIB);
        assert_eq!(Ramp::new(128 * MIB, 0, 64 * MIB).rate(), 64 * MIB);
        assert_eq!(Ramp::new(MIB, 128 * MIB, 64 * MIB).rate(), 64 * MIB);
    }

    #[test]
    fn the_stat_line_gives_requests_busy_time_and_time_in_flight() {
        let line =
            "  4213  12  301298  2218  9156  3122  803442  20331  0  11652  22549  0 0 0 0 0 0\n";
        let at = Instant::now();
        let s = parse_stat(line, at);
        assert_eq!(
            s,
            Some(DiskSample {
                at,
                completed: 4213 + 9156,
                in_flight_ms: 22549,
                busy_ms: 11652,
            })
        );
        assert_eq!(parse_stat("1 2 3", at), None);
        assert_eq!(parse_stat("x y z", at), None);
    }

    #[test]
    fn a_window_gives_others_requests_busy_share_and_latency() {
        let at = Instant::now();
        let a = DiskSample {
            at,
            completed: 10,
            in_flight_ms: 100,
            busy_ms: 1000,
        };
        let b = DiskSample {
            at: at + Duration::from_millis(50),
            completed: 30,
            in_flight_ms: 160,
            busy_ms: 1040,
        };
        let h = heard(&a, &b).expect("a window");
        assert_eq!(h.requests, 20);
        assert!((h.busy_share - 0.8).abs() < 1e-9, "{h:?}");
        assert_eq!(h.mean_ms, Some(3.0));
        let idle = DiskSample { at: b.at, ..a };
        assert_eq!(heard(&a, &idle).and_then(|h| h.mean_ms), None);
        assert_eq!(heard(&b, &a), None, "counters reset");
        assert_eq!(heard(&a, &a), None, "no time passed");
    }
}
