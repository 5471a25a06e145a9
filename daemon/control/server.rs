//! The service's side of the control socket: binds it with the right owner
//! and mode, checks each peer's credentials, reads request lines and answers
//! them through the `Controller`. It owns connection limits and timeouts, so
//! that no client, slow or hostile, can stall the accept loop, another
//! client or the service. It never decides anything about files itself.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::escape::{escaped, escaped_display};

use super::protocol::{
    Controller, Request, Response, ResponseData, BUSY, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
    MAX_REQUEST_BYTES, PERMISSION_DENIED,
};

/// Connections served at once; one more is answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection may take to send a whole request line (or stay
/// idle between requests) before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response may take to be taken by the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the "busy" answer may take before the connection is dropped.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for an existing socket to accept before binding.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause a request may ask for; longer is a typo, not a plan.
const MAX_PAUSE_SECS: u64 = 366 * 24 * 3600;

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("the control socket must be bound inside the tokio runtime (a bug in defragd; please report it)")]
    NoRuntime,
    #[error(
        "cannot create {}, the control socket's directory: {source}; \
         the service must run as root (systemd's RuntimeDirectory=defragd creates it)",
        dir.display()
    )]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot inspect {}: {source}; check the control socket's path", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error(
        "{} exists and is not a socket; move it away or configure another control socket path",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "another defragd is running: it answers on {}; stop it (`systemctl stop defragd`) \
         before starting another, or give this one another control socket path",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error("cannot tell whether another defragd listens on {}: {source}", path.display())]
    Probe { path: PathBuf, source: io::Error },
    #[error(
        "cannot remove the stale control socket {} left by an earlier run: {source}; remove it by hand",
        path.display()
    )]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error(
        "cannot listen on {}: {source}; check that its directory is writable by the service",
        path.display()
    )]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "cannot set the owner and mode of {}: {source}; the service must run as root to give \
         the socket to another group",
        path.display()
    )]
    Access { path: PathBuf, source: io::Error },
    #[error("cannot look up group {name:?}: {source}")]
    ReadGroups { name: String, source: io::Error },
    #[error(
        "group {name:?} does not exist; create it (`groupadd {name}`) or configure \
         another group in control.group"
    )]
    UnknownGroup { name: String },
}

/// Whether a peer may use the socket: root always; anyone else only when a
/// group is allowed and `groups` (primary and supplementary) include it.
pub fn peer_allowed(uid: u32, groups: &[u32], allowed_group: Option<u32>) -> bool {
    uid == 0 || allowed_group.is_some_and(|gid| groups.contains(&gid))
}

/// The gid of a group given by name or number, for the configured group
/// (looked up through NSS, so directory-service groups are found too).
pub fn resolve_group(name: &str) -> Result<u32, ControlError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(ControlError::UnknownGroup {
            name: name.to_string(),
        }),
        Err(errno) => Err(ControlError::ReadGroups {
            name: name.to_string(),
            source: io::Error::from(errno),
        }),
    }
}

/// A group's name for messages, or its number when it has none.
fn group_label(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => format!("with gid {gid}"),
    }
}

/// The group allowed besides root.
#[derive(Debug, Clone)]
struct AllowedGroup {
    gid: u32,
    label: String,
}

/// The bound control socket, ready to `run`.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file we bound, so that on exit we
    /// remove only our own.
    identity: (u64, u64),
    allowed: Option<AllowedGroup>,
    idle_timeout: Duration,
}

