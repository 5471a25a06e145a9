//! Part 6: what defragctl does with whatever a socket answers:
//! `decode_response`, `format::human` and `format::json` never panic, and
//! text from the service cannot forge output lines or drive the terminal.

use super::config_load::{random_text, ByteEdit};
use super::*;

fn text() -> BoxedStrategy<String> {
    random_text(40)
}

/// A path as the service may send it, sometimes with a forged line in it.
fn paths() -> impl Strategy<Value = PathBuf> {
    (random_text(30), proptest::bool::weighted(0.25)).prop_map(|(name, forged)| {
        let mut s = format!("/{name}");
        if forged {
            s.push_str("\ndefragmented /etc/shadow: forged");
        }
        PathBuf::from(s)
    })
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), 0..1u64 << 40, any::<u64>()]
}

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(i64::MAX),
        Just(i64::MIN),
        1_700_000_000..1_700_000_000 + (1i64 << 30),
        any::<i64>(),
    ]
}

prop_compose! {
    fn moving()(path in paths(), moved_bytes in extreme_u64(), total_bytes in extreme_u64()) -> Moving {
        Moving { path, moved_bytes, total_bytes }
    }
}

prop_compose! {
    fn activity()(files_defragmented in extreme_u64(), bytes_moved in extreme_u64()) -> ActivityReport {
        ActivityReport { files_defragmented, bytes_moved }
    }
}

prop_compose! {
    fn fragmentation()(
        score in select(vec![f64::NAN, f64::INFINITY, -1.0, 12.5, 1e300]),
        files in extreme_u64(),
        extents in extreme_u64(),
        ideal_extents in extreme_u64(),
        measured_at in extreme_i64(),
        previous_score in proptest::option::of(select(vec![f64::NAN, f64::NEG_INFINITY, 0.0, 99.9])),
        previous_measured_at in proptest::option::of(extreme_i64()),
    ) -> FragmentationReport {
        FragmentationReport {
            score, files, extents, ideal_extents, measured_at, previous_score, previous_measured_at,
        }
    }
}

prop_compose! {
    fn covered_fs()(
        mount_point in paths(),
        uuid in text(),
        disk in text(),
        fragmentation in proptest::option::of(fragmentation()),
        today in activity(),
        total in activity(),
        tracking in text(),
        tracking_note in proptest::option::of(text()),
        medium in text(),
        medium_source in text(),
        medium_boundary_ms in proptest::option::of(any::<f64>()),
        write_budget_bytes in proptest::option::of(any::<u64>()),
        written_today_bytes in any::<u64>(),
    ) -> CoveredFs {
        CoveredFs {
            subvolume: 0,
            mount_point, uuid, disk, fragmentation, today, total, tracking, tracking_note,
            medium, medium_source, medium_boundary_ms, write_budget_bytes, written_today_bytes,
        }
    }
}

prop_compose! {
    fn status()(
        state in prop_oneof![
            select(vec!["moving", "idle", "paused"]).prop_map(str::to_string),
            text(),
        ],
        summary in text(),
        paused_until in proptest::option::of(extreme_i64()),
        moving in vec(moving(), 0..3),
        queued in extreme_u64(),
        bytes_moved_today in extreme_u64(),
        filesystems in vec(covered_fs(), 0..3),
        today in activity(),
        total in activity(),
    ) -> StatusReport {
        StatusReport {
            state, summary, paused_until, moving, queued, bytes_moved_today, filesystems, today, total,
        }
    }
}

prop_compose! {
    fn queue_entry()(
        id in extreme_i64(),
        path in paths(),
        size_bytes in extreme_u64(),
        extents in extreme_u64(),
        ideal_extents in extreme_u64(),
        score in select(vec![f64::NAN, f64::INFINITY, -1.0, 50.0, 1e300]),
        priority in any::<u64>().prop_map(|n| n as f64),
        state in text(),
        next_block in extreme_u64(),
        attempts in any::<u32>(),
    ) -> QueueEntry {
        QueueEntry {
            id, path, size_bytes, extents, ideal_extents, score, priority, state, next_block, attempts,
        }
    }
}

prop_compose! {
    fn history_line()(
        path in paths(),
        outcome in text(),
        reason_code in proptest::option::of(text()),
        reason in proptest::option::of(text()),
        extents_before in extreme_u64(),
        extents_after in proptest::option::of(extreme_u64()),
        bytes_moved in extreme_u64(),
        finished_at in extreme_i64(),
    ) -> HistoryLine {
        HistoryLine {
            path, outcome, reason_code, reason, extents_before, extents_after, bytes_moved, finished_at,
        }
    }
}

prop_compose! {
    fn defrag_reply()(path in paths(), result in text(), message in text()) -> DefragReply {
        DefragReply { path, result, message }
    }
}

