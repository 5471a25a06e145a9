//! Bad input on the control socket, from both ends.
//!
//! 1. (root) The REAL service (`defragd --config FILE` with its control
//!    socket in the test's dir) while a throttled move runs (1 MiB/s): random
//!    bytes and mutated requests, 1 MiB lines without a newline, half-written
//!    requests then silence, clients dribbling a byte every 100 ms, 100
//!    clients at once, every connection slot taken, and an established client
//!    sending valid requests all along. Throughout, a fresh client's `status`
//!    gets an answer within 2 s (a real status except while more clients than
//!    the service serves at once are connected: then "busy"), the move keeps
//!    making progress (FIEMAP of the file and the status's cursor), the
//!    service never exits, and its RSS and open descriptors come back.
//! 2. (any user) The control socket served in this process with a fake
//!    controller: thousands of random request streams, every request line
//!    answered by exactly one JSON response line, in order.
//! 3. (any user) defragctl against a hostile socket that answers with
//!    garbage: it never panics and exits 0, 1 or 4.
//!
//! Each part is a module: 1. `real_service`, 2. `in_process`, 3.
//! `defragctl`; this file holds the request streams they share.
//!
//! Each part prints one `SUMMARY part=...` line.

use defragd_testkit as common;

mod defragctl;
mod in_process;
mod real_service;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use defragd::control::protocol::{
    Controller, CoveredFs, DefragReply, Done, HistoryLine, QueueEntry, StatusReport,
};
use defragd::control::ControlSocket;
use tokio::sync::watch;

/// The least time each short phase of hostile clients lasts, so that the
/// probe sees it several times.
const PHASE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Request streams.

/// Valid requests that change nothing (no pause, resume or reload).
fn harmless_requests(small_file: &Path) -> Vec<String> {
    vec![
        r#"{"cmd":"status"}"#.to_string(),
        r#"{"cmd":"queue"}"#.to_string(),
        r#"{"cmd":"queue","limit":3}"#.to_string(),
        r#"{"cmd":"history","limit":1000000}"#.to_string(),
        r#"{"cmd":"history"}"#.to_string(),
        format!(
            r#"{{"cmd":"defrag","paths":[{}]}}"#,
            serde_json::to_string(&small_file.to_string_lossy()).unwrap_or_default()
        ),
        r#"{"cmd":"defrag","paths":["/nonexistent/defragd-bad-input"]}"#.to_string(),
    ]
}

/// One byte flipped, inserted or deleted, 1 to 3 times.
fn mutate_bytes(rng: &mut Seeded, line: &[u8]) -> Vec<u8> {
    let mut v = line.to_vec();
    for _ in 0..rng.range(1, 3) {
        let at = rng.below(v.len() as u64 + 1) as usize;
        match rng.below(3) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 => v.insert(at, rng.next_u64() as u8),
            _ if at < v.len() => {
                v.remove(at);
            }
            _ => {}
        }
    }
    v
}

/// A stream of request lines: random bytes, mutated requests and valid
/// ones. Returns the bytes, the number of lines the server must answer,
/// and which of them (by index) are valid requests whose answer must be ok.
fn random_stream(rng: &mut Seeded, valid: &[String]) -> (Vec<u8>, usize, Vec<usize>) {
    let mut data = Vec::new();
    let mut lines = 0;
    let mut must_be_ok = Vec::new();
    let n = rng.range(1, 12);
    for _ in 0..n {
        let mut line = match rng.below(5) {
            0 => {
                let n = rng.below(400) as usize;
                rng.bytes(n)
            }
            1 | 2 => {
                let v = rng.pick(valid).clone();
                mutate_bytes(rng, v.as_bytes())
            }
            3 => {
                let deep = rng.range(1, 5000) as usize;
                let mut v = "[".repeat(deep).into_bytes();
                if rng.chance(1, 2) {
                    v.extend(vec![b'{'; deep]);
                }
                v
            }
            _ => {
                must_be_ok.push(lines);
                rng.pick(valid).clone().into_bytes()
            }
        };
        // A newline inside the garbage splits it into more lines.
        let extra = line.iter().filter(|&&b| b == b'\n').count();
        if extra > 0 && must_be_ok.last() == Some(&lines) {
            must_be_ok.pop();
        }
        lines += extra;
        line.push(b'\n');
        data.extend_from_slice(&line);
        lines += 1;
    }
    if rng.chance(1, 3) {
        // A last line without its newline: answered at the end of the stream.
        let n = rng.range(1, 50) as usize;
        let tail = rng.bytes(n);
        let extra = tail.iter().filter(|&&b| b == b'\n').count();
        lines += extra;
        if !tail.ends_with(b"\n") {
            lines += 1;
        }
        data.extend_from_slice(&tail);
    }
    (data, lines, must_be_ok)
}

/// Checks the responses to one stream; returns what is wrong.
fn judge_stream(ex: &Exchange, lines: usize, must_be_ok: &[usize]) -> Option<String> {
    if ex.lines.len() != lines {
        return Some(format!(
            "{} response lines for {lines} request lines (closed={}, timed_out={}, partial {:?})",
            ex.lines.len(),
            ex.closed,
            ex.timed_out,
            String::from_utf8_lossy(&ex.partial)
        ));
    }
    for (i, line) in ex.lines.iter().enumerate() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Some(format!("response {i} is not JSON ({e}): {line}")),
        };
        match v["ok"].as_bool() {
            Some(true) if v.get("data").is_some() => {}
            Some(false) if v["error"].as_str().is_some_and(|e| !e.is_empty()) => {
                if must_be_ok.contains(&i) {
                    return Some(format!("valid request {i} got an error: {line}"));
                }
            }
            _ => return Some(format!("response {i} is neither ok nor an error: {line}")),
        }
    }
    if !ex.partial.is_empty() {
        return Some(format!(
            "a partial response line: {:?}",
            String::from_utf8_lossy(&ex.partial)
        ));
    }
    None
}
