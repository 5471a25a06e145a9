//! defragd runs as root over trees that unprivileged users can write. Here
//! uid 65534 (a process forked from the test, see `Swapper`) attacks while
//! the service and `defragd defrag` work on a tree it owns:
//!
//! (a) symlinks swapped in for a directory and a file thousands of times
//!     (renameat2 RENAME_EXCHANGE, and rename of a symlink over the name
//!     and back) during the service's crawl, its watcher and defragctl
//!     defrag requests, and during `defragd defrag` of the tree. The links
//!     point at a canary: fragmented files on ANOTHER loop image mounted
//!     with strictatime. Its atimes (reads, directory listings), extent maps
//!     (moves), mtimes, ctimes and contents must stay as they were.
//!     Meanwhile the service must stay responsive: a fresh `status` in
//!     2 s, `defragctl defrag TREE` in 15 s. Also with operator paths that
//!     run through a name the attacker controls: a static symlink in the
//!     middle (`.../u/static/big3.bin`), one named with a trailing slash
//!     (`.../u/slash/`), and the races `.../u/dir` and `.../u/dir2/big2.bin`.
//! (b) files of other users keep owner, group, mode (setuid and setgid
//!     bits included), xattrs, ACLs and inode flags after being moved, by
//!     the CLI and by the service.
//! (c) a FIFO (no writer: a real open would block forever), a device node
//!     (c 1 3) and a unix socket in the tree, also swapped in for regular
//!     files in a loop, are never opened (inotify sees any real open), and
//!     every run finishes promptly.
//! (d) the control socket refuses peers that are not allowed (defragctl
//!     exits 4 as 65534), and a refused request changes nothing.
//! (e) file names with newlines and escape sequences cannot forge lines in
//!     the service's log or in `defragd defrag`'s output.
//!
//! Needs root, setpriv (util-linux), setfattr/getfattr (attr) and
//! setfacl/getfacl (acl). Each test prints one `SUMMARY part=...` line.

use defragd_testkit as common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

/// Runs `cmd` for at most `limit`; kills it (by PID: our own child) and
/// returns None past that.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<Output>, Duration) {
    use std::process::Stdio;
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut guard = ChildGuard(Some(child));
    loop {
        let child = guard.0.as_mut().expect("child");
        if let Ok(Some(_)) = child.try_wait() {
            let child = guard.0.take().expect("child");
            return (child.wait_with_output().ok(), t.elapsed());
        }
        if t.elapsed() > limit {
            drop(guard); // kills and reaps it
            return (None, t.elapsed());
        }
        sleep(Duration::from_millis(20));
    }
}

