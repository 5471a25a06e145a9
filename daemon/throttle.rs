//! Pacing moves: a token bucket on bytes moved per second, whose rate
//! falls as I/O pressure rises. The arithmetic is pure, over an injected
//! clock and injected readings, so it is tested without sleeping.

use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, bursts of at most `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that starts full, so the first chunk goes at once.
    pub fn new(bytes_per_second: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst = burst_bytes.max(1) as f64;
        TokenBucket {
            rate: bytes_per_second.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Changes the rate from now on; tokens already earned are kept.
    pub fn set_rate(&mut self, bytes_per_second: u64, now: Instant) {
        self.take(0, now);
        self.rate = bytes_per_second.max(1) as f64;
    }

    /// Takes `bytes` and returns how long to wait before spending them. A
    /// request larger than the burst is allowed and paid for by waiting.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        self.tokens = self.tokens_at(now) - bytes as f64;
        self.last = now;
        self.wait_for_debt(self.tokens)
    }

    /// How long [`take`](Self::take) of `bytes` at `now` would say to
    /// wait, taking nothing.
    pub fn wait_for(&self, bytes: u64, now: Instant) -> Duration {
        self.wait_for_debt(self.tokens_at(now) - bytes as f64)
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst)
    }

    fn wait_for_debt(&self, tokens: f64) -> Duration {
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_wait_can_be_known_before_taking() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2 * MIB, MIB, t0);
        assert_eq!(bucket.wait_for(MIB, t0), Duration::ZERO);
        bucket.take(MIB, t0);
        let later = t0 + Duration::from_millis(100);
        let said = bucket.wait_for(MIB, later);
        assert_eq!(said, bucket.wait_for(MIB, later), "nothing was taken");
        assert_eq!(bucket.take(MIB, later), said);
        assert_eq!(said, Duration::from_millis(400));
    }

    #[test]
    fn first_burst_is_free_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10 * MIB, MIB, t0);
        assert_eq!(bucket.take(MIB, t0), Duration::ZERO);
        // The next MiB must wait 1/10 s.
        let wait = bucket.take(MIB, t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn long_run_average_matches_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(4 * MIB, MIB, t0);
        let mut now = t0;
        for _ in 0..100 {
            now += bucket.take(MIB, now);
        }
        // 100 MiB at 4 MiB/s, less the free first burst: 24.75 s.
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((secs - 24.75).abs() < 0.01, "{secs}");
    }

    #[test]
    fn idle_time_refills_at_most_one_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(MIB, 2 * MIB, t0);
        bucket.take(2 * MIB, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.take(2 * MIB, later), Duration::ZERO);
        assert!(bucket.take(MIB, later) > Duration::ZERO);
    }
}

/// Every this many points of I/O pressure above the start halve the rate.
pub const HALVING_POINTS: f64 = 10.0;

/// The rate moves may go at under `pressure` percent: `max` up to
/// `start_percent`, then halved for every [`HALVING_POINTS`] above it, but
/// never below `min` (capped at `max`). Steep, because the harm is
/// proportional to the rate: a foreground reader at queue depth 1 keeps
/// "some" pressure near 50-70%, and there only a few MiB/s leave its tail
/// latency alone. Never zero unless `min` is 0: a disk that is always busy
/// still gets defragmented, slowly, instead of never. With `min` 0, moves
/// are held back (0) once the rate would fall below 1 MiB/s.
pub fn paced_rate(max: u64, min: u64, start_percent: f64, pressure: f64) -> u64 {
    let min = min.min(max);
    if pressure <= start_percent {
        return max;
    }
    let halvings = (pressure - start_percent) / HALVING_POINTS;
    // Saturating float-to-int conversion; the result is at most `max`.
    let rate = (max as f64 * (-halvings).exp2()) as u64;
    if min == 0 && rate < MIB {
        0
    } else {
        rate.max(min)
    }
}

const MIB: u64 = 1 << 20;

/// I/O pressure over the last second or so: the share of wall time in
/// which some task waited for I/O, from the cumulative stall counter of
/// /proc/pressure/io. The kernel's own avg10 trails by ten seconds, too
/// slow to react to a load that starts or stops.
#[derive(Debug, Default)]
pub struct PressureGauge {
    last: Option<(Instant, u64)>,
    percent: Option<f64>,
}

/// How long a window must be before it yields a new reading: shorter ones
/// are too noisy (one stalled read is a large share of 10 ms).
const WINDOW: Duration = Duration::from_secs(1);

impl PressureGauge {
    /// The latest reading, in percent; None when the kernel has no PSI.
    pub fn percent(&mut self, now: Instant) -> Option<f64> {
        match self.last {
            Some((at, _)) if now.saturating_duration_since(at) < WINDOW => self.percent,
            _ => {
                let reading = read_io_pressure();
                self.update(now, reading)
            }
        }
    }

    /// Takes one reading of (cumulative stall µs, avg10 %) at `now`.
    fn update(&mut self, now: Instant, reading: Option<(u64, f64)>) -> Option<f64> {
        let Some((total_us, avg10)) = reading else {
            self.last = None;
            self.percent = None;
            return None;
        };
        self.percent = Some(match self.last {
            // A window of ten seconds or more (the worker was idle): the
            // kernel's own average is as good and less stale.
            Some((at, before)) if now.saturating_duration_since(at) < 10 * WINDOW => {
                let window_us = now.saturating_duration_since(at).as_secs_f64() * 1e6;
                let stalled_us = total_us.saturating_sub(before) as f64;
                (100.0 * stalled_us / window_us).clamp(0.0, 100.0)
            }
            _ => avg10,
        });
        self.last = Some((now, total_us));
        self.percent
    }
}

/// (cumulative "some" stall in µs, "some avg10" in %) of /proc/pressure/io.
fn read_io_pressure() -> Option<(u64, f64)> {
    use procfs_core::FromBufRead;
    let file = std::fs::File::open("/proc/pressure/io").ok()?;
    let pressure = procfs_core::IoPressure::from_buf_read(std::io::BufReader::new(file)).ok()?;
    Some((pressure.some.total, f64::from(pressure.some.avg10)))
}

#[cfg(test)]
mod pressure_tests {
    use super::*;

    #[test]
    fn the_rate_halves_every_ten_points_down_to_the_floor() {
        assert_eq!(paced_rate(64 * MIB, 4 * MIB, 20.0, 10.0), 64 * MIB);
        assert_eq!(paced_rate(64 * MIB, 4 * MIB, 20.0, 20.0), 64 * MIB);
        assert_eq!(paced_rate(64 * MIB, 4 * MIB, 20.0, 30.0), 32 * MIB);
        assert_eq!(paced_rate(64 * MIB, 4 * MIB, 20.0, 35.0), 23_726_566);
        assert_eq!(paced_rate(64 * MIB, 4 * MIB, 20.0, 50.0), 8 * MIB);
        assert_eq!(paced_rate(64 * MIB, 4 * MIB, 20.0, 100.0), 4 * MIB);
        // A floor of 0 holds moves back once under 1 MiB/s.
        assert_eq!(paced_rate(64 * MIB, 0, 20.0, 70.0), 2 * MIB);
        assert_eq!(paced_rate(64 * MIB, 0, 20.0, 90.0), 0);
        // A floor above the ceiling is the ceiling.
        assert_eq!(paced_rate(8 * MIB, 16 * MIB, 30.0, 90.0), 8 * MIB);
        assert_eq!(paced_rate(8 * MIB, 1, 100.0, 100.0), 8 * MIB);
    }

    #[test]
    fn the_gauge_reads_the_stall_share_of_each_window() {
        let t0 = Instant::now();
        let mut gauge = PressureGauge::default();
        // The first reading has no window yet: the kernel's avg10.
        assert_eq!(gauge.update(t0, Some((1_000, 12.0))), Some(12.0));
        // 0.5 s stalled in 2 s: 25%.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(gauge.update(t1, Some((501_000, 90.0))), Some(25.0));
        // After a long gap, avg10 again.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(gauge.update(t2, Some((502_000, 3.0))), Some(3.0));
        // No PSI: no reading.
        assert_eq!(gauge.update(t2, None), None);
    }

    #[test]
    fn a_reading_is_a_percentage_when_the_kernel_has_psi() {
        let mut gauge = PressureGauge::default();
        if let Some(p) = gauge.percent(Instant::now()) {
            assert!((0.0..=100.0).contains(&p), "{p}");
        }
    }
}
