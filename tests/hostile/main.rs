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
//! Each part is a module: (a) `symlink_swaps` and `operator_paths`, (b)
//! `foreign_metadata`, (c) `special_files`, (d) `control_socket`, (e)
//! `file_names`; this file holds the tree, the canary and the attacker they
//! share.
//!
//! Needs root, setpriv (util-linux), setfattr/getfattr (attr) and
//! setfacl/getfacl (acl). Each test prints one `SUMMARY part=...` line.

use defragd_testkit as common;

mod control_socket;
mod file_names;
mod foreign_metadata;
mod operator_paths;
mod special_files;
mod symlink_swaps;

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
