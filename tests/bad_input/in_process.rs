//! Part 2: the control socket in this process, with a fake controller.

use super::*;

#[derive(Default)]
struct Fake;

impl Controller for Fake {
    fn status(&self) -> StatusReport {
        StatusReport {
            state: "idle".into(),
            summary: "idle".into(),
            paused_until: None,
            moving: vec![],
            queued: 0,
            bytes_moved_today: 0,
            filesystems: vec![CoveredFs {
                subvolume: 0,
                mount_point: "/srv".into(),
                uuid: "u".into(),
                disk: "8:0".into(),
                tracking: "crawl".into(),
                tracking_note: Some("no CAP_SYS_ADMIN".into()),
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
    fn pause(&self, _for_secs: Option<u64>) -> Result<Done, String> {
        Ok(Done {
            message: "paused".into(),
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
        paths
            .into_iter()
            .map(|path| DefragReply {
                path,
                result: "left".into(),
                message: "fake".into(),
            })
            .collect()
    }
    fn reload(&self) -> Result<Done, String> {
        Err("no".into())
    }
}

/// The control socket on its own thread until dropped.
struct InProcess {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl InProcess {
    fn start(idle: Duration) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("control.sock");
        let probe = dir.path().join("whoami");
        std::fs::write(&probe, b"").expect("write");
        let gid = std::fs::metadata(&probe).expect("stat").gid();
        let (stop, stopped) = watch::channel(false);
        let (ready, bound) = mpsc::channel();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let control = ControlSocket::bind(&path, Some(gid)).expect("bind");
                let _ = ready.send(());
                control
                    .with_idle_timeout(idle)
                    .run(Arc::new(Fake), stopped)
                    .await;
            });
        });
        bound.recv().expect("bound");
        InProcess {
            _dir: dir,
            socket,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn every_request_line_gets_exactly_one_response_line() {
    let seed = fuzz_seed("bad_input/socket_in_process");
    let mut rng = Seeded::new(seed);
    let mut tally = Tally::new("bad_input/socket_in_process", Some(seed));
    let server = InProcess::start(secs(5));
    let mut valid = harmless_requests(Path::new("/srv/file"));
    valid.extend([
        r#"{"cmd":"pause","for_secs":60}"#.to_string(),
        r#"{"cmd":"resume"}"#.to_string(),
        r#"{"cmd":"reload"}"#.to_string(),
    ]);
    let streams: Vec<(Vec<u8>, usize, Vec<usize>)> =
        (0..2000).map(|_| random_stream(&mut rng, &valid)).collect();
    let results: Vec<Option<String>> = std::thread::scope(|s| {
        let parts: Vec<_> = streams
            .chunks(500)
            .map(|part| {
                let socket = server.socket.clone();
                s.spawn(move || {
                    part.iter()
                        .map(|(data, lines, ok)| {
                            match exchange(&socket, data, true, None, secs(10)) {
                                Ok(ex) => {
                                    // A valid reload is answered with the fake's error.
                                    let text = String::from_utf8_lossy(data);
                                    let ok: Vec<usize> = ok
                                        .iter()
                                        .copied()
                                        .filter(|i| {
                                            text.split('\n')
                                                .nth(*i)
                                                .is_none_or(|l| !l.contains("reload"))
                                        })
                                        .collect();
                                    judge_stream(&ex, *lines, &ok)
                                }
                                Err(e) => Some(format!("connect: {e}")),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    for (i, r) in results.iter().enumerate() {
        tally.cases += 1;
        tally.faults += 1;
        if let Some(why) = r {
            tally.kind(why);
            tally.fail(format!(
                "stream {i} {:?}: {why}",
                String::from_utf8_lossy(&streams[i].0)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
    }
    tally.finish();
}
