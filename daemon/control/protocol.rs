//! The control protocol between `defragctl` and the service: one JSON
//! request per line on a unix socket, one JSON response line back. Field
//! names are stable: scripts read them through `defragctl --json`.
//!
//! Every request line gets exactly one response line, errors included.
//! Paths in responses are sent as UTF-8 strings; a file name that is not
//! valid UTF-8 is shown with U+FFFD in place of the bad bytes rather than
//! failing the whole response.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use crate::store::{HistoryEntry, Job};

/// Where the service listens by default.
pub const DEFAULT_SOCKET: &str = "/run/defragd/control.sock";
/// The largest request line accepted; longer ones get an error response.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How many queue or history lines are sent when the request names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// The most queue or history lines one response carries, whatever is asked.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// How the error sent to a refused peer begins; defragctl recognises it to
/// exit with its own status, as it does when the socket itself refuses it.
pub const PERMISSION_DENIED: &str = "permission denied";
/// How the error sent when every connection slot is taken begins.
pub const BUSY: &str = "busy";

/// A request from defragctl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Stop moving (within one chunk) until resumed, or for `for_secs`.
    Pause {
        for_secs: Option<u64>,
    },
    Resume,
    Queue {
        limit: Option<usize>,
    },
    History {
        limit: Option<usize>,
    },
    /// Queue these files (or trees) now, at the highest priority.
    Defrag {
        paths: Vec<PathBuf>,
    },
    Reload,
}

impl Request {
    /// The command word, as sent in `cmd`.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Pause { .. } => "pause",
            Request::Resume => "resume",
            Request::Queue { .. } => "queue",
            Request::History { .. } => "history",
            Request::Defrag { .. } => "defrag",
            Request::Reload => "reload",
        }
    }

    /// Reads a response's `data` as the type this request is answered with.
    /// `ResponseData` is untagged, so on its own an empty list would always
    /// read as an empty queue; the request says which it is.
    pub fn decode_data(&self, data: serde_json::Value) -> serde_json::Result<ResponseData> {
        Ok(match self {
            Request::Status => ResponseData::Status(serde_json::from_value(data)?),
            Request::Queue { .. } => ResponseData::Queue(serde_json::from_value(data)?),
            Request::History { .. } => ResponseData::History(serde_json::from_value(data)?),
            Request::Defrag { .. } => ResponseData::Defrag(serde_json::from_value(data)?),
            Request::Pause { .. } | Request::Resume | Request::Reload => {
                ResponseData::Done(serde_json::from_value(data)?)
            }
        })
    }
}

/// The response to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Ok { ok: bool, data: ResponseData },
    Error { ok: bool, error: String },
}

impl Response {
    pub fn ok(data: ResponseData) -> Self {
        Response::Ok { ok: true, data }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            ok: false,
            error: message.into(),
        }
    }
}

/// Untagged on the wire: read it with `Request::decode_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResponseData {
    Status(StatusReport),
    Queue(Vec<QueueEntry>),
    History(Vec<HistoryLine>),
    Defrag(Vec<DefragReply>),
    Done(Done),
}

/// A plain acknowledgement with a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
}

/// What the service is doing, as `defragctl status` and STATUS= show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// "moving", "checking" (a file is checked before a move, which may
    /// not happen), "idle", "paused" (by the operator), "pressure" (held
    /// back by full I/O pressure), "yielding" (waiting while others use the
    /// disk), "window" (outside the maintenance windows) or "budget" (a
    /// disk's daily write budget spent).
    pub state: String,
    /// The one-line summary (the same text as systemd's STATUS=).
    pub summary: String,
    pub paused_until: Option<i64>,
    pub moving: Vec<Moving>,
    pub queued: u64,
    pub bytes_moved_today: u64,
    pub filesystems: Vec<CoveredFs>,
    /// Jobs that finished since local midnight, on every filesystem.
    #[serde(default)]
    pub today: ActivityReport,
    /// Jobs that finished since the store was made, on every filesystem.
    #[serde(default)]
    pub total: ActivityReport,
}

/// What finished jobs did: files defragmented, bytes moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    pub files_defragmented: u64,
    pub bytes_moved: u64,
}

/// A filesystem's fragmentation as the last crawl pass measured it and
/// moves since changed it, beside the pass before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentationReport {
    /// 0 when every mapped file is in its ideal shape, towards 100 as more
    /// of their extents are excess (`defragd check`'s score, over them all).
    pub score: f64,
    /// Files the pass mapped, their extents and the fewest they fit in.
    pub files: u64,
    pub extents: u64,
    pub ideal_extents: u64,
    /// When that pass ended (unix seconds).
    pub measured_at: i64,
    /// The pass before: its score as moves had left it, and when it ended.
    pub previous_score: Option<f64>,
    pub previous_measured_at: Option<i64>,
}

