//! What a new user meets first (issue 13): `check` on a filesystem whose
//! block device cannot be read, and on a real tree nobody here made; what
//! `config check` says it read; errors reported all together; each
//! command's help; defragctl's advice; what the two scores in `check`
//! measure.

use defragd_testkit as common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Filesystem {
    mount_point: String,
    files: u64,
    layout: String,
    layout_note: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Report {
    files: Vec<CheckFile>,
    filesystems: Vec<Filesystem>,
    total: CheckTotal,
}

/// The tests that mount an image take turns. A mount namespace made by
/// `unshare` holds a copy of every mount there is at that moment, and keeps
/// it alive after the test that made it unmounts it (the host's mounts are
/// private, so the unmount does not reach the copy): that test's e2fsck
/// would then find its filesystem still in use.
static IMAGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_image_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    IMAGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lines of `stderr` that speak of the superblock or the block device.
fn device_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("superblock") || l.contains("block device"))
        .collect()
}

/// Runs its arguments in a mount namespace of its own where /dev is an
/// empty tmpfs (exec'd: the PID stays the program's).
const WITHOUT_DEV: [&str; 8] = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    r#"mount -t tmpfs -o size=1m,mode=755 defragd-test-nodev /dev && exec "$@""#,
    "sh",
];

/// `defragd ARGS...` in a mount namespace of its own where /dev is an
/// empty tmpfs: no block device node can be opened, as in containers. The
/// namespace, and the tmpfs with it, go when the process exits.
fn defragd_without_dev(args: &[&str]) -> DefragdRun {
    let script = r#"mount -t tmpfs -o size=1m,mode=755 defragd-test-nodev /dev && exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(defragd_bin())
    .args(args);
    let (out, elapsed) = run_timed(&mut cmd, RUN_LIMIT);
    DefragdRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

#[test]
fn check_reports_every_file_when_the_block_device_cannot_be_read() {
    if !require_root() {
        return;
    }
    let _turn = one_image_at_a_time();
    let img = LoopImage::create(ImageSpec::ext4(256));
    let tree = img.root().join("tree");
    for d in 0..5 {
        let dir = tree.join(format!("d{d}"));
        fs::create_dir_all(&dir).expect("create dir");
        for f in 0..40u64 {
            // Empty, one block, and several blocks written in pieces.
            let size = [0, 100, 4096, 70_000, 300_000][(f % 5) as usize];
            write_fsynced(&dir.join(format!("f{f}")), &vec![b'x'; size], 8192);
        }
    }
    sync_fs(img.root());
    let tree_arg = tree.to_str().expect("utf-8 temp path");

    let blind = defragd_without_dev(&["check", "-r", "--json", "--all", tree_arg]);
    blind.assert_code(0);
    let report: Report = blind.json();
    assert_eq!(
        report.total.files, 200,
        "every file is reported; stderr:\n{}",
        blind.stderr
    );
    assert_eq!(report.files.len(), 200);
    let fs_entry = &report.filesystems[0];
    assert_eq!(
        fs_entry.layout, "kernel",
        "in a namespace without /dev the device cannot have been read: {fs_entry:?}"
    );
    assert_eq!(fs_entry.files, 200);
    assert!(fs_entry.layout_note.is_some(), "{fs_entry:?}");
    let lines = device_lines(&blind.stderr);
    assert_eq!(
        lines.len(),
        1,
        "one line about the device, not one per file:\n{}",
        blind.stderr
    );
    assert!(
        lines[0].contains(&fs_entry.mount_point),
        "the line names the filesystem: {}",
        lines[0]
    );
    assert!(
        blind.stderr.lines().count() <= 2,
        "stderr:\n{}",
        blind.stderr
    );

    // The same tree where the device can be read: the same figures, file
    // by file, and the same e4defrag score (the layout the kernel gave
    // was the superblock's).
    let seen = defragd(["check", "-r", "--json", "--all", tree_arg]);
    seen.assert_code(0);
    let exact: Report = seen.json();
    assert_eq!(exact.filesystems[0].layout, "superblock");
    assert!(device_lines(&seen.stderr).is_empty(), "{}", seen.stderr);
    let figures = |r: &Report| {
        let mut v: Vec<(String, u64, u64, u64)> = r
            .files
            .iter()
            .map(|f| (f.path.clone(), f.extents, f.physical_runs, f.ideal_extents))
            .collect();
        v.sort();
        v
    };
    assert_eq!(figures(&report), figures(&exact));
    assert_eq!(report.total.e4defrag_score, exact.total.e4defrag_score);
}

/// The service covering a filesystem whose block device it cannot read
/// says so once, and defragments it all the same.
#[test]
fn the_service_says_once_what_it_cannot_read_and_does_the_rest() {
    if !require_root() {
        return;
    }
    let _turn = one_image_at_a_time();
    let mut img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let path = root.join("data.bin");
    make_fragmented_files(&root, &[(&path, 16 * MIB, 0x5e)], 2 * MIB).delete_all(&root);
    img.settle();
    let before = filefrag_extents(&path);
    let sum = md5(&path);
    wait_until_quiet(&[&path]);
    let home = ServiceHome::new();
    home.write_config(&ServiceConfig::new(&root, &[]));
    let mut svc = home.start_through(&WITHOUT_DEV, &[]);
    svc.wait_for_log(&defragmented(&path), secs(60));
    let notes = svc.lines_with("block device cannot be read");
    assert_eq!(notes.len(), 1, "said once per filesystem:\n{}", svc.log());
    assert!(
        notes[0].contains(&root.display().to_string()),
        "{}",
        notes[0]
    );
    assert!(notes[0].contains("WARN"), "{}", notes[0]);
    svc.stop(secs(10));
    drop(svc);
    assert_eq!(md5(&path), sum, "content changed");
    assert_defragmented(&path, before);
    img.unmount_and_fsck();
}

/// A large tree no test made: every regular file of /usr is reported, with
/// at most a few lines on stderr (read-only; nothing is opened for writing).
#[test]
fn check_reports_every_regular_file_of_usr() {
    if !require_root() {
        return;
    }
    let usr = Path::new("/usr");
    let run = defragd(["check", "-r", "--json", "/usr"]);
    let report: Report = run.json();
    let find = run_ok(Command::new("find").args(["/usr", "-xdev", "-type", "f"]));
    let regular = find.lines().count() as u64;
    assert!(regular > 0, "find saw no files under {}", usr.display());
    assert_eq!(
        report.total.files, regular,
        "check -r /usr reports {} files, find -xdev -type f counts {regular}; stderr:\n{}",
        report.total.files, run.stderr
    );
    assert!(
        run.stderr.lines().count() <= 3,
        "at most a few lines on stderr, got {}:\n{}",
        run.stderr.lines().count(),
        run.stderr.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    run.assert_code(0);
}

#[test]
fn config_check_says_which_files_it_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let main = dir.path().join("defragd.toml");
    // A named file that is there: it is read, and said to be.
    fs::write(&main, "[throttle]\nmax_mib_per_s = 20\n").expect("write config");
    let run = defragd([OsStr::new("config"), OsStr::new("check"), main.as_os_str()]);
    run.assert_code(0);
    assert!(
        run.stderr.contains(&format!(
            "read {}; the configuration is valid",
            main.display()
        )),
        "{}",
        run.stderr
    );
    // The same through the service's option.
    let run = defragd([
        OsStr::new("--config"),
        main.as_os_str(),
        OsStr::new("config"),
        OsStr::new("check"),
    ]);
    run.assert_code(0);
    assert!(
        run.stderr.contains(&format!("read {}", main.display())),
        "{}",
        run.stderr
    );

    // No file at all: the default path, whatever this machine has there.
    let run = defragd(["config", "check"]);
    let default = Path::new("/etc/defragd/defragd.toml");
    if default.exists() {
        assert!(
            run.stderr.contains("read /etc/defragd/defragd.toml"),
            "{}",
            run.stderr
        );
    } else if run.code == 0 {
        assert!(
            run.stderr.contains(
                "/etc/defragd/defragd.toml does not exist and nothing else sets a key: \
                 the defaults apply; the configuration is valid"
            ) || run
                .stderr
                .contains("/etc/defragd/defragd.toml does not exist; read "),
            "{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr
            .starts_with("defragd: the configuration is valid"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unknown_table_is_reported_with_every_other_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let main = dir.path().join("defragd.toml");
    fs::write(
        &main,
        "[polcy]\nmin_size = 1\n[throttle]\nmax_mib_per_s = 0\n[crawl]\nfiles_per_second = -1\n",
    )
    .expect("write config");
    let run = defragd([OsStr::new("config"), OsStr::new("check"), main.as_os_str()]);
    run.assert_code(78);
    let main = main.display().to_string();
    for error in [
        format!("{main}: unknown key `polcy`"),
        format!("{main}: throttle.max_mib_per_s = 0: "),
        format!("{main}: crawl.files_per_second = -1: "),
    ] {
        assert!(
            run.stderr.contains(&error),
            "no {error:?} in:\n{}",
            run.stderr
        );
    }
}

/// Global options appear only on the commands that use them.
#[test]
fn check_and_defrag_help_list_no_config_option() {
    for command in ["check", "defrag"] {
        let run = defragd([command, "--help"]);
        run.assert_code(0);
        assert!(run.stdout.contains("Usage: defragd"), "{}", run.stdout);
        assert!(
            !run.stdout.contains("--config"),
            "`defragd {command} --help` lists --config, which it does not read:\n{}",
            run.stdout
        );
    }
    let run = defragd(["--help"]);
    assert!(run.stdout.contains("--config"), "{}", run.stdout);
}

#[derive(Debug, Deserialize)]
struct Moving {
    path: String,
    moved_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Status {
    state: String,
    summary: String,
    moving: Vec<Moving>,
}

fn status(socket: &Path) -> Status {
    let (out, _) = defragctl(
        socket,
        &[OsStr::new("--json"), OsStr::new("status")],
        secs(30),
    );
    assert!(out.status.success(), "defragctl status: {out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("defragctl --json status: {e}: {out:?}"))
}

/// After a SIGKILL mid-job, the restarted service takes the interrupted
/// job back; until its move is really under way (every check passed, the
/// first chunk handed to the kernel) the status must not say it is
/// defragmenting the file, and once it is, it shows the move from where
/// it resumes, not from 0%. A frozen filesystem holds the restarted job in
/// its checks for as long as the test needs to look.
#[test]
fn after_a_crash_the_status_shows_only_what_really_moves() {
    if !require_root() {
        return;
    }
    let size = 128 * MIB;
    let _turn = one_image_at_a_time();
    let mut img = LoopImage::create(ImageSpec::ext4(512));
    let root = img.root().to_path_buf();
    let path = root.join("journal.db");
    make_fragmented_files(&root, &[(&path, size, 0x13)], 2 * MIB).delete_all(&root);
    img.settle();
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = 16;
    home.write_config(&cfg);
    let orig = fiemap(&path);
    wait_until_quiet(&[&path]);

    let mut svc = home.start(&[]);
    svc.wait_for_log(&defragmenting(&path), secs(60));
    wait_for_progress(&path, &orig, 8 * MIB, secs(30));
    // The cursor is saved once moves are committed (at least every second).
    std::thread::sleep(Duration::from_millis(1500));
    svc.sigkill();
    assert!(
        svc.lines_with("defragmented ").is_empty(),
        "the job finished before the kill; the test needs a slower throttle"
    );
    drop(svc);

    // Declared before the freeze, so that the thaw (dropped first) comes
    // before the service is killed and waited for.
    let mut restarted: Option<Service> = None;
    let mut frozen = FreezeGuard::freeze(&root);
    let svc = restarted.insert(home.start(&[]));
    let line = svc.wait_for_log("was interrupted at block", secs(30));
    let block = number_after(&line, "was interrupted at block ");
    assert!(block > 0, "{line}");
    let resumed_at = block * 4096;

    // The worker takes the job and checks the file; the frozen filesystem
    // holds it there. Whatever the status says meanwhile, it is not a move.
    let deadline = std::time::Instant::now() + secs(60);
    let held = loop {
        let s = status(&home.control_socket());
        assert!(
            s.state != "moving" && !s.summary.contains("defragmenting") && s.moving.is_empty(),
            "the status claims a move nothing has started: {s:?}"
        );
        if s.state == "checking" && s.summary.contains(&path.display().to_string()) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted service never took the interrupted job: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("while frozen: {}", held.summary);

    frozen.thaw();
    let deadline = std::time::Instant::now() + secs(60);
    let mut seen_moving = false;
    while svc.lines_with(&defragmented(&path)).is_empty() {
        let s = status(&home.control_socket());
        if s.state == "moving" {
            seen_moving = true;
            let m = &s.moving[0];
            assert_eq!(Path::new(&m.path), path);
            assert!(
                m.moved_bytes >= resumed_at,
                "the resumed move shows {} bytes done, less than the {resumed_at} before the crash: {s:?}",
                m.moved_bytes
            );
            assert!(!s.summary.contains(" 0% "), "{s:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed job did not finish: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("resumed at block {block}; a move under way was seen: {seen_moving}");
    svc.stop(secs(10));
    drop(restarted);
    img.unmount_and_fsck();
}

/// defragd's score column and e4defrag's score measure different things:
/// e4defrag's is printed only on request, labelled as its own measure,
/// and --json keeps it as it was.
#[test]
fn check_prints_e4defrags_score_only_when_asked_and_says_what_it_measures() {
    if !require_root() {
        return;
    }
    let _turn = one_image_at_a_time();
    let img = LoopImage::create(ImageSpec::ext4(256));
    let root = img.root().to_path_buf();
    let path = root.join("big");
    make_fragmented_files(&root, &[(&path, 32 * MIB, 0x7)], 2 * MIB).delete_all(&root);
    sync_fs(&root);
    let file = path.to_str().expect("utf-8 temp path");

    let plain = defragd(["check", file]);
    plain.assert_code(0);
    assert!(
        !plain.stdout.contains("e4defrag"),
        "e4defrag's score is shown unasked:\n{}",
        plain.stdout
    );
    assert!(
        plain
            .stdout
            .contains("score: the share of a file's extents that are excess"),
        "the score column is not explained:\n{}",
        plain.stdout
    );

    let asked = defragd(["check", "--e4defrag-score", file]);
    asked.assert_code(0);
    let line = asked
        .stdout
        .lines()
        .find(|l| l.starts_with("e4defrag -c fragmentation score: "))
        .unwrap_or_else(|| panic!("no e4defrag score line:\n{}", asked.stdout));
    assert!(line.contains("[0-30 no problem"), "{line}");
    assert!(
        asked.stdout.contains("e4defrag's own measure")
            && asked.stdout.contains("not the score column"),
        "e4defrag's score is not labelled as a different measure:\n{}",
        asked.stdout
    );

    let json = defragd(["check", "--json", file]);
    json.assert_code(0);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert!(value["total"]["e4defrag_score"].is_number(), "{value}");
    assert!(value["files"][0]["score"].is_number(), "{value}");
}

/// A directory that holds only subdirectories, checked without -r: nothing
/// is measured, and check says how to reach them, with a read cost of
/// 0.0 ms, not -0.0 (the sum of no files).
#[test]
fn check_of_a_directory_of_directories_says_how_to_walk_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    fs::write(dir.path().join("sub/file"), b"data").expect("write");
    let arg = dir.path().to_str().expect("utf-8 temp path");

    let run = defragd(["check", arg]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("0 files, 0 B") && run.stdout.contains("read cost: about 0.0 ms more"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(&format!(
            "only the files directly in {arg} were checked; -r walks its subdirectories too"
        )),
        "no word on -r:\n{}",
        run.stderr
    );

    let walked = defragd(["check", "-r", arg]);
    assert!(
        !walked.stderr.contains("-r walks"),
        "the note is given with -r too:\n{}",
        walked.stderr
    );
}

/// `defragd check --json DIR | head`: once the reader has gone, defragd
/// ends as other tools do (SIGPIPE), with no panic on stderr.
#[test]
fn check_ends_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let dir = tempdir();
    // Enough files that the report outgrows a pipe's 64 KiB buffer.
    for i in 0..2000 {
        fs::write(dir.path().join(format!("f{i}")), i.to_string()).expect("write");
    }
    let mut child = Command::new(defragd_bin())
        .args(["check", "-r", "--json"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn defragd");
    let mut first = [0u8; 100];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("read the report's start");
    // The read end is closed here, with most of the report unread.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait for defragd");
    assert!(!stderr.contains("panicked"), "defragd panicked:\n{stderr}");
    assert!(
        status.signal() == Some(nix::libc::SIGPIPE) || status.success(),
        "defragd ended with {status}, not by SIGPIPE:\n{stderr}"
    );
}
