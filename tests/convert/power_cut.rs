//! Test 5: a power cut while the service converts.
//!
//! EXT4_IOC_MIGRATE builds the new extent tree in a temporary inode (in
//! use, no links, on no orphan list), swaps it into the file and frees it,
//! in several journal handles. If the journal commits between the first and
//! the last of them and the power goes before the next commit, the
//! temporary inode is left behind for e2fsck ("Deleted inode N has zero
//! dtime"). The whole call takes ~10 ms, nearly all of it waiting for an
//! RCU grace period before anything changes, and then well under a
//! millisecond of work: a moment picked at random almost never falls where
//! it matters. So each trial picks a random moment soon after the first
//! conversion, waits there for the worker to be inside EXT4_IOC_MIGRATE and
//! to leave that wait, waits a random few more microseconds, has another
//! process on the filesystem fsync a file of its own (a journal commit, as
//! on any busy machine), and cuts the power right after that commit.
//! Trials alternate two cuts: a power cut (the service is stopped with
//! SIGSTOP at the instant the filesystem is shut down without a log flush,
//! then killed) and a filesystem shutdown under the running service (then
//! killed 300 ms later). About one trial in four or five catches a
//! conversion before it is durable; ten trials catch at least one about
//! nine runs in ten.

use super::service_policy::config_with_conversion;
use super::*;

/// EXT4_IOC_SHUTDOWN, _IOR('X', 125, __u32).
const EXT4_IOC_SHUTDOWN: u64 = 0x8004_587D;
/// Shut down without flushing the log: like a power cut.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
/// EXT4_IOC_MIGRATE, _IO('f', 9).
const EXT4_IOC_MIGRATE: u64 = 0x6609;
/// The most microseconds between the worker leaving EXT4_IOC_MIGRATE's
/// RCU wait and the other process's fsync.
const JITTER_US: u64 = 400;

/// Shuts down the filesystem holding `dir` (an open fd on it).
fn shutdown_fs(dir: &File, flag: u32) {
    let arg: u32 = flag;
    // SAFETY: EXT4_IOC_SHUTDOWN reads one u32 through the pointer, which
    // points at a live local; the fd is open for the call.
    let rc =
        unsafe { nix::libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &arg as *const u32) };
    assert_eq!(
        rc,
        0,
        "EXT4_IOC_SHUTDOWN: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `sig` to `pid` (a child this test started and has not reaped).
fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid fits in i32");
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { nix::libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Whether a /proc/PID/task/TID/syscall line is ioctl(_, EXT4_IOC_MIGRATE).
fn is_migrate_syscall(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let nr = fields.first().and_then(|f| f.parse::<i64>().ok());
    let cmd = fields
        .get(2)
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    nr == Some(nix::libc::SYS_ioctl) && cmd == Some(EXT4_IOC_MIGRATE)
}

/// The threads of `pid` blocked in ioctl(fd, EXT4_IOC_MIGRATE), or, when
/// stopped, stopped on their way out of it (no code of their own run
/// since): (tid, name).
fn threads_in_migrate(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(syscall) = fs::read_to_string(dir.join("syscall")) else {
            continue;
        };
        if is_migrate_syscall(&syscall) {
            let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
            found.push((
                task.file_name().to_string_lossy().into_owned(),
                name.trim().to_string(),
            ));
        }
    }
    found
}

/// Whether every thread of `pid` is stopped (state T or t).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'T' || state == 't')
            })
            .unwrap_or(true)
    })
}

/// e2fsck's offers to optimize a valid extent tree ("Inode N extent tree
/// (at level 1) could be narrower.  Optimize? no"): not a problem, exit 0.
fn is_fsck_optimization(line: &str) -> bool {
    line.contains("extent tree")
        && (line.contains("could be narrower") || line.contains("could be shorter"))
}

