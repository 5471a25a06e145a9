//! Test 2: the service converts block-mapped files in the background with
//! `[policy] convert_block_mapped = true`, and leaves them alone by default.

use super::*;

/// The config text of `cfg` for `home`, with `[policy] convert_block_mapped`
/// set to `on`.
pub(super) fn config_with_conversion(home: &ServiceHome, cfg: &ServiceConfig, on: bool) -> String {
    let text = cfg.to_toml(&home.state_dir(), &home.control_socket());
    let with = text.replacen(
        "[policy]\n",
        &format!("[policy]\nconvert_block_mapped = {on}\n"),
        1,
    );
    assert_ne!(with, text, "no [policy] table in the config text:\n{text}");
    with
}

/// "... pass done, N files assessed, M queued in ..." → (N, M).
fn pass_counts(line: &str) -> (u64, u64) {
    let number_before = |marker: &str| -> u64 {
        let at = line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} not in {line:?}"));
        let digits: String = line[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number before {marker:?} in {line:?}"))
    };
    (number_before(" files assessed"), number_before(" queued"))
}

#[test]
fn the_service_converts_block_mapped_files_only_when_the_policy_allows_it() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let specs = [
        spec("srv/db.bin", 12 * MIB, 0x5e2_0001),
        spec("srv/log.bin", 8 * MIB, 0x5e2_0002),
    ];
    let (mut img, paths) = block_mapped_image(256, &specs, 64 * KIB, true, true);
    let root = img.root().to_path_buf();
    let before: Vec<_> = paths.iter().map(|p| identity(p)).collect();
    let extents_before: Vec<u64> = paths.iter().map(|p| filefrag_extents(p)).collect();
    let cfg = ServiceConfig::new(&root, &[]);
    // Older than the quiet period (2 s), with a margin.
    wait_until_older_than(&paths, secs(3));

    // Off (the default: the key is not written at all).
    {
        let home = ServiceHome::new();
        home.write_config(&cfg);
        let config = fs::read_to_string(home.config_path()).expect("read config");
        assert!(!config.contains("convert_block_mapped"));
        let mut svc = home.start(&[]);
        let line = svc.wait_for_log("pass done", secs(30));
        let (assessed, queued) = pass_counts(&line);
        // A moment for a worker that would have picked something up.
        sleep(Duration::from_millis(1500));
        let converting = svc.lines_with("converting");
        svc.stop(secs(10));
        eprintln!("policy off: crawl assessed {assessed}, queued {queued}; conversion lines: {converting:?}");
        assert!(assessed >= paths.len() as u64, "{line}");
        assert_eq!(
            queued, 0,
            "block-mapped files were queued with the policy off: {line}"
        );
        assert!(
            converting.is_empty(),
            "the service converted with the policy off: {converting:?}"
        );
        for (p, b) in paths.iter().zip(&before) {
            assert!(
                !extent_mapped(p),
                "{} was converted with the policy off",
                p.display()
            );
            assert_eq!(
                &identity(p),
                b,
                "{} changed with the policy off",
                p.display()
            );
        }
    }

    // On.
    let home = ServiceHome::new();
    home.write_config_text(&config_with_conversion(&home, &cfg, true));
    let mut svc = home.start(&[]);
    let t = Instant::now();
    let mut done = Vec::new();
    for p in &paths {
        let line = svc.wait_for_log(
            &format!("converted and defragmented {}:", p.display()),
            secs(60),
        );
        done.push(line);
    }
    let took = t.elapsed();
    let warns = svc.lines_with("to extents (EXT4_IOC_MIGRATE is not crash-safe");
    svc.stop(secs(10));
    eprintln!(
        "policy on: all converted and defragmented within {:.1} s of the start",
        took.as_secs_f64()
    );
    for l in warns.iter().chain(&done) {
        eprintln!("  log: {l}");
    }
    for p in &paths {
        assert!(
            warns.iter().any(|l| l.contains("WARN")
                && l.contains(&format!("converting {} to extents", p.display()))),
            "no WARN \"converting {} to extents\" line: {warns:?}",
            p.display()
        );
    }
    for ((p, b), ff_before) in paths.iter().zip(&before).zip(&extents_before) {
        let flags = lsattr_flags(p);
        let ff_after = filefrag_extents(p);
        eprintln!(
            "{}: lsattr {flags}, filefrag {ff_before} -> {ff_after}",
            p.display()
        );
        assert!(
            flags.contains('e'),
            "{} is not extent-mapped: {flags}",
            p.display()
        );
        assert!(
            ff_after < *ff_before,
            "{}: not defragmented ({ff_before} -> {ff_after})",
            p.display()
        );
        let now = identity(p);
        assert_eq!(now.0, b.0, "{}: md5 changed", p.display());
        assert_eq!(now.1, b.1, "{}: inode number changed", p.display());
        assert_eq!(now.2, b.2, "{}: mtime changed", p.display());
    }
    let fsck = img.unmount_and_fsck();
    eprintln!("e2fsck -fn: clean; {}", fsck_summary(&fsck));
    eprintln!("test 2 took {:.1} s", t0.elapsed().as_secs_f64());
}
