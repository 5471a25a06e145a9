//! What can be wrong with a configuration, said so that an operator can fix
//! it: which source, which key, what it holds and what is allowed. Every
//! message is one line, so that a list of them reads as a list.

use std::fmt;
use std::path::PathBuf;

use crate::escape::escaped;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A TOML file: the main file or a drop-in.
    File(PathBuf),
    /// One `DEFRAGD__SECTION__KEY` environment variable, by its name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", escaped(path)),
            Origin::Env(name) => write!(f, "environment variable {}", escaped(name)),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The file (or the drop-in directory, or a variable's value) could not
    /// be read at all.
    #[error("{origin}: cannot read it: {reason}")]
    Unreadable { origin: Origin, reason: String },

    /// The file is not valid TOML; `message` gives the line and column.
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: Origin, message: String },

    /// A key this version of defragd does not know, most often a typo.
    #[error("{origin}: unknown key `{key}` ({expected})")]
    UnknownKey {
        origin: Origin,
        key: String,
        expected: String,
    },

    /// A section or list of the wrong kind, such as `throttle = 5` where a
    /// `[throttle]` table belongs.
    #[error("{origin}: {key}: {message}")]
    Shape {
        origin: Origin,
        key: String,
        message: String,
    },

    /// A known key with a value that is not allowed.
    #[error("{origin}: {key} = {value}: {allowed}")]
    Invalid {
        origin: Origin,
        key: String,
        value: String,
        allowed: String,
    },
}

/// Every error found in one load, in the order of the sources. Loading goes
/// on past the first error so that one `defragd config check` lists all of
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Text from a source made safe for a one-line message: control characters
/// escaped (a newline in a quoted key must not split the message), and cut
/// short so that a huge garbage value cannot flood the log.
pub(super) fn printable(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    let shown = escaped(text).to_string();
    match shown.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &shown[..cut]),
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_one_per_line() {
        let origin = Origin::File("/etc/defragd/defragd.toml".into());
        let errors = ConfigErrors(vec![
            ConfigError::Invalid {
                origin: origin.clone(),
                key: "throttle.chunk_mib".into(),
                value: "0".into(),
                allowed: "must be a whole number from 1 to 64".into(),
            },
            ConfigError::UnknownKey {
                origin: Origin::Env("DEFRAGD__X".into()),
                key: "x".into(),
                expected: "expected one of `state_dir`".into(),
            },
        ]);
        assert_eq!(
            errors.to_string(),
            "/etc/defragd/defragd.toml: throttle.chunk_mib = 0: must be a whole number from 1 to 64\n\
             environment variable DEFRAGD__X: unknown key `x` (expected one of `state_dir`)"
        );
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(printable("a\nb\u{7}"), "a\\nb\\u{7}");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long).chars().count(), 201);
    }
}