impl ControlSocket {
    /// Binds the socket at `path`: root-only (0600), or 0660 owned by
    /// `allowed_group` (a gid) when one is given. A socket left by an earlier
    /// run is replaced; one another defragd answers on is an error. Must be
    /// called inside the tokio runtime.
    pub fn bind(path: &Path, allowed_group: Option<u32>) -> Result<ControlSocket, ControlError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ControlError::NoRuntime);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir)?;
        }
        clear_stale(path)?;
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                ControlError::AlreadyRunning {
                    path: path.to_path_buf(),
                }
            } else {
                ControlError::Bind {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let set_up = set_access(path, allowed_group)
            .and_then(|()| fs::symlink_metadata(path))
            .and_then(|meta| {
                listener.set_nonblocking(true)?;
                Ok((meta.dev(), meta.ino()))
            });
        let identity = match set_up {
            Ok(identity) => identity,
            Err(source) => {
                let _ = fs::remove_file(path);
                return Err(ControlError::Access {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let listener = UnixListener::from_std(listener).map_err(|source| {
            let _ = fs::remove_file(path);
            ControlError::Bind {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            identity,
            allowed: allowed_group.map(|gid| AllowedGroup {
                gid,
                label: group_label(gid),
            }),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `DEFAULT_IDLE_TIMEOUT` (tests use a short one).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> ControlSocket {
        self.idle_timeout = timeout;
        self
    }

    /// Serves connections until `stop` turns true (or its sender is
    /// dropped), then removes the socket file. Open connections are closed
    /// once they are waiting for their next request.
    pub async fn run(self, controller: Arc<dyn Controller>, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let conn = Arc::new(Connection {
            controller,
            allowed: self.allowed.clone(),
            idle_timeout: self.idle_timeout,
        });
        while !*stop.borrow() {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                        Ok(slot) => {
                            tokio::spawn(Arc::clone(&conn).serve(stream, slot, stop.clone()));
                        }
                        Err(_) => {
                            tokio::spawn(refuse_busy(stream));
                        }
                    },
                    Err(e) => {
                        tracing::warn!("control socket: cannot accept a connection: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        self.remove_own_socket();
    }

    fn remove_own_socket(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(
                        "cannot remove the control socket {}: {e}",
                        escaped(&self.path)
                    );
                }
            }
            // Gone, or replaced by someone else's: not ours to remove.
            _ => {}
        }
    }
}

/// Creates the socket's directory (0755, whatever the umask) if missing.
fn create_dir(dir: &Path) -> Result<(), ControlError> {
    let err = |source| ControlError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(err)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Removes a socket file nobody listens on; refuses to touch anything else.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    match someone_listens(path) {
        Ok(true) => Err(ControlError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Ok(false) => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ControlError::RemoveStale {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        },
        Err(source) => Err(ControlError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether something accepts connections on the socket at `path`. A blocking
/// connect waits while the listener's backlog is full, so it runs on its own
/// thread; one that does not finish in time means a (stuck) listener.
pub(crate) fn someone_listens(path: &Path) -> io::Result<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    let target = path.to_path_buf();
    std::thread::Builder::new()
        .name("ctl-probe".into())
        .spawn(move || {
            let _ = tx.send(std::os::unix::net::UnixStream::connect(&target).map(drop));
        })?;
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            Ok(false)
        }
        Ok(Err(e)) => Err(e),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(true),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
            "the connection probe ended without an answer",
        )),
    }
}

/// 0600, or 0660 with the allowed group as the file's group.
fn set_access(path: &Path, allowed_group: Option<u32>) -> io::Result<()> {
    let mode = match allowed_group {
        None => 0o600,
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            0o660
        }
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Answers a connection over the limit and drops it.
async fn refuse_busy(mut stream: UnixStream) {
    let response = Response::error(format!(
        "{BUSY}: {MAX_CONNECTIONS} defragctl connections are already open; try again in a moment"
    ));
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, write_response(&mut stream, &response)).await;
}

/// What every connection shares.
struct Connection {
    controller: Arc<dyn Controller>,
    allowed: Option<AllowedGroup>,
    idle_timeout: Duration,
}

impl Connection {
    /// One connection, from the credential check to its close. `_slot`
    /// holds its place among `MAX_CONNECTIONS` until it returns.
    async fn serve(
        self: Arc<Self>,
        mut stream: UnixStream,
        _slot: OwnedSemaphorePermit,
        mut stop: watch::Receiver<bool>,
    ) {
        if let Err(refusal) = self.check_peer(&stream) {
            let response = Response::error(refusal);
            let _ =
                tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut stream, &response)).await;
            return;
        }
        let (read, mut write) = stream.split();
        let mut reader = BufReader::new(read);
        let mut line = Vec::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let read = tokio::select! {
                _ = stop.changed() => return,
                read = tokio::time::timeout(
                    self.idle_timeout,
                    read_request_line(&mut reader, &mut line, MAX_REQUEST_BYTES),
                ) => read,
            };
            let (response, close) = match read {
                // Idle or too slow to send a line: close without a word.
                Err(_) => return,
                Ok(Err(_)) | Ok(Ok(LineRead::Eof)) => return,
                Ok(Ok(LineRead::TooLong)) => (
                    Response::error(format!(
                        "request too long: a request line may be at most {MAX_REQUEST_BYTES} bytes; \
                         for many paths, send several defrag requests"
                    )),
                    true,
                ),
                Ok(Ok(LineRead::Line)) => (self.answer(&line).await, false),
            };
            let written =
                tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut write, &response)).await;
            if close || !matches!(written, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// Checks the peer's credentials; the refusal to send otherwise.
    fn check_peer(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = stream.peer_cred().map_err(|e| {
            format!("{PERMISSION_DENIED}: cannot read the client's credentials: {e}")
        })?;
        let uid = cred.uid();
        let mut groups = vec![cred.gid()];
        if uid != 0 && self.allowed.is_some() {
            if let Some(supplementary) = cred.pid().and_then(|pid| supplementary_groups(pid, uid)) {
                groups.extend(supplementary);
            }
        }
        if peer_allowed(uid, &groups, self.allowed.as_ref().map(|g| g.gid)) {
            return Ok(());
        }
        tracing::warn!(
            "control socket: refused a client running as uid {uid} (pid {})",
            cred.pid()
                .map_or_else(|| "unknown".to_string(), |p| p.to_string())
        );
        Err(match &self.allowed {
            Some(group) => format!(
                "{PERMISSION_DENIED}: defragctl must run as root or as a member of group {}",
                group.label
            ),
            None => format!("{PERMISSION_DENIED}: defragctl must run as root"),
        })
    }

    /// The response to one request line.
    async fn answer(&self, line: &[u8]) -> Response {
        match parse_request(line) {
            Ok(request) => dispatch(Arc::clone(&self.controller), request).await,
            Err(message) => Response::error(message),
        }
    }
}

/// The supplementary groups of process `pid`, from /proc/PID/status, if
/// it still runs as `uid` (a pid reused since the connect is not trusted).
fn supplementary_groups(pid: i32, uid: u32) -> Option<Vec<u32>> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let status = parse_proc_status(&text);
    (status.euid == Some(uid)).then_some(status.groups)
}

/// What the peer check reads from /proc/PID/status.
#[derive(Debug, Default, PartialEq)]
struct ProcStatus {
    euid: Option<u32>,
    groups: Vec<u32>,
}

fn parse_proc_status(text: &str) -> ProcStatus {
    let mut status = ProcStatus::default();
    for line in text.lines() {
        if let Some(uids) = line.strip_prefix("Uid:") {
            // Real, effective, saved, filesystem.
            status.euid = uids.split_whitespace().nth(1).and_then(|u| u.parse().ok());
        } else if let Some(groups) = line.strip_prefix("Groups:") {
            status.groups = groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        }
    }
    status
}

/// How reading one request line ended.
#[derive(Debug, PartialEq)]
enum LineRead {
    /// A line (without its newline) is in the buffer. A last line without
    /// a newline before the end of the stream counts too.
    Line,
    /// The line is longer than allowed; the rest was not read.
    TooLong,
    /// The client closed the connection between requests.
    Eof,
}

/// Reads one line into `line`, never holding more than `max` bytes of it.
async fn read_request_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], end + 1, true),
            None => (available, available.len(), false),
        };
        if line.len() + chunk.len() > max {
            return Ok(LineRead::TooLong);
        }
        line.extend_from_slice(chunk);
        reader.consume(used);
        if complete {
            return Ok(LineRead::Line);
        }
    }
}