/// `defragd ARGS...`, bounded in time.
fn defragd_run(args: &[&OsStr], limit: Duration) -> (Output, Duration) {
    let mut cmd = Command::new(defragd_bin());
    cmd.args(args).env("NO_COLOR", "1");
    run_timed(&mut cmd, limit)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `defragd defrag --json` output, if it is the JSON document.
fn report_of(out: &Output) -> Option<serde_json::Value> {
    serde_json::from_slice(&out.stdout).ok()
}

/// How many files of a `defragd defrag --json` report have each outcome
/// or reason code.
fn outcomes(report: &serde_json::Value, into: &mut std::collections::BTreeMap<String, u64>) {
    for f in report["files"].as_array().into_iter().flatten() {
        let key = match f["reason_code"].as_str() {
            Some(code) => format!("{}:{code}", f["outcome"].as_str().unwrap_or("?")),
            None => f["outcome"].as_str().unwrap_or("?").to_string(),
        };
        *into.entry(key).or_default() += 1;
    }
}

/// Writes `n` files of 4 KiB in each of `dirs` new directories under `dir`.
fn small_files(dir: &Path, dirs: usize, n: usize) {
    for d in 0..dirs {
        let sub = dir.join(format!("d{d:02}"));
        fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..n {
            fs::write(sub.join(format!("f{f:03}")), [b'x'; 4096]).expect("write small file");
        }
    }
}

/// The attacker's tree: `tree/u` (65534) with u/dir/big.bin, u/file.bin,
/// u/dir2/big2.bin and u/file2.bin fragmented, and the symlinks to swap in
/// (made by the attacker itself): the first two pairs exchanged with
/// renameat2, the other two renamed over the name and back.
struct AttackTree {
    tree: PathBuf,
    u: PathBuf,
    victims: Vec<PathBuf>,
}

impl AttackTree {
    fn build(img: &mut LoopImage, small_dirs: usize) -> AttackTree {
        let root = img.root().to_path_buf();
        let tree = root.join("tree");
        let u = tree.join("u");
        fs::create_dir_all(u.join("dir")).expect("mkdir");
        fs::create_dir_all(u.join("dir2")).expect("mkdir");
        let victims = vec![
            u.join("dir").join("big.bin"),
            u.join("file.bin"),
            u.join("dir2").join("big2.bin"),
            u.join("file2.bin"),
        ];
        let specs: Vec<(&Path, u64, u64)> = victims
            .iter()
            .zip([6 * MIB, 3 * MIB, 3 * MIB, 3 * MIB])
            .enumerate()
            .map(|(i, (p, size))| (p.as_path(), size, 0xa77a + i as u64))
            .collect();
        make_fragmented_files(&root, &specs, 2 * MIB).delete_all(&root);
        small_files(&u, small_dirs, 100);
        // The swapped directories hold subdirectories: whoever follows a
        // rename of one into its new name has a tree to walk.
        for d in ["dir", "dir2"] {
            for i in 0..20 {
                fs::create_dir_all(u.join(d).join(format!("s{i:02}"))).expect("mkdir");
            }
        }
        img.settle();
        sh(
            "chown",
            [OsStr::new("-R"), OsStr::new("65534:65534"), u.as_os_str()],
        );
        AttackTree { tree, u, victims }
    }

    fn start_attack(&self, canary: &Canary) -> Swapper {
        let (cdir, cdir2) = (canary.file("dir"), canary.file("dir2"));
        let (cfile, cfile2) = (canary.file("file.bin"), canary.file("file2.bin"));
        Swapper::start(
            &self.u,
            &[
                ("dir.lnk", &cdir),
                ("file.lnk", &cfile),
                ("dir2.lnk", &cdir2),
                ("file2.lnk", &cfile2),
            ],
            &[
                Swap::Exchange {
                    a: "dir".into(),
                    b: "dir.lnk".into(),
                },
                Swap::Exchange {
                    a: "file.bin".into(),
                    b: "file.lnk".into(),
                },
                Swap::RenameOver {
                    name: "dir2".into(),
                    link: "dir2.lnk".into(),
                    away: "dir2.away".into(),
                },
                Swap::RenameOver {
                    name: "file2.bin".into(),
                    link: "file2.lnk".into(),
                    away: "file2.away".into(),
                },
            ],
        )
    }
}

/// New canary changes since `seen`, recorded against `who`.
fn canary_step(canary: &Canary, seen: &mut Vec<String>, who: &str, tally: &mut Tally) {
    let now = canary.quick_changes();
    let new: Vec<String> = now.iter().filter(|c| !seen.contains(c)).cloned().collect();
    if !new.is_empty() {
        tally.kind(&format!("{who} reached the canary"));
        tally.fail(format!(
            "{who} reached outside its filesystem: {}",
            new.join("; ")
        ));
    }
    *seen = now;
}

// ---------------------------------------------------------------------------
// (a) Symlinks swapped in, at the tree level.

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

    // The service: crawl (about 4 s over 1000 files), watcher on the
    // tree (flooded by the renames) and defragctl defrag requests.
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[&at.tree]);
    cfg.files_per_second = 250;
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    let socket = home.control_socket();
    svc.wait_for_log("listening for defragctl", secs(30));
    let done = format!("crawl of {}: pass done", root.display());
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
        &canary,
        &mut seen,
        "the service (crawl, watcher, defragctl defrag TREE)",
        &mut tally,
    );

    // The CLI over the tree, several times, under a new attack.
    let swapper = at.start_attack(&canary);
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
    canary_step(&canary, &mut seen, "defragd defrag TREE", &mut tally);
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

