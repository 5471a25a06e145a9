//! The effective settings printed back in the file's shape and units, for
//! `defragd config check`: as TOML text that defragd reads back to the same
//! settings (`Settings::render`), and through serde for `--json`
//! (`impl Serialize`). Both go through one view, so they cannot disagree.

use serde::{Serialize, Serializer};

use super::fragment::quote;
use super::settings::{Settings, MIB};
use super::units::{format_duration, format_size};

/// The settings as the file writes them: MiB, human durations and sizes.
#[derive(Serialize)]
struct FileView<'a> {
    state_dir: String,
    filesystem: Vec<FilesystemView>,
    throttle: ThrottleView,
    policy: PolicyView<'a>,
    crawl: CrawlView,
    watch: WatchView,
    service: ServiceView<'a>,
    control: ControlView<'a>,
    metrics: MetricsView,
}

#[derive(Serialize)]
struct FilesystemView {
    path: String,
    watch: Vec<String>,
    medium: &'static str,
}

#[derive(Serialize)]
struct ThrottleView {
    max_mib_per_s: u64,
    chunk_mib: u64,
    pressure_percent: f64,
    min_mib_per_s: u64,
    windows: Vec<String>,
    start_mib_per_s: u64,
    write_budget_ssd: String,
    write_budget_hdd: String,
}

#[derive(Serialize)]
struct PolicyView<'a> {
    quiet_period: String,
    min_size: String,
    min_excess_extents: u64,
    min_score: f64,
    exclude: &'a [String],
    reserve_percent: f64,
    convert_block_mapped: bool,
    xfs_swapext_without_rmapbt: bool,
    btrfs_extent_thresh: String,
    btrfs_nocow: bool,
    boundary_ms_hdd: f64,
    boundary_ms_ssd: f64,
    min_saved_ms_per_gib: f64,
}

#[derive(Serialize)]
struct CrawlView {
    interval: String,
    files_per_second: u32,
}

#[derive(Serialize)]
struct WatchView {
    max_watches: u32,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    log_level: &'a str,
}

#[derive(Serialize)]
struct ControlView<'a> {
    socket: String,
    /// "" for root only.
    group: &'a str,
}

#[derive(Serialize)]
struct MetricsView {
    /// "" for off.
    listen: String,
}

impl Settings {
    fn view(&self) -> FileView<'_> {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        // Settings loaded from a file hold whole MiB; one built in code
        // might not, and rounding up keeps the printed value non-zero.
        let mib = |bytes: u64| bytes.div_ceil(MIB);
        FileView {
            state_dir: path(&self.state_dir),
            filesystem: self
                .filesystems
                .iter()
                .map(|fs| FilesystemView {
                    path: path(&fs.path),
                    watch: fs.watch.iter().map(|w| path(w)).collect(),
                    medium: fs.medium.as_str(),
                })
                .collect(),
            throttle: ThrottleView {
                max_mib_per_s: mib(self.throttle.max_bytes_per_s.get()),
                chunk_mib: mib(self.throttle.chunk_bytes.get()),
                pressure_percent: self.throttle.pressure_percent.unwrap_or(0.0),
                min_mib_per_s: mib(self.throttle.min_bytes_per_s),
                windows: self
                    .throttle
                    .windows
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                start_mib_per_s: self.throttle.start_bytes_per_s.div_ceil(MIB),
                write_budget_ssd: budget(self.throttle.write_budget_ssd),
                write_budget_hdd: budget(self.throttle.write_budget_hdd),
            },
            policy: PolicyView {
                quiet_period: format_duration(self.policy.quiet_period),
                min_size: format_size(self.policy.min_size_bytes),
                min_excess_extents: self.policy.min_excess_extents,
                min_score: self.policy.min_score,
                exclude: &self.policy.exclude,
                reserve_percent: self.policy.reserve_percent,
                convert_block_mapped: self.policy.convert_block_mapped,
                xfs_swapext_without_rmapbt: self.policy.xfs_swapext_without_rmapbt,
                btrfs_extent_thresh: format_size(u64::from(self.policy.btrfs.extent_thresh)),
                btrfs_nocow: self.policy.btrfs.allow_nocow,
                boundary_ms_hdd: self.policy.boundary_ms_hdd,
                boundary_ms_ssd: self.policy.boundary_ms_ssd,
                min_saved_ms_per_gib: self.policy.min_saved_ms_per_gib,
            },
            crawl: CrawlView {
                interval: format_duration(self.crawl.interval),
                files_per_second: self.crawl.files_per_second.get(),
            },
            watch: WatchView {
                max_watches: self.watch.max_watches.get(),
            },
            service: ServiceView {
                log_level: &self.service.log_level,
            },
            control: ControlView {
                socket: path(&self.control.socket),
                group: self.control.group.as_deref().unwrap_or(""),
            },
            metrics: MetricsView {
                listen: self
                    .metrics
                    .listen
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            },
        }
    }

    /// The effective configuration as TOML in the shape of defragd.toml,
    /// every key present; loading it gives these settings back.
    pub fn render(&self) -> String {
        let v = self.view();
        let mut lines = vec![format!("state_dir = {}", quote(&v.state_dir))];
        if v.filesystem.is_empty() {
            lines.push("filesystem = []".into());
        }
        for fs in &v.filesystem {
            lines.push(String::new());
            lines.push("[[filesystem]]".into());
            lines.push(format!("path = {}", quote(&fs.path)));
            lines.push(format!("watch = {}", array(&fs.watch)));
            lines.push(format!("medium = {}", quote(fs.medium)));
        }
        lines.extend([
            String::new(),
            "[throttle]".into(),
            format!("max_mib_per_s = {}", v.throttle.max_mib_per_s),
            format!("chunk_mib = {}", v.throttle.chunk_mib),
            format!("pressure_percent = {}", number(v.throttle.pressure_percent)),
            format!("min_mib_per_s = {}", v.throttle.min_mib_per_s),
            format!("windows = {}", array(&v.throttle.windows)),
            format!("start_mib_per_s = {}", v.throttle.start_mib_per_s),
            format!("write_budget_ssd = {}", quote(&v.throttle.write_budget_ssd)),
            format!("write_budget_hdd = {}", quote(&v.throttle.write_budget_hdd)),
            String::new(),
            "[policy]".into(),
            format!("quiet_period = {}", quote(&v.policy.quiet_period)),
            format!("min_size = {}", quote(&v.policy.min_size)),
            format!("min_excess_extents = {}", v.policy.min_excess_extents),
            format!("min_score = {}", number(v.policy.min_score)),
            format!("exclude = {}", array(v.policy.exclude)),
            format!("reserve_percent = {}", number(v.policy.reserve_percent)),
            format!("convert_block_mapped = {}", v.policy.convert_block_mapped),
            format!(
                "xfs_swapext_without_rmapbt = {}",
                v.policy.xfs_swapext_without_rmapbt
            ),
            format!(
                "btrfs_extent_thresh = {}",
                quote(&v.policy.btrfs_extent_thresh)
            ),
            format!("btrfs_nocow = {}", v.policy.btrfs_nocow),
            format!("boundary_ms_hdd = {}", number(v.policy.boundary_ms_hdd)),
            format!("boundary_ms_ssd = {}", number(v.policy.boundary_ms_ssd)),
            format!(
                "min_saved_ms_per_gib = {}",
                number(v.policy.min_saved_ms_per_gib)
            ),
            String::new(),
            "[crawl]".into(),
            format!("interval = {}", quote(&v.crawl.interval)),
            format!("files_per_second = {}", v.crawl.files_per_second),
            String::new(),
            "[watch]".into(),
            format!("max_watches = {}", v.watch.max_watches),
            String::new(),
            "[service]".into(),
            format!("log_level = {}", quote(v.service.log_level)),
            String::new(),
            "[control]".into(),
            format!("socket = {}", quote(&v.control.socket)),
            format!("group = {}", quote(v.control.group)),
            String::new(),
            "[metrics]".into(),
            format!("listen = {}", quote(&v.metrics.listen)),
        ]);
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// In the file's shape, like `render`, so that `--json` has the same keys
/// as the file.
impl Serialize for Settings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(serializer)
    }
}

