//! Logging: tracing-subscriber with an EnvFilter from `DEFRAGD_LOG` (else
//! the configured level); plain lines without timestamps when stderr goes
//! to the journal, which stamps them itself.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call does nothing.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("DEFRAGD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
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
        builder.with_target(false).try_init()
    };
    drop(result);
}