// ---------------------------------------------------------------------------
// (a) Operator paths through names the attacker controls.

#[test]
fn operator_paths_through_attacker_names_are_not_followed() {
    if !require_root() {
        return;
    }
    let mut tally = Tally::new("hostile/symlink_swap_operator_path", None);
    let canary = Canary::create();
    let mut img = LoopImage::create(ImageSpec::ext4(160));
    let root = img.root().to_path_buf();
    let at = AttackTree::build(&mut img, 0);
    let sums: Vec<String> = at.victims.iter().map(|p| md5(p)).collect();
    let mut seen = Vec::new();
    // Static links first, made by 65534: u/static -> the canary's dir3/,
    // u/slash -> its dir4/. `u/static/big3.bin` runs through the link;
    // `u/slash/` names the link with a trailing slash (which makes path
    // lookup follow it).
    for (name, target) in [("static", "dir3"), ("slash", "dir4")] {
        let mut ln = as_nobody("ln");
        ln.arg("-s").arg(canary.file(target)).arg(at.u.join(name));
        run_ok(&mut ln);
    }
    let through_static = at.u.join("static").join("big3.bin");
    let mut slash = at.u.join("slash").into_os_string();
    slash.push("/");
    let slash = PathBuf::from(slash);
    let statics = [
        (
            "u/static/big3.bin (u/static: 65534's symlink)",
            &through_static,
        ),
        ("u/slash/ (u/slash: 65534's symlink)", &slash),
    ];
    let swapper = at.start_attack(&canary);
    // Races: DIR's last component is exchanged with a symlink to the
    // canary's dir/; in DIR/FILE a middle component is renamed over by a
    // symlink to its dir2/ (each case has canary files of its own).
    let dir = at.u.join("dir");
    let file = at.u.join("dir2").join("big2.bin");
    let races = [
        ("DIR (its last name swapped for a symlink)", &dir),
        ("DIR/FILE (DIR swapped for a symlink)", &file),
    ];

    // Through the service first (it reads, at most, what the CLI would
    // then move; the other way round would hide it).
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    let socket = home.control_socket();
    svc.wait_for_log("listening for defragctl", secs(30));
    for (what, path, tries) in statics
        .iter()
        .map(|(w, p)| (w, p, 1))
        .chain(races.iter().map(|(w, p)| (w, p, 40)))
    {
        // A race: until the canary shows something, at most `tries` times.
        for _ in 0..tries {
            let (out, _) = defragctl(
                &socket,
                &[OsStr::new("--json"), OsStr::new("defrag"), path.as_os_str()],
                secs(30),
            );
            tally.cases += 1;
            tally.check(out.status.code().is_some(), || {
                format!("defragctl: {out:?}")
            });
            if canary.quick_changes() != seen {
                break;
            }
        }
        canary_step(
            &canary,
            &mut seen,
            &format!("`defragctl defrag {what}`"),
            &mut tally,
        );
    }
    sleep(secs(2));
    svc.stop(secs(15));
    canary_step(&canary, &mut seen, "the service's jobs", &mut tally);

    // The CLI.
    let mut outs = std::collections::BTreeMap::new();
    for (what, path, tries) in statics
        .iter()
        .map(|(w, p)| (w, p, 1))
        .chain(races.iter().map(|(w, p)| (w, p, 100)))
    {
        for _ in 0..tries {
            let (out, _) = defragd_run(
                &[OsStr::new("defrag"), OsStr::new("--json"), path.as_os_str()],
                secs(60),
            );
            tally.cases += 1;
            if let Some(r) = report_of(&out) {
                outcomes(&r, &mut outs);
                // Through a static link the answer is known: refused as
                // a symlink, never worked on (a move the canary cannot
                // show, e.g. skipped for want of free space after its
                // donor was made on the other filesystem, counts too).
                if tries == 1 {
                    let worked: Vec<String> = r["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|f| {
                            !matches!(
                                f["reason_code"].as_str(),
                                Some("symlink") | Some("other_filesystem")
                            )
                        })
                        .map(|f| format!("{} {} {}", f["path"], f["outcome"], f["reason_code"]))
                        .collect();
                    if !worked.is_empty() {
                        tally.kind(&format!(
                            "`defragd defrag {what}` worked on files past a symlink"
                        ));
                        tally.fail(format!(
                            "`defragd defrag {what}` worked on files past a symlink: {worked:?}"
                        ));
                    }
                }
            }
            if canary.quick_changes() != seen {
                break;
            }
        }
        canary_step(
            &canary,
            &mut seen,
            &format!("`defragd defrag {what}`"),
            &mut tally,
        );
    }
    let (renames, _) = swapper.stop();
    tally.faults = renames;
    tally.note("renames", renames);
    tally.note(
        "cli_outcomes",
        outs.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    for (p, sum) in at.victims.iter().zip(&sums) {
        tally.check(md5(p) == *sum, || {
            format!("{}: content changed", p.display())
        });
    }
    let all = canary.changes();
    eprintln!("canary changes at the end: {all:?}");
    img.unmount_and_fsck();
    tally.finish();
}

