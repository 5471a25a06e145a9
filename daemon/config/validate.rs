//! From fragments to settings. Each source's fragment is checked on its own
//! and its valid values are written over what the sources before it (and
//! the defaults) said, so the later source wins.
//!
//! Checking each source before merging is what lets every error name the
//! file or variable that carried the bad value. It also means that every
//! source must be valid by itself: a bad value is an error even when a
//! later source overrides it, so that `defragd config check` lists every
//! line to fix. No rule here spans two sources: the lists (`[[filesystem]]`,
//! `throttle.windows` and `policy.exclude`) are replaced whole, so their
//! cross-checks happen within the source that set them.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::error::{printable, ConfigError, Origin};
use super::fragment::{
    quote, ControlFragment, CrawlFragment, FilesystemFragment, Fragment, MetricsFragment,
    PolicyFragment, Raw, ServiceFragment, ThrottleFragment, WatchFragment,
};
use super::settings::{
    check_exclude, ControlSettings, CrawlSettings, FilesystemSettings, MetricsListen,
    MetricsSettings, PolicySettings, ServiceSettings, Settings, ThrottleSettings, TimeWindow,
    WatchSettings, LOG_LEVELS, MIB, MINUTES_PER_DAY, UNIX_PREFIX,
};
use super::units::{format_duration, format_size, parse_duration, parse_size};
use crate::medium::MediumChoice;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The longest path a unix socket address holds (`sun_path` is 108 bytes,
/// with the terminating NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;
/// The longest group name `groupadd` makes.
const MAX_GROUP_NAME_CHARS: usize = 32;

/// Checks one source's fragment and writes its valid values over
/// `settings`; what is wrong goes to `errors`, and leaves the earlier value.
pub fn apply(
    settings: &mut Settings,
    fragment: Fragment,
    origin: &Origin,
    errors: &mut Vec<ConfigError>,
) {
    let mut check = Check { origin, errors };
    if let Some(dir) = check.absolute_path("state_dir", fragment.state_dir) {
        settings.state_dir = dir;
    }
    if let Some(filesystems) = fragment.filesystem.and_then(|list| check.filesystems(list)) {
        settings.filesystems = filesystems;
    }
    if let Some(f) = fragment.throttle {
        throttle(&mut settings.throttle, f, &mut check);
    }
    if let Some(f) = fragment.policy {
        policy(&mut settings.policy, f, &mut check);
    }
    if let Some(f) = fragment.crawl {
        crawl(&mut settings.crawl, f, &mut check);
    }
    if let Some(f) = fragment.watch {
        watch(&mut settings.watch, f, &mut check);
    }
    if let Some(f) = fragment.service {
        service(&mut settings.service, f, &mut check);
    }
    if let Some(f) = fragment.control {
        control(&mut settings.control, f, &mut check);
    }
    if let Some(f) = fragment.metrics {
        metrics(&mut settings.metrics, f, &mut check);
    }
}

fn throttle(settings: &mut ThrottleSettings, f: ThrottleFragment, check: &mut Check) {
    let in_bytes = |mib: u64| NonZeroU64::new(mib.saturating_mul(MIB));
    let rate = check.whole("throttle.max_mib_per_s", f.max_mib_per_s, 1, 100_000);
    if let Some(rate) = rate.and_then(in_bytes) {
        settings.max_bytes_per_s = rate;
    }
    let chunk = check.whole("throttle.chunk_mib", f.chunk_mib, 1, 64);
    if let Some(chunk) = chunk.and_then(in_bytes) {
        settings.chunk_bytes = chunk;
    }
    let key = "throttle.pressure_percent";
    if let Some(percent) = check.number(key, f.pressure_percent, 0.0, 100.0) {
        // 0 is "off" rather than "always paused": pressure is never below 0.
        settings.pressure_percent = (percent > 0.0).then_some(percent);
    }
    let floor = check.whole("throttle.min_mib_per_s", f.min_mib_per_s, 0, 100_000);
    if let Some(floor) = floor {
        settings.min_bytes_per_s = floor.saturating_mul(MIB);
    }
    if let Some(windows) = check.windows("throttle.windows", f.windows) {
        settings.windows = windows;
    }
    if let Some(start) = check.whole("throttle.start_mib_per_s", f.start_mib_per_s, 0, 100_000) {
        settings.start_bytes_per_s = start.saturating_mul(MIB);
    }
    if let Some(bytes) = check.size("throttle.write_budget_ssd", f.write_budget_ssd) {
        settings.write_budget_ssd = NonZeroU64::new(bytes);
    }
    if let Some(bytes) = check.size("throttle.write_budget_hdd", f.write_budget_hdd) {
        settings.write_budget_hdd = NonZeroU64::new(bytes);
    }
}

fn policy(settings: &mut PolicySettings, f: PolicyFragment, check: &mut Check) {
    let quiet = check.duration("policy.quiet_period", f.quiet_period, SECOND, 7 * DAY);
    if let Some(quiet) = quiet {
        settings.quiet_period = quiet;
    }
    if let Some(bytes) = check.size("policy.min_size", f.min_size) {
        settings.min_size_bytes = bytes;
    }
    let key = "policy.min_excess_extents";
    if let Some(excess) = check.whole(key, f.min_excess_extents, 0, u64::MAX) {
        settings.min_excess_extents = excess;
    }
    if let Some(score) = check.number("policy.min_score", f.min_score, 0.0, 100.0) {
        settings.min_score = score;
    }
    if let Some(patterns) = check.excludes("policy.exclude", f.exclude) {
        if let Err(error) = settings.set_exclude(patterns) {
            check.invalid("policy.exclude", &quote(&error.pattern), error.reason);
        }
    }
    let reserve = check.number("policy.reserve_percent", f.reserve_percent, 0.0, 90.0);
    if let Some(reserve) = reserve {
        settings.reserve_percent = reserve;
    }
    let key = "policy.convert_block_mapped";
    if let Some(convert) = check.boolean(key, f.convert_block_mapped) {
        settings.convert_block_mapped = convert;
    }
    let key = "policy.xfs_swapext_without_rmapbt";
    if let Some(allow) = check.boolean(key, f.xfs_swapext_without_rmapbt) {
        settings.xfs_swapext_without_rmapbt = allow;
    }
    let key = "policy.btrfs_extent_thresh";
    if let Some(bytes) = check.size(key, f.btrfs_extent_thresh) {
        // The kernel leaves extents of 128 MiB (its longest) alone
        // whatever the threshold; below one block it means nothing.
        const MIN: u64 = 4 << 10;
        const MAX: u64 = crate::backend::btrfs::MAX_EXTENT_BYTES;
        match u32::try_from(bytes) {
            Ok(thresh) if (MIN..=MAX).contains(&bytes) => settings.btrfs.extent_thresh = thresh,
            _ => check.invalid(
                key,
                &format_size(bytes),
                "must be from 4KiB to 128MiB (btrfs' longest extent)".into(),
            ),
        }
    }
    if let Some(allow) = check.boolean("policy.btrfs_nocow", f.btrfs_nocow) {
        settings.btrfs.allow_nocow = allow;
    }
    if let Some(ms) = check.number("policy.boundary_ms_hdd", f.boundary_ms_hdd, 0.0, 1000.0) {
        settings.boundary_ms_hdd = ms;
    }
    if let Some(ms) = check.number("policy.boundary_ms_ssd", f.boundary_ms_ssd, 0.0, 1000.0) {
        settings.boundary_ms_ssd = ms;
    }
    let key = "policy.min_saved_ms_per_gib";
    if let Some(ms) = check.number(key, f.min_saved_ms_per_gib, 0.0, 1e9) {
        settings.min_saved_ms_per_gib = ms;
    }
}

fn crawl(settings: &mut CrawlSettings, f: CrawlFragment, check: &mut Check) {
    if let Some(interval) = check.duration("crawl.interval", f.interval, MINUTE, 30 * DAY) {
        settings.interval = interval;
    }
    let pace = check.whole("crawl.files_per_second", f.files_per_second, 1, 1_000_000);
    if let Some(pace) = pace.and_then(non_zero_u32) {
        settings.files_per_second = pace;
    }
}

fn watch(settings: &mut WatchSettings, f: WatchFragment, check: &mut Check) {
    let budget = check.whole("watch.max_watches", f.max_watches, 1, 1_000_000);
    if let Some(budget) = budget.and_then(non_zero_u32) {
        settings.max_watches = budget;
    }
}

fn service(settings: &mut ServiceSettings, f: ServiceFragment, check: &mut Check) {
    if let Some(level) = check.log_level("service.log_level", f.log_level) {
        settings.log_level = level;
    }
}

fn control(settings: &mut ControlSettings, f: ControlFragment, check: &mut Check) {
    let example = "/run/defragd/control.sock";
    if let Some(socket) = check.socket_path("control.socket", f.socket, example) {
        settings.socket = socket;
    }
    if let Some(group) = check.group("control.group", f.group) {
        settings.group = group;
    }
}

fn metrics(settings: &mut MetricsSettings, f: MetricsFragment, check: &mut Check) {
    if let Some(listen) = check.metrics_listen("metrics.listen", f.listen) {
        settings.listen = listen;
    }
}

fn non_zero_u32(n: u64) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(n).ok()?)
}

