//! The metrics endpoint of the real service: scraped over its unix socket
//! with a plain HTTP GET, and parsed as the Prometheus text format.

use defragd_testkit as common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

/// One sample line: `name{labels} value`, the value a number.
fn parse_sample(line: &str) -> Result<(String, f64), String> {
    let (name_and_labels, value) = line
        .rsplit_once(' ')
        .ok_or_else(|| format!("no value: {line:?}"))?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("value is not a number: {line:?}"))?;
    let name = name_and_labels.split('{').next().unwrap_or("");
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return Err(format!("bad metric name: {line:?}"));
    }
    if name_and_labels.contains('{') && !name_and_labels.ends_with('}') {
        return Err(format!("unclosed labels: {line:?}"));
    }
    Ok((name.to_string(), value))
}

#[test]
fn the_metrics_endpoint_serves_prometheus_text() {
    if !require_root() {
        return;
    }
    let img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let home = ServiceHome::new();
    let socket = home.path().join("metrics.sock");
    let mut text =
        ServiceConfig::new(&root, &[]).to_toml(&home.state_dir(), &home.control_socket());
    text.push_str(&metrics_config(&socket));
    home.write_config_text(&text);
    let mut svc = home.start(&[]);
    svc.wait_for_log("serving metrics on", Duration::from_secs(30));
    svc.wait_for_log(&crawl_pass_done(&root), Duration::from_secs(60));

    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = scrape(&socket);
        // The crawl-time gauge is set once the pass is done.
        if !response.contains("defragd_last_crawl_timestamp_seconds 0") || Instant::now() > deadline
        {
            break response;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP head and a body");
    eprintln!("{head}\n{body}");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.trim_end().ends_with("# EOF"),
        "the exposition ends with # EOF:\n{body}"
    );

    let mut samples = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = parse_sample(line).unwrap_or_else(|e| panic!("{e}\n{body}"));
        samples.insert(name, value);
    }
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = line.split_whitespace().nth(3).unwrap_or("");
        assert!(
            ["counter", "gauge"].contains(&kind),
            "unexpected metric type: {line}"
        );
    }
    for name in [
        "defragd_moved_bytes_total",
        "defragd_extents_removed_total",
        "defragd_queue_length",
        "defragd_throttle_state",
        "defragd_throttle_rate_bytes_per_second",
        "defragd_last_crawl_timestamp_seconds",
        "defragd_io_pressure_ratio",
        "defragd_moves_in_progress",
        "defragd_kernel_hold_seconds",
    ] {
        assert!(samples.contains_key(name), "{name} missing:\n{body}");
    }
    assert!(
        samples["defragd_last_crawl_timestamp_seconds"] > 1.0e9,
        "the crawl time is a unix time:\n{body}"
    );

    // Anything but GET /metrics is refused, and the service carries on.
    let mut stream = UnixStream::connect(&socket).expect("connect");
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
        .expect("send");
    let mut refused = String::new();
    stream.read_to_string(&mut refused).expect("read");
    assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
    assert!(scrape(&socket).starts_with("HTTP/1.1 200"));
    svc.stop(Duration::from_secs(10));
}

#[test]
fn sample_lines_are_checked() {
    assert!(parse_sample(r#"defragd_files_total{outcome="skipped",reason="too_small"} 3"#).is_ok());
    assert!(parse_sample("defragd_queue_length x").is_err());
    assert!(parse_sample("9bad 1").is_err());
    assert!(parse_sample("no_value").is_err());
}
