//! (b) Other users' files keep their owner, mode, xattrs and ACLs.

use super::*;

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