impl FragmentationReport {
    /// Points gained (positive: more fragmented) since the pass before.
    pub fn change(&self) -> Option<f64> {
        self.previous_score.map(|before| self.score - before)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moving {
    #[serde(serialize_with = "path_lossy")]
    pub path: PathBuf,
    pub moved_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoveredFs {
    #[serde(serialize_with = "path_lossy")]
    pub mount_point: PathBuf,
    /// The filesystem's UUID; for a btrfs subvolume other than the top
    /// level, the subvolume's own.
    pub uuid: String,
    /// The btrfs subvolume covered (5: the top level); 0 elsewhere.
    #[serde(default)]
    pub subvolume: u64,
    pub disk: String,
    /// How written files are found there: "fanotify" (the whole
    /// filesystem), "inotify" (the `watch` trees) or "crawl" (the
    /// background crawl only).
    #[serde(default)]
    pub tracking: String,
    /// Why fanotify is not used there, or not with a mark of its own
    /// (a btrfs subvolume seen through its top level's mark).
    #[serde(default)]
    pub tracking_note: Option<String>,
    /// None until its first crawl pass ends.
    #[serde(default)]
    pub fragmentation: Option<FragmentationReport>,
    #[serde(default)]
    pub today: ActivityReport,
    #[serde(default)]
    pub total: ActivityReport,
    /// What its device is taken to be: "ssd" or "hdd" (empty from a
    /// service that does not say).
    #[serde(default)]
    pub medium: String,
    /// Who said so: "config", "measured", "sysfs" (the rotational flag)
    /// or "assumed".
    #[serde(default)]
    pub medium_source: String,
    /// Where measured: what one extent boundary costs a reader there, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium_boundary_ms: Option<f64>,
    /// Its device's daily write budget in bytes; None for no limit.
    #[serde(default)]
    pub write_budget_bytes: Option<u64>,
    /// Bytes moved on its device since the last local midnight.
    #[serde(default)]
    pub written_today_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: i64,
    #[serde(serialize_with = "path_lossy")]
    pub path: PathBuf,
    pub size_bytes: u64,
    pub extents: u64,
    pub ideal_extents: u64,
    pub score: f64,
    pub priority: f64,
    pub state: String,
    pub next_block: u64,
    /// The job's real failures so far (harmless requeues and waits for
    /// free space are not counted here).
    pub attempts: u32,
}

impl QueueEntry {
    /// `mount_point` is the job's filesystem's, to make the path absolute.
    pub fn from_job(job: &Job, mount_point: Option<&std::path::Path>) -> Self {
        QueueEntry {
            id: job.id.0,
            path: mount_point.map_or_else(|| job.path_hint.clone(), |m| m.join(&job.path_hint)),
            size_bytes: job.size_bytes,
            extents: job.extents_before,
            ideal_extents: job.ideal_extents,
            score: job.score,
            priority: job.priority,
            state: job.state.as_str().to_string(),
            next_block: job.next_block,
            attempts: job.attempts,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryLine {
    #[serde(serialize_with = "path_lossy")]
    pub path: PathBuf,
    pub outcome: String,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub extents_before: u64,
    pub extents_after: Option<u64>,
    pub bytes_moved: u64,
    pub finished_at: i64,
}

impl HistoryLine {
    pub fn from_entry(entry: &HistoryEntry, mount_point: Option<&std::path::Path>) -> Self {
        HistoryLine {
            path: mount_point.map_or_else(|| entry.path.clone(), |m| m.join(&entry.path)),
            outcome: entry.outcome.as_str().to_string(),
            reason_code: entry.reason_code.clone(),
            reason: entry.reason.clone(),
            extents_before: entry.extents_before,
            extents_after: entry.extents_after,
            bytes_moved: entry.bytes_moved,
            finished_at: entry.finished_at,
        }
    }
}

/// What became of one path given to `defragctl defrag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefragReply {
    #[serde(serialize_with = "path_lossy")]
    pub path: PathBuf,
    /// "queued", "left" (the policy or a precondition said no) or "error".
    pub result: String,
    pub message: String,
}

/// A path as a JSON string even when it is not valid UTF-8 (serde_json
/// refuses those, which would fail a whole queue listing for one odd name).
fn path_lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// What the control socket asks of the service. The service implements it;
/// tests use a fake, so the socket and defragctl are tested without root.
pub trait Controller: Send + Sync + 'static {
    fn status(&self) -> StatusReport;
    fn pause(&self, for_secs: Option<u64>) -> Result<Done, String>;
    fn resume(&self) -> Result<Done, String>;
    /// `limit` is at most `MAX_LIST_LIMIT`.
    fn queue(&self, limit: usize) -> Result<Vec<QueueEntry>, String>;
    fn history(&self, limit: usize) -> Result<Vec<HistoryLine>, String>;
    /// Blocking: measures files. Called off the async loop.
    fn defrag(&self, paths: Vec<PathBuf>) -> Vec<DefragReply>;
    fn reload(&self) -> Result<Done, String>;
}
