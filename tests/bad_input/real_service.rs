//! Part 1: the real service under hostile control clients keeps answering
//! its probe and keeps moving.

use super::*;

/// What the probe saw, per phase.
#[derive(Debug, Default, Clone)]
struct ProbeStats {
    ok: u64,
    busy: u64,
    error: Vec<String>,
    no_answer: Vec<String>,
    slowest: Duration,
    late: u64,
}

/// The phase the suite is in, for the probe's records.
struct Phase(Mutex<&'static str>);

impl Phase {
    fn set(&self, name: &'static str) {
        eprintln!("--- phase {name}");
        *self.0.lock().unwrap() = name;
    }
    fn get(&self) -> &'static str {
        *self.0.lock().unwrap()
    }
}

/// A fresh client asking `status` every 250 ms until `stop`.
/// The status's cursor of the file being moved, in the order seen.
type Cursors = Arc<Mutex<Vec<u64>>>;

fn spawn_probe(
    socket: PathBuf,
    phase: Arc<Phase>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<std::collections::BTreeMap<&'static str, ProbeStats>>>,
    cursors: Cursors,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let name = phase.get();
            let (answer, took) = status_once(&socket, secs(2) + Duration::from_millis(500));
            let mut all = stats.lock().unwrap();
            let s = all.entry(name).or_default();
            s.slowest = s.slowest.max(took);
            if took > secs(2) {
                s.late += 1;
            }
            match answer {
                StatusAnswer::Ok(data) => {
                    s.ok += 1;
                    if let Some(c) = data["moving"]
                        .as_array()
                        .and_then(|m| m.first())
                        .and_then(|m| m["moved_bytes"].as_u64())
                    {
                        cursors.lock().unwrap().push(c);
                    }
                }
                StatusAnswer::Busy => s.busy += 1,
                StatusAnswer::Error(e) => s.error.push(e),
                StatusAnswer::NoAnswer(e) => s.no_answer.push(format!("after {took:?}: {e}")),
            }
            drop(all);
            sleep(Duration::from_millis(250));
        }
    })
}

/// An established client sending valid requests all along on one
/// connection; counts answers and failures until `stop`.
fn spawn_steady_client(
    socket: PathBuf,
    requests: Vec<String>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e) => {
                failures.lock().unwrap().push(format!("connect: {e}"));
                return;
            }
        };
        let _ = stream.set_read_timeout(Some(secs(5)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut writer = stream;
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let req = &requests[i % requests.len()];
            i += 1;
            if let Err(e) = writer.write_all(format!("{req}\n").as_bytes()) {
                failures.lock().unwrap().push(format!("write {req}: {e}"));
                return;
            }
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("the service closed the steady client at {req}"));
                    return;
                }
                Ok(_) => {
                    let ok = serde_json::from_str::<serde_json::Value>(&line)
                        .is_ok_and(|v| v["ok"] == true);
                    if ok {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{req} answered {}", line.trim()));
                    }
                }
                Err(e) => {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("read after {req}: {e}"));
                    return;
                }
            }
            sleep(Duration::from_millis(50));
        }
    })
}

/// Samples how much of the file FIEMAP shows moved, every 500 ms.
fn spawn_progress_sampler(
    path: PathBuf,
    orig: Vec<Extent>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<(Instant, u64)>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let moved = moved_blocks(&orig, &fiemap(&path)) * 4096;
            samples.push((Instant::now(), moved));
            sleep(Duration::from_millis(500));
        }
        samples
    })
}

/// A client that connects, sends `data` and keeps the connection open
/// without a word more; reports when (and how) the service closed it.
struct Holder {
    stream: UnixStream,
    since: Instant,
}

impl Holder {
    fn open(socket: &Path, data: &[u8]) -> std::io::Result<Holder> {
        let mut stream = UnixStream::connect(socket)?;
        stream.write_all(data)?;
        Ok(Holder {
            stream,
            since: Instant::now(),
        })
    }

