//! Properties of the config pipeline (TOML or environment text → fragments
//! → validated settings) over inputs no one should write, under proptest:
//! a failure is shrunk to the smallest input that still fails, and printed.
//! Whatever the input, loading never panics, every error is one line, and
//! whatever is accepted renders to TOML that loads back the same.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestRunner};

use super::settings::TimeWindow;
use super::*;

const SHIPPED: &str = include_str!("../../etc/defragd.toml");

/// `cases` per property, and no regression files written into the tree.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Loads TOML text and environment through the whole pipeline except the
/// disk, returning whether it was accepted; it must never panic.
fn try_load(text: &str, env: &[(String, String)]) -> bool {
    let origin = Origin::File("/fuzz.toml".into());
    let mut settings = Settings::default();
    let mut errors = Vec::new();
    match fragment::from_toml(text, &origin) {
        Ok(f) => validate::apply(&mut settings, f, &origin, &mut errors),
        Err(e) => errors.push(e),
    }
    for (name, value) in env {
        match fragment::from_env(name, value) {
            Ok(Some(f)) => {
                validate::apply(&mut settings, f, &Origin::Env(name.clone()), &mut errors)
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    for error in &errors {
        let line = error.to_string();
        assert!(!line.contains('\n'), "an error spans lines: {line:?}");
    }
    // Whatever was accepted renders to TOML that loads back the same.
    if errors.is_empty() {
        let rendered = settings.render();
        let mut again = Settings::default();
        let mut errors = Vec::new();
        let f = fragment::from_toml(&rendered, &origin).unwrap();
        validate::apply(&mut again, f, &origin, &mut errors);
        assert_eq!(errors, [], "{rendered}");
        assert_eq!(again, settings, "{rendered}");
    }
    errors.is_empty()
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        try_load(&String::from_utf8_lossy(&bytes), &[]);
    }

    /// Mostly TOML's own punctuation, so that the parser gets further.
    #[test]
    fn random_toml_like_text_never_panics(text in "[\\[\\]=\"'#.,{}\n a-z_0-9+:-]{0,200}") {
        try_load(&text, &[]);
    }

    #[test]
    fn mutated_shipped_file_never_panics(
        edits in prop::collection::vec((any::<Index>(), 0..3u8, any::<u8>()), 1..=8)
    ) {
        let mut bytes = SHIPPED.as_bytes().to_vec();
        for (at, how, byte) in edits {
            let at = at.index(bytes.len());
            match how {
                0 => bytes[at] = byte,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b"[]=\"'#\n0-.x"[usize::from(byte) % 11]),
            }
        }
        try_load(&String::from_utf8_lossy(&bytes), &[]);
    }
}

const KEYS: &[&str] = &[
    "state_dir",
    "filesystem",
    "throttle",
    "throttle.max_mib_per_s",
    "throttle.chunk_mib",
    "throttle.pressure_percent",
    "throttle.min_mib_per_s",
    "throttle.windows",
    "throttle.start_mib_per_s",
    "throttle.write_budget_ssd",
    "throttle.write_budget_hdd",
    "policy.quiet_period",
    "policy.min_size",
    "policy.min_excess_extents",
    "policy.min_score",
    "policy.exclude",
    "policy.reserve_percent",
    "policy.convert_block_mapped",
    "policy.btrfs_extent_thresh",
    "policy.btrfs_nocow",
    "policy.boundary_ms_hdd",
    "policy.boundary_ms_ssd",
    "policy.min_saved_ms_per_gib",
    "crawl.interval",
    "crawl.files_per_second",
    "watch.max_watches",
    "service.log_level",
    "control.socket",
    "control.group",
    "metrics.listen",
    "nope.key",
    "\"x[99999999999]\"",
    "\"a.b\"",
];
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "64",
    "100000",
    "100001",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "nan",
    "-inf",
    "1e308",
    "true",
    "false",
    "\"true\"",
    "\"yes\"",
    "\"\"",
    "\"/\"",
    "\"/srv\"",
    "\"/srv/../x\"",
    "\"rel/path\"",
    "\"30s\"",
    "\"99999999999999999999d\"",
    "\"18446744073709551615s\"",
    "\"1MiB\"",
    "\"16EiB\"",
    "\"99999EiB\"",
    "\"0.5B\"",
    "\"info\"",
    "\"wheel\"",
    "\"a:b\"",
    "\"unix:/run/m.sock\"",
    "\"unix:rel\"",
    "\"127.0.0.1:9321\"",
    "\"[::1]:9321\"",
    "\"0.0.0.0:9321\"",
    "\"[\"",
    "\"**/{a,\"",
    "[]",
    "[\"/srv/db\", 3]",
    "[\"*.tmp\", \"/a/**\"]",
    "[\"01:00-05:00\"]",
    "[\"22:00-06:00\", \"00:00-24:00\"]",
    "[\"24:00-01:00\"]",
    "[\"01:00-01:00\"]",
    "\"01:00-05:00\"",
    "01:00:00",
    "[[1], [\"x\"]]",
    "{}",
    "{ path = \"/srv\" }",
    "[{ path = \"/srv\", watch = [\"/srv/a\"] }, { path = \"/srv\" }]",
    "[{ path = 5 }, 7]",
    "2024-01-01T00:00:00Z",
];

