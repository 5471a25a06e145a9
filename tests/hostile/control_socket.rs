//! (d) The control socket refuses peers that are not allowed.

use super::*;

/// defragctl as 65534 (with `group` as a supplementary group, if given).
fn defragctl_as_nobody(socket: &Path, group: Option<u32>, args: &[&str]) -> Output {
    let mut cmd = match group {
        Some(g) => as_nobody_in_group(g, env!("CARGO_BIN_EXE_defragctl")),
        None => as_nobody(env!("CARGO_BIN_EXE_defragctl")),
    };
    cmd.arg("--socket").arg(socket).args(args);
    run_timed(&mut cmd, secs(30)).0
}

fn state_of(socket: &Path) -> String {
    match status_once(socket, secs(5)).0 {
        StatusAnswer::Ok(data) => data["state"].as_str().unwrap_or("?").to_string(),
        other => panic!("status as root: {other:?}"),
    }
}

#[test]
fn the_control_socket_refuses_peers_that_are_not_allowed() {
    if !require_root() {
        return;
    }
    let mut tally = Tally::new("hostile/control_refusal", None);
    let img = LoopImage::create(ImageSpec::ext4(64));
    let root = img.root().to_path_buf();
    let home = ServiceHome::new();
    open_path_for_others(home.path());
    let socket = home.control_socket();
    let cfg = ServiceConfig::new(&root, &[]);

    // Root only (the default): the socket's mode refuses 65534.
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    svc.wait_for_log("listening for defragctl", secs(30));
    let mode = fs::metadata(&socket).expect("socket").mode() & 0o777;
    tally.check(mode == 0o600, || {
        format!("the socket's mode is {mode:o}, not 600")
    });
    for args in [
        &["status"][..],
        &["pause"],
        &["--json", "reload"],
        &["defrag", "/"],
    ] {
        let out = defragctl_as_nobody(&socket, None, args);
        tally.cases += 1;
        tally.faults += 1;
        tally.check(out.status.code() == Some(4), || {
            format!("defragctl {args:?} as 65534 on a root-only socket: {out:?}")
        });
    }
    // A socket made world-writable by mistake: the service's own check
    // refuses, and the refused pause changes nothing.
    chmod(&socket, 0o666);
    for args in [
        &["status"][..],
        &["pause"],
        &["--json", "pause"],
        &["queue"],
    ] {
        let out = defragctl_as_nobody(&socket, None, args);
        tally.cases += 1;
        tally.faults += 1;
        tally.check(
            out.status.code() == Some(4)
                && format!("{}{}", text(&out.stderr), text(&out.stdout))
                    .contains("permission denied"),
            || format!("defragctl {args:?} as 65534 on a 0666 socket: {out:?}"),
        );
    }
    let state = state_of(&socket);
    tally.check(state != "paused", || {
        format!("a refused pause paused the service (state {state})")
    });
    tally.check(
        !svc.lines_with("refused a client running as uid 65534")
            .is_empty(),
        || "the service did not log the refusal".to_string(),
    );
    svc.stop(secs(15));

    // An allowed group: its members get in, others still do not.
    let gid = 4242;
    let text_cfg = cfg.to_toml(&home.state_dir(), &socket) + &format!("group = \"{gid}\"\n");
    home.write_config_text(&text_cfg);
    let mut svc = home.start(&[]);
    svc.wait_for_log("listening for defragctl", secs(30));
    let meta = fs::metadata(&socket).expect("socket");
    tally.check(meta.mode() & 0o777 == 0o660 && meta.gid() == gid, || {
        format!(
            "group socket: mode {:o} gid {}",
            meta.mode() & 0o777,
            meta.gid()
        )
    });
    let out = defragctl_as_nobody(&socket, None, &["status"]);
    tally.cases += 1;
    tally.faults += 1;
    tally.check(out.status.code() == Some(4), || {
        format!("65534 outside group {gid}: {out:?}")
    });
    let out = defragctl_as_nobody(&socket, Some(gid), &["status"]);
    tally.cases += 1;
    tally.check(out.status.code() == Some(0), || {
        format!("65534 in group {gid} was refused: {out:?}")
    });
    chmod(&socket, 0o666);
    let out = defragctl_as_nobody(&socket, None, &["pause"]);
    tally.cases += 1;
    tally.faults += 1;
    tally.check(out.status.code() == Some(4), || {
        format!("65534 outside group {gid} on a 0666 socket: {out:?}")
    });
    let state = state_of(&socket);
    tally.check(state != "paused", || {
        format!("a refused pause paused the service ({state})")
    });
    svc.stop(secs(15));
    drop(img);
    tally.finish();
}