// ---------------------------------------------------------------------------
// (b) Other users' files keep their owner, mode, xattrs and ACLs.

/// Everything about a file's ownership and metadata, as tools nobody here
/// wrote show it.
fn metadata_of(path: &Path) -> Vec<(String, String)> {
    let st = sh(
        "stat",
        [
            OsStr::new("-c"),
            OsStr::new("%u %g %a %f %h %i %.9Y %.9Z"),
            path.as_os_str(),
        ],
    );
    let xattrs = sh(
        "getfattr",
        [
            OsStr::new("--absolute-names"),
            OsStr::new("-d"),
            OsStr::new("-m"),
            OsStr::new("-"),
            OsStr::new("-e"),
            OsStr::new("hex"),
            path.as_os_str(),
        ],
    );
    let acl = sh(
        "getfacl",
        [
            OsStr::new("--absolute-names"),
            OsStr::new("-c"),
            path.as_os_str(),
        ],
    );
    let flags = sh("lsattr", [path]);
    let flags = flags.split_whitespace().next().unwrap_or("").to_string();
    vec![
        (
            "stat (uid gid mode rawmode links inode mtime ctime)".into(),
            st.trim().into(),
        ),
        ("xattrs".into(), xattrs.trim().into()),
        ("acl".into(), acl.trim().into()),
        ("flags".into(), flags),
        ("generation".into(), generation(path).to_string()),
        ("md5".into(), md5(path)),
    ]
}

/// Three fragmented files of other users in `dir`, with setuid/setgid
/// bits, xattrs (in the inode and in an xattr block), ACLs and flags.
fn foreign_files(root: &Path, dir: &Path, seed: u64) -> (Vec<PathBuf>, Filler) {
    fs::create_dir_all(dir).expect("mkdir");
    let files: Vec<PathBuf> = ["f1.db", "f2.bin", "f3.log"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    let specs: Vec<(&Path, u64, u64)> = files
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_path(), 3 * MIB, seed + i as u64))
        .collect();
    let filler = make_fragmented_files(root, &specs, 2 * MIB);
    (files, filler)
}

