//! (a) Symlinks swapped in for a directory and a file, at the tree level,
//! during the service's crawl, its watcher, defragctl requests and
//! `defragd defrag`: nothing outside the tree is read, moved or changed.

use super::*;

#[test]
fn symlinks_swapped_in_never_lead_the_service_or_the_cli_outside() {
    if !require_root() {
        return;
    }
    let mut tally = Tally::new("hostile/symlink_swap", None);
    let canary = Canary::create();
    let mut img = LoopImage::create(ImageSpec::ext4(192));
    let root = img.root().to_path_buf();
    let at = AttackTree::build(&mut img, 10);
    let sums: Vec<String> = at.victims.iter().map(|p| md5(p)).collect();
    let mut seen = Vec::new();
    let swapper = at.start_attack(&canary);

    let service_renames = the_service_stays_inside_the_tree_and_answers(
        &root, &at, &canary, &mut seen, &mut tally, swapper,
    );
    defragd_defrag_stays_inside_the_tree(&at, &canary, &mut seen, &mut tally, service_renames);

    // The victims are intact, and so is everything on the canary.
    for (p, sum) in at.victims.iter().zip(&sums) {
        tally.check(md5(p) == *sum, || {
            format!("{}: content changed", p.display())
        });
    }
    let all = canary.changes();
    tally.check(all.is_empty(), || format!("the canary changed: {all:?}"));
    // The detector works: listing the canary's directory is seen.
    let _ = fs::read_dir(canary.file("dir")).map(|d| d.count());
    tally.check(!canary.quick_changes().is_empty(), || {
        "the canary did not notice this test's own listing".to_string()
    });
    img.unmount_and_fsck();
    tally.finish();
}

/// The service: crawl (about 4 s over 1000 files), watcher on the
/// tree (flooded by the renames) and defragctl defrag requests.
fn the_service_stays_inside_the_tree_and_answers(
    root: &Path,
    at: &AttackTree,
    canary: &Canary,
    seen: &mut Vec<String>,
    tally: &mut Tally,
    swapper: Swapper,
) -> u64 {
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(root, &[&at.tree]);
    cfg.files_per_second = 250;
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    let socket = home.control_socket();
    svc.wait_for_log("listening for defragctl", secs(30));
    let done = crawl_pass_done(root);
    // A fresh client's status every 200 ms, on its own thread: the
    // attacker must not be able to stall the control plane either.
    let stop_probe = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let socket = socket.clone();
        let stop = std::sync::Arc::clone(&stop_probe);
        std::thread::spawn(move || {
            let mut seen: Vec<(Duration, bool)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (answer, took) = status_once(&socket, secs(5));
                seen.push((took, matches!(answer, StatusAnswer::Ok(_))));
                sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    let t = Instant::now();
    let mut requests = 0;
    let mut unanswered = 0;
    let mut slowest_request = Duration::ZERO;
    while (svc.line_index(&done).is_none() || t.elapsed() < secs(6)) && t.elapsed() < secs(40) {
        assert!(svc.is_running(), "the service died:\n{}", svc.tail(40));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_defragctl"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--json", "defrag"])
            .arg(&at.u);
        let (out, took) = run_bounded(&mut cmd, secs(15));
        requests += 1;
        slowest_request = slowest_request.max(took);
        tally.cases += 1;
        match out {
            Some(out) => tally.check(matches!(out.status.code(), Some(0) | Some(1)), || {
                format!("defragctl defrag {}: {out:?}", at.u.display())
            }),
            None => unanswered += 1,
        }
        sleep(Duration::from_millis(300));
    }
    tally.check(svc.line_index(&done).is_some(), || {
        format!(
            "the crawl did not finish within 40 s under attack; log:\n{}",
            svc.tail(30)
        )
    });
    tally.note("defragctl_defrag_unanswered_15s", unanswered);
    if unanswered > 0 {
        tally.kind("defragctl defrag not answered within 15 s under attack");
    }
    tally.check(unanswered == 0, || {
        format!("{unanswered} of {requests} `defragctl defrag TREE` got no answer within 15 s while 65534 renamed names in a watched tree")
    });
    sleep(secs(2)); // the watcher's quiet period, for the last events
    stop_probe.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = probe.join().expect("status probe");
    let slowest_status = probes.iter().map(|p| p.0).max().unwrap_or_default();
    let late = probes.iter().filter(|p| p.0 > secs(2) || !p.1).count();
    tally.cases += probes.len() as u64;
    tally.note("defragctl_requests", requests);
    tally.note("status_probes", probes.len());
    tally.note("status_late", late);
    tally.note("slowest_status_ms", slowest_status.as_millis());
    tally.note("slowest_defrag_request_ms", slowest_request.as_millis());
    tally.note(
        "inotify_overflow_rescans",
        svc.lines_with("inotify queue overflowed").len(),
    );
    if late > 0 {
        tally.kind("status not answered within 2 s under attack");
    }
    tally.check(late == 0, || {
        format!(
            "{late} of {} fresh status requests took over 2 s (slowest {slowest_status:?}) while 65534 renamed names in a watched tree",
            probes.len()
        )
    });
    let panics = svc.lines_with("panicked");
    tally.check(panics.is_empty(), || format!("service log: {panics:?}"));
    let (service_renames, _) = swapper.stop();
    svc.stop(secs(15));
    canary_step(
        canary,
        seen,
        "the service (crawl, watcher, defragctl defrag TREE)",
        tally,
    );
    service_renames
}

/// The CLI over the tree, several times, under a new attack.
fn defragd_defrag_stays_inside_the_tree(
    at: &AttackTree,
    canary: &Canary,
    seen: &mut Vec<String>,
    tally: &mut Tally,
    service_renames: u64,
) {
    let swapper = at.start_attack(canary);
    let mut outs = std::collections::BTreeMap::new();
    let mut slowest_cli = Duration::ZERO;
    for _ in 0..6 {
        let (out, took) = defragd_run(
            &[
                OsStr::new("defrag"),
                OsStr::new("--json"),
                at.tree.as_os_str(),
            ],
            secs(60),
        );
        tally.cases += 1;
        slowest_cli = slowest_cli.max(took);
        tally.check(!text(&out.stderr).contains("panicked"), || {
            format!("defragd defrag panicked: {}", text(&out.stderr))
        });
        match report_of(&out) {
            Some(r) => {
                outcomes(&r, &mut outs);
                // A name renamed away between the listing and the open is
                // churn (skipped: vanished), never a failure.
                for f in r["files"].as_array().into_iter().flatten() {
                    tally.check(f["outcome"] != "failed", || {
                        format!("failed under attack: {} {}", f["path"], f["reason"])
                    });
                }
            }
            None => tally.fail(format!("defragd defrag: no JSON report: {out:?}")),
        }
    }
    canary_step(canary, seen, "defragd defrag TREE", tally);
    let (renames, ran) = swapper.stop();
    tally.faults = renames + service_renames;
    tally.note("renames_during_service", service_renames);
    tally.note("renames_during_cli", renames);
    tally.note("attack_s", format!("{ran:.0}"));
    tally.note("slowest_cli_s", format!("{:.1}", slowest_cli.as_secs_f64()));
    tally.note(
        "cli_outcomes",
        outs.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    tally.check(renames >= 2000 && service_renames >= 2000, || {
        format!("the attacker managed only {service_renames} + {renames} renames")
    });
}
