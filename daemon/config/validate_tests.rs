//! Unit tests of the configuration's validation (validate.rs).

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
        [format!(
            "{f}: control.socket = 5: must be an absolute path, like \"/run/defragd/control.sock\""
        )]
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
