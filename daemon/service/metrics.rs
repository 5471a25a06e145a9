//! The service's counters and gauges, exposed in the Prometheus text
//! format: bytes moved, files by outcome and reason, extents removed,
//! queue length, throttle state and rate, I/O pressure, moves under way and
//! how long the kernel has held one, last crawl time, and each
//! filesystem's fragmentation. Names follow Prometheus' conventions (base
//! units, `_total` on counters, added by prometheus-client);
//! monitoring/ queries them, and tests/monitoring.rs checks it queries
//! nothing else.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::filesystem::FsUuid;
use crate::store::Tally;

/// Labels of the per-outcome counter.
pub type OutcomeLabels = Vec<(String, String)>;

/// Labels of a per-filesystem gauge: `mountpoint` (as node_exporter names
/// it, so the two join) and `uuid`.
pub type FsLabels = Vec<(String, String)>;

/// A gauge of a fraction or of seconds.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Everything the service counts.
pub struct Metrics {
    registry: Registry,
    pub bytes_moved: Counter,
    pub files: Family<OutcomeLabels, Counter>,
    pub extents_removed: Counter,
    pub queue_length: Gauge,
    /// 0 free to move, 1 paused by the operator, 2 held back by I/O pressure,
    /// 3 outside the maintenance windows, 4 a daily write budget spent, 5
    /// waiting while others use the disk.
    pub throttle_state: Gauge,
    /// The rate moves may go at now, after I/O pressure.
    pub throttle_rate: Gauge,
    pub last_crawl_timestamp: Gauge,
    /// 1 for each covered filesystem's write tracking mode.
    pub write_tracking: Family<OutcomeLabels, Gauge>,
    /// Write events read from fanotify (the service's own not counted).
    pub write_events: Counter,
    /// Catch-up scans after a lost event queue or a restart.
    pub catch_ups: Counter,
    /// I/O pressure over the last seconds, 0 to 1 (/proc/pressure/io "some").
    pub io_pressure: FloatGauge,
    /// Workers moving a file now.
    pub moves_in_progress: Gauge,
    /// The longest the kernel has held a step of a move under way; 0 when
    /// none is in the kernel. A frozen filesystem makes it grow.
    pub kernel_hold: FloatGauge,
    /// Per filesystem: the share of its files' extents beyond the ideal.
    pub fs_fragmentation: Family<FsLabels, FloatGauge>,
    /// Per filesystem: extents beyond the ideal, in all.
    pub fs_excess_extents: Family<FsLabels, Gauge>,
    /// Bytes moved today and the daily write budget (absent: none), by disk.
    pub written_today: Family<OutcomeLabels, Gauge>,
    pub write_budget: Family<OutcomeLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("defragd");
        let bytes_moved = Counter::default();
        let files = Family::<OutcomeLabels, Counter>::default();
        let extents_removed = Counter::default();
        let queue_length = Gauge::default();
        let throttle_state = Gauge::default();
        let throttle_rate = Gauge::default();
        let last_crawl_timestamp = Gauge::default();
        let write_tracking = Family::<OutcomeLabels, Gauge>::default();
        let write_events = Counter::default();
        let catch_ups = Counter::default();
        let io_pressure = FloatGauge::default();
        let moves_in_progress = Gauge::default();
        let kernel_hold = FloatGauge::default();
        let fs_fragmentation = Family::<FsLabels, FloatGauge>::default();
        let fs_excess_extents = Family::<FsLabels, Gauge>::default();
        let written_today = Family::<OutcomeLabels, Gauge>::default();
        let write_budget = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "written_today_bytes",
            "Bytes moved on each disk since the last local midnight",
            written_today.clone(),
        );
        registry.register(
            "write_budget_bytes",
            "Each disk's daily write budget (no series: no limit); moves wait for the next day once it is spent",
            write_budget.clone(),
        );
        registry.register(
            "moved_bytes",
            "Bytes moved by MOVE_EXT",
            bytes_moved.clone(),
        );
        registry.register(
            "files",
            "Files finished, by outcome and reason",
            files.clone(),
        );
        registry.register(
            "extents_removed",
            "Extents removed by defragmentation",
            extents_removed.clone(),
        );
        registry.register(
            "queue_length",
            "Jobs queued or running",
            queue_length.clone(),
        );
        registry.register(
            "throttle_state",
            "0 free to move, 1 paused by the operator, 2 held back by I/O pressure, 3 outside the maintenance windows, 4 the daily write budget of a disk spent, 5 waiting while others use the disk",
            throttle_state.clone(),
        );
        registry.register(
            "throttle_rate_bytes_per_second",
            "The rate moves may go at now: the configured maximum, lowered by I/O pressure or by others using the disk",
            throttle_rate.clone(),
        );
        registry.register(
            "last_crawl_timestamp_seconds",
            "When the last crawl pass finished (unix time)",
            last_crawl_timestamp.clone(),
        );
        registry.register(
            "write_tracking",
            "1 for how writes are found on each covered filesystem: fanotify (the whole filesystem), inotify (the `watch` trees) or crawl (the background crawl only)",
            write_tracking.clone(),
        );
        registry.register(
            "write_events",
            "Write events read from fanotify, the service's own left out",
            write_events.clone(),
        );
        registry.register(
            "catch_up_scans",
            "Scans for files changed while writes were not seen (a lost event queue, a restart)",
            catch_ups.clone(),
        );
        registry.register(
            "io_pressure_ratio",
            "Share of the last seconds some process waited for I/O (/proc/pressure/io some), 0 to 1",
            io_pressure.clone(),
        );
        registry.register(
            "moves_in_progress",
            "Files being moved now (one worker per disk)",
            moves_in_progress.clone(),
        );
        registry.register(
            "kernel_hold_seconds",
            "The longest the kernel has held a step of a move under way (0: none); a frozen filesystem makes it grow",
            kernel_hold.clone(),
        );
        registry.register(
            "filesystem_fragmentation_ratio",
            "Share of the extents of the files the last crawl pass mapped that are beyond their ideal count, lowered by moves since; 0 to 1",
            fs_fragmentation.clone(),
        );
        registry.register(
            "filesystem_excess_extents",
            "Extents beyond the ideal count over the files the last crawl pass mapped, lowered by moves since",
            fs_excess_extents.clone(),
        );
        Metrics {
            written_today,
            write_budget,
            registry,
            write_tracking,
            write_events,
            catch_ups,
            bytes_moved,
            files,
            extents_removed,
            queue_length,
            throttle_state,
            throttle_rate,
            last_crawl_timestamp,
            io_pressure,
            moves_in_progress,
            kernel_hold,
            fs_fragmentation,
            fs_excess_extents,
        }
    }
}

