//! `defragctl`'s side of the control socket: one blocking request and its
//! response, with errors an operator can act on (is the service running, am
//! I allowed, did it answer). It knows nothing about how answers are shown.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::protocol::{Request, Response, DEFAULT_SOCKET, MAX_REQUEST_BYTES, PERMISSION_DENIED};

/// defragctl's exit status when the service answered with an error (or the
/// exchange with it failed).
pub const EXIT_SERVICE_ERROR: u8 = 1;
/// defragctl's exit status for a usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// defragctl's exit status when the service is not running.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// defragctl's exit status when the socket or the service refused it.
pub const EXIT_PERMISSION_DENIED: u8 = 4;

/// The largest response read; a queue of `MAX_LIST_LIMIT` lines is far less.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// What to do when nothing answers on `socket`: start the system service
/// when it is the system service's socket; else say what would listen there.
fn not_running_advice(socket: &Path) -> String {
    if socket == Path::new(DEFAULT_SOCKET) {
        "start it with `systemctl start defragd`".into()
    } else {
        format!(
            "a service listens there only when its config says `[control] socket = \"{}\"`: \
             start defragd with that config (defragd --config FILE), or leave out --socket to \
             reach the system service at {DEFAULT_SOCKET}",
            crate::escape::escaped(socket)
        )
    }
}

/// Why a request got no usable response.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "{} ({} {}); {}",
        if socket == Path::new(DEFAULT_SOCKET) { "the defragd service is not running" } else { "defragd is not running on this socket" },
        if *stale { "nothing listens on" } else { "no socket at" },
        crate::escape::escaped(socket),
        not_running_advice(socket)
    )]
    NotRunning {
        socket: PathBuf,
        /// The socket file exists but nothing accepts on it.
        stale: bool,
    },
    /// The socket file's mode refused us, or the service did.
    #[error("{0}")]
    PermissionDenied(String),
    #[error(
        "the defragd service did not answer on {} within {}; it may be overloaded \
         (see `journalctl -u defragd`)",
        socket.display(),
        humantime::format_duration(*after)
    )]
    Timeout { socket: PathBuf, after: Duration },
    #[error(
        "the service's answer could not be understood: {0}; \
         are defragctl and defragd from the same version?"
    )]
    Protocol(String),
    #[error("cannot talk to the defragd service on {}: {source}", socket.display())]
    Io { socket: PathBuf, source: io::Error },
}

impl ClientError {
    /// The status defragctl exits with for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } => EXIT_NOT_RUNNING,
            ClientError::PermissionDenied(_) => EXIT_PERMISSION_DENIED,
            ClientError::Timeout { .. } | ClientError::Protocol(_) | ClientError::Io { .. } => {
                EXIT_SERVICE_ERROR
            }
        }
    }
}

/// Sends one request and waits for its response. `timeout` bounds each wait
/// for the service (to connect is immediate on a unix socket). An error the
/// service sends because it refused our credentials is returned as
/// `ClientError::PermissionDenied`, like a refusal by the socket's mode.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let io_err = |source: io::Error| classify(socket, source, timeout);
    let stream = UnixStream::connect(socket).map_err(io_err)?;
    // A zero timeout means "none" to the OS; the caller meant "short".
    let timeout = timeout.max(Duration::from_millis(1));
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;

    let mut line = serde_json::to_string(req)
        .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
    line.push('\n');
    // A service that refuses us answers and closes before reading, which
    // can fail the write; its answer still says more than the write error.
    let sent = (&stream).write_all(line.as_bytes());

    let mut answer = Vec::new();
    let read = BufReader::new(&stream)
        .take(MAX_RESPONSE_BYTES)
        .read_until(b'\n', &mut answer);
    match (read, sent) {
        (Ok(_), _) if answer.ends_with(b"\n") => decode_response(req, &answer),
        (Err(e), _) => Err(io_err(e)),
        (Ok(_), Err(e)) => Err(io_err(e)),
        (Ok(n), Ok(())) if n as u64 >= MAX_RESPONSE_BYTES => Err(ClientError::Protocol(format!(
            "the response is longer than {MAX_RESPONSE_BYTES} bytes"
        ))),
        (Ok(0), Ok(())) => Err(ClientError::Protocol(
            "the service closed the connection without answering".to_string(),
        )),
        (Ok(_), Ok(())) => Err(ClientError::Protocol(
            "the service closed the connection in the middle of its answer".to_string(),
        )),
    }
}

/// `defrag` requests for `paths`, as many as needed to keep each line
/// within `MAX_REQUEST_BYTES`, in order.
pub fn defrag_requests(paths: Vec<PathBuf>) -> Vec<Request> {
    // `{"cmd":"defrag","paths":[]}` and the newline, with room to spare.
    const BUDGET: usize = MAX_REQUEST_BYTES - 64;
    let mut requests = Vec::new();
    let mut batch: Vec<PathBuf> = Vec::new();
    let mut used = 0;
    for path in paths {
        // Quoted and escaped as JSON, plus its comma.
        let cost = serde_json::to_string(&path).map_or(BUDGET, |s| s.len() + 1);
        if !batch.is_empty() && used + cost > BUDGET {
            requests.push(Request::Defrag {
                paths: std::mem::take(&mut batch),
            });
            used = 0;
        }
        used += cost;
        batch.push(path);
    }
    if !batch.is_empty() {
        requests.push(Request::Defrag { paths: batch });
    }
    requests
}