/// Checks values of one source and records what is wrong with them.
struct Check<'a> {
    origin: &'a Origin,
    errors: &'a mut Vec<ConfigError>,
}

impl Check<'_> {
    fn invalid(&mut self, key: &str, value: &str, allowed: String) {
        self.errors.push(ConfigError::Invalid {
            origin: self.origin.clone(),
            key: key.to_owned(),
            value: printable(value),
            allowed,
        });
    }

    /// The value of `key` if the source set it and `parse` accepts it;
    /// otherwise `None`, and when it was set, an error saying what `parse`
    /// returned as allowed.
    fn value<T>(
        &mut self,
        key: &str,
        raw: Option<Raw>,
        parse: impl FnOnce(&Raw) -> Result<T, String>,
    ) -> Option<T> {
        let raw = raw?;
        parse(&raw)
            .map_err(|allowed| self.invalid(key, &raw.to_string(), allowed))
            .ok()
    }

    fn whole(&mut self, key: &str, raw: Option<Raw>, min: u64, max: u64) -> Option<u64> {
        self.value(key, raw, |raw| {
            let n = match raw {
                Raw::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            };
            n.filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                if max == u64::MAX {
                    format!("must be a whole number, {min} or more")
                } else {
                    format!("must be a whole number from {min} to {max}")
                }
            })
        })
    }

    /// One of [`MediumChoice::WORDS`], as a TOML string.
    fn medium(&mut self, key: &str, raw: Option<Raw>) -> Option<MediumChoice> {
        self.value(key, raw, |raw| {
            match raw {
                Raw::Str(word) => MediumChoice::parse(word),
                _ => None,
            }
            .ok_or_else(|| "must be \"auto\", \"sysfs\", \"ssd\" or \"hdd\"".into())
        })
    }

    /// Only a TOML boolean: a quoted "true", "yes" or 1 is refused rather
    /// than guessed at. (In the environment, "true" and "false" are read as
    /// booleans before they get here.)
    fn boolean(&mut self, key: &str, raw: Option<Raw>) -> Option<bool> {
        self.value(key, raw, |raw| match raw {
            Raw::Bool(b) => Ok(*b),
            _ => Err("must be true or false".into()),
        })
    }

    fn number(&mut self, key: &str, raw: Option<Raw>, min: f64, max: f64) -> Option<f64> {
        self.value(key, raw, |raw| {
            let x = match raw {
                Raw::Int(i) => Some(*i as f64),
                Raw::Float(x) => Some(*x),
                _ => None,
            };
            // `contains` is false for NaN, so NaN is refused too.
            x.filter(|x| (min..=max).contains(x))
                .ok_or_else(|| format!("must be a number from {min} to {max}"))
        })
    }

    fn duration(
        &mut self,
        key: &str,
        raw: Option<Raw>,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        self.value(key, raw, |raw| {
            let d = match raw {
                Raw::Str(s) => parse_duration(s),
                _ => None,
            };
            d.filter(|d| (min..=max).contains(d)).ok_or_else(|| {
                format!(
                    "must be a duration from {} to {}, like \"30s\", \"15m\" or \"2h\"",
                    format_duration(min),
                    format_duration(max)
                )
            })
        })
    }

    fn size(&mut self, key: &str, raw: Option<Raw>) -> Option<u64> {
        self.value(key, raw, |raw| {
            let bytes = match raw {
                Raw::Str(s) => parse_size(s),
                Raw::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            };
            bytes.ok_or_else(|| {
                "must be a size like \"1MiB\", \"512KiB\" or \"2GiB\", or a whole number of bytes"
                    .into()
            })
        })
    }

    fn log_level(&mut self, key: &str, raw: Option<Raw>) -> Option<String> {
        self.value(key, raw, |raw| {
            let level = match raw {
                Raw::Str(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            };
            level
                .filter(|level| LOG_LEVELS.contains(&level.as_str()))
                .ok_or_else(|| format!("must be one of {}", LOG_LEVELS.join(", ")))
        })
    }

    fn absolute_path(&mut self, key: &str, raw: Option<Raw>) -> Option<PathBuf> {
        self.value(key, raw, |raw| match raw {
            Raw::Str(s) => normal_absolute_path(s),
            _ => Err("must be an absolute path, like \"/srv\"".into()),
        })
    }

    fn socket_path(&mut self, key: &str, raw: Option<Raw>, example: &str) -> Option<PathBuf> {
        self.value(key, raw, |raw| match raw {
            Raw::Str(s) => socket_path(s, example),
            _ => Err(format!("must be an absolute path, like {}", quote(example))),
        })
    }

    /// `Some(None)` for "", root only.
    fn group(&mut self, key: &str, raw: Option<Raw>) -> Option<Option<String>> {
        self.value(key, raw, |raw| match raw {
            Raw::Str(s) if s.is_empty() => Ok(None),
            Raw::Str(s) if is_plausible_group_name(s) => Ok(Some(s.clone())),
            _ => Err(format!(
                "must be a group name like \"wheel\" (at most {MAX_GROUP_NAME_CHARS} characters, \
                 no whitespace, `:` or `/`), or \"\" for root only"
            )),
        })
    }

    /// `Some(None)` for "", off.
    fn metrics_listen(&mut self, key: &str, raw: Option<Raw>) -> Option<Option<MetricsListen>> {
        self.value(key, raw, |raw| match raw {
            Raw::Str(s) => metrics_listen(s),
            _ => Err(LISTEN_ALLOWED.into()),
        })
    }

    /// The items of a list value; every item is then checked, so that all
    /// the bad ones are reported.
    fn list(&mut self, key: &str, raw: Option<Raw>, allowed: &str) -> Option<Vec<Raw>> {
        self.value(key, raw, |raw| match raw {
            Raw::List(items) => Ok(items.clone()),
            _ => Err(allowed.to_owned()),
        })
    }

    fn excludes(&mut self, key: &str, raw: Option<Raw>) -> Option<Vec<String>> {
        let allowed = "must be a list of glob patterns, like [\"/srv/scratch/**\", \"*.tmp\"]";
        let items = self.list(key, raw, allowed)?;
        let before = self.errors.len();
        let mut patterns = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let pattern = self.value(&format!("{key}[{i}]"), Some(item), |raw| match raw {
                Raw::Str(s) => check_exclude(s).map(|()| s.clone()),
                _ => Err("must be a quoted glob pattern, like \"*.tmp\"".into()),
            });
            patterns.extend(pattern);
        }
        (self.errors.len() == before).then_some(patterns)
    }

    /// The maintenance windows, or `None` if any is wrong: a list missing
    /// one window would quietly move files at other times than asked.
    fn windows(&mut self, key: &str, raw: Option<Raw>) -> Option<Vec<TimeWindow>> {
        let allowed = "must be a list of windows \"HH:MM-HH:MM\" in local time, \
            like [\"01:00-05:00\"], or [] to move at any time";
        let items = self.list(key, raw, allowed)?;
        let before = self.errors.len();
        let mut windows = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let window = self.value(&format!("{key}[{i}]"), Some(item), |raw| match raw {
                Raw::Str(s) => time_window(s),
                _ => Err("must be a quoted window, like \"01:00-05:00\"".into()),
            });
            windows.extend(window);
        }
        (self.errors.len() == before).then_some(windows)
    }

    fn path_list(&mut self, key: &str, raw: Option<Raw>) -> Option<Vec<PathBuf>> {
        let allowed = "must be a list of absolute paths, like [\"/srv/db\"]";
        let items = self.list(key, raw, allowed)?;
        let before = self.errors.len();
        let mut paths = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            paths.extend(self.absolute_path(&format!("{key}[{i}]"), Some(item)));
        }
        (self.errors.len() == before).then_some(paths)
    }

    /// The `[[filesystem]]` list, or `None` if any entry is wrong: a list
    /// missing one filesystem would quietly serve a different set.
    fn filesystems(&mut self, entries: Vec<FilesystemFragment>) -> Option<Vec<FilesystemSettings>> {
        let before = self.errors.len();
        let mut filesystems: Vec<FilesystemSettings> = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let key = format!("filesystem[{i}]");
            let path_key = format!("{key}.path");
            if entry.path.is_none() {
                let allowed = "every [[filesystem]] needs a mount point, like path = \"/srv\"";
                self.invalid(&path_key, "(not set)", allowed.into());
            }
            let path = self.absolute_path(&path_key, entry.path);
            let watch = match entry.watch {
                Some(raw) => self.path_list(&format!("{key}.watch"), Some(raw)),
                None => Some(Vec::new()),
            };
            let medium = match entry.medium {
                Some(raw) => self.medium(&format!("{key}.medium"), Some(raw)),
                None => Some(MediumChoice::Auto),
            };
            let (Some(path), Some(watch), Some(medium)) = (path, watch, medium) else {
                continue;
            };
            if let Some(first) = filesystems.iter().position(|fs| fs.path == path) {
                let allowed = format!(
                    "must not repeat filesystem[{first}].path; list each filesystem once, \
                     with all its watch trees"
                );
                self.invalid(&path_key, &quote(&path.to_string_lossy()), allowed);
            }
            self.watch_under_path(&key, &path, &watch);
            filesystems.push(FilesystemSettings {
                path,
                watch,
                medium,
            });
        }
        (self.errors.len() == before).then_some(filesystems)
    }

    /// Watching beyond the mount point would feed another filesystem's
    /// files to this one's worker. This is a lexical check: the config is
    /// read before the filesystems are looked at.
    fn watch_under_path(&mut self, key: &str, path: &Path, watch: &[PathBuf]) {
        for (j, tree) in watch.iter().enumerate() {
            if !tree.starts_with(path) {
                let allowed = format!(
                    "must be under this filesystem's path {}",
                    quote(&path.to_string_lossy())
                );
                let value = quote(&tree.to_string_lossy());
                self.invalid(&format!("{key}.watch[{j}]"), &value, allowed);
            }
        }
    }
}

