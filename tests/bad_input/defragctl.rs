//! Part 3: defragctl against a hostile socket.

use super::*;

/// Answers a hostile (or broken) service could send, each with the
/// defragctl command whose response it pretends to be.
const FIXED_ANSWERS: &[(&[u8], &[&str])] = &[
    (b"", &["status"]),
    (b"\n", &["queue"]),
    (b"{}\n", &["history"]),
    (b"{\"ok\":true}\n", &["status"]),
    (b"{\"ok\":true,\"data\":null}\n", &["--json", "status"]),
    (b"{\"ok\":false}\n", &["pause"]),
    (b"{\"ok\":false,\"error\":\"permission denied: go away\"}\n", &["status"]),
    (b"{\"ok\":false,\"error\":\"\\u001b[2J\\u001b]0;pwned\\u0007\"}\n", &["status"]),
    (b"{\"ok\":true,\"data\":{\"message\":\"a\\nforged line\\u001b[31m\"}}\n", &["pause"]),
    (b"{\"ok\":true,\"data\":[{\"path\":\"/x\\nqueued  /etc/shadow\",\"result\":\"queued\",\"message\":\"m\"}]}\n", &["defrag", "/x"]),
    // paused_until in the year 10000: past what humantime formats.
    (b"{\"ok\":true,\"data\":{\"state\":\"moving\",\"summary\":\"s\",\"paused_until\":253402300800,\"moving\":[],\"queued\":1,\"bytes_moved_today\":2,\"filesystems\":[]}}\n", &["status"]),
    (b"{\"ok\":true,\"data\":{\"state\":\"moving\",\"summary\":\"s\",\"paused_until\":null,\"moving\":[{\"path\":\"/a\",\"moved_bytes\":18446744073709551615,\"total_bytes\":0}],\"queued\":18446744073709551615,\"bytes_moved_today\":18446744073709551615,\"filesystems\":[{\"mount_point\":\"/\",\"uuid\":\"u\",\"disk\":\"d\\u001b[31m\"}]}}\n", &["status"]),
    (b"{\"ok\":true,\"data\":[{\"id\":-9223372036854775808,\"path\":\"/x\",\"size_bytes\":18446744073709551615,\"extents\":0,\"ideal_extents\":18446744073709551615,\"score\":1e308,\"priority\":-1e308,\"state\":\"\",\"next_block\":0,\"attempts\":4294967295}]}\n", &["queue"]),
    (b"{\"ok\":true,\"data\":[{\"path\":\"/x\",\"outcome\":\"o\",\"reason_code\":null,\"reason\":null,\"extents_before\":1,\"extents_after\":null,\"bytes_moved\":0,\"finished_at\":-9223372036854775808}]}\n", &["history"]),
    (b"{\"ok\":true,\"data\":{\"message\":\"partial", &["pause"]),
];

/// A random answer: random bytes, a fixed answer with bytes changed, or a
/// fixed one as is.
fn hostile_answer(rng: &mut Seeded) -> Vec<u8> {
    match rng.below(6) {
        0 => {
            let n = rng.below(500) as usize;
            let mut v = rng.bytes(n);
            v.push(b'\n');
            v
        }
        1 => {
            let mut v = rng.pick(FIXED_ANSWERS).0.to_vec();
            for _ in 0..rng.range(1, 3) {
                let at = rng.below(v.len() as u64 + 1) as usize;
                if at < v.len() {
                    v[at] = rng.next_u64() as u8;
                }
            }
            v
        }
        _ => rng.pick(FIXED_ANSWERS).0.to_vec(),
    }
}

#[test]
fn defragctl_never_panics_whatever_the_socket_answers() {
    let seed = fuzz_seed("bad_input/defragctl_vs_hostile_socket");
    let mut rng = Seeded::new(seed);
    let mut tally = Tally::new("bad_input/defragctl_vs_hostile_socket", Some(seed));
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("evil.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let answers: Vec<(Vec<u8>, Vec<&str>)> = FIXED_ANSWERS
        .iter()
        .map(|(a, cmd)| (a.to_vec(), cmd.to_vec()))
        .chain((0..200).map(|i| {
            let commands: &[&[&str]] = &[
                &["status"],
                &["--json", "status"],
                &["queue"],
                &["history"],
                &["defrag", "/x"],
                &["pause"],
                &["--json", "queue"],
            ];
            (
                hostile_answer(&mut rng),
                commands[i % commands.len()].to_vec(),
            )
        }))
        .collect();
    let to_serve: Vec<Vec<u8>> = answers.iter().map(|(a, _)| a.clone()).collect();
    let server = std::thread::spawn(move || {
        for answer in to_serve {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.set_read_timeout(Some(secs(5)));
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = stream.read(&mut byte) {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            let _ = stream.write_all(&answer);
        }
    });
    for (answer, args) in &answers {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_defragctl"));
        cmd.arg("--socket").arg(&socket).args(args);
        let (out, took) = run_timed(&mut cmd, secs(60));
        tally.cases += 1;
        tally.faults += 1;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        let describe = || {
            format!(
                "defragctl {args:?} on answer {:?}: exit {code:?} after {took:?}; stdout {stdout:?}; stderr {stderr:?}",
                String::from_utf8_lossy(answer)
            )
        };
        if stderr.contains("panicked") || code.is_none() {
            tally.kind("defragctl panicked");
            tally.fail(format!("panicked: {}", describe()));
            continue;
        }
        if !matches!(code, Some(0) | Some(1) | Some(4)) {
            tally.fail(format!("unexpected exit status: {}", describe()));
        }
        // Nothing from the socket reaches the terminal raw.
        let shown = format!("{stdout}{stderr}");
        if shown.contains('\u{1b}') || shown.contains('\u{7}') {
            tally.kind("escape sequence reaches the terminal");
            tally.fail(format!(
                "an escape sequence reaches the terminal: {}",
                describe()
            ));
        }
        if shown
            .lines()
            .any(|l| l.starts_with("queued  /etc/shadow") || l == "forged line")
        {
            tally.kind("forged output line");
            tally.fail(format!("a forged line: {}", describe()));
        }
    }
    let _ = server.join();
    tally.finish();
}
