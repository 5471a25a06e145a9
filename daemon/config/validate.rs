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
use super::units::{format_duration, parse_duration, parse_size};
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

    /// Only a TOML boolean: a quoted "true", "yes" or 1 is refused rather
    /// than guessed at. (In the environment, "true" and "false" are read as
    /// booleans before they get here.)
    fn medium(&mut self, key: &str, raw: Option<Raw>) -> Option<MediumChoice> {
        self.value(key, raw, |raw| {
            match raw {
                Raw::Str(word) => MediumChoice::parse(word),
                _ => None,
            }
            .ok_or_else(|| "must be \"auto\", \"ssd\" or \"hdd\"".into())
        })
    }

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
mod tests {
    use super::*;
    use crate::config::fragment::from_toml;

    fn settings_from(text: &str) -> (Settings, Vec<ConfigError>) {
        let origin = Origin::File("/etc/defragd/defragd.toml".into());
        let mut settings = Settings::default();
        let mut errors = Vec::new();
        apply(
            &mut settings,
            from_toml(text, &origin).unwrap(),
            &origin,
            &mut errors,
        );
        (settings, errors)
    }

    fn messages(errors: &[ConfigError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_key_is_read() {
        let (s, errors) = settings_from(
            r#"
            state_dir = "/data/defragd/"
            [[filesystem]]
            path = "/srv"
            watch = ["/srv/db", "/srv//logs/"]
            medium = "ssd"
            [[filesystem]]
            path = "/home"
            [throttle]
            max_mib_per_s = 100000
            chunk_mib = 64
            pressure_percent = 0
            windows = ["01:00-05:00", "22:00-06:00", "12:00-24:00"]
            start_mib_per_s = 8
            write_budget_ssd = 0
            write_budget_hdd = "1TiB"
            [policy]
            quiet_period = "1h 30m"
            min_size = "4KiB"
            min_excess_extents = 0
            min_score = 12.5
            exclude = ["/srv/scratch/**", "*.tmp"]
            reserve_percent = 90
            convert_block_mapped = true
            boundary_ms_hdd = 12
            boundary_ms_ssd = 0.25
            min_saved_ms_per_gib = 0
            [crawl]
            interval = "1m"
            files_per_second = 1000000
            [watch]
            max_watches = 1
            [service]
            log_level = "DEBUG"
            [control]
            socket = "/run//defragd/ctl.sock"
            group = "defrag-admins"
            [metrics]
            listen = "unix:/run/defragd/metrics.sock"
            "#,
        );
        assert_eq!(errors, []);
        assert_eq!(s.state_dir, Path::new("/data/defragd"));
        assert_eq!(
            s.filesystems,
            [
                FilesystemSettings {
                    path: "/srv".into(),
                    watch: vec!["/srv/db".into(), "/srv/logs".into()],
                    medium: MediumChoice::Is(crate::medium::Medium::Ssd),
                },
                FilesystemSettings {
                    path: "/home".into(),
                    watch: vec![],
                    medium: MediumChoice::Auto,
                },
            ]
        );
        assert_eq!(s.throttle.max_bytes_per_s.get(), 100_000 * MIB);
        assert_eq!(s.throttle.chunk_bytes.get(), 64 * MIB);
        assert_eq!(s.throttle.pressure_percent, None);
        let window = |start_minute, end_minute| TimeWindow {
            start_minute,
            end_minute,
        };
        assert_eq!(
            s.throttle.windows,
            [window(60, 300), window(1320, 360), window(720, 1440)]
        );
        assert_eq!(s.throttle.write_budget_ssd, None);
        assert_eq!(s.throttle.start_bytes_per_s, 8 * MIB);
        assert_eq!(
            s.throttle.write_budget(crate::medium::Medium::Hdd),
            Some(1 << 40)
        );
        assert_eq!(s.policy.quiet_period, Duration::from_secs(5400));
        assert_eq!(s.policy.min_size_bytes, 4096);
        assert_eq!(s.policy.min_excess_extents, 0);
        assert_eq!(s.policy.min_score, 12.5);
        assert_eq!(s.policy.exclude, ["/srv/scratch/**", "*.tmp"]);
        assert!(s.policy.is_excluded(Path::new("/srv/scratch/x")));
        assert_eq!(s.policy.reserve_percent, 90.0);
        assert!(s.policy.convert_block_mapped);
        assert_eq!(s.policy.boundary_ms_hdd, 12.0);
        assert_eq!(s.policy.boundary_ms_ssd, 0.25);
        assert_eq!(s.policy.min_saved_ms_per_gib, 0.0);
        assert_eq!(s.crawl.interval, MINUTE);
        assert_eq!(s.crawl.files_per_second.get(), 1_000_000);
        assert_eq!(s.watch.max_watches.get(), 1);
        assert_eq!(s.service.log_level, "debug");
        assert_eq!(s.control.socket, Path::new("/run/defragd/ctl.sock"));
        assert_eq!(s.control.group.as_deref(), Some("defrag-admins"));
        assert_eq!(
            s.metrics.listen,
            Some(MetricsListen::Unix("/run/defragd/metrics.sock".into()))
        );
    }

    #[test]
    fn each_bad_value_says_key_value_and_what_is_allowed() {
        let (s, errors) = settings_from(
            r#"
            state_dir = "var/lib/defragd"
            [throttle]
            max_mib_per_s = 0
            chunk_mib = 1.5
            pressure_percent = nan
            windows = ["01:00-05:00", "25:00-01:00", "1:00-2:00", "01:00-01:00", 100]
            [policy]
            quiet_period = 30
            min_size = "1 parsec"
            min_excess_extents = -1
            min_score = "high"
            exclude = ["srv/*.log", "/a/[", 7]
            reserve_percent = 95
            convert_block_mapped = "yes"
            boundary_ms_hdd = -1
            boundary_ms_ssd = "fast"
            min_saved_ms_per_gib = nan
            [crawl]
            interval = "30s"
            files_per_second = 1000001
            [watch]
            max_watches = true
            [service]
            log_level = "verbose"
            [control]
            socket = "control.sock"
            group = "my group"
            [metrics]
            listen = "0.0.0.0:9321"
            "#,
        );
        let f = "/etc/defragd/defragd.toml";
        assert_eq!(
            messages(&errors),
            [
                format!("{f}: state_dir = \"var/lib/defragd\": must be an absolute path, like \"/srv\""),
                format!("{f}: throttle.max_mib_per_s = 0: must be a whole number from 1 to 100000"),
                format!("{f}: throttle.chunk_mib = 1.5: must be a whole number from 1 to 64"),
                format!("{f}: throttle.pressure_percent = nan: must be a number from 0 to 100"),
                format!("{f}: throttle.windows[1] = \"25:00-01:00\": must have times from \"00:00\" to \"23:59\" (and \"24:00\" as an end), like \"22:00-06:00\""),
                format!("{f}: throttle.windows[2] = \"1:00-2:00\": must be a window \"HH:MM-HH:MM\" on the 24-hour clock, two digits each, like \"01:00-05:00\" or \"22:00-06:00\""),
                format!("{f}: throttle.windows[3] = \"01:00-01:00\": must end at another time than it starts; \"00:00-24:00\" is all day"),
                format!("{f}: throttle.windows[4] = 100: must be a quoted window, like \"01:00-05:00\""),
                format!("{f}: policy.quiet_period = 30: must be a duration from 1s to 7d, like \"30s\", \"15m\" or \"2h\""),
                format!("{f}: policy.min_size = \"1 parsec\": must be a size like \"1MiB\", \"512KiB\" or \"2GiB\", or a whole number of bytes"),
                format!("{f}: policy.min_excess_extents = -1: must be a whole number, 0 or more"),
                format!("{f}: policy.min_score = \"high\": must be a number from 0 to 100"),
                format!("{f}: policy.exclude[0] = \"srv/*.log\": must start with `/` when it contains `/` (paths are matched whole), or contain no `/` to match file names anywhere"),
                format!("{f}: policy.exclude[1] = \"/a/[\": must be a valid glob pattern (unclosed character class; missing ']')"),
                format!("{f}: policy.exclude[2] = 7: must be a quoted glob pattern, like \"*.tmp\""),
                format!("{f}: policy.reserve_percent = 95: must be a number from 0 to 90"),
                format!("{f}: policy.convert_block_mapped = \"yes\": must be true or false"),
                format!("{f}: policy.boundary_ms_hdd = -1: must be a number from 0 to 1000"),
                format!("{f}: policy.boundary_ms_ssd = \"fast\": must be a number from 0 to 1000"),
                format!("{f}: policy.min_saved_ms_per_gib = nan: must be a number from 0 to 1000000000"),
                format!("{f}: crawl.interval = \"30s\": must be a duration from 1m to 30d, like \"30s\", \"15m\" or \"2h\""),
                format!("{f}: crawl.files_per_second = 1000001: must be a whole number from 1 to 1000000"),
                format!("{f}: watch.max_watches = true: must be a whole number from 1 to 1000000"),
                format!("{f}: service.log_level = \"verbose\": must be one of error, warn, info, debug, trace"),
                format!("{f}: control.socket = \"control.sock\": must be an absolute path, like \"/run/defragd/control.sock\""),
                format!("{f}: control.group = \"my group\": must be a group name like \"wheel\" (at most 32 characters, no whitespace, `:` or `/`), or \"\" for root only"),
                format!("{f}: metrics.listen = \"0.0.0.0:9321\": metrics are only served on loopback or a unix socket: use an address in 127.0.0.0/8 or ::1, like \"127.0.0.1:9321\" or \"[::1]:9321\", or \"unix:/run/defragd/metrics.sock\""),
            ]
        );
        // Nothing bad was taken.
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn filesystem_entries_are_checked_together() {
        let (s, errors) = settings_from(
            r#"
            [[filesystem]]
            path = "/srv"
            watch = ["/srv/db", "/data", "relative", "/srv/../etc"]
            [[filesystem]]
            watch = []
            [[filesystem]]
            path = "/srv/"
            watch = "/srv/db"
            [[filesystem]]
            path = "/home/"
            "#,
        );
        let f = "/etc/defragd/defragd.toml";
        assert_eq!(
            messages(&errors),
            [
                format!("{f}: filesystem[0].watch[2] = \"relative\": must be an absolute path, like \"/srv\""),
                format!("{f}: filesystem[0].watch[3] = \"/srv/../etc\": must be an absolute path without `..`"),
                format!("{f}: filesystem[1].path = (not set): every [[filesystem]] needs a mount point, like path = \"/srv\""),
                format!("{f}: filesystem[2].watch = \"/srv/db\": must be a list of absolute paths, like [\"/srv/db\"]"),
            ]
        );
        assert!(s.filesystems.is_empty());

        let (_, errors) = settings_from(
            "[[filesystem]]\npath = \"/srv\"\nwatch = [\"/data\"]\n[[filesystem]]\npath = \"/srv/\"\n",
        );
        assert_eq!(
            messages(&errors),
            [
                format!("{f}: filesystem[0].watch[0] = \"/data\": must be under this filesystem's path \"/srv\""),
                format!("{f}: filesystem[1].path = \"/srv\": must not repeat filesystem[0].path; list each filesystem once, with all its watch trees"),
            ]
        );
    }

    #[test]
    fn zero_pressure_turns_the_pause_off_and_percent_takes_fractions() {
        let (s, errors) = settings_from("[throttle]\npressure_percent = 12.5\n");
        assert_eq!(errors, []);
        assert_eq!(s.throttle.pressure_percent, Some(12.5));
        let (s, _) = settings_from("[throttle]\npressure_percent = 0.0\n");
        assert_eq!(s.throttle.pressure_percent, None);
    }

    #[test]
    fn windows_are_hh_mm_ranges_on_the_24_hour_clock() {
        let windows = |text: &str| {
            let (s, errors) = settings_from(&format!("[throttle]\nwindows = {text}\n"));
            assert_eq!(errors, [], "{text}");
            s.throttle
                .windows
                .iter()
                .map(|w| (w.start_minute, w.end_minute))
                .collect::<Vec<_>>()
        };
        assert_eq!(windows("[]"), []);
        assert_eq!(windows("[\"01:00-05:00\"]"), [(60, 300)]);
        assert_eq!(windows("[\"22:00-06:00\"]"), [(1320, 360)]);
        assert_eq!(windows("[\"23:59-00:00\"]"), [(1439, 0)]);
        assert_eq!(windows("[\"00:00-24:00\"]"), [(0, 1440)]);
        assert_eq!(windows("[\"18:30-24:00\"]"), [(1110, 1440)]);
        assert_eq!(windows("[\"00:00-00:01\"]"), [(0, 1)]);
        // Overlapping windows are allowed: moving is allowed in either.
        assert_eq!(
            windows("[\"01:00-03:00\", \"02:00-04:00\"]"),
            [(60, 180), (120, 240)]
        );
    }

    #[test]
    fn a_bad_window_says_what_is_allowed() {
        let f = "/etc/defragd/defragd.toml";
        let format = "must be a window \"HH:MM-HH:MM\" on the 24-hour clock, two digits each, \
                      like \"01:00-05:00\" or \"22:00-06:00\"";
        let range = "must have times from \"00:00\" to \"23:59\" (and \"24:00\" as an end), \
                     like \"22:00-06:00\"";
        let same = "must end at another time than it starts; \"00:00-24:00\" is all day";
        for (text, allowed) in [
            ("25:00-01:00", range),
            ("01:00-24:01", range),
            ("24:00-01:00", range),
            ("24:00-24:00", range),
            ("01:60-02:00", range),
            ("99:99-00:00", range),
            ("01:00-01:00", same),
            ("00:00-00:00", same),
            ("1:00-2:00", format),
            ("01:00-2:00", format),
            ("0100-0200", format),
            ("01:00", format),
            ("01:00-", format),
            ("01:00 - 05:00", format),
            (" 01:00-05:00", format),
            ("01:00-05:00-06:00", format),
            ("01:00:00-05:00:00", format),
            ("01.00-05.00", format),
            ("+1:00-05:00", format),
            ("01:00–05:00", format),
            ("１2:00-13:00", format),
            ("", format),
        ] {
            let (s, errors) = settings_from(&format!("[throttle]\nwindows = [{}]\n", quote(text)));
            assert_eq!(
                messages(&errors),
                [format!(
                    "{f}: throttle.windows[0] = {}: {allowed}",
                    quote(text)
                )],
                "{text}"
            );
            assert_eq!(s.throttle, ThrottleSettings::default());
        }
        let (_, errors) = settings_from("[throttle]\nwindows = \"01:00-05:00\"\n");
        assert_eq!(
            messages(&errors),
            [format!("{f}: throttle.windows = \"01:00-05:00\": must be a list of windows \"HH:MM-HH:MM\" in local time, like [\"01:00-05:00\"], or [] to move at any time")]
        );
        let (_, errors) = settings_from("[throttle]\nwindows = [[\"01:00-05:00\"]]\n");
        assert_eq!(
            messages(&errors),
            [format!("{f}: throttle.windows[0] = [\"01:00-05:00\"]: must be a quoted window, like \"01:00-05:00\"")]
        );
    }

    #[test]
    fn metrics_listen_takes_a_unix_socket_or_a_loopback_address() {
        let listen = |text: &str| {
            let (s, errors) = settings_from(&format!("[metrics]\nlisten = {}\n", quote(text)));
            assert_eq!(errors, [], "{text}");
            s.metrics.listen
        };
        assert_eq!(
            listen("unix:/run/defragd/metrics.sock"),
            Some(MetricsListen::Unix("/run/defragd/metrics.sock".into()))
        );
        assert_eq!(
            listen("127.0.0.1:9321"),
            Some(MetricsListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 9321))))
        );
        assert_eq!(
            listen("127.1.2.3:80"),
            Some(MetricsListen::Tcp(SocketAddr::from(([127, 1, 2, 3], 80))))
        );
        assert_eq!(
            listen("[::1]:9321"),
            Some(MetricsListen::Tcp("[::1]:9321".parse().unwrap()))
        );
        assert_eq!(listen(""), None);
    }

