//! (a) Operator paths through names the attacker controls are not followed.

use super::*;

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

    // The service first: it reads, at most, what the CLI would then move;
    // the other way round would hide it.
    the_service_does_not_follow_them(&root, &statics, &races, &canary, &mut seen, &mut tally);
    let outs =
        defragd_defrag_does_not_follow_them(&statics, &races, &canary, &mut seen, &mut tally);

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

/// Through the service first (it reads, at most, what the CLI would
/// then move; the other way round would hide it).
fn the_service_does_not_follow_them(
    root: &Path,
    statics: &[(&str, &PathBuf)],
    races: &[(&str, &PathBuf)],
    canary: &Canary,
    seen: &mut Vec<String>,
    tally: &mut Tally,
) {
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(root, &[]);
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
            if canary.quick_changes() != *seen {
                break;
            }
        }
        canary_step(canary, seen, &format!("`defragctl defrag {what}`"), tally);
    }
    sleep(secs(2));
    svc.stop(secs(15));
    canary_step(canary, seen, "the service's jobs", tally);
}

/// The CLI.
fn defragd_defrag_does_not_follow_them(
    statics: &[(&str, &PathBuf)],
    races: &[(&str, &PathBuf)],
    canary: &Canary,
    seen: &mut Vec<String>,
    tally: &mut Tally,
) -> std::collections::BTreeMap<String, u64> {
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
            if canary.quick_changes() != *seen {
                break;
            }
        }
        canary_step(canary, seen, &format!("`defragd defrag {what}`"), tally);
    }
    outs
}
