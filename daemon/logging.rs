//! Logging: tracing-subscriber with an EnvFilter from `DEFRAGD_LOG` (else
//! the configured level); plain lines without timestamps when stderr goes
//! to the journal, which stamps them itself. Colours only on a terminal:
//! a log redirected to a file, or collected by another supervisor, gets
//! no escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable an operator sets to change what is logged.
const FILTER_VARIABLE: &str = "DEFRAGD_LOG";

/// Installs the global subscriber; a second call does nothing. A
/// `DEFRAGD_LOG` that cannot be used is reported once logging runs, and
/// the configured level is used instead.
pub fn init(default_level: &str) {
    let (filter, refused) = match std::env::var_os(FILTER_VARIABLE) {
        None => (EnvFilter::new(default_level), None),
        Some(value) => match value.to_str().map(parse_filter) {
            Some(Ok(filter)) => (filter, None),
            Some(Err(reason)) => (EnvFilter::new(default_level), Some(reason)),
            None => (
                EnvFilter::new(default_level),
                Some("it is not UTF-8".to_owned()),
            ),
        },
    };
    let to_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if to_journal {
        builder
            .without_time()
            .with_target(false)
            .with_ansi(false)
            .try_init()
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    if result.is_ok() {
        if let Some(reason) = refused {
            tracing::warn!(
                "{FILTER_VARIABLE} is ignored: {reason}; logging at level {default_level} instead. \
                 Set it to a level (error, warn, info, debug, trace) or \
                 to tracing's EnvFilter syntax, e.g. {FILTER_VARIABLE}=debug"
            );
        }
    }
}

/// Parses a filter, each comma-separated directive trimmed first.
/// tracing-subscriber 0.3 trims a directive but indexes the untrimmed text
/// (tokio-rs/tracing#2452), which panics on leading whitespace before a
/// multi-byte character; trimming here keeps operator input from reaching
/// that, and lets "info, defragd=debug" mean what it says.
fn parse_filter(value: &str) -> Result<EnvFilter, String> {
    let directives: Vec<&str> = value.split(',').map(str::trim).collect();
    EnvFilter::builder()
        .parse(directives.join(","))
        .map_err(|e| format!("{value:?} is not a log filter ({e})"))
}

#[cfg(test)]
mod tests {
    use super::parse_filter;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::{Config, TestRunner};

    #[test]
    fn whitespace_around_directives_is_trimmed_not_a_panic() {
        // Leading whitespace before a multi-byte character once panicked
        // inside tracing-subscriber (found by the config check fuzz test).
        assert!(parse_filter("\taé[").is_err());
        assert!(parse_filter(" é=debug").is_ok());
        let filter = parse_filter(" info ,\tdefragd=debug ").unwrap();
        assert_eq!(filter.to_string(), "defragd=debug,info");
    }

    #[test]
    fn a_filter_that_is_not_one_says_what_was_given() {
        let reason = parse_filter("info=[").unwrap_err();
        assert!(reason.contains("\"info=[\""), "{reason}");
    }

    #[test]
    fn no_filter_text_panics() {
        // The filter syntax's own characters, whitespace of several widths
        // and multi-byte letters, in any order: text an operator could type.
        let alphabet: Vec<char> = "=,[]{}:_-.\"/ \t\u{a0}\u{3000}aZ09éß€😀".chars().collect();
        let text = proptest::collection::vec(select(alphabet), 0..24)
            .prop_map(|chars| chars.into_iter().collect::<String>());
        let mut runner = TestRunner::new(Config {
            cases: 5000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&text, |value| {
                let _ = parse_filter(&value);
                Ok(())
            })
            .unwrap();
    }
}
