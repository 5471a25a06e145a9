//! Filesystem events in the middle of a job: the kernel remounting the
//! filesystem read-only after an error, an operator remounting it
//! read-only and back, another process filling the disk, and a freeze
//! (fsfreeze). Each time the service keeps running, answers `defragctl
//! status`, says in its log what happened, and finishes the job once the
//! filesystem is usable again; no file's data changes and e2fsck finds the
//! filesystem clean.

use defragd_testkit as common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// How fast the service moves here: slow enough that each event lands in
/// the middle of a job (48 MiB: 6 s).
const MIB_PER_S: u64 = 8;

/// A service caught in the middle of moving `path`. Fields drop in order:
/// the service before the image.
struct MidJob {
    svc: Service,
    home: ServiceHome,
    img: LoopImage,
    path: PathBuf,
    sum: String,
}

/// An image of `spec` with one fragmented file of `mib` MiB (and, with
/// `others`, more files of that size), and the service started on it and
/// seen moving one of them.
fn mid_job(
    spec: ImageSpec,
    mib: u64,
    others: usize,
    mib_per_s: u64,
) -> (MidJob, Vec<(PathBuf, String)>) {
    let mut img = LoopImage::create(spec);
    let root = img.root().to_path_buf();
    let names: Vec<PathBuf> = (0..=others)
        .map(|i| root.join(format!("f{i}.bin")))
        .collect();
    let files: Vec<(&Path, u64, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_path(), mib * MIB, 0xe7e + i as u64))
        .collect();
    make_fragmented_files(&root, &files, 2 * MIB).delete_all(&root);
    img.settle();
    let sums: Vec<(PathBuf, String)> = names.iter().map(|p| (p.clone(), md5(p))).collect();
    let maps: Vec<Vec<Extent>> = names.iter().map(|p| fiemap(p)).collect();
    let paths: Vec<&Path> = names.iter().map(PathBuf::as_path).collect();
    wait_until_quiet(&paths);

    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = mib_per_s;
    home.write_config(&cfg);
    let mut svc = home.start(&[]);
    // "defragmenting PATH (job …": the job's start (the status line says
    // "defragmenting PATH 0% (…" too, once the move is under way).
    let starts: Vec<String> = names.iter().map(|p| defragmenting(p)).collect();
    let line = svc.wait_for_line("a job's start", secs(60), |l| {
        starts.iter().any(|s| l.contains(s.as_str()))
    });
    let i = starts
        .iter()
        .position(|s| line.contains(s.as_str()))
        .expect("the line names one of them");
    wait_for_progress(&names[i], &maps[i], 4 * MIB, secs(30));
    let (path, sum) = sums[i].clone();
    let rest = sums.into_iter().filter(|(p, _)| *p != path).collect();
    (
        MidJob {
            svc,
            home,
            img,
            path,
            sum,
        },
        rest,
    )
}

impl MidJob {
    /// The first line of `defragctl status`, which must come within 10 s
    /// whatever the filesystem is doing.
    fn status(&self) -> String {
        let (out, took) = defragctl(
            &self.home.control_socket(),
            &[OsStr::new("status")],
            secs(10),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "defragctl status failed: {out:?}\nservice log:\n{}",
            self.svc.tail(30)
        );
        let first = text.lines().next().unwrap_or_default().to_string();
        eprintln!("status ({took:?}): {first}");
        first
    }

    /// `defragctl COMMAND`, which must succeed.
    fn control(&self, command: &str) {
        let (out, _) = defragctl(
            &self.home.control_socket(),
            &[OsStr::new(command)],
            secs(10),
        );
        assert!(out.status.success(), "defragctl {command}: {out:?}");
    }

    /// Waits until the service covers the filesystem a second time (it
    /// covered it at its start).
    fn wait_covered_again(&mut self) {
        let covering = format!("covering {} (", self.img.root().display());
        let back = self.svc.wait_for_nth(&covering, 2, secs(30));
        eprintln!("{back}");
    }

    fn assert_running(&mut self, when: &str) {
        assert!(
            self.svc.is_running(),
            "the service exited {when}:\n{}",
            self.svc.tail(40)
        );
    }

    /// The job ends defragmented (within `limit`), the data as it was.
    fn assert_finishes(&mut self, limit: Duration) {
        let line = self.svc.wait_for_log(&defragmented(&self.path), limit);
        eprintln!("{line}");
        assert_eq!(md5(&self.path), self.sum, "content changed");
    }

    /// Stops the service, unmounts, and e2fsck must find it clean.
    fn finish(mut self) {
        self.svc.stop(secs(15));
        self.img.unmount_and_fsck();
    }
}

/// The ext4 sysfs directory of the image's device.
fn ext4_sysfs(img: &LoopImage) -> PathBuf {
    let dev = img.device().expect("attached");
    let name = Path::new(&dev)
        .file_name()
        .expect("a device name")
        .to_os_string();
    Path::new("/sys/fs/ext4").join(name)
}

