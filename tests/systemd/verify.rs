//! Part 1: `systemd-analyze verify` has nothing to say about the unit as
//! `make install` installs it, and does flag a unit that is wrong.

use super::*;

/// Runs `systemd-analyze ARGS` in a mount namespace of its own with a
/// tmpfs on /run/systemd: as root, `verify` touches
/// /run/systemd/systemd-units-load, which belongs to the host's PID 1.
fn systemd_analyze(args: &[&Path], dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "slave", "/bin/sh", "-c"])
        .arg("mount -t tmpfs -o mode=755 defragd-test-analyze /run/systemd && exec systemd-analyze \"$@\"")
        .arg("sh")
        .args(args)
        .current_dir(dir)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_timed(&mut cmd, CALL_LIMIT).0
}

#[test]
fn systemd_analyze_verify_says_nothing_about_the_installed_unit() {
    if !require_root() {
        return;
    }
    assert!(
        Path::new("/run/systemd").is_dir(),
        "/run/systemd is missing: install systemd (these tests use systemd-analyze and systemd --user)"
    );
    let tmp = tempdir();
    let dir = tmp.path();

    // The man pages named by Documentation=, where `make install` puts
    // them: MANDIR is .../man8.
    let docs = dir.join("docs");
    for bin in [DEFRAGD, DEFRAGCTL] {
        let out = run_timed(
            Command::new(bin).arg("generate-docs").arg(&docs),
            CALL_LIMIT,
        )
        .0;
        assert!(out.status.success(), "{bin} generate-docs: {}", text(&out));
    }
    let manpath = dir.join("man");
    fs::create_dir_all(manpath.join("man8")).expect("create man8");
    let mut pages = Vec::new();
    for entry in fs::read_dir(&docs).expect("read docs") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "8") {
            let name = path.file_name().expect("page name").to_owned();
            fs::copy(&path, manpath.join("man8").join(&name)).expect("copy man page");
            pages.push(name.to_string_lossy().into_owned());
        }
    }
    pages.sort();
    eprintln!("man pages: {}", pages.join(" "));
    for page in ["defragd.8", "defragctl.8"] {
        assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
    }

    let conf_dir = dir.join("etc");
    fs::create_dir_all(&conf_dir).expect("create etc");
    fs::copy(DEFAULT_CONFIG, conf_dir.join("defragd.toml")).expect("copy the default config");
    let unit = dir.join("defragd.service");
    fs::write(&unit, installed_unit(&conf_dir)).expect("write unit");

    let out = systemd_analyze(&[Path::new("verify"), &unit], dir, &[("MANPATH", &manpath)]);
    let said = text(&out);
    assert!(
        said.is_empty(),
        "systemd-analyze verify of the installed unit said ({}):\n{said}",
        out.status
    );

    // The check is not vacuous: verify does report a bad directive and a
    // missing man page (it exits 0 for some errors, so its words count).
    let bad = dir.join("bad").join("defragd.service");
    fs::create_dir_all(bad.parent().expect("dir")).expect("create dir");
    fs::write(
        &bad,
        installed_unit(&conf_dir).replace("[Service]\n", "[Service]\nNoSuchDirective=yes\n"),
    )
    .expect("write bad unit");
    let out = systemd_analyze(&[Path::new("verify"), &bad], dir, &[("MANPATH", &manpath)]);
    assert!(text(&out).contains("NoSuchDirective"), "{}", text(&out));
    let empty = dir.join("no-man");
    fs::create_dir_all(&empty).expect("create dir");
    let out = systemd_analyze(&[Path::new("verify"), &unit], dir, &[("MANPATH", &empty)]);
    assert!(text(&out).contains("man defragd(8)"), "{}", text(&out));

    // For the record: systemd's own exposure score of the unit.
    let out = systemd_analyze(
        &[
            Path::new("security"),
            Path::new("--offline=true"),
            Path::new(UNIT_FILE),
        ],
        dir,
        &[],
    );
    let security = stdout(&out);
    eprintln!(
        "systemd-analyze security --offline=true systemd/defragd.service | tail -1:\n{}",
        security.lines().last().unwrap_or("(nothing)")
    );
}
