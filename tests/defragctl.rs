//! `defragctl` as a process: against no service, and against a control
//! socket served in this process by a fake controller (the real service is
//! tested in tests/service.rs).

use defragd_testkit as common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use defragd::control::protocol::{
    Controller, CoveredFs, DefragReply, Done, HistoryLine, Moving, QueueEntry, StatusReport,
};
use defragd::control::ControlSocket;
use tokio::sync::watch;

fn defragctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_defragctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_service_exits_3_and_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let output = defragctl(&socket, &["status"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("defragd is not running on this socket"),
        "{text}"
    );
    assert!(text.contains(&socket.display().to_string()), "{text}");
    // A socket of one's own is not the system service's: starting that
    // one would not make this socket answer (issue 13).
    assert!(!text.contains("systemctl"), "{text}");
    assert!(
        text.contains(&format!("[control] socket = \"{}\"", socket.display())),
        "{text}"
    );
    assert!(output.stdout.is_empty());

    // --json: the error as JSON on stdout, same status.
    let output = defragctl(&socket, &["--json", "queue"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(json["error"]
        .as_str()
        .is_some_and(|e| e.contains("not running")));
}

#[test]
fn usage_errors_exit_2_and_help_documents_the_statuses() {
    let output = defragctl(Path::new("/nonexistent"), &["defrag"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = defragctl(Path::new("/nonexistent"), &["pause", "--for", "soon"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");

    let help = defragctl(Path::new("/nonexistent"), &["--help"]);
    assert!(help.status.success());
    let text = stdout(&help);
    assert!(text.contains("3  the service is not running"), "{text}");
    assert!(text.contains("4  permission denied"), "{text}");
}

/// Answers with fixed data and remembers the paths it was asked to defrag.
#[derive(Default)]
struct Fake {
    defragged: Mutex<Vec<PathBuf>>,
}

impl Controller for Fake {
    fn status(&self) -> StatusReport {
        StatusReport {
            state: "moving".into(),
            summary: "moving /srv/db/big.ibd (50%); 3 queued".into(),
            paused_until: None,
            moving: vec![Moving {
                path: "/srv/db/big.ibd".into(),
                moved_bytes: 1 << 30,
                total_bytes: 2 << 30,
            }],
            queued: 3,
            bytes_moved_today: 5 << 30,
            filesystems: vec![CoveredFs {
                subvolume: 0,
                mount_point: "/srv".into(),
                uuid: "0f0e-uuid".into(),
                disk: "sdb".into(),
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
    fn pause(&self, for_secs: Option<u64>) -> Result<Done, String> {
        Ok(Done {
            message: format!("paused for {for_secs:?} s"),
        })
    }
    fn resume(&self) -> Result<Done, String> {
        Ok(Done {
            message: "resumed".into(),
        })
    }
    fn queue(&self, _limit: usize) -> Result<Vec<QueueEntry>, String> {
        Ok(vec![])
    }
    fn history(&self, _limit: usize) -> Result<Vec<HistoryLine>, String> {
        Ok(vec![])
    }
    fn defrag(&self, paths: Vec<PathBuf>) -> Vec<DefragReply> {
        if let Ok(mut seen) = self.defragged.lock() {
            seen.extend(paths.iter().cloned());
        }
        paths
            .into_iter()
            .map(|path| {
                let failed = path.ends_with("missing");
                DefragReply {
                    path,
                    result: if failed { "error" } else { "queued" }.into(),
                    message: if failed {
                        "no such file"
                    } else {
                        "7 extents, ideal 1"
                    }
                    .into(),
                }
            })
            .collect()
    }
    fn reload(&self) -> Result<Done, String> {
        Err("/etc/defragd/defragd.toml: throttle.rate: expected a size like \"50MiB\"".into())
    }
}

/// A control socket served on its own thread until dropped.
struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Arc<Fake>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    fn start(group: Option<u32>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let fake = Arc::new(Fake::default());
        let controller: Arc<dyn Controller> = fake.clone();
        let (stop, stopped) = watch::channel(false);
        let (ready, bound) = mpsc::channel();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let control = ControlSocket::bind(&path, group).unwrap();
                let _ = ready.send(());
                control.run(controller, stopped).await;
            });
        });
        bound.recv().unwrap();
        Served {
            _dir: dir,
            socket,
            fake,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The gid this test runs as, so the socket lets it in without root.
fn my_gid(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    std::fs::metadata(&probe).unwrap().gid()
}

fn served() -> Served {
    let dir = tempfile::tempdir().unwrap();
    Served::start(Some(my_gid(dir.path())))
}

#[test]
fn status_is_shown_for_people_and_for_scripts() {
    let server = served();
    let output = defragctl(&server.socket, &["status"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        stdout(&output),
        "moving /srv/db/big.ibd (50%); 3 queued\n\
         state        moving\n\
         moving       sdb  50%  1.00 GiB of 2.00 GiB  /srv/db/big.ibd\n\
         queued       3 files\n\
         moved today  5.00 GiB, 0 files defragmented\n\
         in all       0 files, 0 B\n\
         filesystems  /srv  sdb  ssd (sysfs)  0f0e-uuid  score not measured yet  today 0 files, 0 B  in all 0 files, 0 B  writes: whole filesystem\n"
    );

    let output = defragctl(&server.socket, &["--json", "status"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["state"], "moving");
    assert_eq!(json["moving"][0]["moved_bytes"], 1u64 << 30);
    assert_eq!(json["filesystems"][0]["disk"], "sdb");
    assert_eq!(json["filesystems"][0]["tracking"], "fanotify");
    // Added fields, present for scripts before anything was measured.
    assert_eq!(
        json["filesystems"][0]["fragmentation"],
        serde_json::Value::Null
    );
    assert_eq!(json["total"]["files_defragmented"], 0);
    assert_eq!(json["filesystems"][0]["today"]["bytes_moved"], 0);
}

#[test]
fn empty_lists_and_acknowledgements() {
    let server = served();
    let output = defragctl(&server.socket, &["queue"]);
    assert_eq!(stdout(&output), "the queue is empty\n");
    let output = defragctl(&server.socket, &["--json", "history", "--limit", "3"]);
    assert_eq!(stdout(&output), "[]\n");
    let output = defragctl(&server.socket, &["pause", "--for", "10m"]);
    assert_eq!(stdout(&output), "paused for Some(600) s\n");
    let output = defragctl(&server.socket, &["resume"]);
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn a_service_error_exits_1() {
    let server = served();
    let output = defragctl(&server.socket, &["reload"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).starts_with("defragctl: /etc/defragd/defragd.toml: throttle.rate"));
    let output = defragctl(&server.socket, &["--json", "reload"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(json["error"].as_str().unwrap().contains("throttle.rate"));
}

#[test]
fn defrag_sends_absolute_paths_and_fails_if_one_failed() {
    let server = served();
    let cwd = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_defragctl"))
        .arg("--socket")
        .arg(&server.socket)
        .args(["defrag", "data/file", "/srv/missing"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let sent = server.fake.defragged.lock().unwrap().clone();
    assert_eq!(
        sent,
        vec![cwd.path().join("data/file"), PathBuf::from("/srv/missing")]
    );
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("queued  "), "{text}");
    assert!(lines[1].starts_with("error   /srv/missing"), "{text}");
}

/// Runs defragctl as `nobody` (setpriv, from util-linux, switches user).
fn as_nobody(socket: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_defragctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs defragctl as another user")
}

/// Lets anyone reach the socket's directory (a tempdir is 0700).
fn open_dir(server: &Served) {
    let dir = server.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn another_user_is_refused_with_exit_4() {
    if !common::require_root() {
        return;
    }
    // A root-only socket: the file's mode refuses the connection.
    let server = Served::start(None);
    open_dir(&server);
    let output = as_nobody(&server.socket, &["status"]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(stderr(&output).contains("permission denied"), "{output:?}");

    // A socket anyone may open: the service's credential check refuses.
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = as_nobody(&server.socket, &["status"]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert_eq!(
        stderr(&output),
        "defragctl: permission denied: defragctl must run as root\n"
    );
    let output = as_nobody(&server.socket, &["--json", "pause"]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(stdout(&output).contains("\"error\": \"permission denied"));
}
