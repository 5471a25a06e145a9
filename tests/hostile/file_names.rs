//! (e) File names cannot forge log or output lines.

use super::*;

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
    // Nor any of its own: stderr is a file here, not a terminal, so the
    // log has no colour escapes either.
    tally.check(!raw_log.contains(&0x1b), || {
        "the service's log, written to a file, holds escape sequences (colours?)".to_string()
    });
    img.unmount_and_fsck();
    tally.finish();
}
