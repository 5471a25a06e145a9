//! Pacing moves: a token bucket on bytes moved per second. Pure arithmetic
//! over an injected clock, so it is tested without sleeping.

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

    /// Takes `bytes` and returns how long to wait before spending them. A
    /// request larger than the burst is allowed and paid for by waiting.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

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

/// The share of the last 10 s in which some task waited for I/O
/// (`/proc/pressure/io`, "some avg10"), in percent; None when the kernel
/// has no PSI.
pub fn io_pressure_percent() -> Option<f64> {
    use procfs_core::FromBufRead;
    let file = std::fs::File::open("/proc/pressure/io").ok()?;
    let pressure = procfs_core::IoPressure::from_buf_read(std::io::BufReader::new(file)).ok()?;
    Some(f64::from(pressure.some.avg10))
}

#[cfg(test)]
mod pressure_tests {
    #[test]
    fn pressure_is_a_percentage_when_present() {
        if let Some(p) = super::io_pressure_percent() {
            assert!((0.0..=100.0).contains(&p), "{p}");
        }
    }
}