    /// Waits until the service closes the connection (at most `limit`
    /// after it was opened); returns how long it stayed open and what the
    /// service sent first.
    fn wait_closed(mut self, limit: Duration) -> (Option<Duration>, String) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = limit.saturating_sub(self.since.elapsed());
            if left.is_zero() {
                return (None, String::from_utf8_lossy(&got).into_owned());
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) if self.since.elapsed() < limit => {
                    return (
                        Some(self.since.elapsed()),
                        String::from_utf8_lossy(&got).into_owned(),
                    )
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (None, String::from_utf8_lossy(&got).into_owned()),
            }
        }
    }
}

/// A client that dribbles `data` one byte every 100 ms, then reads one
/// response line (or until closed).
fn dribble(socket: &Path, data: &[u8], limit: Duration) -> Result<Exchange, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let t = Instant::now();
    for b in data {
        if stream.write_all(&[*b]).is_err() {
            break; // closed by the service
        }
        sleep(Duration::from_millis(100));
        if t.elapsed() > limit {
            break;
        }
    }
    let mut ex = Exchange::default();
    read_lines(&mut stream, &mut ex, Some(1), secs(3));
    Ok(ex)
}

#[test]
fn the_service_survives_hostile_control_clients_and_keeps_moving() {
    if !require_root() {
        return;
    }
    let seed = fuzz_seed("bad_input/service");
    let mut rng = Seeded::new(seed);
    let mut tally = Tally::new("bad_input/service", Some(seed));

    let mut img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let path = root.join("slow.bin");
    make_fragmented_files(&root, &[(&path, 48 * MIB, 0xbad1)], 2 * MIB).delete_all(&root);
    let small = root.join("small.txt");
    std::fs::write(&small, b"not fragmented\n").expect("write small file");
    img.settle();
    let orig = fiemap(&path);
    let sum = md5(&path);
    eprintln!("{}: {} extents", path.display(), orig.len());

    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = 1; // 48 MiB: the move outlasts the test
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    sleep(secs(2)); // past the quiet period
    let mut svc = home.start(&[]);
    let socket = home.control_socket();
    svc.wait_for_log(&format!("defragmenting {} (", path.display()), secs(60));
    sleep(Duration::from_millis(500));
    let rss_before = vm_rss_kib(svc.pid());
    let fds_before = fd_count(svc.pid());

    let phase = Arc::new(Phase(Mutex::new("start")));
    let stop = Arc::new(AtomicBool::new(false));
    let probe_stats = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let cursors: Cursors = Arc::new(Mutex::new(Vec::new()));
    let probe = spawn_probe(
        socket.clone(),
        Arc::clone(&phase),
        Arc::clone(&stop),
        Arc::clone(&probe_stats),
        Arc::clone(&cursors),
    );
    let steady_answered = Arc::new(AtomicU64::new(0));
    let steady_failures = Arc::new(Mutex::new(Vec::new()));
    let valid = harmless_requests(&small);
    let steady = spawn_steady_client(
        socket.clone(),
        valid.clone(),
        Arc::clone(&stop),
        Arc::clone(&steady_answered),
        Arc::clone(&steady_failures),
    );
    let sampler = spawn_progress_sampler(path.clone(), orig.clone(), Arc::clone(&stop));
    let t0 = Instant::now();
    // The phases, one after another, while the probe, the steady client and
    // the sampler watch; each says when it ran.
    let phase_times: Vec<(&'static str, Instant, Instant)> = vec![
        garbage_gets_one_response_per_line_in_order(&phase, &socket, &mut rng, &valid, &mut tally),
        huge_lines_are_refused_as_too_long(&phase, &socket, &mut tally),
        a_flood_of_clients_is_served_or_told_busy(&phase, &socket, &valid, &mut tally),
        silent_and_slow_clients_are_answered_or_closed(&phase, &socket, &mut tally),
        with_every_slot_taken_new_clients_are_told_busy(&phase, &socket, &mut tally),
    ];

    phase.set("after");
    sleep(secs(2));
    stop.store(true, Ordering::Relaxed);
    probe.join().expect("probe");
    steady.join().expect("steady client");
    let samples = sampler.join().expect("sampler");
    let elapsed = t0.elapsed();

    the_move_never_stalled(&samples, elapsed, &mut tally);
    the_probe_was_always_answered(&probe_stats, &cursors, &mut tally);

    // The established client was answered all along.
    let steady_n = steady_answered.load(Ordering::Relaxed);
    let steady_bad = steady_failures.lock().unwrap().clone();
    tally.note("steady_answers", steady_n);
    tally.check(steady_bad.is_empty() && steady_n > 50, || {
        format!("the established client: {steady_n} answers, failures {steady_bad:?}")
    });

    // Alive, and its memory and descriptors back near where they were.
    tally.check(svc.is_running(), || {
        format!("the service exited; log:\n{}", svc.tail(40))
    });
    sleep(secs(1));
    let rss_after = vm_rss_kib(svc.pid());
    let fds_after = fd_count(svc.pid());
    tally.note("rss_kib", format!("{rss_before}->{rss_after}"));
    tally.note("fds", format!("{fds_before}->{fds_after}"));
    tally.check(rss_after <= rss_before + 32 * 1024, || {
        format!("RSS grew from {rss_before} KiB to {rss_after} KiB")
    });
    tally.check(fds_after <= fds_before + 8, || {
        format!("open descriptors grew from {fds_before} to {fds_after}")
    });
    for (name, a, b) in &phase_times {
        eprintln!("phase {name}: {:.1} s", (*b - *a).as_secs_f64());
    }
    let panics = svc.lines_with("panicked");
    tally.check(panics.is_empty(), || {
        format!("the service's log: {panics:?}")
    });
    svc.stop(secs(15));
    // The file is intact after all this.
    tally.check(md5(&path) == sum, || {
        "the file's content changed".to_string()
    });
    img.unmount_and_fsck();
    tally.finish();
}