/// What a service may answer, with the most hostile text and figures.
fn response_data() -> impl Strategy<Value = ResponseData> {
    prop_oneof![
        text().prop_map(|message| ResponseData::Done(Done { message })),
        status().prop_map(ResponseData::Status),
        vec(queue_entry(), 0..5).prop_map(ResponseData::Queue),
        vec(history_line(), 0..5).prop_map(ResponseData::History),
        vec(defrag_reply(), 0..5).prop_map(ResponseData::Defrag),
    ]
}

/// Lines `format::human` must print for `data`: one per item, whatever
/// newlines the service's text holds.
fn expected_lines(data: &ResponseData) -> usize {
    match data {
        // Summary, state, moving, queued, moved today, in all, filesystems.
        ResponseData::Status(s) => {
            1 + 1 + s.moving.len().max(1) + 1 + 1 + 1 + s.filesystems.len().max(1)
        }
        ResponseData::Queue(q) if q.is_empty() => 1,
        ResponseData::Queue(q) => 1 + q.len(),
        ResponseData::History(h) if h.is_empty() => 1,
        ResponseData::History(h) => 1 + h.len(),
        ResponseData::Defrag(d) => d.len(),
        ResponseData::Done(_) => 1,
    }
}

/// Response lines a socket may send: well-formed ones, some a few bytes
/// off, and random bytes.
const RESPONSE_LINES: &[&str] = &[
    r#"{"ok":true,"data":{}}"#,
    r#"{"ok":true,"data":[]}"#,
    r#"{"ok":true,"data":null}"#,
    r#"{"ok":true}"#,
    r#"{"ok":false}"#,
    r#"{"ok":false,"error":5}"#,
    r#"{"ok":false,"error":"permission denied: x"}"#,
    r#"{"ok":"yes","data":1}"#,
    r#"[]"#,
    r#"null"#,
    r#"{"ok":true,"data":{"state":"moving","summary":"s","paused_until":9223372036854775807,"moving":[],"queued":1,"bytes_moved_today":2,"filesystems":[]}}"#,
    r#"{"ok":true,"data":[{"id":1,"path":"/x","size_bytes":1,"extents":1,"ideal_extents":1,"score":1.0,"priority":1.0,"state":"q","next_block":0,"attempts":0}]}"#,
    r#"{"ok":true,"data":{"message":"m"}}"#,
];

/// A line of bytes (shown as text, where it is text).
#[derive(Clone)]
struct Line(Vec<u8>);

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn response_lines() -> impl Strategy<Value = Line> {
    let byte = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Set(at, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Insert(at, b)),
        any::<Index>().prop_map(ByteEdit::Remove),
    ];
    let edited = (
        select(RESPONSE_LINES),
        proptest::option::of(vec(byte, 1..=3)),
    )
        .prop_map(|(line, edits)| {
            let mut line = line.as_bytes().to_vec();
            for edit in edits.into_iter().flatten() {
                edit.apply(&mut line);
            }
            line
        });
    prop_oneof![9 => edited, 1 => vec(any::<u8>(), 0..200)].prop_map(Line)
}

#[test]
fn defragctl_output_never_panics_and_cannot_be_forged() {
    let part = Part::new("fuzz/control_format");
    part.check(cases(5000), (response_data(), extreme_i64()), |(data, now)| {
        part.new_case(true);
        let mut bad = Vec::new();
        match catch(|| format::human(&data, now)) {
            Err(p) => bad.push(format!("format::human panicked: {p}")),
            Ok(text) => {
                let lines = text.lines().count();
                let want = expected_lines(&data);
                if lines != want {
                    bad.push(format!(
                        "human output has more lines than items: {lines} lines printed for {want} items (a forged line?): {text:?}"
                    ));
                }
                if text.chars().any(|c| c.is_control() && c != '\n') {
                    bad.push(format!(
                        "a raw control character reaches the terminal: {text:?}"
                    ));
                }
            }
        }
        match catch(|| format::json(&data)) {
            Err(p) => bad.push(format!("format::json panicked: {p}")),
            Ok(text) => {
                if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                    bad.push(format!("--json output is not JSON: {text}"));
                }
            }
        }
        bad
    });
    // A response line as any socket might send it.
    let requests = vec![
        Request::Status,
        Request::Queue { limit: None },
        Request::History { limit: Some(3) },
        Request::Defrag {
            paths: vec![PathBuf::from("/x")],
        },
        Request::Pause { for_secs: None },
        Request::Reload,
    ];
    part.check(
        cases(5000),
        (response_lines(), select(requests)),
        |(line, req)| {
            part.new_case(true);
            match catch(|| client::decode_response(&req, &line.0)) {
                Err(p) => vec![format!("decode_response panicked: {p}")],
                Ok(Ok(defragd::control::Response::Ok { data, .. })) => {
                    match catch(|| format::human(&data, 1_700_000_000)) {
                        Err(p) => {
                            vec![format!("a decoded response makes format::human panic: {p}")]
                        }
                        Ok(_) => Vec::new(),
                    }
                }
                Ok(_) => Vec::new(),
            }
        },
    );
    part.finish();
}
