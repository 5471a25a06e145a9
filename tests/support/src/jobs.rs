//! What the service's log says about its jobs, and waiting for them:
//! shared by the tests that run the service.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{
    check_json, defragctl_bin, fiemap, filefrag_extents, moved_blocks, run_timed, Extent, MIB,
};

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The text after the first `marker` in `line`.
pub fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    let at = line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in log line {line:?}"));
    &line[at + marker.len()..]
}

/// The whole number right after `marker` in `line`.
pub fn number_after(line: &str, marker: &str) -> u64 {
    let rest = after(line, marker);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {marker:?} in log line {line:?}"))
}

/// "96.00 MiB" / "512 B" (indicatif's BinaryBytes, as the service prints
/// sizes) in bytes.
pub fn parse_size(text: &str) -> u64 {
    let mut it = text.split_whitespace();
    let (Some(num), Some(unit)) = (it.next(), it.next()) else {
        panic!("cannot parse size {text:?}");
    };
    let num: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse size {text:?}"));
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unknown unit in size {text:?}"),
    };
    (num * mult).round() as u64
}

/// "defragmented PATH: extents A -> B (X moved)" → (A, B, X bytes).
pub fn parse_defragmented(line: &str) -> (u64, u64, u64) {
    let a = number_after(line, ": extents ");
    let b = number_after(line, " -> ");
    let moved = after(line, " -> ");
    let moved = after(moved, "(");
    let moved = moved
        .strip_suffix(" moved)")
        .unwrap_or_else(|| panic!("cannot parse the moved amount in {line:?}"));
    (a, b, parse_size(moved))
}

pub fn defragmenting(path: &Path) -> String {
    format!("defragmenting {} (", path.display())
}

pub fn defragmented(path: &Path) -> String {
    format!("defragmented {}: ", path.display())
}

/// The ideal extent count of PATH as `defragd check` computes it.
pub fn ideal_extents(path: &Path) -> u64 {
    check_json(false, &[path]).files[0].ideal_extents
}

/// The service's quiet period in these tests (ServiceConfig's default).
pub const QUIET: Duration = Duration::from_secs(2);

/// Sleeps until every one of `paths` was last written more than the quiet
/// period (plus a second of margin) ago, so that a service started now
/// takes them at once instead of deferring them. Returns the time slept.
pub fn wait_until_quiet(paths: &[&Path]) -> Duration {
    let newest = paths
        .iter()
        .map(|p| fs::metadata(p).and_then(|m| m.modified()).expect("mtime"))
        .max()
        .expect("some paths");
    let due = newest + QUIET + Duration::from_secs(1);
    let wait = due
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    sleep(wait);
    wait
}

/// Waits (up to `timeout`) until the service has really moved at least
/// `bytes` of PATH, as FIEMAP shows it (`orig`: its map before); returns
/// the bytes moved by then.
pub fn wait_for_progress(path: &Path, orig: &[Extent], bytes: u64, timeout: Duration) -> u64 {
    let t = Instant::now();
    loop {
        let moved = moved_blocks(orig, &fiemap(path)) * 4096;
        if moved >= bytes {
            eprintln!(
                "{}: {:.1} MiB moved (per FIEMAP) after {:.1}s",
                path.display(),
                moved as f64 / MIB as f64,
                t.elapsed().as_secs_f64()
            );
            return moved;
        }
        assert!(
            t.elapsed() < timeout,
            "{}: the move made no visible progress within {timeout:?} ({moved} bytes moved)",
            path.display()
        );
        sleep(Duration::from_millis(100));
    }
}

/// Whether PATH ended defragmented: about its ideal extent count, or (for
/// big files, whose donor the kernel's allocator sometimes splits even
/// beside a large free extent) at least 16 times fewer extents than before.
/// Ok: its extent count.
pub fn defragmented_verdict(path: &Path, before: u64) -> Result<u64, String> {
    let after = filefrag_extents(path);
    let ideal = ideal_extents(path);
    let bound = (ideal + 2).max(before / 16);
    if after <= bound {
        Ok(after)
    } else {
        Err(format!(
            "{}: {after} extents at the end (before {before}, ideal {ideal}, allowed {bound})",
            path.display()
        ))
    }
}

pub fn assert_defragmented(path: &Path, before: u64) {
    if let Err(e) = defragmented_verdict(path, before) {
        panic!("{e}");
    }
}

/// `defragctl --socket SOCKET ARGS...`, killed and failed past `limit`.
pub fn defragctl(socket: &Path, args: &[&OsStr], limit: Duration) -> (Output, Duration) {
    let mut cmd = Command::new(defragctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    run_timed(&mut cmd, limit)
}
