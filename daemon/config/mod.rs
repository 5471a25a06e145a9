//! The configuration: /etc/defragd/defragd.toml, then drop-ins from the
//! conf.d/ directory beside it in name order, then `DEFRAGD__SECTION__KEY`
//! environment variables; later sources win.
//!
//! Three stages, as in zincati. Each source is read on its own into a
//! fragment (every key optional, unknown keys refused: `fragment`). Each
//! fragment is checked and laid over the defaults and the sources before it
//! (`validate`). The result is [`Settings`], in tight types; nothing past
//! this module sees a raw string from a file. Loading does not stop at the
//! first error: every error comes back in one [`ConfigErrors`], each naming
//! the file or variable, the key, the value and what is allowed.
//!
//! This module reads files and the environment, nothing else: whether a
//! configured path is really a mounted ext4 filesystem is for the service
//! to find out when it runs.

mod error;
mod fragment;
mod render;
mod settings;
mod units;
mod validate;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors, Origin};
pub use settings::{
    minutes_until_open, within_windows, ControlSettings, CrawlSettings, ExcludeError,
    FilesystemSettings, MetricsListen, MetricsSettings, PolicySettings, ServiceSettings, Settings,
    ThrottleSettings, TimeWindow, WatchSettings, LOG_LEVELS,
};

/// The main configuration file when none is named.
pub const DEFAULT_PATH: &str = "/etc/defragd/defragd.toml";

/// Exit status for a configuration error (sysexits.h `EX_CONFIG`), so that
/// systemd's `RestartPreventExitStatus=` can stop restarting a service
/// that cannot start until someone edits its file.
pub const EX_CONFIG: u8 = 78;

/// The drop-in directory, beside the main file.
const DROP_IN_DIR: &str = "conf.d";

/// Loads the configuration: `path` or [`DEFAULT_PATH`], its drop-ins, and
/// the process's `DEFRAGD__*` environment variables.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigErrors> {
    load_telling_sources(path).0
}

/// What a load read, for an operator to see which files counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The main file, whether or not it exists.
    pub main: PathBuf,
    /// The files read, in the order they were applied.
    pub files: Vec<PathBuf>,
    /// The `DEFRAGD__*` variables applied, by name.
    pub env: Vec<String>,
}

impl Sources {
    /// One line: what was read, or that nothing was and the defaults apply.
    pub fn describe(&self) -> String {
        let mut read: Vec<String> = self
            .files
            .iter()
            .map(|f| crate::escape::escaped(f).to_string())
            .collect();
        read.extend(self.env.iter().map(|name| format!("${name}")));
        let main_missing = !self.files.contains(&self.main);
        let missing = format!("{} does not exist", crate::escape::escaped(&self.main));
        match (read.is_empty(), main_missing) {
            (true, _) => format!("{missing} and nothing else sets a key: the defaults apply"),
            (false, true) => format!("{missing}; read {} over the defaults", read.join(", ")),
            (false, false) => format!("read {}", read.join(", ")),
        }
    }
}

/// [`load`], and which sources it read.
pub fn load_telling_sources(path: Option<&Path>) -> (Result<Settings, ConfigErrors>, Sources) {
    let (env, errors) = process_environment();
    let mut sources = Sources::default();
    let result = load_with(path, env, errors, &mut sources);
    (result, sources)
}

/// [`load`] with the environment given, so tests (and callers with their
/// own environment) do not touch the process's.
pub fn load_from(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigErrors> {
    load_with(
        path,
        env.into_iter().collect(),
        Vec::new(),
        &mut Sources::default(),
    )
}

fn load_with(
    path: Option<&Path>,
    env: Vec<(String, String)>,
    errors: Vec<ConfigError>,
    sources: &mut Sources,
) -> Result<Settings, ConfigErrors> {
    // A fresh install without the default file runs on the defaults, but a
    // file named on the command line that is not there is a mistake.
    let main = path.unwrap_or(Path::new(DEFAULT_PATH));
    load_sources(main, path.is_some(), env, errors, sources)
}

fn load_sources(
    main: &Path,
    main_must_exist: bool,
    mut env: Vec<(String, String)>,
    mut errors: Vec<ConfigError>,
    sources: &mut Sources,
) -> Result<Settings, ConfigErrors> {
    sources.main = main.to_path_buf();
    let mut settings = Settings::default();
    let mut files = vec![(main.to_path_buf(), main_must_exist)];
    if let Some(dir) = main.parent() {
        let drop_ins = drop_ins(&dir.join(DROP_IN_DIR), &mut errors);
        // A drop-in removed since the listing is simply gone, not an error.
        files.extend(drop_ins.into_iter().map(|file| (file, false)));
    }
    for (file, must_exist) in files {
        match read_file(&file, must_exist) {
            Ok(Some(text)) => {
                sources.files.push(file.clone());
                let origin = Origin::File(file);
                let (fragment, found) = fragment::from_toml_reporting_all(&text, &origin);
                errors.extend(found);
                if let Some(fragment) = fragment {
                    validate::apply(&mut settings, fragment, &origin, &mut errors)
                }
            }
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    // By name, so that two spellings of one key resolve the same way every time.
    env.sort();
    for (name, value) in env {
        match fragment::from_env(&name, &value) {
            Ok(Some(fragment)) => {
                sources.env.push(name.clone());
                validate::apply(&mut settings, fragment, &Origin::Env(name), &mut errors)
            }
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The text of one file; `None` when it does not exist and need not.
fn read_file(path: &Path, must_exist: bool) -> Result<Option<String>, ConfigError> {
    let origin = Origin::File(path.to_path_buf());
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound && !must_exist => Ok(None),
        Err(error) => Err(unreadable(origin, &error)),
    }
}

/// The `*.toml` files in `dir`, in byte order of their names (the order
/// `ls` gives in the C locale, whatever the locale). Hidden files are left
/// out, as the shell's `conf.d/*.toml` would, which also skips editors'
/// temporary copies.
fn drop_ins(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            errors.push(unreadable(Origin::File(dir.to_path_buf()), &error));
            return Vec::new();
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) if is_drop_in(&entry.file_name()) => names.push(entry.file_name()),
            Ok(_) => {}
            Err(error) => errors.push(unreadable(Origin::File(dir.to_path_buf()), &error)),
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    names.into_iter().map(|name| dir.join(name)).collect()
}

fn is_drop_in(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.ends_with(b".toml") && !name.starts_with(b".")
}

fn unreadable(origin: Origin, error: &io::Error) -> ConfigError {
    let reason = if error.kind() == io::ErrorKind::InvalidData {
        "it is not UTF-8 text".to_owned()
    } else {
        error.to_string()
    };
    ConfigError::Unreadable { origin, reason }
}

/// The process's `DEFRAGD__*` variables. One whose name or value is not
/// UTF-8 is an error rather than skipped: it was meant for defragd, and
/// silently running without it would hide that.
fn process_environment() -> (Vec<(String, String)>, Vec<ConfigError>) {
    let mut env = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in std::env::vars_os() {
        if !is_defragd_variable(name.as_bytes()) {
            continue;
        }
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => env.push((name, value)),
            (name, _) => {
                let name = name.unwrap_or_else(|name| name.to_string_lossy().into_owned());
                errors.push(ConfigError::Unreadable {
                    origin: Origin::Env(name),
                    reason: "its name or value is not UTF-8 text".into(),
                });
            }
        }
    }
    (env, errors)
}

fn is_defragd_variable(name: &[u8]) -> bool {
    let prefix = format!("{}{}", fragment::ENV_PREFIX, fragment::ENV_SEPARATOR);
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