/// The move went on all along: no stall longer than 6 s (one chunk a
/// second at this throttle), as FIEMAP shows it.
fn the_move_never_stalled(samples: &[(Instant, u64)], elapsed: Duration, tally: &mut Tally) {
    let mut longest_stall = Duration::ZERO;
    let mut last_change = samples.first().map(|s| s.0);
    for w in samples.windows(2) {
        if w[1].1 > w[0].1 {
            last_change = Some(w[1].0);
        } else if let Some(t) = last_change {
            longest_stall = longest_stall.max(w[1].0 - t);
        }
    }
    let moved_during = samples.last().map_or(0, |s| s.1) - samples.first().map_or(0, |s| s.1);
    tally.note(
        "moved_during_mib",
        format!("{:.1}", moved_during as f64 / MIB as f64),
    );
    tally.note(
        "longest_stall_s",
        format!("{:.1}", longest_stall.as_secs_f64()),
    );
    tally.check(longest_stall <= secs(6), || {
        format!("the throttled move stalled for {longest_stall:?} while clients misbehaved")
    });
    tally.check(moved_during >= elapsed.as_secs() * MIB / 3, || {
        format!(
            "the throttled move (1 MiB/s) moved only {moved_during} bytes in {elapsed:?} of hostile clients"
        )
    });
}

