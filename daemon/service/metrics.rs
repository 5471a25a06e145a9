//! The service's counters and gauges, exposed in the Prometheus text
//! format: bytes moved, files by outcome and reason, extents removed,
//! queue length, throttle state, last crawl time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the per-outcome counter.
pub type OutcomeLabels = Vec<(String, String)>;

/// Everything the service counts.
pub struct Metrics {
    registry: Registry,
    pub bytes_moved: Counter,
    pub files: Family<OutcomeLabels, Counter>,
    pub extents_removed: Counter,
    pub queue_length: Gauge,
    /// 0 free to move, 1 paused by the operator, 2 held back by I/O pressure,
    /// 3 outside the maintenance windows.
    pub throttle_state: Gauge,
    /// The rate moves may go at now, after I/O pressure.
    pub throttle_rate: Gauge,
    pub last_crawl_timestamp: Gauge,
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
            "0 free to move, 1 paused by the operator, 2 held back by I/O pressure, 3 outside the maintenance windows",
            throttle_state.clone(),
        );
        registry.register(
            "throttle_rate_bytes_per_second",
            "The rate moves may go at now: the configured maximum, lowered by I/O pressure",
            throttle_rate.clone(),
        );
        registry.register(
            "last_crawl_timestamp_seconds",
            "When the last crawl pass finished (unix time)",
            last_crawl_timestamp.clone(),
        );
        Metrics {
            registry,
            bytes_moved,
            files,
            extents_removed,
            queue_length,
            throttle_state,
            throttle_rate,
            last_crawl_timestamp,
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

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        text
    }
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
}