/// The request in a line, or an error message naming what is wrong with it.
fn parse_request(line: &[u8]) -> Result<Request, String> {
    const EXAMPLE: &str = r#"send one JSON object per line, e.g. {"cmd":"status"}"#;
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("empty request: {EXAMPLE}"));
    }
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| format!("malformed request: not valid JSON ({e}); {EXAMPLE}"))?;
    if !value.is_object() {
        return Err(format!("malformed request: not a JSON object; {EXAMPLE}"));
    }
    if value.get("cmd").is_none() {
        return Err(format!("malformed request: no \"cmd\" field; {EXAMPLE}"));
    }
    let request = Request::deserialize(&value).map_err(|e| format!("bad request: {e}"))?;
    // serde ignores extra fields next to the tag of a variant without
    // fields ({"cmd":"status","force":true}); a typo must not pass silently.
    let known = serde_json::to_value(&request).unwrap_or_default();
    let unknown = value
        .as_object()
        .and_then(|fields| fields.keys().find(|k| known.get(k.as_str()).is_none()));
    match unknown {
        Some(field) => Err(format!(
            "bad request: unknown field `{field}` for cmd `{}`",
            request.cmd()
        )),
        None => Ok(request),
    }
}

/// Runs a request on the controller, off the async threads: every call may
/// touch the store or a filesystem, and a panic in one stays in it.
async fn dispatch(controller: Arc<dyn Controller>, request: Request) -> Response {
    let cmd = request.cmd();
    match tokio::task::spawn_blocking(move || call(controller.as_ref(), request)).await {
        Ok(Ok(data)) => Response::ok(data),
        Ok(Err(message)) => Response::error(message),
        Err(e) => {
            tracing::error!(
                "control socket: the {cmd} request failed: {}",
                escaped_display(&e)
            );
            Response::error(format!(
                "internal error while answering {cmd}; see the service's log (`journalctl -u defragd`)"
            ))
        }
    }
}