fn decorate(files: &[PathBuf]) {
    let (f1, f2, f3) = (&files[0], &files[1], &files[2]);
    chown(f1, NOBODY, NOBODY);
    chmod(f1, 0o640);
    sh(
        "setfattr",
        [
            OsStr::new("-n"),
            OsStr::new("user.x"),
            OsStr::new("-v"),
            OsStr::new("hello"),
            f1.as_os_str(),
        ],
    );
    let big = format!("0x{}", "ab".repeat(2000));
    sh(
        "setfattr",
        [
            OsStr::new("-n"),
            OsStr::new("user.big"),
            OsStr::new("-v"),
            OsStr::new(&big),
            f1.as_os_str(),
        ],
    );
    sh(
        "setfacl",
        [
            OsStr::new("-m"),
            OsStr::new("u:1234:r,g:4321:rw,m::rw"),
            f1.as_os_str(),
        ],
    );
    chown(f2, 12345, 54321);
    chmod(f2, 0o6755); // after chown, which clears the bits
    sh(
        "setfattr",
        [
            OsStr::new("-n"),
            OsStr::new("user.y"),
            OsStr::new("-v"),
            OsStr::new("0x00ff00"),
            f2.as_os_str(),
        ],
    );
    sh(
        "setfattr",
        [
            OsStr::new("-n"),
            OsStr::new("trusted.t"),
            OsStr::new("-v"),
            OsStr::new("root-only"),
            f2.as_os_str(),
        ],
    );
    chown(f3, NOBODY, 100);
    chmod(f3, 0o600);
    sh(
        "chattr",
        [OsStr::new("+d"), OsStr::new("+A"), f3.as_os_str()],
    );
    sh(
        "setfacl",
        [
            OsStr::new("-m"),
            OsStr::new("u:65534:rw,o::-"),
            f3.as_os_str(),
        ],
    );
}

fn compare_metadata(
    who: &str,
    files: &[PathBuf],
    before: &[Vec<(String, String)>],
    tally: &mut Tally,
) {
    for (p, b) in files.iter().zip(before) {
        let a = metadata_of(p);
        for ((what, was), (_, now)) in b.iter().zip(&a) {
            tally.cases += 1;
            tally.check(was == now, || {
                format!(
                    "{who}: {} {what} changed:\n  before {was}\n  after  {now}",
                    p.display()
                )
            });
        }
    }
}

#[test]
fn other_users_files_keep_owner_mode_xattrs_and_acls() {
    if !require_root() {
        return;
    }
    let mut tally = Tally::new("hostile/foreign_metadata", None);
    let mut img = LoopImage::create(ImageSpec::ext4(160));
    let root = img.root().to_path_buf();
    let u = root.join("tree").join("u");
    let (cli_files, filler) = foreign_files(&root, &u.join("cli"), 0xb0b0);
    filler.delete_all(&root);
    let (svc_files, filler) = foreign_files(&root, &u.join("svc"), 0xb1b1);
    filler.delete_all(&root);
    img.settle();
    sh(
        "chown",
        [OsStr::new("-R"), OsStr::new("65534:65534"), u.as_os_str()],
    );
    decorate(&cli_files);
    decorate(&svc_files);
    let before_cli: Vec<_> = cli_files.iter().map(|p| metadata_of(p)).collect();
    let before_svc: Vec<_> = svc_files.iter().map(|p| metadata_of(p)).collect();
    let extents_before: Vec<u64> = cli_files
        .iter()
        .chain(&svc_files)
        .map(|p| filefrag_extents(p))
        .collect();

    // The CLI.
    let (out, _) = defragd_run(
        &[
            OsStr::new("defrag"),
            OsStr::new("--json"),
            u.join("cli").as_os_str(),
        ],
        secs(120),
    );
    let report = report_of(&out).unwrap_or_else(|| panic!("no JSON report: {out:?}"));
    for p in &cli_files {
        let entry = report["files"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["path"].as_str() == Some(&p.to_string_lossy()));
        tally.check(
            entry.is_some_and(|e| e["outcome"] == "defragmented"),
            || format!("{} was not defragmented by the CLI: {entry:?}", p.display()),
        );
    }
    compare_metadata("defragd defrag", &cli_files, &before_cli, &mut tally);

    // The service's crawl.
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    sleep(secs(2));
    let mut svc = home.start(&[]);
    for p in &svc_files {
        svc.wait_for_log(&format!("defragmented {}: ", p.display()), secs(60));
    }
    svc.stop(secs(15));
    compare_metadata("the service", &svc_files, &before_svc, &mut tally);
    let extents_after: Vec<u64> = cli_files
        .iter()
        .chain(&svc_files)
        .map(|p| filefrag_extents(p))
        .collect();
    tally.note(
        "extents",
        format!("{extents_before:?}->{extents_after:?}").replace(' ', ""),
    );
    img.unmount_and_fsck();
    tally.finish();
}

