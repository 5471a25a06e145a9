//! The ready-made monitoring in monitoring/: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the
//! dashboard is well-formed, and every `defragd_*` metric the rules, their
//! tests and the dashboard query is one the running service exports. The
//! service run also checks the per-filesystem fragmentation end to end: a
//! crawl pass measures a fragmented file, the move lowers the figure, and
//! `defragctl status --json` and the gauge agree.

use defragd_testkit as common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("monitoring")
        .join(file)
}

const RULES: &str = "defragd.rules.yml";
const RULE_TESTS: &str = "defragd.rules.test.yml";
const DASHBOARD: &str = "defragd.dashboard.json";

/// Every `defragd_…` metric name in `text`: PromQL in rules and panels,
/// series in rule tests. Recording rules would use `defragd:` names, and
/// alert names are CamelCase, so neither is caught.
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("defragd_") {
        let start = at + found;
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let end = start + bytes[start..].iter().take_while(|&&b| word(b)).count();
        if start == 0 || !word(bytes[start - 1]) {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The sample names an exposition can have: a counter family `x` is
/// sampled as `x_total`, a gauge as itself. Families with no sample yet
/// (no file has failed) still have their `# TYPE` line.
fn exported_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            Some(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            })
        })
        .collect()
}

fn read(file: &str) -> String {
    fs::read_to_string(monitoring(file))
        .unwrap_or_else(|e| panic!("cannot read monitoring/{file}: {e}"))
}

#[test]
fn names_are_found_in_promql_and_exposition() {
    let q = queried_metrics(
        r#"up{job="defragd"} == 0 and rate(defragd_moved_bytes_total[5m]) > defragd_queue_length
           DefragdDown nodefragd_x defragd:recorded"#,
    );
    assert_eq!(
        q.into_iter().collect::<Vec<_>>(),
        ["defragd_moved_bytes_total", "defragd_queue_length"]
    );
    let e = exported_metrics(
        "# HELP defragd_files Files\n# TYPE defragd_files counter\n\
         # TYPE defragd_queue_length gauge\ndefragd_queue_length 3\n# EOF\n",
    );
    assert_eq!(
        e.into_iter().collect::<Vec<_>>(),
        ["defragd_files_total", "defragd_queue_length"]
    );
}

#[test]
fn the_rules_pass_promtool_check() {
    let out = run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(monitoring(RULES)),
    );
    eprintln!("{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_rules_pass_their_unit_tests() {
    let out = run_ok(
        Command::new("promtool")
            .arg("test")
            .arg("rules")
            .arg(RULE_TESTS)
            .current_dir(monitoring("")),
    );
    eprintln!("{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_rule_has_severity_summary_and_description() {
    let rules = read(RULES);
    let alerts = rules.matches("- alert: ").count();
    assert!(alerts >= 5, "{alerts} alerts");
    for key in ["severity: ", "summary: ", "description: "] {
        assert_eq!(rules.matches(key).count(), alerts, "{key:?} on every alert");
    }
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_u64()), "{title}: duplicate id");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !queried_metrics(expr).is_empty(),
                "{title}: queries no defragd metric: {expr}"
            );
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "{title}: not filtered by the instance variable: {expr}"
            );
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
    }
    // What the issue asks the dashboard to show.
    let all = read(DASHBOARD);
    for metric in [
        "defragd_moved_bytes_total",
        "defragd_queue_length",
        "defragd_throttle_rate_bytes_per_second",
        "defragd_throttle_state",
        "defragd_io_pressure_ratio",
        "defragd_files_total",
        "defragd_filesystem_fragmentation_ratio",
    ] {
        assert!(all.contains(metric), "the dashboard does not show {metric}");
    }
}

/// `defragctl status --json`.
fn status(socket: &Path) -> serde_json::Value {
    let (out, _) = defragctl(
        socket,
        &[OsStr::new("--json"), OsStr::new("status")],
        secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

#[test]
fn the_service_exports_what_the_monitoring_queries_and_its_fragmentation() {
    if !require_root() {
        return;
    }
    let mut img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let path = root.join("data.bin");
    make_fragmented_files(&root, &[(&path, 16 * MIB, 0x5ca1e)], 2 * MIB).delete_all(&root);
    img.settle();
    let before = filefrag_extents(&path);
    wait_until_quiet(&[&path]);

    let home = ServiceHome::new();
    let socket = home.path().join("metrics.sock");
    let mut text =
        ServiceConfig::new(&root, &[]).to_toml(&home.state_dir(), &home.control_socket());
    text.push_str(&metrics_config(&socket));
    home.write_config_text(&text);
    // A budget on disks too (none by default), so that the budget's series
    // exists whatever the loop device's rotational flag says: a metric with
    // no series is not in the exposition.
    let mut svc = home.start(&[("DEFRAGD__THROTTLE__WRITE_BUDGET_HDD", "100GiB")]);
    svc.wait_for_log(&crawl_pass_done(&root), secs(60));
    let line = svc.wait_for_log(&defragmented(&path), secs(60));
    let (_, after, _) = parse_defragmented(&line);

    // The status and the gauge follow the store within a status tick (2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (report, fs) = loop {
        let report = status(&home.control_socket());
        let fs = report["filesystems"][0].clone();
        let settled = fs["total"]["files_defragmented"] == 1
            && fs["fragmentation"]["extents"].as_u64() < Some(before);
        if settled || Instant::now() > deadline {
            break (report, fs);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let f = &fs["fragmentation"];
    assert!(f.is_object(), "no fragmentation after a pass:\n{report}");
    assert!(f["files"].as_u64() >= Some(1), "{f}");
    // The pass counted the file before or after its move; either way the
    // record shows it as the move left it.
    let extents = f["extents"].as_u64().unwrap_or(u64::MAX);
    let ideal = f["ideal_extents"].as_u64().unwrap_or(0);
    assert!(
        extents >= ideal && extents < before && extents <= after + ideal + 5,
        "extents {extents}, ideal {ideal}, the file {before} -> {after}:\n{f}"
    );
    assert_eq!(fs["total"]["files_defragmented"], 1, "{fs}");
    assert_eq!(report["today"]["files_defragmented"], 1, "{report}");
    assert!(
        report["total"]["bytes_moved"].as_u64() >= Some(16 * MIB),
        "{report}"
    );
    let human = {
        let (out, _) = defragctl(&home.control_socket(), &[OsStr::new("status")], secs(10));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eprintln!("{human}");
    assert!(human.contains("score "), "{human}");
    assert!(human.contains("in all 1 file, "), "{human}");

    // The gauge follows the store at the next status tick (every 2 s).
    let score = f["score"].as_f64().unwrap_or(f64::NAN);
    let gauge = |body: &str| -> Option<f64> {
        let line = body.lines().find(|l| {
            l.starts_with("defragd_filesystem_fragmentation_ratio{")
                && l.contains(&format!("mountpoint=\"{}\"", root.display()))
        })?;
        line.rsplit_once(' ')?.1.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let response = scrape(&socket);
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        let agrees = gauge(&body).is_some_and(|ratio| (ratio * 100.0 - score).abs() < 1e-6);
        if agrees || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let ratio = gauge(&body);
    assert!(
        ratio.is_some_and(|ratio| (ratio * 100.0 - score).abs() < 1e-6),
        "gauge {ratio:?} vs status score {score}:\n{body}"
    );

    let exported = exported_metrics(&body);
    let mut missing = Vec::new();
    for file in [RULES, RULE_TESTS, DASHBOARD] {
        for name in queried_metrics(&read(file)) {
            if !exported.contains(&name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exported:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );
    svc.stop(secs(10));
}
