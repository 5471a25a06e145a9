//! Settings: the configuration as the rest of defragd sees it, validated
//! and in tight types (bytes, `Duration`, `NonZero*`, a compiled glob
//! set). Nothing here ever holds a raw string from a file except what is
//! kept to print the configuration back (`PolicySettings::exclude`,
//! `ServiceSettings::log_level`) and `ControlSettings::group`, a name the
//! service looks up when it makes the control socket.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::medium::{Medium, MediumChoice};
use crate::policy::Benefit;

pub(super) const MIB: u64 = 1 << 20;

// Evaluated at compile time (they are only used in consts), so a zero here
// fails the build rather than the service.
const fn non_zero_u64(n: u64) -> NonZeroU64 {
    match NonZeroU64::new(n) {
        Some(n) => n,
        None => panic!("a non-zero default is zero"),
    }
}

const fn non_zero_u32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a non-zero default is zero"),
    }
}

const DEFAULT_MAX_BYTES_PER_S: NonZeroU64 = non_zero_u64(64 * MIB);
const DEFAULT_MIN_BYTES_PER_S: u64 = 0;
const DEFAULT_START_BYTES_PER_S: u64 = 4 * MIB;
/// A 1 TB TLC drive rated for 600 TB written over 5 years takes about
/// 330 GB a day; defragmentation gets a small share of that.
const DEFAULT_WRITE_BUDGET_SSD: NonZeroU64 = non_zero_u64(16 * 1024 * MIB);
const DEFAULT_CHUNK_BYTES: NonZeroU64 = non_zero_u64(MIB);
const DEFAULT_FILES_PER_SECOND: NonZeroU32 = non_zero_u32(500);
const DEFAULT_MAX_WATCHES: NonZeroU32 = non_zero_u32(65_536);

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where the store (state.db) lives.
    pub state_dir: PathBuf,
    /// The filesystems to serve; empty means every eligible mounted ext4.
    pub filesystems: Vec<FilesystemSettings>,
    pub throttle: ThrottleSettings,
    pub policy: PolicySettings,
    pub crawl: CrawlSettings,
    pub watch: WatchSettings,
    pub service: ServiceSettings,
    pub control: ControlSettings,
    pub metrics: MetricsSettings,
}

/// One `[[filesystem]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemSettings {
    /// Its mount point: absolute, normalised (no `.`, `..` or trailing `/`).
    pub path: PathBuf,
    /// Trees under `path` to watch for writes: absolute, normalised.
    pub watch: Vec<PathBuf>,
    /// What its device is: from the kernel's rotational flag, or as set.
    pub medium: MediumChoice,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleSettings {
    /// Bytes moved per second, all workers together.
    pub max_bytes_per_s: NonZeroU64,
    /// The most moved per kernel call.
    pub chunk_bytes: NonZeroU64,
    /// Above this I/O pressure (the share of time some task waited for
    /// I/O, /proc/pressure/io), moves slow down; `None` when pressure is
    /// ignored.
    pub pressure_percent: Option<f64>,
    /// The floor of the rate under pressure, in bytes per second (see
    /// [`crate::throttle::paced_rate`]); 0 lets pressure hold moves back.
    pub min_bytes_per_s: u64,
    /// Maintenance windows in local time: files are moved only inside one
    /// of them (see [`within_windows`]); outside, the service only watches
    /// and queues. Empty (the default) means moving is always allowed.
    pub windows: Vec<TimeWindow>,
    /// The rate each job starts at, in bytes per second, before the ramp
    /// (see [`crate::ramp`]) speeds it up while the disk keeps its latency;
    /// 0 starts at `max_bytes_per_s` with no ramp.
    pub start_bytes_per_s: u64,
    /// Bytes moves may write to one flash device in one local day; `None`
    /// for no limit.
    pub write_budget_ssd: Option<NonZeroU64>,
    /// The same for a disk; `None` (the default) for no limit.
    pub write_budget_hdd: Option<NonZeroU64>,
}

impl ThrottleSettings {
    /// The daily write budget of a device on `medium`, in bytes.
    pub fn write_budget(&self, medium: Medium) -> Option<u64> {
        match medium {
            Medium::Ssd => self.write_budget_ssd,
            Medium::Hdd => self.write_budget_hdd,
        }
        .map(NonZeroU64::get)
    }
}