/// What `metrics.listen` takes.
const LISTEN_ALLOWED: &str = "must be \"unix:\" and an absolute path, like \
    \"unix:/run/defragd/metrics.sock\", a loopback address and port, like \"127.0.0.1:9321\" \
    or \"[::1]:9321\", or \"\" for off";
/// Why a TCP address that is not on loopback is refused, and what to use.
const ONLY_LOCAL: &str = "metrics are only served on loopback or a unix socket: use an address \
    in 127.0.0.0/8 or ::1, like \"127.0.0.1:9321\" or \"[::1]:9321\", \
    or \"unix:/run/defragd/metrics.sock\"";

/// What an entry of `throttle.windows` looks like.
const WINDOW_ALLOWED: &str = "must be a window \"HH:MM-HH:MM\" on the 24-hour clock, \
    two digits each, like \"01:00-05:00\" or \"22:00-06:00\"";
/// What the times in a window may be.
const WINDOW_RANGE: &str = "must have times from \"00:00\" to \"23:59\" \
    (and \"24:00\" as an end), like \"22:00-06:00\"";

/// One maintenance window, "HH:MM-HH:MM": exactly two digits for the hours
/// and for the minutes ("01:00", not "1:00"), as `TimeWindow`'s `Display`
/// writes it, so that there is one way to write each time. The end may
/// come before the start (across midnight) and may be "24:00" (up to
/// midnight), but may not equal the start: "00:00-24:00" is all day.
fn time_window(text: &str) -> Result<TimeWindow, String> {
    let (start, end) = text
        .split_once('-')
        .and_then(|(start, end)| Some((hh_mm(start)?, hh_mm(end)?)))
        .ok_or_else(|| WINDOW_ALLOWED.to_owned())?;
    let out_of_range = |(hours, minutes): (u16, u16)| hours > 23 || minutes > 59;
    if out_of_range(start) || (out_of_range(end) && end != (24, 0)) {
        return Err(WINDOW_RANGE.into());
    }
    let minute = |(hours, minutes): (u16, u16)| hours * 60 + minutes;
    let window = TimeWindow {
        start_minute: minute(start),
        end_minute: minute(end),
    };
    if window.start_minute == window.end_minute {
        return Err("must end at another time than it starts; \"00:00-24:00\" is all day".into());
    }
    debug_assert!(window.start_minute < MINUTES_PER_DAY && window.end_minute <= MINUTES_PER_DAY);
    Ok(window)
}