fn array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML number: "30" for a whole value, as the file writes it.
fn number(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        // Display never uses exponents, so this is always a TOML float.
        format!("{x}")
    }
}

/// A daily write budget as the file writes it: "0" for none.
fn budget(bytes: Option<std::num::NonZeroU64>) -> String {
    bytes.map_or_else(|| "0".to_string(), |b| format_size(b.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_as_the_file_writes_them() {
        let text = Settings::default().render();
        for line in [
            "state_dir = \"/var/lib/defragd\"",
            "filesystem = []",
            "max_mib_per_s = 64",
            "chunk_mib = 1",
            "pressure_percent = 20",
            "min_mib_per_s = 0",
            "start_mib_per_s = 4",
            "windows = []",
            "quiet_period = \"30s\"",
            "min_size = \"1MiB\"",
            "min_score = 10",
            "exclude = []",
            "convert_block_mapped = false",
            "interval = \"24h\"",
            "max_watches = 65536",
            "log_level = \"info\"",
            "socket = \"/run/defragd/control.sock\"",
            "group = \"\"",
            "listen = \"\"",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn json_has_the_file_keys() {
        let json = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(json["throttle"]["max_mib_per_s"], 64);
        assert_eq!(json["throttle"]["windows"], serde_json::json!([]));
        assert_eq!(json["policy"]["min_size"], "1MiB");
        assert_eq!(json["policy"]["convert_block_mapped"], false);
        assert_eq!(json["crawl"]["interval"], "24h");
        assert_eq!(json["filesystem"], serde_json::json!([]));
        assert_eq!(json["control"]["socket"], "/run/defragd/control.sock");
        assert_eq!(json["control"]["group"], "");
        assert_eq!(json["metrics"]["listen"], "");
    }

    #[test]
    fn windows_render_as_the_file_writes_them() {
        use crate::config::TimeWindow;
        let mut settings = Settings::default();
        settings.throttle.windows = vec![
            TimeWindow {
                start_minute: 22 * 60,
                end_minute: 6 * 60,
            },
            TimeWindow {
                start_minute: 12 * 60 + 5,
                end_minute: 24 * 60,
            },
        ];
        let text = settings.render();
        assert!(
            text.lines()
                .any(|l| l == "windows = [\"22:00-06:00\", \"12:05-24:00\"]"),
            "{text}"
        );
        let json = serde_json::to_value(&settings).unwrap();
        assert_eq!(
            json["throttle"]["windows"],
            serde_json::json!(["22:00-06:00", "12:05-24:00"])
        );
    }

    #[test]
    fn numbers_are_toml() {
        assert_eq!(number(30.0), "30");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(1e-7), "0.0000001");
        assert_eq!(number(f64::NAN), "nan");
    }
}