/// The minutes in a day, and the end of a window that lasts until midnight.
pub(super) const MINUTES_PER_DAY: u16 = 24 * 60;

/// One maintenance window of `throttle.windows`, "HH:MM-HH:MM" in local
/// time: from `start_minute` (inclusive) to `end_minute` (exclusive),
/// crossing midnight when the end comes before the start ("22:00-06:00").
///
/// A window read from the configuration has `start_minute` in 0..1440,
/// `end_minute` in 0..=1440 (1440 is "24:00", so "00:00-24:00" is all day)
/// and the two different. The methods give an answer for any values: a
/// window whose start and end are equal holds no minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeWindow {
    /// Minutes since local midnight, 0 for "00:00".
    pub start_minute: u16,
    /// Minutes since local midnight, 1440 for "24:00".
    pub end_minute: u16,
}

impl TimeWindow {
    /// Whether the window holds `minute_of_day` (minutes since local
    /// midnight; 1440 and beyond wrap round to the next day): from the
    /// start, up to but not including the end.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        self.minutes_since_start(minute_of_day) < self.length()
    }

    /// How long the window lasts, in minutes: 1 to 1440 for a valid one.
    fn length(&self) -> u32 {
        let (start, end) = (u32::from(self.start_minute), u32::from(self.end_minute));
        let day = u32::from(MINUTES_PER_DAY);
        match start.cmp(&end) {
            std::cmp::Ordering::Less => (end - start).min(day),
            // Across midnight: to the end of the day, then on to `end`.
            std::cmp::Ordering::Greater => (day - start % day + end % day) % day,
            std::cmp::Ordering::Equal => 0,
        }
    }

    /// Minutes from the window's start forward to `minute_of_day`, 0 to 1439.
    fn minutes_since_start(&self, minute_of_day: u16) -> u32 {
        let day = u32::from(MINUTES_PER_DAY);
        let now = u32::from(minute_of_day) % day;
        (now + day - u32::from(self.start_minute) % day) % day
    }
}

/// As `throttle.windows` writes it: "22:00-06:00", "00:00-24:00".
impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hh_mm = |minute: u16| format!("{:02}:{:02}", minute / 60, minute % 60);
        write!(f, "{}-{}", hh_mm(self.start_minute), hh_mm(self.end_minute))
    }
}

/// Whether moving is allowed at `minute_of_day` (minutes since local
/// midnight): inside any of the windows, or always when there are none.
pub fn within_windows(windows: &[TimeWindow], minute_of_day: u16) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(minute_of_day))
}