/// e2fsck's lines that report a problem (not the banner, the pass
/// headers, the summary, the closing warning or an optimization).
fn fsck_problem_lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("e2fsck 1.")
                && !l.starts_with("Pass ")
                && !l.contains(" files (")
                && !l.contains("WARNING: Filesystem still has errors")
                && !is_fsck_optimization(l)
        })
        .map(str::to_string)
        .collect()
}

/// Whether `line` is one of the lines `e2fsck -fn` prints about an inode
/// a conversion leaked: EXT4_IOC_MIGRATE's temporary inode, in use with no
/// links and no dtime, with the extent-tree blocks it may hold, and the
/// counts that follow (as seen on e2fsprogs 1.47.0, kernel 6.18).
fn leaked_inode_line(line: &str) -> bool {
    let l = line.trim();
    (l.starts_with("Deleted inode ") && l.contains(" has zero dtime."))
        || l.starts_with("Inode bitmap differences:")
        || l.starts_with("Block bitmap differences:")
        || l.starts_with("Free inodes count wrong")
        || l.starts_with("Free blocks count wrong")
        || l == "Fix? no"
}

/// How a trial brings the filesystem down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// A power cut: the service stops (SIGSTOP) at the same instant as the
    /// filesystem (shut down without a log flush); then it is killed.
    Power,
    /// The filesystem is shut down (no log flush) under the running
    /// service, which sees its calls fail for a moment; then it is killed.
    FsShutdown,
}

/// What one crash trial saw.
#[derive(Debug)]
struct Trial {
    cut: Cut,
    /// The filesystem's device during the trial.
    dev: String,
    delay_ms: u64,
    jitter_us: u64,
    /// The worker was seen inside EXT4_IOC_MIGRATE before the cut.
    seen: bool,
    /// Power cut only: the worker stopped on its way out of
    /// EXT4_IOC_MIGRATE (it could not record the end of the conversion).
    in_ioctl: bool,
    /// Every file a "converting PATH to extents" line named, in order.
    converting: Vec<String>,
    converted_files: usize,
    fsck_code: i32,
    fsck_lines: Vec<String>,
    repaired: Option<i32>,
    error_lines: Vec<String>,
}

impl Trial {
    /// The cut caught a conversion before it was durable: inside the
    /// kernel call, or after it but before the journal committed its end
    /// (e2fsck finds the inode it leaked).
    fn caught(&self) -> bool {
        self.in_ioctl || self.fsck_code != 0
    }
}

/// The path in a "converting PATH to extents" line.
fn converting_path(line: &str) -> Option<String> {
    let rest = &line[line.find("converting ")? + "converting ".len()..];
    Some(rest[..rest.find(" to extents")?].to_string())
}