    #[test]
    fn metrics_are_never_served_beyond_the_machine() {
        let f = "/etc/defragd/defragd.toml";
        let only_local = "metrics are only served on loopback or a unix socket";
        for address in [
            "0.0.0.0:9321",
            "192.168.1.5:9321",
            "[::]:9321",
            "[2001:db8::1]:9321",
            "[::ffff:127.0.0.1]:9321",
        ] {
            let (s, errors) = settings_from(&format!("[metrics]\nlisten = \"{address}\"\n"));
            let messages = messages(&errors);
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(
                messages[0].starts_with(&format!(
                    "{f}: metrics.listen = \"{address}\": {only_local}"
                )),
                "{messages:?}"
            );
            assert_eq!(s.metrics.listen, None);
        }
    }

    #[test]
    fn other_listen_values_say_what_is_allowed() {
        let f = "/etc/defragd/defragd.toml";
        let (_, errors) =
            settings_from("[control]\ngroup = 100\n[metrics]\nlisten = \"localhost:9321\"\n");
        assert_eq!(
            messages(&errors),
            [
                format!("{f}: control.group = 100: must be a group name like \"wheel\" (at most 32 characters, no whitespace, `:` or `/`), or \"\" for root only"),
                format!("{f}: metrics.listen = \"localhost:9321\": {LISTEN_ALLOWED}"),
            ]
        );
        for (value, allowed) in [
            ("9321", LISTEN_ALLOWED.to_owned()),
            ("\"127.0.0.1\"", LISTEN_ALLOWED.to_owned()),
            ("\"::1:9321\"", LISTEN_ALLOWED.to_owned()),
            ("\"127.0.0.1:0\"", "must have a port from 1 to 65535, like \"127.0.0.1:9321\"".to_owned()),
            ("\"unix:metrics.sock\"", "after \"unix:\": must be an absolute path, like \"/run/defragd/metrics.sock\"".to_owned()),
            ("\"unix:\"", "after \"unix:\": must be an absolute path, like \"/run/defragd/metrics.sock\"".to_owned()),
            ("\"unix:/\"", "after \"unix:\": must be the path of a socket file, like \"/run/defragd/metrics.sock\"".to_owned()),
            ("\"unix:/run/../m.sock\"", "after \"unix:\": must be an absolute path without `..`".to_owned()),
        ] {
            let (_, errors) = settings_from(&format!("[metrics]\nlisten = {value}\n"));
            assert_eq!(
                messages(&errors),
                [format!("{f}: metrics.listen = {value}: {allowed}")]
            );
        }
    }