/// The probe: answered within 2 s always; a real status except while
/// more clients than the service serves at once were connected.
fn the_probe_was_always_answered(
    probe_stats: &Mutex<std::collections::BTreeMap<&'static str, ProbeStats>>,
    cursors: &Mutex<Vec<u64>>,
    tally: &mut Tally,
) {
    let stats = probe_stats.lock().unwrap().clone();
    let cursors = cursors.lock().unwrap().clone();
    for (name, s) in &stats {
        eprintln!("probe in {name}: {s:?}");
        tally.cases += s.ok + s.busy + s.error.len() as u64 + s.no_answer.len() as u64;
        tally.check(s.no_answer.is_empty() && s.late == 0, || {
            format!(
                "phase {name}: a fresh status was not answered within 2 s ({} late; {:?})",
                s.late, s.no_answer
            )
        });
        tally.check(s.error.is_empty(), || {
            format!("phase {name}: status answered with errors {:?}", s.error)
        });
        if !["flood", "exhaust"].contains(name) {
            tally.check(s.busy == 0, || {
                format!(
                    "phase {name}: status answered busy {} times with fewer clients than slots",
                    s.busy
                )
            });
        }
    }
    tally.check(cursors.windows(2).all(|w| w[1] >= w[0]), || {
        format!("the status's cursor went backwards: {cursors:?}")
    });
    tally.check(
        cursors.len() >= 2 && cursors.last() > cursors.first(),
        || format!("the status's cursor did not advance: {cursors:?}"),
    );
    tally.note(
        "cursor_mib",
        format!(
            "{:.0}->{:.0}",
            cursors.first().map_or(0.0, |c| *c as f64 / MIB as f64),
            cursors.last().map_or(0.0, |c| *c as f64 / MIB as f64)
        ),
    );
}

/// Phase 1: random bytes, mutated and valid requests, deep nesting;
/// every line answered by one response, in order.
fn garbage_gets_one_response_per_line_in_order(
    phase: &Phase,
    socket: &Path,
    rng: &mut Seeded,
    valid: &[String],
    tally: &mut Tally,
) -> (&'static str, Instant, Instant) {
    phase.set("garbage");
    let p = Instant::now();
    let mut streams: Vec<(Vec<u8>, usize, Vec<usize>)> = Vec::new();
    let mut results: Vec<Option<String>> = Vec::new();
    while p.elapsed() < PHASE {
        let batch: Vec<(Vec<u8>, usize, Vec<usize>)> =
            (0..240).map(|_| random_stream(rng, valid)).collect();
        let got: Vec<Option<String>> = std::thread::scope(|s| {
            let parts: Vec<_> = batch
                .chunks(60)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|(data, lines, ok)| {
                                match exchange(socket, data, true, None, secs(10)) {
                                    Ok(ex) => judge_stream(&ex, *lines, ok),
                                    Err(e) => Some(format!("connect: {e}")),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("garbage client"))
                .collect()
        });
        streams.extend(batch);
        results.extend(got);
    }
    for (i, r) in results.iter().enumerate() {
        tally.cases += 1;
        tally.faults += 1;
        if let Some(why) = r {
            tally.kind(&format!("garbage: {why}"));
            tally.fail(format!(
                "garbage stream {i} ({} bytes): {why}",
                streams[i].0.len()
            ));
        }
    }
    ("garbage", p, Instant::now())
}

/// Phase 2: huge lines.
fn huge_lines_are_refused_as_too_long(
    phase: &Phase,
    socket: &Path,
    tally: &mut Tally,
) -> (&'static str, Instant, Instant) {
    phase.set("huge");
    let p = Instant::now();
    let mut huge_results: Vec<(String, Result<Exchange, String>)> = Vec::new();
    while p.elapsed() < PHASE {
        let got: Vec<(String, Result<Exchange, String>)> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for i in 0..6 {
                handles.push(s.spawn(move || {
                    // 1 MiB without a newline (the last two with one at the end).
                    let mut data = vec![b'a' + i as u8; MIB as usize];
                    if i >= 4 {
                        data.push(b'\n');
                    }
                    (
                        format!("1 MiB line {i}"),
                        exchange(socket, &data, false, Some(1), secs(10))
                            .map_err(|e| e.to_string()),
                    )
                }));
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("huge client"))
                .collect()
        });
        huge_results.extend(got);
    }
    for (what, r) in &huge_results {
        tally.cases += 1;
        tally.faults += 1;
        match r {
            Ok(ex)
                if ex
                    .lines
                    .first()
                    .is_some_and(|l| l.contains("request too long")) => {}
            Ok(ex) => tally.fail(format!(
                "{what}: no \"request too long\" answer: {:?} (closed={}, write error {:?})",
                ex.lines, ex.closed, ex.write_error
            )),
            Err(e) => tally.fail(format!("{what}: {e}")),
        }
    }
    // At the limit: a line of exactly 64 KiB is read (and refused as not
    // JSON) and the connection stays usable; one byte more is too long.
    {
        let max = defragd::control::protocol::MAX_REQUEST_BYTES;
        let mut data = vec![b' '; max - 2];
        data.splice(0..0, b"{}".iter().copied());
        data.push(b'\n');
        data.extend_from_slice(b"{\"cmd\":\"status\"}\n");
        tally.cases += 1;
        match exchange(socket, &data, true, Some(2), secs(10)) {
            Ok(ex) if ex.lines.len() == 2 && ex.lines[1].contains("\"ok\":true") => {}
            other => tally.fail(format!(
                "a line of exactly {max} bytes, then status: {:?}",
                other.map(|e| e.lines)
            )),
        }
        let mut data = vec![b' '; max + 1];
        data.push(b'\n');
        data.extend_from_slice(b"{\"cmd\":\"status\"}\n");
        tally.cases += 1;
        match exchange(socket, &data, true, None, secs(10)) {
            Ok(ex) if ex.lines.len() == 1 && ex.lines[0].contains("request too long") => {}
            other => tally.fail(format!(
                "a line of {} bytes: {:?}",
                max + 1,
                other.map(|e| e.lines)
            )),
        }
    }
    ("huge", p, Instant::now())
}

