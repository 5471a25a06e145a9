//! (c) FIFOs, device nodes and sockets are never opened.

use super::*;

#[test]
fn fifos_devices_and_sockets_are_never_opened() {
    if !require_root() {
        return;
    }
    let mut tally = Tally::new("hostile/special_files", None);
    let mut img = LoopImage::create(ImageSpec::ext4(128));
    let root = img.root().to_path_buf();
    let tree = root.join("tree");
    let u = tree.join("u");
    fs::create_dir_all(&u).expect("mkdir");
    let reg = u.join("reg.bin");
    let swap = u.join("swap.bin");
    let swap2 = u.join("swap2.bin");
    make_fragmented_files(
        &root,
        &[
            (&reg, 4 * MIB, 0xf1f0),
            (&swap, 2 * MIB, 0xf1f1),
            (&swap2, 2 * MIB, 0xf1f2),
        ],
        2 * MIB,
    )
    .delete_all(&root);
    img.settle();
    let fifo = u.join("fifo");
    let chr = u.join("null");
    let sock = u.join("sock");
    let swap_fifo = u.join("swap.fifo");
    let swap_chr = u.join("swap2.null");
    sh("mkfifo", [&fifo, &swap_fifo]);
    sh(
        "mknod",
        [
            chr.as_os_str(),
            OsStr::new("c"),
            OsStr::new("1"),
            OsStr::new("3"),
        ],
    );
    sh(
        "mknod",
        [
            swap_chr.as_os_str(),
            OsStr::new("c"),
            OsStr::new("1"),
            OsStr::new("3"),
        ],
    );
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind a socket in the tree"));
    sh(
        "chown",
        [OsStr::new("-R"), OsStr::new("65534:65534"), u.as_os_str()],
    );
    let specials = vec![
        fifo.clone(),
        chr.clone(),
        sock.clone(),
        swap_fifo.clone(),
        swap_chr.clone(),
    ];
    let mut watch = OpenWatch::new(&specials);
    let swapper = Swapper::start(
        &u,
        &[],
        &[
            Swap::Exchange {
                a: "swap.bin".into(),
                b: "swap.fifo".into(),
            },
            Swap::Exchange {
                a: "swap2.bin".into(),
                b: "swap2.null".into(),
            },
        ],
    );

    // The CLI: over the tree, and each special file named explicitly.
    let mut slowest = Duration::ZERO;
    let mut outs = std::collections::BTreeMap::new();
    for _ in 0..5 {
        let (out, took) = defragd_run(
            &[OsStr::new("defrag"), OsStr::new("--json"), tree.as_os_str()],
            secs(30),
        );
        tally.cases += 1;
        slowest = slowest.max(took);
        if let Some(r) = report_of(&out) {
            outcomes(&r, &mut outs);
        }
        let (out, took) = defragd_run(
            &[
                OsStr::new("check"),
                OsStr::new("--json"),
                OsStr::new("-r"),
                tree.as_os_str(),
            ],
            secs(30),
        );
        tally.cases += 1;
        slowest = slowest.max(took);
        tally.check(out.status.code() == Some(0), || {
            format!("defragd check -r: {out:?}")
        });
    }
    for p in [&fifo, &chr, &sock, &swap_fifo, &swap_chr] {
        let (out, took) = defragd_run(
            &[OsStr::new("defrag"), OsStr::new("--json"), p.as_os_str()],
            secs(30),
        );
        tally.cases += 1;
        slowest = slowest.max(took);
        let code =
            report_of(&out).and_then(|r| r["files"][0]["reason_code"].as_str().map(str::to_string));
        tally.check(
            matches!(code.as_deref(), Some("not_regular")) || p == &swap_fifo || p == &swap_chr,
            || format!("defragd defrag {}: {code:?} {out:?}", p.display()),
        );
    }
    tally.check(slowest < secs(10), || {
        format!("a CLI run over special files took {slowest:?}")
    });
    let ev = watch.events();
    tally.check(ev.is_empty(), || {
        format!("the CLI opened special files: {ev:?}")
    });

    // The service: crawl, watcher and defragctl defrag of each.
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[&tree]);
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    let socket = home.control_socket();
    svc.wait_for_log(&crawl_pass_done(&root), secs(30));
    for p in [&fifo, &chr, &sock, &swap_fifo, &swap_chr, &u] {
        let (out, took) = defragctl(
            &socket,
            &[OsStr::new("--json"), OsStr::new("defrag"), p.as_os_str()],
            secs(30),
        );
        tally.cases += 1;
        tally.check(took < secs(5) && out.status.code().is_some(), || {
            format!("defragctl defrag {} took {took:?}: {out:?}", p.display())
        });
    }
    sleep(secs(3)); // the watcher's quiet period
    tally.check(svc.is_running(), || {
        format!("the service died:\n{}", svc.tail(30))
    });
    svc.stop(secs(15));
    let ev = watch.events();
    tally.check(ev.is_empty(), || {
        format!("the service opened special files: {ev:?}")
    });
    // The detector works: a real (non-blocking) open of the FIFO and of
    // the device is seen.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the FIFO");
        let _d = fs::File::open(&chr).expect("open the device node");
    }
    let ev = watch.events();
    tally.check(ev.len() >= 2, || {
        format!("inotify did not see this test's own opens: {ev:?}")
    });
    let (renames, _) = swapper.stop();
    tally.faults = renames;
    tally.note("renames", renames);
    tally.note("slowest_cli_s", format!("{:.1}", slowest.as_secs_f64()));
    tally.note(
        "cli_outcomes",
        outs.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    tally.check(filefrag_extents(&reg) <= 4, || {
        format!(
            "{} was not defragmented (the runs did no real work)",
            reg.display()
        )
    });
    img.unmount_and_fsck();
    tally.finish();
}