/// Minutes from `minute_of_day` (minutes since local midnight) until a
/// window opens: 0 inside one, otherwise the wait for the nearest start,
/// at most 1439. `None` when no window ever opens: the list is empty (and
/// moving is always allowed, see [`within_windows`]), or holds only
/// windows of no length, which the configuration never does.
pub fn minutes_until_open(windows: &[TimeWindow], minute_of_day: u16) -> Option<u16> {
    let day = u32::from(MINUTES_PER_DAY);
    windows
        .iter()
        .filter(|w| w.length() > 0)
        .map(|w| {
            if w.contains(minute_of_day) {
                0
            } else {
                (day - w.minutes_since_start(minute_of_day)) % day
            }
        })
        .min()
        // At most 1439, so it fits.
        .map(|minutes| minutes as u16)
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// How long a file must go unwritten before it is touched.
    pub quiet_period: Duration,
    /// Smaller files are left alone.
    pub min_size_bytes: u64,
    /// Files with fewer extents over their ideal are left alone.
    pub min_excess_extents: u64,
    /// Files scoring lower (0..=100) are left alone.
    pub min_score: f64,
    /// The exclude patterns as written, for printing the configuration.
    /// Matching uses a set compiled from them: change them with
    /// [`PolicySettings::set_exclude`], not by assigning this field.
    pub exclude: Vec<String>,
    excluded: GlobSet,
    /// Share of each filesystem (0..=90) that must stay free.
    pub reserve_percent: f64,
    /// Whether a block-mapped file (written before the filesystem was
    /// converted from ext3), which MOVE_EXT cannot move, is converted to
    /// extents with EXT4_IOC_MIGRATE and then defragmented, in one job.
    /// The kernel's conversion is not crash-safe (a crash during it can
    /// leave an inode for `e2fsck` to reclaim), so it is off by default.
    pub convert_block_mapped: bool,
    /// Whether files on XFS without the reverse-mapping btree (and without
    /// exchange-range) are swapped with SWAPEXT all the same: on 6.18 a
    /// crash soon after such a swap can leave a log that does not replay
    /// until `xfs_repair`, as with xfs_fsr. Off by default.
    pub xfs_swapext_without_rmapbt: bool,
    /// btrfs: extents at least this long (bytes) are left where they are
    /// (`btrfs filesystem defragment -t`), and nodatacow files may be
    /// rewritten or not.
    pub btrfs: crate::backend::btrfs::Policy,
    /// What one extent boundary costs a full read on a disk (a seek), in ms.
    pub boundary_ms_hdd: f64,
    /// What one extent boundary costs a full read on flash (one more
    /// request), in ms.
    pub boundary_ms_ssd: f64,
    /// A move must save at least this much read time per GiB it writes.
    pub min_saved_ms_per_gib: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrawlSettings {
    /// Between the starts of two crawl passes.
    pub interval: Duration,
    pub files_per_second: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchSettings {
    /// inotify watches for all trees together.
    pub max_watches: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    /// One of error, warn, info, debug, trace; used when DEFRAGD_LOG is not set.
    pub log_level: String,
}

/// The control socket `defragctl` talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// The socket's path: absolute, normalised, short enough for a unix
    /// socket address.
    pub socket: PathBuf,
    /// A group whose members may use the socket besides root; `None` for
    /// root only. A plausible name, not yet looked up: the service
    /// resolves it when it makes the socket.
    pub group: Option<String>,
}

/// Off by default: metrics are served only where asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where the Prometheus text exposition is served; `None` when off.
    pub listen: Option<MetricsListen>,
}

/// Where metrics are served: never beyond the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A unix socket: absolute, normalised, short enough for a unix
    /// socket address.
    Unix(PathBuf),
    /// A TCP address on loopback (127.0.0.0/8 or ::1), port not 0.
    Tcp(SocketAddr),
}

/// As `metrics.listen` writes it: "unix:/run/defragd/metrics.sock",
/// "127.0.0.1:9321", "[::1]:9321".
impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
            MetricsListen::Tcp(address) => write!(f, "{address}"),
        }
    }
}

/// What starts a unix socket path in `metrics.listen`.
pub(super) const UNIX_PREFIX: &str = "unix:";

/// The log levels `service.log_level` accepts.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The documented defaults, the same as etc/defragd.toml.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            state_dir: PathBuf::from("/var/lib/defragd"),
            filesystems: Vec::new(),
            throttle: ThrottleSettings::default(),
            policy: PolicySettings::default(),
            crawl: CrawlSettings::default(),
            watch: WatchSettings::default(),
            service: ServiceSettings::default(),
            control: ControlSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            max_bytes_per_s: DEFAULT_MAX_BYTES_PER_S,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            pressure_percent: Some(20.0),
            min_bytes_per_s: DEFAULT_MIN_BYTES_PER_S,
            windows: Vec::new(),
            // Off: the disk's counters include the move's own requests,
            // which alone tripped the latency test (see etc/defragd.toml).
            start_bytes_per_s: DEFAULT_START_BYTES_PER_S,
            write_budget_ssd: Some(DEFAULT_WRITE_BUDGET_SSD),
            write_budget_hdd: None,
        }
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            quiet_period: Duration::from_secs(30),
            min_size_bytes: MIB,
            min_excess_extents: 4,
            min_score: 10.0,
            exclude: Vec::new(),
            excluded: GlobSet::empty(),
            reserve_percent: 5.0,
            convert_block_mapped: false,
            xfs_swapext_without_rmapbt: false,
            btrfs: crate::backend::btrfs::Policy::default(),
            boundary_ms_hdd: 8.0,
            boundary_ms_ssd: 0.1,
            min_saved_ms_per_gib: 100.0,
        }
    }
}

impl Default for CrawlSettings {
    fn default() -> Self {
        CrawlSettings {
            interval: Duration::from_secs(24 * 3600),
            files_per_second: DEFAULT_FILES_PER_SECOND,
        }
    }
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            max_watches: DEFAULT_MAX_WATCHES,
        }
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            log_level: "info".into(),
        }
    }
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: PathBuf::from("/run/defragd/control.sock"),
            group: None,
        }
    }
}