/// Phase 3: 100 clients at once.
fn a_flood_of_clients_is_served_or_told_busy(
    phase: &Phase,
    socket: &Path,
    valid: &[String],
    tally: &mut Tally,
) -> (&'static str, Instant, Instant) {
    phase.set("flood");
    let p = Instant::now();
    let mut flood: Vec<Result<String, String>> = Vec::new();
    while p.elapsed() < PHASE {
        let barrier = Arc::new(Barrier::new(100));
        let got: Vec<Result<String, String>> = (0..100)
            .map(|i| {
                let socket = socket.to_path_buf();
                let barrier = Arc::clone(&barrier);
                let req = valid[i % 5].clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    match exchange(
                        &socket,
                        format!("{req}\n").as_bytes(),
                        false,
                        Some(1),
                        secs(5),
                    ) {
                        Ok(ex) => match ex.lines.first() {
                            Some(l) if l.contains("\"ok\":true") => Ok("ok".to_string()),
                            Some(l) if l.contains("\"error\":\"busy") => Ok("busy".to_string()),
                            Some(l) => Err(format!("answered {l}")),
                            None => Err(format!("no answer within {:?}", t.elapsed())),
                        },
                        Err(e) => Err(format!("connect: {e}")),
                    }
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("flood client"))
            .collect();
        flood.extend(got);
        sleep(Duration::from_millis(300));
    }
    let flood_ok = flood.iter().filter(|r| r.as_deref() == Ok("ok")).count();
    let flood_busy = flood.iter().filter(|r| r.as_deref() == Ok("busy")).count();
    for r in &flood {
        tally.cases += 1;
        if let Err(e) = r {
            tally.fail(format!("flood client: {e}"));
        }
    }
    tally.note("flood_ok", flood_ok);
    tally.note("flood_busy", flood_busy);
    ("flood", p, Instant::now())
}

/// Phase 4: half-written requests then silence, and slow clients (fewer
/// than the connection limit together), for a while.
fn silent_and_slow_clients_are_answered_or_closed(
    phase: &Phase,
    socket: &Path,
    tally: &mut Tally,
) -> (&'static str, Instant, Instant) {
    phase.set("slow");
    let p = Instant::now();
    let mut silent = Vec::new();
    for i in 0..16 {
        let partial: &[u8] = [
            &b"{\"cmd\":\"sta"[..],
            b"{",
            b"{\"cmd\":\"status\"",
            b"\xff\xfe",
        ][i % 4];
        match Holder::open(socket, partial) {
            Ok(h) => silent.push(h),
            Err(e) => tally.fail(format!("silent client {i}: connect: {e}")),
        }
    }
    let dribblers: Vec<JoinHandle<(bool, Result<Exchange, String>)>> = (0..8)
        .map(|i| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || {
                if i < 6 {
                    // A valid request, a byte every 100 ms: answered.
                    (true, dribble(&socket, b"{\"cmd\":\"status\"}\n", secs(5)))
                } else {
                    // Garbage that never ends: closed at the idle timeout.
                    (false, dribble(&socket, &[b'x'; 200], secs(20)))
                }
            })
        })
        .collect();
    let mut dribbled_ok = 0;
    for d in dribblers {
        let (valid_request, r) = d.join().expect("dribbler");
        tally.cases += 1;
        tally.faults += 1;
        match (valid_request, r) {
            (true, Ok(ex)) if ex.lines.first().is_some_and(|l| l.contains("\"ok\":true")) => {
                dribbled_ok += 1
            }
            (true, other) => {
                tally.fail(format!("a slow valid request was not answered: {other:?}"))
            }
            (false, Ok(ex)) if ex.closed || ex.lines.is_empty() => {}
            (false, other) => tally.fail(format!("endless slow garbage: {other:?}")),
        }
    }
    tally.note("slow_valid_answered", dribbled_ok);
    let mut closed_after = Vec::new();
    for (i, h) in silent.into_iter().enumerate() {
        tally.cases += 1;
        tally.faults += 1;
        match h.wait_closed(secs(20)) {
            (Some(after), sent) => {
                closed_after.push(after.as_secs_f64());
                if !sent.is_empty() && !sent.contains("\"ok\":false") {
                    tally.fail(format!("silent client {i} was sent {sent:?}"));
                }
            }
            (None, _) => tally.fail(format!("silent client {i} still open after 20 s")),
        }
    }
    let max_open = closed_after.iter().copied().fold(0.0, f64::max);
    tally.note("silent_closed_after_max_s", format!("{max_open:.1}"));
    ("slow", p, Instant::now())
}