fn crash_trial(
    n: usize,
    cut: Cut,
    template: &mut LoopImage,
    rels: &[PathBuf],
    md5s: &[String],
    rng: &mut Seeded,
) -> Trial {
    let mut img = template.duplicate();
    let root = img.root().to_path_buf();
    let dev = img.device().expect("attached").to_string();
    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.quiet_period = "1s".into();
    cfg.min_size = "64KiB".into();
    cfg.min_excess_extents = 1;
    cfg.min_score = 0;
    home.write_config_text(&config_with_conversion(&home, &cfg, true));
    // Another process's file on the same filesystem.
    let other = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("other-process.dat"))
        .expect("create the other process's file");

    let mut svc = home.start(&[]);
    let pid = svc.pid();
    let fs_fd = File::open(&root).expect("open the mount point");
    svc.wait_for_line("the first conversion", secs(30), |l| {
        l.contains("WARN") && converting_path(l).is_some()
    });
    let delay_ms = rng.range(0, 150);
    let jitter_us = rng.range(0, JITTER_US);
    sleep(Duration::from_millis(delay_ms));
    let watch = Instant::now();
    let mut seen = false;
    while watch.elapsed() < secs(3) {
        if let Some((tid, _)) = threads_in_migrate(pid).into_iter().next() {
            seen = true;
            // Until it leaves the RCU wait (its syscall line then reads
            // "running", or another call).
            let syscall = format!("/proc/{pid}/task/{tid}/syscall");
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_millis(200)
                && is_migrate_syscall(&fs::read_to_string(&syscall).unwrap_or_default())
            {
            }
            break;
        }
    }
    let spin = Instant::now();
    while spin.elapsed() < Duration::from_micros(jitter_us) {
        std::hint::spin_loop();
    }
    other
        .set_modified(std::time::SystemTime::now())
        .expect("touch the other file");
    other.sync_all().expect("fsync the other file");
    let mut in_ioctl = false;
    match cut {
        Cut::Power => {
            // A thread inside the ioctl finishes it in the kernel but runs
            // no more of its own code: it cannot record the end.
            signal(pid, nix::libc::SIGSTOP);
            shutdown_fs(&fs_fd, EXT4_GOING_FLAGS_NOLOGFLUSH);
            let at = Instant::now();
            while !all_stopped(pid) && at.elapsed() < secs(5) {
                sleep(Duration::from_millis(1));
            }
            in_ioctl = !threads_in_migrate(pid).is_empty();
        }
        Cut::FsShutdown => {
            shutdown_fs(&fs_fd, EXT4_GOING_FLAGS_NOLOGFLUSH);
            sleep(Duration::from_millis(300));
        }
    }
    svc.sigkill();
    drop(fs_fd);
    drop(other);

    let converting: Vec<String> = svc
        .log()
        .lines()
        .filter(|l| l.contains("WARN"))
        .filter_map(converting_path)
        .collect();
    eprintln!(
        "trial {n} ({cut:?}): cut {delay_ms} ms after the first conversion + the next one's RCU wait ({}) + {jitter_us} us + an fsync; worker stopped in EXT4_IOC_MIGRATE: {in_ioctl}; {} conversions started, the last {:?}",
        if seen { "seen" } else { "not seen" },
        converting.len(),
        converting.last()
    );
    eprintln!("trial {n}: service log tail:\n{}", svc.tail(3));

    // Unmount, mount again (the journal replays): the data is intact.
    img.unmount();
    img.mount();
    let check_data = |when: &str| {
        for (rel, want) in rels.iter().zip(md5s) {
            let got = md5(&root.join(rel));
            assert_eq!(&got, want, "trial {n}: {} changed {when}", rel.display());
        }
    };
    check_data("after the crash and the journal replay");
    let converted_files = rels
        .iter()
        .filter(|rel| extent_mapped(&root.join(rel)))
        .count();
    img.unmount();

    let image = img.image_path().to_path_buf();
    let (fsck_code, out) = e2fsck("-fn", &image);
    let fsck_lines = fsck_problem_lines(&out);
    eprintln!(
        "trial {n}: md5 of all {} files intact; {converted_files} extent-mapped; e2fsck -fn exit {fsck_code}{}",
        rels.len(),
        if fsck_code == 0 {
            String::new()
        } else {
            format!(":\n{}", out.trim_end())
        }
    );
    let other_lines: Vec<&String> = fsck_lines
        .iter()
        .filter(|l| !leaked_inode_line(l))
        .collect();
    assert!(
        (fsck_code == 0 || fsck_code == 4) && other_lines.is_empty(),
        "trial {n}: e2fsck -fn (exit {fsck_code}) reports more than a leaked inode: {other_lines:?}\n{out}"
    );
    let mut repaired = None;
    if fsck_code != 0 {
        let (fix, fix_out) = e2fsck("-fy", &image);
        eprintln!("trial {n}: e2fsck -fy exit {fix}:\n{}", fix_out.trim_end());
        assert!(
            fix == 0 || fix == 1,
            "trial {n}: e2fsck -fy exit {fix}:\n{fix_out}"
        );
        repaired = Some(fix);
        let (again, again_out) = e2fsck("-fn", &image);
        assert_eq!(
            again, 0,
            "trial {n}: e2fsck -fn after e2fsck -fy is not clean:\n{again_out}"
        );
        eprintln!("trial {n}: e2fsck -fn after the repair: exit 0");
    }
    img.mount();
    check_data("after e2fsck");

    // The restarted service (same state_dir) speaks of the conversion.
    let mut svc = home.start(&[]);
    svc.wait_for_log("defragd is running", secs(20));
    let error_lines = svc.lines_with("defragd was converting");
    svc.stop(secs(10));
    img.unmount();
    for l in &error_lines {
        eprintln!("trial {n}: restarted service: {l}");
    }
    Trial {
        cut,
        dev,
        delay_ms,
        jitter_us,
        seen,
        in_ioctl,
        converting,
        converted_files,
        fsck_code,
        fsck_lines,
        repaired,
        error_lines,
    }
}