/// The compiled set is left out: it is made from `exclude`.
impl PartialEq for PolicySettings {
    fn eq(&self, other: &Self) -> bool {
        self.quiet_period == other.quiet_period
            && self.min_size_bytes == other.min_size_bytes
            && self.min_excess_extents == other.min_excess_extents
            && self.min_score == other.min_score
            && self.exclude == other.exclude
            && self.reserve_percent == other.reserve_percent
            && self.convert_block_mapped == other.convert_block_mapped
            && self.xfs_swapext_without_rmapbt == other.xfs_swapext_without_rmapbt
            && self.btrfs == other.btrfs
            && self.boundary_ms_hdd == other.boundary_ms_hdd
            && self.boundary_ms_ssd == other.boundary_ms_ssd
            && self.min_saved_ms_per_gib == other.min_saved_ms_per_gib
    }
}

/// An exclude pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("exclude pattern {index} ({pattern:?}) {reason}")]
pub struct ExcludeError {
    /// Its position in the list, from 0.
    pub index: usize,
    pub pattern: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl PolicySettings {
    /// The benefit model's figures for a filesystem on `medium`.
    pub fn benefit(&self, medium: Medium) -> Benefit {
        Benefit {
            medium,
            boundary_ms: match medium {
                Medium::Hdd => self.boundary_ms_hdd,
                Medium::Ssd => self.boundary_ms_ssd,
            },
            min_saved_ms_per_gib: self.min_saved_ms_per_gib,
        }
    }

    /// Whether `path` (absolute) matches one of the exclude patterns.
    pub fn is_excluded(&self, path: &Path) -> bool {
        self.excluded.is_match(path)
    }

    /// Replaces the exclude patterns; on an error nothing changes.
    pub fn set_exclude(&mut self, patterns: Vec<String>) -> Result<(), ExcludeError> {
        self.excluded = compile_excludes(&patterns)?;
        self.exclude = patterns;
        Ok(())
    }
}

/// The exclude patterns as one set, or the first that cannot be used.
fn compile_excludes(patterns: &[String]) -> Result<GlobSet, ExcludeError> {
    let mut set = GlobSetBuilder::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let glob = exclude_glob(pattern).map_err(|reason| ExcludeError {
            index,
            pattern: pattern.clone(),
            reason,
        })?;
        set.add(glob);
    }
    set.build().map_err(|e| ExcludeError {
        index: 0,
        pattern: patterns.join(", "),
        reason: format!("cannot be compiled together ({e})"),
    })
}

/// Whether one exclude pattern can be used, and if not, what is allowed.
pub(super) fn check_exclude(pattern: &str) -> Result<(), String> {
    exclude_glob(pattern).map(drop)
}