    #[test]
    fn control_socket_must_be_an_absolute_path_that_fits() {
        let f = "/etc/defragd/defragd.toml";
        let (s, errors) = settings_from("[control]\nsocket = \"run/defragd/control.sock\"\n");
        assert_eq!(
            messages(&errors),
            [format!("{f}: control.socket = \"run/defragd/control.sock\": must be an absolute path, like \"/run/defragd/control.sock\"")]
        );
        assert_eq!(s.control, ControlSettings::default());

        let longest = format!("/{}", "s".repeat(MAX_SOCKET_PATH_BYTES - 1));
        let (s, errors) = settings_from(&format!("[control]\nsocket = \"{longest}\"\n"));
        assert_eq!(errors, []);
        assert_eq!(s.control.socket, Path::new(&longest));
        let (_, errors) = settings_from(&format!("[control]\nsocket = \"{longest}s\"\n"));
        assert_eq!(
            messages(&errors),
            [format!("{f}: control.socket = \"{longest}s\": must be at most 107 bytes long, the most a unix socket address holds")]
        );
        let (_, errors) = settings_from("[control]\nsocket = 5\n");
        assert_eq!(
            messages(&errors),
            [format!("{f}: control.socket = 5: must be an absolute path, like \"/run/defragd/control.sock\"")]
        );
    }

    #[test]
    fn control_group_is_a_plausible_name_or_root_only() {
        let group = |text: &str| {
            let (s, errors) = settings_from(&format!("[control]\ngroup = {}\n", quote(text)));
            (s.control.group, errors.len())
        };
        assert_eq!(group("wheel"), (Some("wheel".into()), 0));
        assert_eq!(
            group("defrag_admins-2$"),
            (Some("defrag_admins-2$".into()), 0)
        );
        assert_eq!(group(&"g".repeat(32)), (Some("g".repeat(32)), 0));
        assert_eq!(group(""), (None, 0));
        for bad in [
            "my group",
            "a:b",
            "a/b",
            "tab\there",
            "nul\0",
            &"g".repeat(33),
        ] {
            assert_eq!(group(bad), (None, 1), "{bad:?}");
        }
    }

    #[test]
    fn sizes_take_plain_bytes_too() {
        let (s, errors) = settings_from("[policy]\nmin_size = 0\n");
        assert_eq!(errors, []);
        assert_eq!(s.policy.min_size_bytes, 0);
    }
}