/// "HH:MM" as (hours, minutes), not yet checked against the clock; `None`
/// unless it is two digits, `:` and two digits.
fn hh_mm(text: &str) -> Option<(u16, u16)> {
    let [h1, h2, b':', m1, m2] = text.as_bytes() else {
        return None;
    };
    let digit = |b: &u8| b.is_ascii_digit().then(|| u16::from(b - b'0'));
    Some((digit(h1)? * 10 + digit(h2)?, digit(m1)? * 10 + digit(m2)?))
}

/// Where to serve metrics; `None` for "", off. Only on this machine: the
/// endpoint has no authentication, so a TCP address must be on loopback
/// (a unix socket's permissions, or a proxy in front, are the ways to let
/// others scrape it).
fn metrics_listen(text: &str) -> Result<Option<MetricsListen>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(path) = text.strip_prefix(UNIX_PREFIX) {
        return socket_path(path, "/run/defragd/metrics.sock")
            .map(|path| Some(MetricsListen::Unix(path)))
            .map_err(|reason| format!("after \"{UNIX_PREFIX}\": {reason}"));
    }
    let address: SocketAddr = text.parse().map_err(|_| LISTEN_ALLOWED.to_owned())?;
    if !address.ip().is_loopback() {
        return Err(ONLY_LOCAL.into());
    }
    if address.port() == 0 {
        return Err("must have a port from 1 to 65535, like \"127.0.0.1:9321\"".into());
    }
    Ok(Some(MetricsListen::Tcp(address)))
}