/// A pattern with a `/` is matched against the whole absolute path, and
/// its `*` stays within one directory, so "/srv/*/cache" means what it
/// says. A pattern without `/` matches a file name anywhere ("*.tmp"), as
/// in .gitignore. A relative pattern with a `/` could never match an
/// absolute path, so it is refused rather than silently useless.
fn exclude_glob(pattern: &str) -> Result<Glob, String> {
    let full = if !pattern.contains('/') {
        format!("**/{pattern}")
    } else if pattern.starts_with('/') {
        pattern.to_owned()
    } else {
        return Err(
            "must start with `/` when it contains `/` (paths are matched whole), \
                    or contain no `/` to match file names anywhere"
                .into(),
        );
    };
    GlobBuilder::new(&full)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("must be a valid glob pattern ({})", e.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::default();
        assert_eq!(s.state_dir, Path::new("/var/lib/defragd"));
        assert!(s.filesystems.is_empty());
        assert_eq!(s.throttle.max_bytes_per_s.get(), 64 * MIB);
        assert_eq!(s.throttle.chunk_bytes.get(), MIB);
        assert_eq!(s.throttle.pressure_percent, Some(20.0));
        assert!(s.throttle.windows.is_empty());
        assert_eq!(s.policy.quiet_period, Duration::from_secs(30));
        assert_eq!(s.policy.min_size_bytes, MIB);
        assert_eq!(s.policy.min_excess_extents, 4);
        assert_eq!(s.policy.min_score, 10.0);
        assert!(s.policy.exclude.is_empty());
        assert_eq!(s.policy.reserve_percent, 5.0);
        assert!(!s.policy.convert_block_mapped);
        assert_eq!(s.crawl.interval, Duration::from_secs(86_400));
        assert_eq!(s.crawl.files_per_second.get(), 500);
        assert_eq!(s.watch.max_watches.get(), 65_536);
        assert_eq!(s.service.log_level, "info");
        assert_eq!(s.control.socket, Path::new("/run/defragd/control.sock"));
        assert_eq!(s.control.group, None);
        assert_eq!(s.metrics.listen, None);
        assert!(!s.policy.is_excluded(Path::new("/srv/a.tmp")));
    }

    #[test]
    fn metrics_listen_displays_as_the_file_writes_it() {
        let unix = MetricsListen::Unix("/run/defragd/metrics.sock".into());
        assert_eq!(unix.to_string(), "unix:/run/defragd/metrics.sock");
        let v4 = MetricsListen::Tcp("127.0.0.1:9321".parse().unwrap());
        assert_eq!(v4.to_string(), "127.0.0.1:9321");
        let v6 = MetricsListen::Tcp("[::1]:9321".parse().unwrap());
        assert_eq!(v6.to_string(), "[::1]:9321");
    }

    #[test]
    fn excludes_match_names_anywhere_and_paths_whole() {
        let mut policy = PolicySettings::default();
        policy
            .set_exclude(vec![
                "*.tmp".into(),
                "/srv/scratch/**".into(),
                "/srv/*/cache".into(),
            ])
            .unwrap();
        assert!(policy.is_excluded(Path::new("/srv/a/b.tmp")));
        assert!(policy.is_excluded(Path::new("/x.tmp")));
        assert!(policy.is_excluded(Path::new("/srv/scratch/a/b")));
        assert!(policy.is_excluded(Path::new("/srv/app/cache")));
        assert!(!policy.is_excluded(Path::new("/srv/a/b/cache")));
        assert!(!policy.is_excluded(Path::new("/srv/a/b.tmp.keep")));
        assert!(!policy.is_excluded(Path::new("/srv/scratchpad")));
    }

    fn window(start_minute: u16, end_minute: u16) -> TimeWindow {
        TimeWindow {
            start_minute,
            end_minute,
        }
    }

    const H: u16 = 60;

    #[test]
    fn a_window_holds_its_start_but_not_its_end() {
        let night = window(H, 5 * H);
        assert!(!night.contains(H - 1));
        assert!(night.contains(H));
        assert!(night.contains(5 * H - 1));
        assert!(!night.contains(5 * H));
        assert!(!night.contains(12 * H));
        // The next day's minutes wrap round.
        assert!(night.contains(MINUTES_PER_DAY + H));
        assert!(!night.contains(u16::MAX));
    }

    #[test]
    fn a_window_can_cross_midnight() {
        let night = window(22 * H, 6 * H);
        for minute in [22 * H, 23 * H + 59, 0, 3 * H, 6 * H - 1] {
            assert!(night.contains(minute), "{minute}");
        }
        for minute in [22 * H - 1, 6 * H, 12 * H] {
            assert!(!night.contains(minute), "{minute}");
        }
        let last = window(23 * H + 59, 0);
        assert!(last.contains(23 * H + 59));
        assert!(!last.contains(0));
    }

    #[test]
    fn a_window_can_end_at_24_00() {
        let all_day = window(0, MINUTES_PER_DAY);
        assert!((0..MINUTES_PER_DAY).all(|minute| all_day.contains(minute)));
        let evening = window(22 * H, MINUTES_PER_DAY);
        assert!(evening.contains(22 * H));
        assert!(evening.contains(MINUTES_PER_DAY - 1));
        assert!(!evening.contains(0));
        // "22:00-00:00" is the same window written another way.
        let same = window(22 * H, 0);
        assert!((0..MINUTES_PER_DAY).all(|m| same.contains(m) == evening.contains(m)));
    }

    #[test]
    fn a_window_of_no_length_holds_nothing() {
        for w in [window(H, H), window(0, 0), window(MINUTES_PER_DAY, 0)] {
            assert!(
                (0..MINUTES_PER_DAY).all(|minute| !w.contains(minute)),
                "{w}"
            );
            assert_eq!(minutes_until_open(&[w], 0), None, "{w}");
        }
    }

    #[test]
    fn no_windows_means_always_allowed() {
        assert!((0..MINUTES_PER_DAY).all(|minute| within_windows(&[], minute)));
        assert_eq!(minutes_until_open(&[], 0), None);
        assert_eq!(minutes_until_open(&[], 12 * H), None);
    }

    #[test]
    fn within_windows_is_inside_any_of_them() {
        let windows = [window(H, 2 * H), window(23 * H, 30)];
        assert!(within_windows(&windows, H));
        assert!(within_windows(&windows, 23 * H));
        assert!(within_windows(&windows, 29));
        assert!(!within_windows(&windows, 30));
        assert!(!within_windows(&windows, 2 * H));
        assert!(!within_windows(&windows, 12 * H));
    }

    #[test]
    fn minutes_until_open_counts_to_the_nearest_start() {
        let night = [window(H, 5 * H)];
        assert_eq!(minutes_until_open(&night, 30), Some(30));
        assert_eq!(minutes_until_open(&night, H), Some(0));
        assert_eq!(minutes_until_open(&night, 5 * H - 1), Some(0));
        // After the end: the next day's start.
        assert_eq!(minutes_until_open(&night, 5 * H), Some(20 * H));
        assert_eq!(minutes_until_open(&night, 23 * H + 59), Some(H + 1));

        let across = [window(22 * H, 6 * H)];
        assert_eq!(minutes_until_open(&across, 0), Some(0));
        assert_eq!(minutes_until_open(&across, 6 * H), Some(16 * H));
        assert_eq!(minutes_until_open(&across, 22 * H - 1), Some(1));

        let two = [window(22 * H, 6 * H), window(12 * H, 13 * H)];
        assert_eq!(minutes_until_open(&two, 7 * H), Some(5 * H));
        assert_eq!(minutes_until_open(&two, 13 * H), Some(9 * H));
        assert_eq!(minutes_until_open(&two, 12 * H + 30), Some(0));
    }

    #[test]
    fn minutes_until_open_agrees_with_within_windows() {
        let sets = [
            vec![window(H, 5 * H)],
            vec![window(22 * H, 6 * H)],
            vec![window(0, MINUTES_PER_DAY)],
            vec![window(22 * H, MINUTES_PER_DAY), window(0, 30)],
            vec![
                window(23 * H + 59, 0),
                window(12 * H, 12 * H + 1),
                window(H, H),
            ],
        ];
        for windows in sets {
            for minute in 0..MINUTES_PER_DAY {
                let wait = minutes_until_open(&windows, minute).unwrap();
                assert_eq!(
                    wait == 0,
                    within_windows(&windows, minute),
                    "{windows:?} {minute}"
                );
                assert!(
                    within_windows(&windows, minute + wait),
                    "{windows:?} {minute}"
                );
                assert!(
                    (minute..minute + wait).all(|m| !within_windows(&windows, m)),
                    "{windows:?} {minute}"
                );
            }
        }
    }

    #[test]
    fn windows_display_as_the_file_writes_them() {
        assert_eq!(window(H, 5 * H).to_string(), "01:00-05:00");
        assert_eq!(window(22 * H, 6 * H).to_string(), "22:00-06:00");
        assert_eq!(window(0, MINUTES_PER_DAY).to_string(), "00:00-24:00");
        assert_eq!(window(5, 23 * H + 59).to_string(), "00:05-23:59");
    }

    #[test]
    fn bad_exclude_leaves_the_old_set() {
        let mut policy = PolicySettings::default();
        policy.set_exclude(vec!["*.tmp".into()]).unwrap();
        let error = policy
            .set_exclude(vec!["*.log".into(), "/a/[".into()])
            .unwrap_err();
        assert_eq!(error.index, 1);
        let error = policy.set_exclude(vec!["srv/*.log".into()]).unwrap_err();
        assert!(error.reason.contains("must start with `/`"), "{error}");
        assert_eq!(policy.exclude, ["*.tmp"]);
        assert!(policy.is_excluded(Path::new("/a/b.tmp")));
    }
}
