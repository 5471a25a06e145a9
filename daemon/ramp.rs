//! The ramp: each job starts slow and speeds up only while the disk keeps
//! its latency. It reads the disk's own counters (`/sys/block/DISK/stat`:
//! the time requests spent in flight and the requests completed, so the
//! mean latency of a request over the last interval) and I/O pressure,
//! and answers with a rate: halved as soon as one interval shows latency
//! above the disk's baseline (an interval is a fraction of a second),
//! raised by a quarter after each calm one, up to the configured ceiling.
//! The controller is pure, over injected samples; reading the counters is
//! the only side effect here.

use std::time::{Duration, Instant};

use crate::mounts::DiskId;

/// How often the disk is sampled while moving: a spike is answered within
/// this.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// Latency this much above the baseline (as a factor) is the foreground's
/// loss...
const TOLERATED_FACTOR: f64 = 1.5;
/// ...and below this many ms above it, noise.
const TOLERATED_MS: f64 = 0.5;
/// Raising by a quarter per calm interval: from 4 to 64 MiB/s in ~3 s.
const RAISE: f64 = 1.25;

/// The cumulative counters of one disk at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskSample {
    pub at: Instant,
    /// Requests completed, reads and writes.
    pub completed: u64,
    /// Time requests spent in flight, summed over requests, in ms
    /// (`time_in_queue`, the 11th field).
    pub in_flight_ms: u64,
}

/// Reads the fields of a `/sys/block/DISK/stat` line: reads completed
/// (1st), writes completed (5th), time in queue (11th).
pub fn parse_stat(text: &str, at: Instant) -> Option<DiskSample> {
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(DiskSample {
        at,
        completed: fields.first()?.saturating_add(*fields.get(4)?),
        in_flight_ms: *fields.get(10)?,
    })
}

/// `disk`'s counters now; None where sysfs does not have them.
pub fn read_stat(disk: &DiskId) -> Option<DiskSample> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{}/stat", disk.0)).ok()?;
    parse_stat(&text, Instant::now())
}

/// Mean latency of the requests completed between two samples, in ms;
/// None when none completed.
pub fn mean_latency_ms(from: &DiskSample, to: &DiskSample) -> Option<f64> {
    let done = to.completed.checked_sub(from.completed)?;
    let time = to.in_flight_ms.checked_sub(from.in_flight_ms)?;
    (done > 0).then(|| time as f64 / done as f64)
}

/// One job's ramp on one disk.
#[derive(Debug, Clone)]
pub struct Ramp {
    rate: u64,
    floor: u64,
    ceiling: u64,
    /// The disk's usual latency: the lowest seen, drifting up slowly so a
    /// lasting change of workload is followed.
    baseline_ms: Option<f64>,
    last: Option<DiskSample>,
}

/// What one interval said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Calm,
    /// The disk's latency rose above its baseline: the foreground pays.
    Latency {
        mean_ms: f64,
        baseline_ms: f64,
    },
    /// I/O pressure above its threshold.
    Pressure,
}