/// An ext3 image with `specs` written block by block into free space made
/// of one-block holes: a filler file fills the filesystem, every other
/// block of it is punched out, the files are written (fsync'd appends,
/// taking turns), then the filler is deleted. Each file ends in about one
/// piece per block: the most work for EXT4_IOC_MIGRATE.
fn crash_template(size_mib: u64, specs: &[Spec]) -> (LoopImage, Vec<PathBuf>) {
    use nix::fcntl::{fallocate, FallocateFlags};
    let t = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(size_mib).kind(FsKind::Ext3AsExt4));
    let root = img.root().to_path_buf();
    let filler = root.join("filler");
    {
        let mut f = File::create(&filler).expect("create filler");
        let chunk = vec![0x5au8; MIB as usize];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("write filler: {e}"),
            }
        }
        let _ = f.sync_all();
        let len = f.metadata().expect("filler metadata").len();
        let block = 4 * KIB;
        for off in (0..len).step_by(2 * block as usize) {
            fallocate(
                &f,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as i64,
                block as i64,
            )
            .expect("punch a hole in the filler");
        }
        f.sync_all().expect("fsync filler");
    }
    let paths: Vec<PathBuf> = specs.iter().map(|s| root.join(&s.rel)).collect();
    for p in &paths {
        fs::create_dir_all(p.parent().expect("parent")).expect("create dir");
    }
    write_interleaved(&paths, specs, 64 * KIB);
    fs::remove_file(&filler).expect("delete filler");
    enable_extents(&mut img);
    eprintln!(
        "crash template: {size_mib} MiB ext3 + tune2fs extents, {} files written into one-block holes, in {:.1} s; free {} of {} MiB",
        specs.len(),
        t.elapsed().as_secs_f64(),
        free_bytes(&root) / MIB,
        fs_bytes(&root) / MIB
    );
    (img, paths)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_power_cut_during_a_conversion_loses_no_data_and_is_reported() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let trials = env_u64("DEFRAGD_CONVERT_CRASH_TRIALS").unwrap_or(10) as usize;
    let seed = env_u64("DEFRAGD_CONVERT_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "crash trials: {trials} (DEFRAGD_CONVERT_CRASH_TRIALS), seed {seed} (DEFRAGD_CONVERT_CRASH_SEED)"
    );
    let mut rng = Seeded::new(seed);
    let mut sizes = Seeded::new(0xc4a5_0000);
    let specs: Vec<Spec> = (0..32)
        .map(|i| {
            spec(
                &format!("old/f{i:02}.bin"),
                sizes.range(32, 64) * 64 * KIB,
                0xc4a5_1000 + i,
            )
        })
        .collect();
    let (mut template, paths) = crash_template(384, &specs);
    let rels: Vec<PathBuf> = specs.iter().map(|s| s.rel.clone()).collect();
    let md5s: Vec<String> = paths.iter().map(|p| md5(p)).collect();
    let extents: Vec<u64> = paths.iter().map(|p| filefrag_extents(p)).collect();
    eprintln!(
        "template: {} block-mapped files, {} MiB, {}..{} extents each",
        paths.len(),
        specs.iter().map(|s| s.size).sum::<u64>() / MIB,
        extents.iter().min().unwrap_or(&0),
        extents.iter().max().unwrap_or(&0)
    );
    wait_until_older_than(&paths, secs(2));

    let results: Vec<Trial> = (1..=trials)
        .map(|n| {
            let cut = if n % 2 == 1 {
                Cut::Power
            } else {
                Cut::FsShutdown
            };
            crash_trial(n, cut, &mut template, &rels, &md5s, &mut rng)
        })
        .collect();

    let count = |f: &dyn Fn(&Trial) -> bool| results.iter().filter(|t| f(t)).count();
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for t in &results {
        for l in &t.fsck_lines {
            *lines.entry(l.clone()).or_default() += 1;
        }
    }
    for (i, t) in results.iter().enumerate() {
        eprintln!(
            "  trial {} {:?}: {} ms + {} us, seen {}, in ioctl {}, {} conversions started (last {:?}), {} extent-mapped after replay, e2fsck -fn {} {:?}, -fy {:?}, restarted ERROR lines {}",
            i + 1,
            t.cut,
            t.delay_ms,
            t.jitter_us,
            t.seen,
            t.in_ioctl,
            t.converting.len(),
            t.converting
                .last()
                .map(|f| f.rsplit('/').next().unwrap_or(f)),
            t.converted_files,
            t.fsck_code,
            t.fsck_lines,
            t.repaired,
            t.error_lines.len()
        );
    }
    for (l, count) in &lines {
        eprintln!("  e2fsck -fn printed, in {count} trial(s): {l}");
    }
    let caught = count(&|t| t.caught());
    eprintln!(
        "SUMMARY: {trials} trials ({} power cut, {} fs shutdown under the running service); conversions caught mid-way {caught} (worker stopped inside EXT4_IOC_MIGRATE {}, leaked inode found by e2fsck {}); e2fsck -fn clean {}, leaked inode {} (e2fsck -fy repaired {} of them, e2fsck -fn clean after); data intact in all; restarted service logged an interrupted conversion in {} of the {caught} that needed it; {:.1} s",
        count(&|t| t.cut == Cut::Power),
        count(&|t| t.cut == Cut::FsShutdown),
        count(&|t| t.in_ioctl),
        count(&|t| t.fsck_code != 0),
        count(&|t| t.fsck_code == 0),
        count(&|t| t.fsck_code != 0),
        count(&|t| t.repaired.is_some()),
        count(&|t| t.caught() && !t.error_lines.is_empty()),
        t0.elapsed().as_secs_f64()
    );
    if caught == 0 {
        eprintln!("NOTE: no trial caught a conversion in the act");
    }

    // Every conversion a crash caught must be named by the restarted
    // service, with the e2fsck to run.
    let missing: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, t)| t.caught())
        .filter_map(|(i, t)| {
            let device = format!("e2fsck -f {}", t.dev);
            let named = |file: &str| {
                t.error_lines.iter().any(|l| {
                    l.contains("ERROR")
                        && l.contains(&format!("converting {file} "))
                        && l.contains(&device)
                })
            };
            // Stopped inside the call: that very file. Leaked inode found
            // later: one of the files this run converted.
            let ok = if t.in_ioctl {
                t.converting.last().is_some_and(|f| named(f))
            } else {
                t.converting.iter().any(|f| named(f))
            };
            (!ok).then(|| {
                format!(
                    "trial {} ({:?}): {} (last conversion {:?}), but the restarted service logged {:?}",
                    i + 1,
                    t.cut,
                    if t.in_ioctl {
                        "cut inside EXT4_IOC_MIGRATE".to_string()
                    } else {
                        format!("e2fsck -fn found the leaked inode: {:?}", t.fsck_lines)
                    },
                    t.converting.last(),
                    t.error_lines
                )
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "a crash caught a conversion and the restarted service did not name it with `e2fsck -f DEVICE`:\n{}\n\
         (the service marks a conversion finished as soon as EXT4_IOC_MIGRATE returns, before the journal \
         has committed the kernel's work: the end must be recorded only once it is durable, e.g. after a \
         syncfs(2) of the filesystem)",
        missing.join("\n")
    );
}