#[test]
fn the_kernel_remounting_read_only_mid_job_is_waited_out() {
    if !require_root() {
        return;
    }
    let spec = ImageSpec::ext4(256).mount_opts("errors=remount-ro");
    let (mut job, _) = mid_job(spec, 48, 0, MIB_PER_S);
    // An ext4 error, as a failing disk would cause: with errors=remount-ro
    // the kernel aborts the journal and remounts read-only at once.
    fs::write(ext4_sysfs(&job.img).join("trigger_fs_error"), "1").expect("trigger_fs_error");
    let name = job.path.display().to_string();
    let backs_off = job.svc.wait_for_line("the job backing off", secs(30), |l| {
        l.contains(&name) && l.contains("trying again in 30 s")
    });
    assert!(
        backs_off.contains("read-only") || backs_off.contains("I/O error"),
        "the log does not say what happened: {backs_off}"
    );
    job.assert_running("after the filesystem went read-only");
    job.status();

    // The operator's repair: unmount, e2fsck -fy, mount again.
    job.img.unmount();
    job.svc.wait_for_log(
        &format!("{} is gone (unmounted)", job.img.root().display()),
        secs(30),
    );
    let (_, out, _) = sh_status(
        "e2fsck",
        [OsStr::new("-fy"), job.img.image_path().as_os_str()],
    );
    eprintln!("e2fsck -fy: {}", out.lines().last().unwrap_or_default());
    let (clean, report) = fsck_image(job.img.image_path());
    assert!(clean, "e2fsck -fn after the repair is not clean:\n{report}");
    job.img.mount();
    assert_eq!(md5(&job.path), job.sum, "content changed");
    job.assert_running("while the filesystem was repaired");

    job.wait_covered_again();
    // Its queued job was dropped with the filesystem; a crawl pass, due at
    // once, finds the file again.
    job.svc.wait_for_nth("starting pass", 2, secs(10));
    job.assert_finishes(secs(60));
    job.finish();
}

#[test]
fn an_operator_remount_read_only_and_back_is_waited_out() {
    if !require_root() {
        return;
    }
    let (mut job, _) = mid_job(ImageSpec::ext4(256), 48, 0, MIB_PER_S);
    // The job holds the file open for writing, which a remount read-only
    // refuses ("busy"): pausing makes the worker let go at its next chunk.
    job.control("pause");
    job.svc.wait_for_log(" stopped at block ", secs(10));
    job.img.remount("ro");
    let gone = job
        .svc
        .wait_for_log("is gone (mounted read-only)", secs(30));
    eprintln!("{gone}");
    job.assert_running("after the remount read-only");
    job.status();

    job.img.remount("rw");
    job.wait_covered_again();
    job.control("resume");
    job.svc.wait_for_nth("starting pass", 2, secs(10));
    job.assert_finishes(secs(60));
    job.finish();
}

#[test]
fn a_disk_filled_mid_job_is_waited_out_and_work_goes_on_once_space_is_back() {
    if !require_root() {
        return;
    }
    // Two files, and room for both to be moved once the disk is not full;
    // moved slowly enough (12 s each) that the disk fills mid job.
    let (mut job, others) = mid_job(ImageSpec::ext4(512), 48, 1, 4);
    // Another process fills the disk (as root: the reserved blocks too).
    let filler = job.img.root().join("filler");
    let (filled, _, err) = sh_status(
        "dd",
        [
            OsStr::new("if=/dev/zero"),
            OsStr::new(&format!("of={}", filler.display())),
            OsStr::new("bs=1M"),
            OsStr::new("conv=fsync"),
        ],
    );
    assert!(
        !filled && err.contains("No space left"),
        "dd did not fill the disk: {err}"
    );
    eprintln!("filled: {} B free", free_bytes(job.img.root()));
    let short = job
        .svc
        .wait_for_log("trying again in 30 s (attempt", secs(120));
    eprintln!("{short}");
    job.assert_running("with the disk full");
    job.status();

    fs::remove_file(&filler).expect("rm filler");
    job.assert_finishes(secs(120));
    for (path, sum) in &others {
        let line = job.svc.wait_for_log(&defragmented(path), secs(120));
        eprintln!("{line}");
        assert_eq!(md5(path), *sum, "{}: content changed", path.display());
    }
    job.finish();
}

#[test]
fn a_frozen_filesystem_holds_the_job_and_the_service_still_answers() {
    if !require_root() {
        return;
    }
    let (mut job, _) = mid_job(ImageSpec::ext4(256), 48, 0, MIB_PER_S);
    let mut frozen = FreezeGuard::freeze(job.img.root());
    let t = Instant::now();
    // The worker waits in the kernel; everything else goes on.
    let warned = job
        .svc
        .wait_for_log("the kernel has held the move for", secs(30));
    eprintln!("after {:?}: {warned}", t.elapsed());
    assert!(
        warned.contains("frozen"),
        "the warning does not name the likely cause: {warned}"
    );
    let status = job.status();
    assert!(
        status.contains("waiting for the kernel"),
        "the status does not say the move waits: {status}"
    );
    job.assert_running("while the filesystem was frozen");

    frozen.thaw();
    let again = job
        .svc
        .wait_for_log("moving again; the kernel held it for", secs(30));
    eprintln!("{again}");
    job.assert_finishes(secs(120));
    job.finish();
}