impl Ramp {
    /// A job's start: at `start` bytes per second, never below `floor`
    /// nor above `ceiling`.
    pub fn new(start: u64, floor: u64, ceiling: u64) -> Ramp {
        let floor = floor.min(ceiling).max(1);
        Ramp {
            rate: start.clamp(floor, ceiling.max(1)),
            floor,
            ceiling: ceiling.max(1),
            baseline_ms: None,
            last: None,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Whether a new sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last.at) >= INTERVAL)
    }

    /// Takes a sample of the disk and whether I/O pressure is above its
    /// threshold, and returns the new rate with what the interval said.
    pub fn observe(&mut self, sample: DiskSample, pressured: bool) -> (u64, Verdict) {
        let mean = self
            .last
            .replace(sample)
            .and_then(|last| mean_latency_ms(&last, &sample));
        let verdict = match (mean, self.baseline_ms) {
            _ if pressured => Verdict::Pressure,
            (Some(mean), Some(baseline))
                if mean > baseline * TOLERATED_FACTOR && mean > baseline + TOLERATED_MS =>
            {
                Verdict::Latency {
                    mean_ms: mean,
                    baseline_ms: baseline,
                }
            }
            _ => Verdict::Calm,
        };
        if let Some(mean) = mean {
            self.baseline_ms = Some(match self.baseline_ms {
                None => mean,
                Some(b) if mean < b => mean,
                // A lasting rise moves the baseline up by 2% an interval.
                Some(b) => b + (mean - b) * 0.02,
            });
        }
        self.rate = match verdict {
            Verdict::Calm => ((self.rate as f64 * RAISE) as u64).min(self.ceiling),
            _ => (self.rate / 2).max(self.floor),
        };
        (self.rate, verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Samples every INTERVAL with `ios` requests of `latency_ms` each.
    struct Disk {
        t: Instant,
        completed: u64,
        in_flight_ms: u64,
    }

    impl Disk {
        fn new() -> Disk {
            Disk {
                t: Instant::now(),
                completed: 1000,
                in_flight_ms: 5000,
            }
        }
        fn next(&mut self, ios: u64, latency_ms: u64) -> DiskSample {
            self.t += INTERVAL;
            self.completed += ios;
            self.in_flight_ms += ios * latency_ms;
            DiskSample {
                at: self.t,
                completed: self.completed,
                in_flight_ms: self.in_flight_ms,
            }
        }
    }

    #[test]
    fn a_job_starts_slow_and_speeds_up_while_the_disk_is_calm() {
        let mut disk = Disk::new();
        let mut ramp = Ramp::new(4 * MIB, MIB, 64 * MIB);
        assert_eq!(ramp.rate(), 4 * MIB);
        let mut rates = vec![];
        for _ in 0..20 {
            rates.push(ramp.observe(disk.next(100, 1), false).0);
        }
        assert!(rates.windows(2).all(|w| w[1] >= w[0]), "{rates:?}");
        // 4 × 1.25^n reaches 64 in 13 calm intervals (about 3 s).
        assert_eq!(rates[13], 64 * MIB, "{rates:?}");
        assert_eq!(*rates.last().unwrap_or(&0), 64 * MIB, "the ceiling holds");
    }

    #[test]
    fn a_latency_rise_halves_the_rate_in_one_interval_down_to_the_floor() {
        let mut disk = Disk::new();
        let mut ramp = Ramp::new(64 * MIB, 4 * MIB, 64 * MIB);
        for _ in 0..4 {
            ramp.observe(disk.next(100, 2), false);
        }
        assert_eq!(ramp.rate(), 64 * MIB);
        let (rate, verdict) = ramp.observe(disk.next(100, 6), false);
        assert_eq!(rate, 32 * MIB);
        assert!(
            matches!(verdict, Verdict::Latency { mean_ms, baseline_ms }
                if (mean_ms - 6.0).abs() < 1e-9 && (baseline_ms - 2.0).abs() < 1e-9),
            "{verdict:?}"
        );
        for _ in 0..10 {
            ramp.observe(disk.next(100, 6), false);
        }
        assert_eq!(ramp.rate(), 4 * MIB, "never below the floor");
        // Calm again: it climbs back.
        for _ in 0..3 {
            ramp.observe(disk.next(100, 2), false);
        }
        assert!(ramp.rate() > 4 * MIB);
    }

    #[test]
    fn small_rises_are_noise_and_pressure_backs_off_too() {
        let mut disk = Disk::new();
        let mut ramp = Ramp::new(8 * MIB, MIB, 64 * MIB);
        ramp.observe(disk.next(100, 0), false);
        // 0 -> 0.4 ms is more than 1.5× but under 0.5 ms: noise.
        let (_, verdict) = ramp.observe(
            DiskSample {
                at: disk.t + INTERVAL,
                completed: disk.completed + 10,
                in_flight_ms: disk.in_flight_ms + 4,
            },
            false,
        );
        assert_eq!(verdict, Verdict::Calm);
        let before = ramp.rate();
        let (rate, verdict) = ramp.observe(disk.next(0, 0), true);
        assert_eq!((rate, verdict), (before / 2, Verdict::Pressure));
        // An interval with no request completed says nothing of latency.
        let (_, verdict) = ramp.observe(disk.next(0, 0), false);
        assert_eq!(verdict, Verdict::Calm);
    }

    #[test]
    fn samples_are_due_once_an_interval() {
        let mut disk = Disk::new();
        let mut ramp = Ramp::new(MIB, MIB, MIB);
        assert!(ramp.due(disk.t));
        let s = disk.next(1, 1);
        ramp.observe(s, false);
        assert!(!ramp.due(s.at + INTERVAL / 2));
        assert!(ramp.due(s.at + INTERVAL));
    }

    #[test]
    fn the_stat_line_gives_requests_and_time_in_flight() {
        let line =
            "  4213  12  301298  2218  9156  3122  803442  20331  0  11652  22549  0 0 0 0 0 0\n";
        let at = Instant::now();
        let s = parse_stat(line, at);
        assert_eq!(
            s,
            Some(DiskSample {
                at,
                completed: 4213 + 9156,
                in_flight_ms: 22549
            })
        );
        assert_eq!(parse_stat("1 2 3", at), None);
        assert_eq!(parse_stat("x y z", at), None);
        let a = DiskSample {
            at,
            completed: 10,
            in_flight_ms: 100,
        };
        let b = DiskSample {
            at,
            completed: 30,
            in_flight_ms: 160,
        };
        assert_eq!(mean_latency_ms(&a, &b), Some(3.0));
        assert_eq!(mean_latency_ms(&a, &a), None);
        assert_eq!(mean_latency_ms(&b, &a), None, "counters reset");
    }
}