/// Phase 5: more silent clients than connection slots: new clients are
/// told "busy" at once (no hang), and served again once the service
/// closes the idle ones.
fn with_every_slot_taken_new_clients_are_told_busy(
    phase: &Phase,
    socket: &Path,
    tally: &mut Tally,
) -> (&'static str, Instant, Instant) {
    phase.set("exhaust");
    let p = Instant::now();
    let mut hogs = Vec::new();
    for _ in 0..40 {
        if let Ok(h) = Holder::open(socket, b"") {
            hogs.push(h);
        }
    }
    let mut refused = 0;
    let mut back_after = None;
    while p.elapsed() < secs(25) {
        let (answer, took) = status_once(socket, secs(2) + Duration::from_millis(500));
        tally.cases += 1;
        match answer {
            StatusAnswer::Ok(_) => {
                back_after = Some(p.elapsed());
                break;
            }
            StatusAnswer::Busy if took <= secs(2) => refused += 1,
            other => tally.fail(format!(
                "while every slot was taken, status got {other:?} after {took:?}"
            )),
        }
        sleep(Duration::from_millis(250));
    }
    tally.note("exhaust_busy_answers", refused);
    match back_after {
        Some(t) => tally.note("exhaust_unavailable_s", format!("{:.1}", t.as_secs_f64())),
        None => tally.fail("status never came back after the idle connections".to_string()),
    }
    drop(hogs);
    ("exhaust", p, Instant::now())
}