/// An environment variable for a key of `KEYS` with a value of `VALUES`,
/// as a shell would pass it (no TOML quotes around strings).
fn env_entry() -> impl Strategy<Value = (String, String)> {
    (select(KEYS), select(VALUES)).prop_map(|(key, value)| {
        let name = format!("DEFRAGD__{}", key.replace('.', "__").to_uppercase());
        (name, value.trim_matches('"').to_owned())
    })
}

#[test]
fn random_keys_and_values_never_panic() {
    let lines = prop::collection::vec((select(KEYS), select(VALUES)), 0..6);
    let env = prop::collection::vec(env_entry(), 0..3);
    let accepted = std::cell::Cell::new(0);
    runner(3000)
        .run(&(lines, env), |(lines, env)| {
            let text: String = lines
                .iter()
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect();
            accepted.set(accepted.get() + usize::from(try_load(&text, &env)));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    // Some inputs must get through, or the property holds only on the
    // error paths.
    assert!(accepted.get() > 100, "{}", accepted.get());
}

/// A time of day written near the edges of what is valid, so that many
/// windows are valid and many are not.
fn edgy_time() -> impl Strategy<Value = String> {
    let hours = select(&["00", "01", "09", "12", "22", "23", "23", "24", "25", "1"][..]);
    let minutes = select(&["00", "00", "01", "30", "59", "60", "5"][..]);
    let colon = select(&[":", ":", ":", ":", ":", "."][..]);
    (hours, colon, minutes).prop_map(|(h, c, m)| format!("{h}{c}{m}"))
}

#[test]
fn random_windows_never_panic_and_the_file_and_environment_agree() {
    let window = (
        edgy_time(),
        select(&["-", "-", "-", "-", "-", "-", " - ", ""][..]),
        edgy_time(),
    )
        .prop_map(|(start, dash, end)| format!("{start}{dash}{end}"));
    let accepted = std::cell::Cell::new(0);
    runner(3000)
        .run(&prop::collection::vec(window, 0..4), |windows| {
            let list = format!(
                "[{}]",
                windows
                    .iter()
                    .map(|w| fragment::quote(w))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let ok = try_load(&format!("[throttle]\nwindows = {list}\n"), &[]);
            let env = [("DEFRAGD__THROTTLE__WINDOWS".to_owned(), list)];
            prop_assert_eq!(try_load("", &env), ok);
            accepted.set(accepted.get() + usize::from(ok && !windows.is_empty()));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(accepted.get() > 50, "{}", accepted.get());
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    /// Every valid window, written as it displays, is read back the same.
    #[test]
    fn every_window_loads_back_as_it_displays(
        (start, end) in (0..1440u16, 0..=1440u16).prop_filter("an empty window", |(s, e)| s != e)
    ) {
        let origin = Origin::File("/fuzz.toml".into());
        let window = TimeWindow {
            start_minute: start,
            end_minute: end,
        };
        let text = format!("[throttle]\nwindows = [\"{window}\"]\n");
        let mut settings = Settings::default();
        let mut errors = Vec::new();
        let f = fragment::from_toml(&text, &origin).unwrap();
        validate::apply(&mut settings, f, &origin, &mut errors);
        prop_assert_eq!(errors, [], "{}", text);
        prop_assert_eq!(settings.throttle.windows, [window], "{}", text);
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    for depth in [100, 10_000] {
        let text = format!("state_dir = {}{}", "[".repeat(depth), "]".repeat(depth));
        try_load(&text, &[]);
        let env = [("DEFRAGD__POLICY__EXCLUDE".to_owned(), "[".repeat(depth))];
        try_load("", &env);
    }
}