// ---------------------------------------------------------------------------
// (c) FIFOs, device nodes and sockets are never opened.

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
    svc.wait_for_log(&format!("crawl of {}: pass done", root.display()), secs(30));
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

// ---------------------------------------------------------------------------
// (d) The control socket refuses peers that are not allowed.

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

// ---------------------------------------------------------------------------
// (e) File names cannot forge lines.

#[test]
fn file_names_cannot_forge_log_or_output_lines() {
    if !require_root() {
        return;
    }
    let mut tally = Tally::new("hostile/forged_names", None);
    let mut img = LoopImage::create(ImageSpec::ext4(128));
    let root = img.root().to_path_buf();
    let u = root.join("tree").join("u");
    fs::create_dir_all(u.join("cli")).expect("mkdir");
    fs::create_dir_all(u.join("svc")).expect("mkdir");
    // No "/" in a name: U+2215 looks like one.
    let forged = "defragmented \u{2215}etc\u{2215}shadow: extents 999 -> 1 (1.00 MiB moved)";
    let name = format!("evil\n{forged}\n\u{1b}[2J\u{1b}]0;pwned\u{7}x");
    let cli_file = u.join("cli").join(&name);
    let svc_file = u.join("svc").join(&name);
    make_fragmented_files(
        &root,
        &[(&cli_file, 2 * MIB, 0xe1), (&svc_file, 2 * MIB, 0xe2)],
        2 * MIB,
    )
    .delete_all(&root);
    img.settle();
    sh(
        "chown",
        [OsStr::new("-R"), OsStr::new("65534:65534"), u.as_os_str()],
    );

    // defragd defrag, human output (a log on stderr too).
    let (out, _) = defragd_run(&[OsStr::new("defrag"), u.join("cli").as_os_str()], secs(60));
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    tally.cases += 1;
    tally.faults += 1;
    tally.check(shown.contains("defragmented"), || {
        format!("nothing was moved: {shown}")
    });
    let forged_lines: Vec<&str> = shown.lines().filter(|l| l.starts_with(forged)).collect();
    tally.check(forged_lines.is_empty(), || {
        format!(
            "`defragd defrag` printed a line forged by a file name: {forged_lines:?}\n{shown:?}"
        )
    });
    tally.check(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        || format!("`defragd defrag` printed a file name's escape sequences raw: {shown:?}"),
    );
    // --json keeps the name exact.
    let (out, _) = defragd_run(
        &[
            OsStr::new("defrag"),
            OsStr::new("--json"),
            OsStr::new("--dry-run"),
            u.join("cli").as_os_str(),
        ],
        secs(60),
    );
    tally.cases += 1;
    let exact = report_of(&out).is_some_and(|r| {
        r["files"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["path"].as_str() == Some(&cli_file.to_string_lossy()))
    });
    tally.check(exact, || {
        format!("--json does not give the exact name: {out:?}")
    });

    // The service's log.
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.quiet_period = "1s".into();
    home.write_config(&cfg);
    sleep(secs(2));
    let mut svc = home.start(&[]);
    svc.wait_for_line("the svc file's move", secs(60), |l| {
        l.contains("defragmented ") && l.contains("/svc/evil")
    });
    sleep(secs(1));
    svc.stop(secs(15));
    let log = svc.log();
    let raw_log = fs::read(svc.log_path()).unwrap_or_default();
    tally.cases += 1;
    tally.faults += 1;
    let forged_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with(forged))
        .collect();
    tally.check(forged_lines.is_empty(), || {
        format!("the service's log has lines forged by a file name: {forged_lines:?}")
    });
    tally.check(
        !raw_log.contains(&0x07) && !text(&raw_log).contains("\u{1b}]0;pwned"),
        || "the service's log holds a file name's escape sequences raw".to_string(),
    );
    img.unmount_and_fsck();
    tally.finish();
}
