//! Loading from real files in temporary directories: the sources, their
//! order, the errors, and inputs no one should write.

use std::fs;
use std::time::Duration;

use super::settings::MIB;
use super::*;

const SHIPPED: &str = include_str!("../../etc/defragd.toml");

/// A directory holding a main file (if given) and a conf.d beside it.
struct ConfigDir {
    dir: tempfile::TempDir,
}

impl ConfigDir {
    fn new(main: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = main {
            fs::write(dir.path().join("defragd.toml"), text).unwrap();
        }
        ConfigDir { dir }
    }

    fn main(&self) -> PathBuf {
        self.dir.path().join("defragd.toml")
    }

    fn drop_in(&self, name: &str, text: &str) -> PathBuf {
        let conf_d = self.dir.path().join("conf.d");
        fs::create_dir_all(&conf_d).unwrap();
        let path = conf_d.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn load(&self, env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load_from(Some(&self.main()), env)
    }

    fn errors(&self, env: &[(&str, &str)]) -> Vec<String> {
        match self.load(env) {
            Ok(settings) => panic!("expected errors, got {settings:?}"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }
}

#[test]
fn the_shipped_file_is_exactly_the_defaults() {
    let dir = ConfigDir::new(Some(SHIPPED));
    assert_eq!(dir.load(&[]).unwrap(), Settings::default());
}

#[test]
fn the_shipped_file_has_every_key() {
    let rendered = Settings::default().render();
    let keys = rendered
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, _)| key)
        .filter(|key| *key != "filesystem");
    for key in keys.chain(["path", "watch"]) {
        let present = SHIPPED
            .lines()
            .map(|line| line.trim_start_matches(['#', ' ']))
            .any(|line| line.starts_with(&format!("{key} = ")));
        assert!(present, "etc/defragd.toml lacks {key}");
    }
}

#[test]
fn a_missing_default_file_means_the_defaults() {
    let dir = ConfigDir::new(None);
    let settings = load_sources(
        &dir.main(),
        false,
        Vec::new(),
        Vec::new(),
        &mut Sources::default(),
    )
    .unwrap();
    assert_eq!(settings, Settings::default());
}

#[test]
fn drop_ins_apply_even_without_the_main_file() {
    let dir = ConfigDir::new(None);
    dir.drop_in("10-rate.toml", "[throttle]\nmax_mib_per_s = 8\n");
    let settings = load_sources(
        &dir.main(),
        false,
        Vec::new(),
        Vec::new(),
        &mut Sources::default(),
    )
    .unwrap();
    assert_eq!(settings.throttle.max_bytes_per_s.get(), 8 * MIB);
}

#[test]
fn sources_say_what_was_read_or_that_the_defaults_apply() {
    let dir = ConfigDir::new(None);
    let mut sources = Sources::default();
    load_sources(&dir.main(), false, Vec::new(), Vec::new(), &mut sources).unwrap();
    let main = dir.main().display().to_string();
    assert_eq!(
        sources.describe(),
        format!("{main} does not exist and nothing else sets a key: the defaults apply")
    );
    let drop_in = dir.drop_in("10-rate.toml", "[throttle]\nmax_mib_per_s = 8\n");
    let env = vec![(
        "DEFRAGD__CRAWL__FILES_PER_SECOND".to_string(),
        "9".to_string(),
    )];
    let mut sources = Sources::default();
    load_sources(&dir.main(), false, env, Vec::new(), &mut sources).unwrap();
    assert_eq!(
        sources.describe(),
        format!(
            "{main} does not exist; read {}, $DEFRAGD__CRAWL__FILES_PER_SECOND over the defaults",
            drop_in.display()
        )
    );
    fs::write(dir.main(), "").unwrap();
    let mut sources = Sources::default();
    load_sources(&dir.main(), true, Vec::new(), Vec::new(), &mut sources).unwrap();
    assert_eq!(
        sources.describe(),
        format!("read {main}, {}", drop_in.display())
    );
}

#[test]
fn an_unknown_table_hides_no_other_error_in_its_file() {
    let dir = ConfigDir::new(Some(
        "[polcy]\nmin_size = 1\n[throttle]\nmax_mib_per_sec = 3\nchunk_mib = 0\n\
         [[filesystem]]\npath = \"/srv\"\nwatchh = []\n[crawl]\nfiles_per_second = -1\n",
    ));
    let errors = dir.errors(&[]);
    let main = dir.main().display().to_string();
    let expect = [
        format!("{main}: unknown key `polcy` ("),
        format!("{main}: unknown key `throttle.max_mib_per_sec` ("),
        format!("{main}: unknown key `filesystem[0].watchh` ("),
        format!("{main}: throttle.chunk_mib = 0: "),
        format!("{main}: crawl.files_per_second = -1: "),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for start in expect {
        assert!(
            errors.iter().any(|e| e.starts_with(&start)),
            "no error starts with {start:?}: {errors:#?}"
        );
    }
}

#[test]
fn a_missing_named_file_is_an_error() {
    let dir = ConfigDir::new(None);
    let errors = dir.errors(&[]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("{}: cannot read it: ", dir.main().display())),
        "{errors:?}"
    );
}

#[test]
fn drop_ins_apply_in_byte_order_of_names_and_later_wins() {
    let dir = ConfigDir::new(Some("[throttle]\nchunk_mib = 2\nmax_mib_per_s = 10\n"));
    dir.drop_in("10-a.toml", "[throttle]\nchunk_mib = 3\n");
    dir.drop_in("9-c.toml", "[throttle]\nchunk_mib = 5\n");
    dir.drop_in("20-b.toml", "[throttle]\nchunk_mib = 4\n");
    dir.drop_in("a.toml", "[policy]\nmin_score = 50\n");
    dir.drop_in("Z.toml", "[policy]\nmin_score = 20\n");
    // Not drop-ins: hidden, or not *.toml.
    dir.drop_in(".zz-editor.toml", "[throttle]\nchunk_mib = 60\n");
    dir.drop_in("zz.toml.bak", "not toml at all [");
    let settings = dir.load(&[]).unwrap();
    // Bytes, not the locale: "9-c" comes after "20-b", and "a" after "Z".
    assert_eq!(settings.throttle.chunk_bytes.get(), 5 * MIB);
    assert_eq!(settings.policy.min_score, 50.0);
    assert_eq!(settings.throttle.max_bytes_per_s.get(), 10 * MIB);
}

#[test]
fn a_later_filesystem_list_replaces_the_earlier_one() {
    let dir = ConfigDir::new(Some(
        "[[filesystem]]\npath = \"/srv\"\n[[filesystem]]\npath = \"/home\"\n",
    ));
    dir.drop_in(
        "50-only-data.toml",
        "[[filesystem]]\npath = \"/data\"\nwatch = [\"/data/db\"]\n",
    );
    let settings = dir.load(&[]).unwrap();
    assert_eq!(
        settings.filesystems,
        [FilesystemSettings {
            path: "/data".into(),
            watch: vec!["/data/db".into()],
            medium: crate::medium::MediumChoice::Auto,
        }]
    );
}

#[test]
fn a_filesystem_medium_is_auto_ssd_or_hdd() {
    use crate::medium::{Medium, MediumChoice};
    let dir = ConfigDir::new(Some(
        "[[filesystem]]\npath = \"/srv\"\nmedium = \"hdd\"\n[[filesystem]]\npath = \"/data\"\n",
    ));
    let settings = dir.load(&[]).unwrap();
    let media: Vec<_> = settings.filesystems.iter().map(|fs| fs.medium).collect();
    assert_eq!(media, [MediumChoice::Is(Medium::Hdd), MediumChoice::Auto]);
    // Printed back, it reads the same.
    let again = ConfigDir::new(Some(&settings.render()));
    assert_eq!(again.load(&[]).unwrap(), settings);

    let bad = ConfigDir::new(Some(
        "[[filesystem]]\npath = \"/srv\"\nmedium = \"nvme\"\n[[filesystem]]\npath = \"/data\"\nmedium = 0\n",
    ));
    let main = bad.main();
    let f = main.display();
    assert_eq!(
        bad.errors(&[]),
        [
            format!("{f}: filesystem[0].medium = \"nvme\": must be \"auto\", \"sysfs\", \"ssd\" or \"hdd\""),
            format!("{f}: filesystem[1].medium = 0: must be \"auto\", \"sysfs\", \"ssd\" or \"hdd\""),
        ]
    );
}

#[test]
fn the_environment_wins_over_every_file() {
    let dir = ConfigDir::new(Some("state_dir = \"/a\"\n[throttle]\nmax_mib_per_s = 10\n"));
    dir.drop_in(
        "10.toml",
        "[throttle]\nmax_mib_per_s = 20\n[policy]\nquiet_period = \"1m\"\n",
    );
    let settings = dir
        .load(&[
            ("DEFRAGD__THROTTLE__MAX_MIB_PER_S", "32"),
            ("DEFRAGD__STATE_DIR", "/x"),
            ("DEFRAGD__POLICY__QUIET_PERIOD", "2h"),
            ("DEFRAGD__POLICY__EXCLUDE", r#"["/srv/{a,b}/**", "*.tmp"]"#),
            ("DEFRAGD__THROTTLE__PRESSURE_PERCENT", "0"),
            ("DEFRAGD__SERVICE__LOG_LEVEL", "debug"),
            ("DEFRAGD_LOG", "trace"),
            ("PATH", "/usr/bin"),
        ])
        .unwrap();
    assert_eq!(settings.throttle.max_bytes_per_s.get(), 32 * MIB);
    assert_eq!(settings.state_dir, Path::new("/x"));
    assert_eq!(settings.policy.quiet_period, Duration::from_secs(7200));
    assert!(settings.policy.is_excluded(Path::new("/srv/b/c")));
    assert!(settings.policy.is_excluded(Path::new("/srv/c/d.tmp")));
    assert_eq!(settings.throttle.pressure_percent, None);
    assert_eq!(settings.service.log_level, "debug");
}

#[test]
fn a_bad_value_names_the_key_the_file_the_value_and_what_is_allowed() {
    let dir = ConfigDir::new(Some(SHIPPED));
    let drop_in = dir.drop_in("50-fast.toml", "[throttle]\nmax_mib_per_s = 0\n");
    assert_eq!(
        dir.errors(&[]),
        [format!(
            "{}: throttle.max_mib_per_s = 0: must be a whole number from 1 to 100000",
            drop_in.display()
        )]
    );
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let dir = ConfigDir::new(None);
    fs::write(dir.main(), "").unwrap();
    assert_eq!(
        dir.errors(&[("DEFRAGD__THROTTLE__MAX_MIB_PER_S", "fast")]),
        ["environment variable DEFRAGD__THROTTLE__MAX_MIB_PER_S: throttle.max_mib_per_s = \"fast\": \
          must be a whole number from 1 to 100000"]
    );
}

#[test]
fn an_unknown_key_is_named() {
    let dir = ConfigDir::new(Some("[throttle]\nmax_mib_per_sec = 32\n"));
    let errors = dir.errors(&[("DEFRAGD__CRAWL__SPEED", "3")]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!(
            "{}: unknown key `throttle.max_mib_per_sec` (expected one of `max_mib_per_s`",
            dir.main().display()
        )),
        "{errors:?}"
    );
    assert!(
        errors[1]
            .starts_with("environment variable DEFRAGD__CRAWL__SPEED: unknown key `crawl.speed`"),
        "{errors:?}"
    );
}

#[test]
fn every_error_of_every_source_is_reported() {
    let dir = ConfigDir::new(Some(
        "state_dir = \"relative\"\n[throttle]\nchunk_mib = 65\n[crawl]\ninterval = \"1s\"\n",
    ));
    let broken = dir.drop_in("10-broken.toml", "[policy\nmin_score = 1\n");
    let unknown = dir.drop_in("20-typo.toml", "[watch]\nmax_watch = 5\n");
    let errors = dir.errors(&[("DEFRAGD__SERVICE__LOG_LEVEL", "loud")]);
    let main = dir.main().display().to_string();
    assert_eq!(errors.len(), 6, "{errors:#?}");
    assert!(errors[0].starts_with(&format!("{main}: state_dir = \"relative\"")));
    assert!(errors[1].starts_with(&format!("{main}: throttle.chunk_mib = 65")));
    assert!(errors[2].starts_with(&format!("{main}: crawl.interval = \"1s\"")));
    assert!(errors[3].starts_with(&format!("{}: not valid TOML: line 1", broken.display())));
    assert!(errors[4].starts_with(&format!(
        "{}: unknown key `watch.max_watch`",
        unknown.display()
    )));
    assert!(errors[5].starts_with("environment variable DEFRAGD__SERVICE__LOG_LEVEL"));
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let dir = ConfigDir::new(Some(
        "# ok\nstate_dir = \"/x\"\n\n[throttle]\nchunk_mib = \n",
    ));
    let errors = dir.errors(&[]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let expected = format!("{}: not valid TOML: line 5, column ", dir.main().display());
    assert!(errors[0].starts_with(&expected), "{errors:?}");
}

#[test]
fn a_file_that_is_not_utf8_is_an_error() {
    let dir = ConfigDir::new(None);
    fs::write(dir.main(), b"state_dir = \"/\xff\"\n").unwrap();
    assert_eq!(
        dir.errors(&[]),
        [format!(
            "{}: cannot read it: it is not UTF-8 text",
            dir.main().display()
        )]
    );
}

#[test]
fn rendered_settings_load_back_the_same() {
    let dir = ConfigDir::new(Some(
        r#"
        state_dir = "/data/defragd \"quoted\" \\ dir"
        [[filesystem]]
        path = "/srv"
        watch = ["/srv/db", "/srv/logs"]
        [[filesystem]]
        path = "/home"
        [throttle]
        max_mib_per_s = 7
        chunk_mib = 4
        pressure_percent = 12.5
        windows = ["22:00-06:00", "12:05-13:00", "18:00-24:00", "23:00-00:00"]
        [policy]
        quiet_period = "1h 30m 1s 500ms"
        min_size = 1536
        min_excess_extents = 0
        min_score = 0.1
        exclude = ["/srv/{a,b}/**", "*.tmp", "ta\tb"]
        reserve_percent = 0
        convert_block_mapped = true
        [crawl]
        interval = "7d"
        files_per_second = 3
        [watch]
        max_watches = 10
        [service]
        log_level = "trace"
        [control]
        socket = "/run/defragd/ctl \"odd\".sock"
        group = "defrag-admins"
        [metrics]
        listen = "unix:/run/defragd/metrics.sock"
        "#,
    ));
    let settings = dir.load(&[]).unwrap();
    let rendered = settings.render();
    let again = ConfigDir::new(Some(&rendered));
    assert_eq!(again.load(&[]).unwrap(), settings, "{rendered}");
    let defaults = ConfigDir::new(Some(&Settings::default().render()));
    assert_eq!(defaults.load(&[]).unwrap(), Settings::default());
}

#[test]
fn the_environment_sets_the_windows_as_a_list() {
    let dir = ConfigDir::new(Some("[throttle]\nwindows = [\"22:00-06:00\"]\n"));
    let settings = dir
        .load(&[("DEFRAGD__THROTTLE__WINDOWS", r#"["01:00-05:00"]"#)])
        .unwrap();
    assert_eq!(
        settings.throttle.windows,
        [TimeWindow {
            start_minute: 60,
            end_minute: 300,
        }]
    );
    assert!(within_windows(&settings.throttle.windows, 60));
    assert_eq!(minutes_until_open(&settings.throttle.windows, 0), Some(60));
    // [] sets the list empty: moving is allowed at any time again.
    let settings = dir.load(&[("DEFRAGD__THROTTLE__WINDOWS", "[]")]).unwrap();
    assert!(settings.throttle.windows.is_empty());
    // An empty variable is unset, and leaves the file's windows.
    let settings = dir.load(&[("DEFRAGD__THROTTLE__WINDOWS", "")]).unwrap();
    assert_eq!(settings.throttle.windows.len(), 1);
    assert_eq!(settings.throttle.windows[0].to_string(), "22:00-06:00");
}

#[test]
fn a_bad_window_names_the_source_and_keeps_the_earlier_list() {
    let dir = ConfigDir::new(Some("[throttle]\nwindows = [\"22:00-06:00\"]\n"));
    let drop_in = dir.drop_in(
        "50-day.toml",
        "[throttle]\nwindows = [\"09:00-17:00\", \"1:00-2:00\"]\n",
    );
    assert_eq!(
        dir.errors(&[("DEFRAGD__THROTTLE__WINDOWS", "01:00-05:00")]),
        [
            format!(
                "{}: throttle.windows[1] = \"1:00-2:00\": must be a window \"HH:MM-HH:MM\" on the \
                 24-hour clock, two digits each, like \"01:00-05:00\" or \"22:00-06:00\"",
                drop_in.display()
            ),
            "environment variable DEFRAGD__THROTTLE__WINDOWS: throttle.windows = \"01:00-05:00\": \
             must be a list of windows \"HH:MM-HH:MM\" in local time, like [\"01:00-05:00\"], \
             or [] to move at any time"
                .to_owned(),
        ]
    );
    // A later source's list replaces the earlier one whole.
    fs::remove_file(drop_in).unwrap();
    dir.drop_in("50-day.toml", "[throttle]\nwindows = [\"09:00-17:00\"]\n");
    let settings = dir.load(&[]).unwrap();
    assert_eq!(settings.throttle.windows.len(), 1);
    assert_eq!(settings.throttle.windows[0].to_string(), "09:00-17:00");
}

#[test]
fn every_metrics_listen_form_renders_and_loads_back() {
    for listen in [
        "",
        "unix:/run/defragd/metrics.sock",
        "127.0.0.1:9321",
        "127.0.0.53:80",
        "[::1]:9321",
    ] {
        let dir = ConfigDir::new(Some(&format!(
            "[metrics]\nlisten = \"{listen}\"\n[control]\ngroup = \"\"\n"
        )));
        let settings = dir.load(&[]).unwrap();
        let rendered = settings.render();
        assert!(
            rendered.contains(&format!("\nlisten = \"{listen}\"\n")),
            "{rendered}"
        );
        let again = ConfigDir::new(Some(&rendered));
        assert_eq!(again.load(&[]).unwrap(), settings, "{rendered}");
    }
}

#[test]
fn the_environment_sets_control_and_metrics() {
    let dir = ConfigDir::new(Some(
        "[control]\ngroup = \"wheel\"\n[metrics]\nlisten = \"unix:/run/defragd/metrics.sock\"\n",
    ));
    let settings = dir
        .load(&[
            ("DEFRAGD__METRICS__LISTEN", "127.0.0.1:9321"),
            ("DEFRAGD__CONTROL__SOCKET", "/run/d/ctl.sock"),
            ("DEFRAGD__CONTROL__GROUP", "adm"),
        ])
        .unwrap();
    assert_eq!(
        settings.metrics.listen,
        Some(MetricsListen::Tcp("127.0.0.1:9321".parse().unwrap()))
    );
    assert_eq!(settings.control.socket, Path::new("/run/d/ctl.sock"));
    assert_eq!(settings.control.group.as_deref(), Some("adm"));
    // An IPv6 address starts with `[` but is not a list.
    let settings = dir
        .load(&[("DEFRAGD__METRICS__LISTEN", "[::1]:9321")])
        .unwrap();
    assert_eq!(
        settings.metrics.listen,
        Some(MetricsListen::Tcp("[::1]:9321".parse().unwrap()))
    );
    let settings = dir
        .load(&[("DEFRAGD__METRICS__LISTEN", "unix:/run/m.sock")])
        .unwrap();
    assert_eq!(
        settings.metrics.listen,
        Some(MetricsListen::Unix("/run/m.sock".into()))
    );
}

#[test]
fn metrics_on_a_public_address_are_refused_naming_the_key() {
    let dir = ConfigDir::new(Some(SHIPPED));
    let drop_in = dir.drop_in("50-metrics.toml", "[metrics]\nlisten = \"0.0.0.0:9321\"\n");
    let errors = dir.errors(&[("DEFRAGD__METRICS__LISTEN", "[::]:9321")]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!(
            "{}: metrics.listen = \"0.0.0.0:9321\": metrics are only served on loopback or a unix socket",
            drop_in.display()
        )),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(
            "environment variable DEFRAGD__METRICS__LISTEN: metrics.listen = \"[::]:9321\": \
             metrics are only served on loopback or a unix socket"
        ),
        "{errors:?}"
    );
}

#[test]
fn a_relative_control_socket_is_refused() {
    let dir = ConfigDir::new(Some("[control]\nsocket = \"control.sock\"\n"));
    assert_eq!(
        dir.errors(&[]),
        [format!(
            "{}: control.socket = \"control.sock\": must be an absolute path, like \"/run/defragd/control.sock\"",
            dir.main().display()
        )]
    );
}

#[test]
fn a_drop_in_can_turn_group_and_metrics_back_off() {
    let dir = ConfigDir::new(Some(
        "[control]\ngroup = \"wheel\"\n[metrics]\nlisten = \"127.0.0.1:9321\"\n",
    ));
    dir.drop_in(
        "50-off.toml",
        "[control]\ngroup = \"\"\n[metrics]\nlisten = \"\"\n",
    );
    let settings = dir.load(&[]).unwrap();
    assert_eq!(settings.control, ControlSettings::default());
    assert_eq!(settings.metrics, MetricsSettings::default());
}

#[test]
fn convert_block_mapped_is_off_unless_set_to_true() {
    let dir = ConfigDir::new(Some(SHIPPED));
    assert!(!dir.load(&[]).unwrap().policy.convert_block_mapped);
    let drop_in = dir.drop_in("50-convert.toml", "[policy]\nconvert_block_mapped = true\n");
    let settings = dir.load(&[]).unwrap();
    assert!(settings.policy.convert_block_mapped);
    // A later source turns it back off.
    fs::write(&drop_in, "[policy]\nconvert_block_mapped = false\n").unwrap();
    assert_eq!(dir.load(&[]).unwrap(), Settings::default());
}

#[test]
fn convert_block_mapped_takes_only_true_or_false() {
    let dir = ConfigDir::new(Some(SHIPPED));
    let drop_in = dir.drop_in(
        "50-convert.toml",
        "[policy]\nconvert_block_mapped = \"yes\"\n",
    );
    let main = ConfigDir::new(Some("[policy]\nconvert_block_mapped = 1\n"));
    assert_eq!(
        main.errors(&[]),
        [format!(
            "{}: policy.convert_block_mapped = 1: must be true or false",
            main.main().display()
        )]
    );
    for value in ["\"true\"", "\"on\"", "0", "[true]"] {
        fs::write(
            &drop_in,
            format!("[policy]\nconvert_block_mapped = {value}\n"),
        )
        .unwrap();
        assert_eq!(
            dir.errors(&[]),
            [format!(
                "{}: policy.convert_block_mapped = {value}: must be true or false",
                drop_in.display()
            )]
        );
    }
    fs::remove_file(&drop_in).unwrap();
    for (value, shown) in [("yes", "\"yes\""), ("1", "1"), ("on", "\"on\"")] {
        assert_eq!(
            dir.errors(&[("DEFRAGD__POLICY__CONVERT_BLOCK_MAPPED", value)]),
            [format!(
                "environment variable DEFRAGD__POLICY__CONVERT_BLOCK_MAPPED: \
                 policy.convert_block_mapped = {shown}: must be true or false"
            )]
        );
    }
}

#[test]
fn the_environment_sets_convert_block_mapped() {
    let dir = ConfigDir::new(Some(SHIPPED));
    let settings = dir
        .load(&[("DEFRAGD__POLICY__CONVERT_BLOCK_MAPPED", "true")])
        .unwrap();
    assert!(settings.policy.convert_block_mapped);
    // And off again over a file that turns it on.
    dir.drop_in("50-convert.toml", "[policy]\nconvert_block_mapped = true\n");
    let settings = dir
        .load(&[("DEFRAGD__POLICY__CONVERT_BLOCK_MAPPED", "false")])
        .unwrap();
    assert!(!settings.policy.convert_block_mapped);
}

#[test]
fn convert_block_mapped_renders_and_loads_back() {
    for on in [false, true] {
        let dir = ConfigDir::new(Some(&format!("[policy]\nconvert_block_mapped = {on}\n")));
        let settings = dir.load(&[]).unwrap();
        assert_eq!(settings.policy.convert_block_mapped, on);
        let rendered = settings.render();
        assert!(
            rendered.contains(&format!("\nconvert_block_mapped = {on}\n")),
            "{rendered}"
        );
        let again = ConfigDir::new(Some(&rendered));
        assert_eq!(again.load(&[]).unwrap(), settings, "{rendered}");
        let json = serde_json::to_value(&settings).unwrap();
        assert_eq!(json["policy"]["convert_block_mapped"], on);
    }
}

#[test]
fn load_reads_the_process_environment() {
    // No test sets DEFRAGD__* variables in this process, so this is the
    // file alone.
    let dir = ConfigDir::new(Some("[watch]\nmax_watches = 9\n"));
    let settings = load(Some(&dir.main())).unwrap();
    assert_eq!(settings.watch.max_watches.get(), 9);
}

#[test]
fn defragd_variables_are_recognised_in_any_case() {
    assert!(is_defragd_variable(b"DEFRAGD__STATE_DIR"));
    assert!(is_defragd_variable(b"defragd__state_dir"));
    assert!(!is_defragd_variable(b"DEFRAGD_LOG"));
    assert!(!is_defragd_variable(b"DEFRAG"));
    assert!(!is_defragd_variable("DÉFRAGD__X".as_bytes()));
}

#[test]
fn btrfs_policy_defaults_to_32_mib_and_no_nocow_and_is_checked() {
    // The shipped file says the defaults.
    let dir = ConfigDir::new(Some(SHIPPED));
    let policy = dir.load(&[]).unwrap().policy.btrfs;
    assert_eq!(policy.extent_thresh, 32 << 20);
    assert!(!policy.allow_nocow);
    dir.drop_in(
        "50-btrfs.toml",
        "[policy]\nbtrfs_extent_thresh = \"8MiB\"\nbtrfs_nocow = true\n",
    );
    let policy = dir.load(&[]).unwrap().policy.btrfs;
    assert_eq!(policy.extent_thresh, 8 << 20);
    assert!(policy.allow_nocow);
    for bad in ["\"256MiB\"", "\"1KiB\"", "\"lots\""] {
        let main = ConfigDir::new(Some(&format!("[policy]\nbtrfs_extent_thresh = {bad}\n")));
        let message = main.load(&[]).unwrap_err().to_string();
        assert!(
            message.contains("policy.btrfs_extent_thresh"),
            "{bad}: {message}"
        );
    }
}