fn call(controller: &dyn Controller, request: Request) -> Result<ResponseData, String> {
    let limit = |asked: Option<usize>| asked.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
    match request {
        Request::Status => Ok(ResponseData::Status(controller.status())),
        Request::Pause {
            for_secs: Some(secs),
        } if secs == 0 || secs > MAX_PAUSE_SECS => Err(format!(
            "cannot pause for {secs} s: give between 1 s and {} days, or no duration to pause until resumed",
            MAX_PAUSE_SECS / (24 * 3600)
        )),
        Request::Pause { for_secs } => controller.pause(for_secs).map(ResponseData::Done),
        Request::Resume => controller.resume().map(ResponseData::Done),
        Request::Queue { limit: asked } => controller.queue(limit(asked)).map(ResponseData::Queue),
        Request::History { limit: asked } => {
            controller.history(limit(asked)).map(ResponseData::History)
        }
        Request::Defrag { paths } if paths.is_empty() => {
            Err("defrag needs at least one path".to_string())
        }
        Request::Defrag { paths } => Ok(ResponseData::Defrag(controller.defrag(paths))),
        Request::Reload => controller.reload().map(ResponseData::Done),
    }
}

/// Writes one response line.
async fn write_response<W: AsyncWrite + Unpin>(out: &mut W, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).unwrap_or_else(|e| {
        tracing::error!("control socket: cannot encode a response: {e}");
        r#"{"ok":false,"error":"internal error: the response could not be encoded; see the service's log"}"#
            .to_string()
    });
    text.push('\n');
    out.write_all(text.as_bytes()).await?;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if `run` can be spawned, as the service does.
    #[allow(dead_code)]
    fn run_is_send(socket: ControlSocket, c: Arc<dyn Controller>, stop: watch::Receiver<bool>) {
        drop(tokio::spawn(socket.run(c, stop)));
    }

    #[test]
    fn root_is_always_allowed() {
        assert!(peer_allowed(0, &[0], None));
        assert!(peer_allowed(0, &[], Some(1234)));
    }

    #[test]
    fn others_need_the_allowed_group() {
        assert!(!peer_allowed(1000, &[1000], None));
        assert!(!peer_allowed(1000, &[1000, 27], Some(1234)));
        assert!(peer_allowed(1000, &[1234], Some(1234)));
        assert!(peer_allowed(1000, &[1000, 4, 1234], Some(1234)));
        assert!(!peer_allowed(1000, &[], Some(1234)));
    }

    #[test]
    fn proc_status_gives_effective_uid_and_groups() {
        let text = "Name:\tcat\nUid:\t1000\t1001\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
                    Groups:\t4 24 27 1234 \nNgid:\t0\n";
        assert_eq!(
            parse_proc_status(text),
            ProcStatus {
                euid: Some(1001),
                groups: vec![4, 24, 27, 1234]
            }
        );
        let none = parse_proc_status("Uid:\t5\t5\t5\t5\nGroups:\t\n");
        assert_eq!(none.euid, Some(5));
        assert!(none.groups.is_empty());
    }

    #[test]
    fn groups_are_found_by_name() {
        assert_eq!(resolve_group("root").ok(), Some(0));
        assert!(matches!(
            resolve_group("no-such-group-defragd"),
            Err(ControlError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn numeric_group_needs_no_lookup() {
        assert_eq!(resolve_group("4321").ok(), Some(4321));
    }

    #[test]
    fn requests_parse_or_say_why_not() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(br#"{"cmd":"pause"}"#),
            Ok(Request::Pause { for_secs: None })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"queue","limit":3}"#),
            Ok(Request::Queue { limit: Some(3) })
        );
        let unknown = parse_request(br#"{"cmd":"frobnicate"}"#).unwrap_err();
        assert!(unknown.contains("frobnicate"), "{unknown}");
        let extra = parse_request(br#"{"cmd":"status","force":true}"#).unwrap_err();
        assert!(extra.contains("unknown field `force`"), "{extra}");
        let typo = parse_request(br#"{"cmd":"queue","limt":3}"#).unwrap_err();
        assert!(typo.contains("limt"), "{typo}");
        assert_eq!(
            parse_request(br#"{"cmd":"queue","limit":null}"#),
            Ok(Request::Queue { limit: None })
        );
        assert!(parse_request(b"{nope")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_request(b"[1,2]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_request(br#"{"limit":1}"#)
            .unwrap_err()
            .contains("cmd"));
        assert!(parse_request(b"  ").unwrap_err().contains("empty request"));
        let deep = "[".repeat(10_000);
        assert!(parse_request(deep.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let input: &[u8] = b"abc\n\nlast";
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        assert_eq!(
            read_request_line(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::Line)
        );
        assert_eq!(line, b"abc");
        assert_eq!(
            read_request_line(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::Line)
        );
        assert_eq!(line, b"");
        assert_eq!(
            read_request_line(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::Line)
        );
        assert_eq!(line, b"last");
        assert_eq!(
            read_request_line(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::Eof)
        );

        let long: &[u8] = b"123456789\n";
        let mut reader = BufReader::with_capacity(4, long);
        assert_eq!(
            read_request_line(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::TooLong)
        );
        let exact: &[u8] = b"12345678\n";
        let mut reader = BufReader::with_capacity(3, exact);
        assert_eq!(
            read_request_line(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::Line)
        );
        assert_eq!(line, b"12345678");
    }
}
