//! The control socket end to end, against a fake controller, as any user:
//! every request over a real socket, bad and hostile clients, limits, and
//! how the socket file is made and cleaned up.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::client::{request, ClientError};
use super::protocol::*;
use super::server::{ControlError, ControlSocket, MAX_CONNECTIONS};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Status,
    Pause(Option<u64>),
    Resume,
    Queue(usize),
    History(usize),
    Defrag(Vec<PathBuf>),
    Reload,
}

/// Records each call and answers with canned data.
#[derive(Debug, Default)]
struct FakeController {
    calls: Mutex<Vec<Call>>,
}

impl FakeController {
    fn record(&self, call: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn canned_status() -> StatusReport {
    StatusReport {
        state: "moving".into(),
        summary: "moving 1 file".into(),
        paused_until: None,
        moving: vec![Moving {
            path: "/srv/a".into(),
            moved_bytes: 10,
            total_bytes: 20,
        }],
        queued: 3,
        bytes_moved_today: 4096,
        filesystems: vec![CoveredFs {
            subvolume: 0,
            mount_point: "/srv".into(),
            uuid: "u-1".into(),
            disk: "sda".into(),
            tracking: "fanotify".into(),
            tracking_note: None,
            fragmentation: None,
            today: Default::default(),
            total: Default::default(),
            medium: "ssd".into(),
            medium_source: "sysfs".into(),
            medium_boundary_ms: None,
            write_budget_bytes: None,
            written_today_bytes: 0,
        }],
        today: Default::default(),
        total: Default::default(),
    }
}

fn canned_queue() -> Vec<QueueEntry> {
    vec![QueueEntry {
        id: 1,
        path: "/srv/a".into(),
        size_bytes: 20,
        extents: 9,
        ideal_extents: 1,
        score: 0.75,
        priority: 1.5,
        state: "running".into(),
        next_block: 2,
        attempts: 1,
    }]
}

fn canned_history() -> Vec<HistoryLine> {
    vec![HistoryLine {
        path: "/srv/b".into(),
        outcome: "skipped".into(),
        reason_code: Some("busy".into()),
        reason: Some("the file was being written".into()),
        extents_before: 4,
        extents_after: None,
        bytes_moved: 0,
        finished_at: 1_700_000_000,
    }]
}

impl Controller for FakeController {
    fn status(&self) -> StatusReport {
        self.record(Call::Status);
        canned_status()
    }
    fn pause(&self, for_secs: Option<u64>) -> Result<Done, String> {
        self.record(Call::Pause(for_secs));
        Ok(Done {
            message: "paused".into(),
        })
    }
    fn resume(&self) -> Result<Done, String> {
        self.record(Call::Resume);
        Ok(Done {
            message: "resumed".into(),
        })
    }
    fn queue(&self, limit: usize) -> Result<Vec<QueueEntry>, String> {
        self.record(Call::Queue(limit));
        Ok(canned_queue())
    }
    fn history(&self, limit: usize) -> Result<Vec<HistoryLine>, String> {
        self.record(Call::History(limit));
        Ok(if limit == 0 { vec![] } else { canned_history() })
    }
    fn defrag(&self, paths: Vec<PathBuf>) -> Vec<DefragReply> {
        self.record(Call::Defrag(paths.clone()));
        paths
            .into_iter()
            .map(|path| DefragReply {
                path,
                result: "queued".into(),
                message: "9 extents, ideal 1".into(),
            })
            .collect()
    }
    fn reload(&self) -> Result<Done, String> {
        self.record(Call::Reload);
        Err("the config is not valid: throttle.rate: expected a size".into())
    }
}

/// The uid and gid this test runs as (nix's `user` feature is not built).
fn me(dir: &Path) -> (u32, u32) {
    let probe = dir.join("whoami");
    std::fs::write(&probe, b"").unwrap();
    let meta = std::fs::metadata(&probe).unwrap();
    (meta.uid(), meta.gid())
}

/// A control socket served on its own thread and runtime, so the tests can
/// be plain blocking clients.
struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    fake: Arc<FakeController>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Allowed to us through our primary group, so it works as any user.
    fn start() -> Server {
        Server::start_with(Duration::from_secs(10), true)
    }

    fn start_with(idle: Duration, allow_my_group: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/control.sock");
        let group = allow_my_group.then(|| me(dir.path()).1);
        let (stop, stopped) = watch::channel(false);
        let thread = serve(path.clone(), group, idle, stopped).unwrap();
        Server {
            _dir: dir,
            path,
            fake: thread.1,
            stop,
            thread: Some(thread.0),
        }
    }

    fn ask(&self, req: &Request) -> Response {
        request(&self.path, req, TIMEOUT).unwrap()
    }

    /// Stops the server and waits until it has removed its socket.
    fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

type Served = (JoinHandle<()>, Arc<FakeController>);

/// Binds on a new thread and runs until `stop`; returns once bound.
fn serve(
    path: PathBuf,
    group: Option<u32>,
    idle: Duration,
    stop: watch::Receiver<bool>,
) -> Result<Served, ControlError> {
    let fake = Arc::new(FakeController::default());
    let controller: Arc<dyn Controller> = fake.clone();
    let (ready, bound) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            match ControlSocket::bind(&path, group) {
                Ok(socket) => {
                    let _ = ready.send(Ok(()));
                    socket.with_idle_timeout(idle).run(controller, stop).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
    });
    match bound.recv() {
        Ok(Ok(())) => Ok((thread, fake)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => panic!("the server thread died before binding"),
    }
}

/// A raw connection, to send what defragctl never would.
struct Raw {
    stream: StdStream,
    reader: BufReader<StdStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = StdStream::connect(path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next response line, parsed; `None` at end of stream.
    fn response(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        (n > 0).then(|| serde_json::from_str(&line).unwrap())
    }

    fn error(&mut self) -> String {
        let response = self.response().expect("a response line");
        assert_eq!(response["ok"], false, "{response}");
        response["error"].as_str().unwrap().to_string()
    }
}

fn ok_data(response: Response) -> ResponseData {
    match response {
        Response::Ok { ok: true, data } => data,
        other => panic!("expected an ok response, got {other:?}"),
    }
}

#[test]
fn every_request_round_trips() {
    let server = Server::start();
    assert_eq!(
        ok_data(server.ask(&Request::Status)),
        ResponseData::Status(canned_status())
    );
    assert_eq!(
        ok_data(server.ask(&Request::Pause { for_secs: None })),
        ResponseData::Done(Done {
            message: "paused".into()
        })
    );
    ok_data(server.ask(&Request::Pause {
        for_secs: Some(600),
    }));
    assert_eq!(
        ok_data(server.ask(&Request::Resume)),
        ResponseData::Done(Done {
            message: "resumed".into()
        })
    );
    assert_eq!(
        ok_data(server.ask(&Request::Queue { limit: None })),
        ResponseData::Queue(canned_queue())
    );
    ok_data(server.ask(&Request::Queue {
        limit: Some(usize::MAX),
    }));
    assert_eq!(
        ok_data(server.ask(&Request::History { limit: Some(5) })),
        ResponseData::History(canned_history())
    );
    // An empty list still reads as history, not as an empty queue.
    assert_eq!(
        ok_data(server.ask(&Request::History { limit: Some(0) })),
        ResponseData::History(vec![])
    );
    let paths = vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b c")];
    match ok_data(server.ask(&Request::Defrag {
        paths: paths.clone(),
    })) {
        ResponseData::Defrag(replies) => {
            assert_eq!(replies.len(), 2);
            assert_eq!(replies[1].path, paths[1]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.ask(&Request::Reload),
        Response::error("the config is not valid: throttle.rate: expected a size")
    );
    assert_eq!(
        server.fake.calls(),
        vec![
            Call::Status,
            Call::Pause(None),
            Call::Pause(Some(600)),
            Call::Resume,
            Call::Queue(DEFAULT_LIST_LIMIT),
            Call::Queue(MAX_LIST_LIMIT),
            Call::History(5),
            Call::History(0),
            Call::Defrag(paths),
            Call::Reload,
        ]
    );
}

#[test]
fn requests_the_service_must_not_see_are_answered_by_the_socket() {
    let server = Server::start();
    for req in [
        Request::Pause { for_secs: Some(0) },
        Request::Pause {
            for_secs: Some(u64::MAX),
        },
        Request::Defrag { paths: vec![] },
    ] {
        match server.ask(&req) {
            Response::Error { ok: false, error } => assert!(!error.is_empty()),
            other => panic!("{req:?} got {other:?}"),
        }
    }
    assert_eq!(server.fake.calls(), vec![]);
}

#[test]
fn bad_requests_get_an_error_and_the_connection_stays_usable() {
    let server = Server::start();
    let mut raw = Raw::connect(&server.path);
    raw.send(b"{\"cmd\": \"status\"\n");
    let error = raw.error();
    assert!(error.contains("not valid JSON"), "{error}");
    raw.send(b"{\"cmd\":\"frobnicate\"}\n");
    let error = raw.error();
    assert!(error.contains("unknown variant `frobnicate`"), "{error}");
    raw.send(b"{\"cmd\":\"queue\",\"limit\":-1}\n");
    assert!(!raw.error().is_empty());
    raw.send(b"\n");
    assert!(raw.error().contains("empty request"));
    raw.send(b"\xff\xfe\n");
    assert!(raw.error().contains("not valid JSON"));
    raw.send(b"{\"cmd\":\"status\"}\r\n{\"cmd\":\"resume\"}\n");
    let status = raw.response().unwrap();
    assert_eq!(status["ok"], true);
    assert_eq!(status["data"]["summary"], "moving 1 file");
    assert_eq!(raw.response().unwrap()["data"]["message"], "resumed");
}

#[test]
fn an_overlong_line_gets_an_error_and_the_server_carries_on() {
    let server = Server::start();
    let mut raw = Raw::connect(&server.path);
    let mut writer = raw.stream.try_clone().unwrap();
    // Written from another thread: the server stops reading and closes.
    let flood = std::thread::spawn(move || {
        let big = vec![b'a'; MAX_REQUEST_BYTES + 4096];
        let _ = writer.write_all(&big);
        let _ = writer.write_all(b"\n");
    });
    let error = raw.error();
    assert!(error.contains("too long"), "{error}");
    assert!(raw.response().is_none(), "the connection should be closed");
    let _ = flood.join();
    ok_data(server.ask(&Request::Status));

    // Exactly the limit is accepted (and is then just bad JSON).
    let mut raw = Raw::connect(&server.path);
    let mut line = vec![b' '; MAX_REQUEST_BYTES - 2];
    line.extend_from_slice(b"{}");
    line.push(b'\n');
    raw.send(&line);
    assert!(raw.error().contains("no \"cmd\""));
}

#[test]
fn a_stalled_client_does_not_hold_up_others_and_is_closed() {
    let server = Server::start_with(Duration::from_secs(1), true);
    let mut stalled = Raw::connect(&server.path);
    stalled.send(b"{\"cmd\":\"sta");
    let started = Instant::now();
    ok_data(server.ask(&Request::Status));
    // Served while the stalled one is still waited for, not after it was
    // given up on: its connection is still open.
    stalled.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let still_open = matches!(
        stalled.stream.read(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(still_open, "served only after {:?}", started.elapsed());
    stalled.stream.set_nonblocking(false).unwrap();
    // Idle past the timeout: closed without an answer.
    assert!(stalled.response().is_none());
    assert!(started.elapsed() < TIMEOUT);
}

#[test]
fn a_client_that_never_reads_does_not_hold_up_others() {
    let server = Server::start();
    let greedy = Raw::connect(&server.path);
    // Many requests, no reads: the server's writes to it fill up and stall.
    let line = b"{\"cmd\":\"queue\"}\n".repeat(20_000);
    let mut writer = greedy.stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = writer.write_all(&line);
    // The server's write to it times out only after 10 s.
    let started = Instant::now();
    ok_data(server.ask(&Request::Status));
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    greedy.stream.shutdown(std::net::Shutdown::Both).unwrap();
}

#[test]
fn fifty_concurrent_clients_all_get_answers() {
    let server = Arc::new(Server::start());
    let barrier = Arc::new(Barrier::new(50));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let server = Arc::clone(&server);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                request(&server.path, &Request::Status, TIMEOUT)
            })
        })
        .collect();
    let mut served = 0;
    for client in clients {
        match client.join().unwrap() {
            Ok(Response::Ok { .. }) => served += 1,
            Ok(Response::Error { error, .. }) => assert!(error.starts_with(BUSY), "{error}"),
            Err(e) => panic!("a client got no answer: {e}"),
        }
    }
    assert!(
        served >= MAX_CONNECTIONS.min(50) / 2,
        "only {served} served"
    );
}

#[test]
fn connections_over_the_limit_are_told_busy() {
    let server = Server::start();
    let mut held: Vec<Raw> = (0..MAX_CONNECTIONS)
        .map(|_| Raw::connect(&server.path))
        .collect();
    let mut extra = Raw::connect(&server.path);
    let error = extra.error();
    assert!(error.starts_with(BUSY), "{error}");
    assert!(extra.response().is_none());
    // The held ones are still served.
    held[0].send(b"{\"cmd\":\"status\"}\n");
    assert_eq!(held[0].response().unwrap()["ok"], true);
    drop(held);
    // Once they close, their slots are free again.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match server.ask(&Request::Status) {
            Response::Ok { .. } => break,
            Response::Error { error, .. } => {
                assert!(
                    error.starts_with(BUSY) && Instant::now() < deadline,
                    "{error}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn socket_is_root_only_by_default_and_refuses_others() {
    let server = Server::start_with(Duration::from_secs(10), false);
    let meta = std::fs::metadata(&server.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(server.path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o755);
    let (uid, _) = me(server._dir.path());
    let result = request(&server.path, &Request::Status, TIMEOUT);
    if uid == 0 {
        assert!(matches!(result, Ok(Response::Ok { .. })));
    } else {
        match result {
            Err(ClientError::PermissionDenied(message)) => {
                assert_eq!(message, "permission denied: defragctl must run as root")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(server.fake.calls(), vec![]);
    }
}

#[test]
fn an_allowed_group_gets_a_group_socket() {
    let server = Server::start();
    let meta = std::fs::metadata(&server.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), me(server._dir.path()).1);
    ok_data(server.ask(&Request::Status));
}

#[test]
fn a_supplementary_group_is_enough() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = me(dir.path());
    let supplementary = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .and_then(|g| {
            g.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok())
                .find(|&g| g != gid)
        });
    let Some(group) = supplementary.filter(|_| uid != 0) else {
        eprintln!("skipped: this user has no supplementary group (or is root)");
        return;
    };
    let path = dir.path().join("control.sock");
    let (stop, stopped) = watch::channel(false);
    let (thread, _) = serve(path.clone(), Some(group), Duration::from_secs(10), stopped).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().gid(), group);
    assert!(matches!(
        request(&path, &Request::Status, TIMEOUT),
        Ok(Response::Ok { .. })
    ));
    let _ = stop.send(true);
    let _ = thread.join();
}

#[test]
fn a_stale_socket_is_replaced_and_removed_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    drop(StdListener::bind(&path).unwrap());
    assert!(path.exists());
    let gid = me(dir.path()).1;
    let (stop, stopped) = watch::channel(false);
    let (thread, _) = serve(path.clone(), Some(gid), Duration::from_secs(10), stopped).unwrap();
    assert!(matches!(
        request(&path, &Request::Status, TIMEOUT),
        Ok(Response::Ok { .. })
    ));
    let _ = stop.send(true);
    let _ = thread.join();
    assert!(!path.exists(), "the socket should be removed on stop");
}

#[test]
fn binding_where_another_server_listens_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let _other = StdListener::bind(&path).unwrap();
    let (_stop, stopped) = watch::channel(false);
    let err = serve(path.clone(), None, TIMEOUT, stopped).unwrap_err();
    assert!(matches!(err, ControlError::AlreadyRunning { .. }));
    assert!(
        err.to_string().starts_with("another defragd is running"),
        "{err}"
    );
    // The other one's socket is left alone.
    assert!(StdStream::connect(&path).is_ok());

    // And against a real ControlSocket.
    let server = Server::start();
    let (_stop, stopped) = watch::channel(false);
    let err = serve(server.path.clone(), None, TIMEOUT, stopped).unwrap_err();
    assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
    ok_data(server.ask(&Request::Status));
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    std::fs::write(&path, b"precious").unwrap();
    let (_stop, stopped) = watch::channel(false);
    let err = serve(path.clone(), None, TIMEOUT, stopped).unwrap_err();
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn binding_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = ControlSocket::bind(&dir.path().join("s.sock"), None).unwrap_err();
    assert!(matches!(err, ControlError::NoRuntime));
}

#[test]
fn a_client_that_hangs_up_mid_request_does_no_harm() {
    let server = Server::start();
    for bytes in [
        &b"{\"cmd\":\"defrag\",\"paths\":[\"/a\""[..],
        b"",
        b"{\"cmd\":\"status\"}",
    ] {
        let mut raw = Raw::connect(&server.path);
        raw.send(bytes);
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = raw.reader.read_to_end(&mut rest);
    }
    ok_data(server.ask(&Request::Status));
}