/// The path of a unix socket: absolute and normalised as
/// [`normal_absolute_path`] makes it, naming a file, and short enough to
/// bind, so that a path the kernel would refuse is found here rather than
/// when the service starts.
fn socket_path(text: &str, example: &str) -> Result<PathBuf, String> {
    if !Path::new(text).is_absolute() {
        return Err(format!("must be an absolute path, like {}", quote(example)));
    }
    let path = normal_absolute_path(text)?;
    if path.file_name().is_none() {
        return Err(format!(
            "must be the path of a socket file, like {}",
            quote(example)
        ));
    }
    if path.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "must be at most {MAX_SOCKET_PATH_BYTES} bytes long, the most a unix socket address holds"
        ));
    }
    Ok(path)
}

/// Whether `name` could be a group's name. Only plausible: the service
/// looks it up when it makes the socket, as groups can change while the
/// configuration stays.
fn is_plausible_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_GROUP_NAME_CHARS
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
}

/// An absolute path, normalised (no `.`, repeated or trailing `/`), so that
/// "/srv/" and "/srv" are the same filesystem. `..` is refused rather than
/// resolved: "/srv/../etc" is not under "/srv", but compares as if it were.
fn normal_absolute_path(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err("must be an absolute path, like \"/srv\"".into());
    }
    if text.contains('\0') {
        return Err("must be an absolute path without NUL characters".into());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("must be an absolute path without `..`".into());
    }
    Ok(path.components().collect())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