impl Metrics {
    /// Counts one finished file.
    pub fn count_file(&self, outcome: &str, reason: Option<&str>) {
        let labels = vec![
            ("outcome".to_string(), outcome.to_string()),
            ("reason".to_string(), reason.unwrap_or("").to_string()),
        ];
        self.files.get_or_create(&labels).inc();
    }

    /// Shows `mode` as the filesystem's write tracking.
    pub fn set_tracking(&self, uuid: FsUuid, mode: &str) {
        for other in ["fanotify", "inotify", "crawl"] {
            if other != mode {
                self.clear_tracking(uuid, other);
            }
        }
        self.write_tracking
            .get_or_create(&tracking_labels(uuid, mode))
            .set(1);
    }

    pub fn clear_tracking(&self, uuid: FsUuid, mode: &str) {
        self.write_tracking.remove(&tracking_labels(uuid, mode));
    }

    /// Shows the fragmentation of exactly these filesystems (mount point,
    /// UUID, measurement): one that left coverage leaves the exposition.
    pub fn set_fragmentation<'a>(
        &self,
        filesystems: impl IntoIterator<Item = (&'a std::path::Path, &'a str, Tally)>,
    ) {
        self.fs_fragmentation.clear();
        self.fs_excess_extents.clear();
        for (mount_point, uuid, tally) in filesystems {
            let labels = vec![
                (
                    "mountpoint".to_string(),
                    mount_point.to_string_lossy().into_owned(),
                ),
                ("uuid".to_string(), uuid.to_string()),
            ];
            self.fs_fragmentation
                .get_or_create(&labels)
                .set(tally.ratio());
            self.fs_excess_extents
                .get_or_create(&labels)
                .set(i64::try_from(tally.excess_extents()).unwrap_or(i64::MAX));
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        text
    }
}

fn tracking_labels(uuid: FsUuid, mode: &str) -> OutcomeLabels {
    vec![
        ("uuid".to_string(), uuid.to_string()),
        ("mode".to_string(), mode.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_text_format() {
        let m = Metrics::default();
        m.bytes_moved.inc_by(4096);
        m.count_file("skipped", Some("too_small"));
        m.queue_length.set(3);
        let text = m.render();
        assert!(text.contains("defragd_moved_bytes_total 4096"), "{text}");
        assert!(
            text.contains(r#"defragd_files_total{outcome="skipped",reason="too_small"} 1"#),
            "{text}"
        );
        assert!(text.contains("defragd_queue_length 3"), "{text}");
        assert!(
            text.contains("# TYPE defragd_throttle_state gauge"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn a_filesystem_shows_one_tracking_mode_at_a_time() {
        let m = Metrics::default();
        let u1 = FsUuid::for_test("u1");
        m.set_tracking(u1, "inotify");
        m.set_tracking(u1, "fanotify");
        let text = m.render();
        assert!(
            text.contains(&format!(
                r#"defragd_write_tracking{{uuid="{u1}",mode="fanotify"}} 1"#
            )),
            "{text}"
        );
        assert!(!text.contains(r#"mode="inotify""#), "{text}");
        m.clear_tracking(u1, "fanotify");
        assert!(!m.render().contains(&u1.to_string()));
    }

    #[test]
    fn fragmentation_is_shown_for_the_covered_filesystems_only() {
        let m = Metrics::default();
        let srv = std::path::Path::new("/srv");
        let tally = Tally {
            files: 2,
            extents: 100,
            ideal_extents: 25,
        };
        m.set_fragmentation([
            (srv, "u-1", tally),
            (std::path::Path::new("/var"), "u-2", tally),
        ]);
        let text = m.render();
        assert!(
            text.contains(
                r#"defragd_filesystem_fragmentation_ratio{mountpoint="/srv",uuid="u-1"} 0.75"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"defragd_filesystem_excess_extents{mountpoint="/var",uuid="u-2"} 75"#),
            "{text}"
        );
        m.set_fragmentation([(srv, "u-1", tally)]);
        assert!(!m.render().contains("/var"), "{}", m.render());
    }
}