/// Reads one response line to `req`.
pub fn decode_response(req: &Request, line: &[u8]) -> Result<Response, ClientError> {
    let protocol = |what: String| ClientError::Protocol(what);
    let mut value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| protocol(format!("the response is not valid JSON ({e})")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| protocol("the response is not a JSON object".to_string()))?;
    match object.get("ok") {
        Some(serde_json::Value::Bool(true)) => {
            let data = object
                .remove("data")
                .ok_or_else(|| protocol("the response has no \"data\"".to_string()))?;
            let data = req.decode_data(data).map_err(|e| {
                protocol(format!(
                    "the {} response's data is not as expected ({e})",
                    req.cmd()
                ))
            })?;
            Ok(Response::ok(data))
        }
        Some(serde_json::Value::Bool(false)) => {
            let error = object
                .get("error")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| protocol("the error response has no \"error\" text".to_string()))?;
            if error.starts_with(PERMISSION_DENIED) {
                return Err(ClientError::PermissionDenied(error.to_string()));
            }
            Ok(Response::error(error))
        }
        _ => Err(protocol(
            "the response has no \"ok\" true or false".to_string(),
        )),
    }
}

/// Turns an I/O error into what it means for an operator.
fn classify(socket: &Path, source: io::Error, timeout: Duration) -> ClientError {
    let socket = socket.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound => ClientError::NotRunning {
            socket,
            stale: false,
        },
        io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            socket,
            stale: true,
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(format!(
            "{PERMISSION_DENIED}: cannot connect to {}; run defragctl as root (or as a member \
             of the group the service allows)",
            socket.display()
        )),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            socket,
            after: timeout,
        },
        _ => ClientError::Io { socket, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{Done, ResponseData};

    #[test]
    fn empty_lists_read_as_what_was_asked() {
        let history = Request::History { limit: None };
        let response = decode_response(&history, br#"{"ok":true,"data":[]}"#).ok();
        assert_eq!(response, Some(Response::ok(ResponseData::History(vec![]))));
        let defrag = Request::Defrag { paths: vec![] };
        let response = decode_response(&defrag, br#"{"ok":true,"data":[]}"#).ok();
        assert_eq!(response, Some(Response::ok(ResponseData::Defrag(vec![]))));
    }

    #[test]
    fn errors_and_refusals() {
        let response = decode_response(&Request::Reload, br#"{"ok":false,"error":"bad key"}"#);
        assert_eq!(response.ok(), Some(Response::error("bad key")));
        let refused = decode_response(
            &Request::Status,
            br#"{"ok":false,"error":"permission denied: defragctl must run as root"}"#,
        );
        assert!(matches!(refused, Err(ClientError::PermissionDenied(_))));
        assert_eq!(
            refused.err().map(|e| e.exit_code()),
            Some(EXIT_PERMISSION_DENIED)
        );
    }

    #[test]
    fn wrong_shapes_are_protocol_errors() {
        for line in [
            &b"not json"[..],
            b"[]",
            br#"{"data":{}}"#,
            br#"{"ok":true}"#,
            br#"{"ok":false}"#,
            br#"{"ok":true,"data":{"message":1}}"#,
        ] {
            let result = decode_response(&Request::Resume, line);
            assert!(matches!(result, Err(ClientError::Protocol(_))), "{line:?}");
        }
        let done = decode_response(&Request::Resume, br#"{"ok":true,"data":{"message":"ok"}}"#);
        assert_eq!(
            done.ok(),
            Some(Response::ok(ResponseData::Done(Done {
                message: "ok".into()
            })))
        );
    }

    #[test]
    fn many_paths_are_split_into_requests_that_fit() {
        let paths: Vec<PathBuf> = (0..5000)
            .map(|i| PathBuf::from(format!("/srv/data/some/deep/tree/file-{i:05}")))
            .collect();
        let requests = defrag_requests(paths.clone());
        assert!(requests.len() > 1);
        let mut rejoined = Vec::new();
        for req in requests {
            let line = serde_json::to_string(&req).unwrap();
            assert!(line.len() < MAX_REQUEST_BYTES, "{}", line.len());
            match req {
                Request::Defrag { paths } => rejoined.extend(paths),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rejoined, paths);
        assert_eq!(defrag_requests(vec!["/a".into()]).len(), 1);
        assert!(defrag_requests(vec![]).is_empty());
    }

    #[test]
    fn a_missing_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = request(&socket, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_NOT_RUNNING);
        let text = err.to_string();
        assert!(text.contains("not running"), "{text}");
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(!text.contains("systemctl"), "{text}");
        assert!(text.contains("[control] socket"), "{text}");
        let default = ClientError::NotRunning {
            socket: PathBuf::from(DEFAULT_SOCKET),
            stale: false,
        }
        .to_string();
        assert!(default.contains("systemctl start defragd"), "{default}");
    }

    #[test]
    fn a_socket_nobody_listens_on_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let err = request(&socket, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(err, ClientError::NotRunning { stale: true, .. }),
            "{err}"
        );
    }
}
