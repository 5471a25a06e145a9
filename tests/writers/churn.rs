//! Churn while the service works through its queue: files deleted, renamed,
//! truncated, replaced, re-created, extended and hole-punched while their
//! move is under way or waits; the service stays up and every file holds
//! exactly what the test expects.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Delete,
    Rename,
    Truncate,
    Replace,
    Recreate,
    Extend,
    PunchHole,
    Untouched,
}

impl Act {
    const CHURN: [Act; 7] = [
        Act::Delete,
        Act::Rename,
        Act::Truncate,
        Act::Replace,
        Act::Recreate,
        Act::Extend,
        Act::PunchHole,
    ];
    fn name(self) -> &'static str {
        match self {
            Act::Delete => "delete",
            Act::Rename => "rename",
            Act::Truncate => "truncate",
            Act::Replace => "replace",
            Act::Recreate => "recreate",
            Act::Extend => "extend",
            Act::PunchHole => "punch",
            Act::Untouched => "untouched",
        }
    }
}

/// When an act was meant to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    InMove,
    Queued,
}

/// Where the file's job stood when the act happened (from the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Queued,
    InMove,
    Done,
}

struct ChurnFile {
    path: PathBuf,
    act: Act,
    when: When,
    /// What the file must hold at the end (None: no file at `final_path`).
    expect: Option<Vec<u8>>,
    final_path: PathBuf,
    /// For Replace: the replacement's extent map, which nothing may change.
    replacement_map: Option<Vec<Extent>>,
    /// For PunchHole: the punched byte range, which must stay a hole.
    hole: Option<(u64, u64)>,
    extents_before: u64,
    seen: Option<Seen>,
    acted_at: Option<Instant>,
}

fn job_state(log: &str, path: &Path) -> Seen {
    if log.lines().any(|l| ends_job(l, path)) {
        Seen::Done
    } else if log.contains(&defragmenting(path))
        || log.contains(&format!(" {} at block ", path.display()))
    {
        Seen::InMove
    } else {
        Seen::Queued
    }
}

/// Does `f.act` to its file; sets what the file must hold afterwards.
fn act_on(f: &mut ChurnFile, spare: &Path, rng: &mut Seeded) {
    let p = f.path.clone();
    let orig = f.expect.clone().expect("original content known");
    match f.act {
        Act::Delete => {
            fs::remove_file(&p).expect("delete");
            f.expect = None;
        }
        Act::Rename => {
            let to = p.with_extension("renamed");
            fs::rename(&p, &to).expect("rename");
            f.final_path = to;
        }
        Act::Truncate => {
            let len = (orig.len() as u64 / 2 / 4096) * 4096 + 123;
            OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|file| {
                    file.set_len(len)?;
                    file.sync_all()
                })
                .expect("truncate");
            f.expect = Some(orig[..len as usize].to_vec());
        }
        Act::Replace => {
            // A fragmented file made beforehand (in a tree the service
            // excludes) is renamed over the queued one: a new inode at the
            // same path.
            let map = fiemap(spare);
            let data = read_all(spare);
            fs::rename(spare, &p).expect("rename the replacement over the file");
            f.replacement_map = Some(map);
            f.expect = Some(data);
        }
        Act::Recreate => {
            let old = fs::metadata(&p).expect("stat").ino();
            let old_gen = generation(&p);
            fs::remove_file(&p).expect("delete before re-create");
            let data = rng.bytes(orig.len() / 2 + 4096);
            write_fsynced(&p, &data, 256 * 1024);
            f.replacement_map = Some(fiemap(&p));
            f.expect = Some(data);
            eprintln!(
                "re-created {}: inode {old} generation {old_gen} -> inode {} generation {}",
                p.display(),
                fs::metadata(&p).expect("stat").ino(),
                generation(&p)
            );
        }
        Act::Extend => {
            let more = rng.bytes(MIB as usize + 1000);
            let mut file = OpenOptions::new()
                .append(true)
                .open(&p)
                .expect("open to extend");
            file.write_all(&more).expect("extend");
            file.sync_all().expect("fsync");
            let mut e = orig;
            e.extend_from_slice(&more);
            f.expect = Some(e);
        }
        Act::PunchHole => {
            let off = (orig.len() as u64 / 3 / 4096) * 4096;
            let len = MIB;
            let file = OpenOptions::new()
                .write(true)
                .open(&p)
                .expect("open to punch");
            fallocate(
                &file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            )
            .expect("punch a hole");
            file.sync_all().expect("fsync");
            let mut e = orig;
            e[off as usize..(off + len) as usize].fill(0);
            f.expect = Some(e);
            f.hole = Some((off, len));
        }
        Act::Untouched => {}
    }
}

#[test]
fn churn_while_the_service_works_through_its_queue() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let rounds = env_count("DEFRAGD_WRITERS_ROUNDS", 1);
    let seed = env_seed("DEFRAGD_WRITERS_SEED");
    eprintln!("churn: seed {seed:#x} (DEFRAGD_WRITERS_SEED={seed:#x} repeats the choices)");
    let mut rng = Seeded::new(seed);
    let mut failures: Vec<String> = Vec::new();
    let mut acts: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    let mut counts = ChurnCounts::default();
    for round in 0..rounds {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            churn_round(round, &mut rng, &mut acts, &mut counts)
        }));
        match res {
            Ok(problems) => failures.extend(problems),
            Err(p) => failures.push(format!("round {round}: {}", panic_message(&*p))),
        }
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("seed", format!("{seed:#x}")),
        ("rounds", rounds.to_string()),
        ("files", counts.files.to_string()),
    ];
    let names: Vec<(String, u64)> = acts
        .iter()
        .map(|((a, s), n)| (format!("{a}_{s}"), *n))
        .collect();
    for (k, v) in &names {
        fields.push((k.as_str(), v.to_string()));
    }
    fields.extend([
        ("defragmented", counts.defragmented.to_string()),
        ("dropped", counts.dropped.to_string()),
        ("failed_jobs", counts.failed_jobs.to_string()),
        ("skipped", counts.skipped.to_string()),
        ("files_verified", counts.files_verified.to_string()),
        ("bytes_verified", counts.bytes_verified.to_string()),
        ("fsck_runs", counts.fsck_runs.to_string()),
        ("failures", failures.len().to_string()),
        ("secs", format!("{:.0}", started.elapsed().as_secs_f64())),
    ]);
    print_summary("writers_churn", &fields);
    assert!(
        failures.is_empty(),
        "churn: {} failures (seed {seed:#x}):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

#[derive(Default)]
struct ChurnCounts {
    files: u64,
    defragmented: u64,
    dropped: u64,
    failed_jobs: u64,
    skipped: u64,
    files_verified: u64,
    bytes_verified: u64,
    fsck_runs: u64,
}

fn churn_round(
    round: u64,
    rng: &mut Seeded,
    acts: &mut BTreeMap<(&'static str, &'static str), u64>,
    counts: &mut ChurnCounts,
) -> Vec<String> {
    let t0 = Instant::now();
    let mut img = LoopImage::create(ImageSpec::ext4(384));
    let root = img.root().to_path_buf();
    let q = root.join("q");
    let spare_dir = root.join("spare");
    fs::create_dir_all(&q).expect("mkdir q");
    fs::create_dir_all(&spare_dir).expect("mkdir spare");

    // Two files per churn act (one acted on mid-move, one while queued),
    // three left alone, in a seeded order.
    let mut plan: Vec<(Act, When)> = Act::CHURN
        .iter()
        .flat_map(|a| [(*a, When::InMove), (*a, When::Queued)])
        .collect();
    plan.extend([(Act::Untouched, When::Queued); 3]);
    for i in (1..plan.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        plan.swap(i, j);
    }
    let sizes: Vec<u64> = plan
        .iter()
        .map(|_| rng.range(4, 6) * MIB + rng.range(0, 15) * 4096)
        .collect();
    let paths: Vec<PathBuf> = (0..plan.len())
        .map(|i| q.join(format!("f{i:02}.bin")))
        .collect();
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| spare_dir.join(format!("r{i}.bin")))
        .collect();
    let mut specs: Vec<(&Path, u64, u64)> = paths
        .iter()
        .zip(&sizes)
        .enumerate()
        .map(|(i, (p, s))| (p.as_path(), *s, 0xc4_0000 + round * 100 + i as u64))
        .collect();
    for (i, s) in spares.iter().enumerate() {
        specs.push((s.as_path(), 3 * MIB, 0x5a_0000 + round * 100 + i as u64));
    }
    make_fragmented_files(&root, &specs, 2 * MIB).delete_all(&root);
    img.settle();
    let mut files: Vec<ChurnFile> = plan
        .iter()
        .zip(&paths)
        .map(|((act, when), p)| ChurnFile {
            path: p.clone(),
            act: *act,
            when: *when,
            expect: Some(read_all(p)),
            final_path: p.clone(),
            replacement_map: None,
            hole: None,
            extents_before: filefrag_extents(p),
            seen: None,
            acted_at: None,
        })
        .collect();
    counts.files += files.len() as u64;
    let mut spare_iter = spares.clone().into_iter();
    let spare_for: Vec<Option<PathBuf>> = files
        .iter()
        .map(|f| {
            if f.act == Act::Replace {
                spare_iter.next()
            } else {
                None
            }
        })
        .collect();
    let spare_md5: Vec<String> = spares.iter().map(|p| md5(p)).collect();
    eprintln!(
        "churn round {round}: {} files ready in {:.1}s; plan: {}",
        files.len(),
        t0.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|f| format!(
                "{} {}/{:?} ({} extents)",
                f.path.file_name().unwrap_or_default().to_string_lossy(),
                f.act.name(),
                f.when,
                f.extents_before
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let home = ServiceHome::new();
    let mut cfg = ServiceConfig::new(&root, &[]);
    cfg.max_mib_per_s = 12;
    home.write_config(&cfg);
    let exclude = format!("[{}]", toml_str(&format!("{}/**", spare_dir.display())));
    let mut svc = home.start(&[("DEFRAGD__POLICY__EXCLUDE", exclude.as_str())]);
    svc.wait_for_log(&crawl_pass_done(&root), secs(60));

    let mut problems: Vec<String> = Vec::new();
    // Queued acts first, on files whose job has not started; then the
    // mid-move ones as their jobs start, each after a random part of its
    // expected length (size / 12 MiB/s).
    let log = svc.log();
    for (i, f) in files.iter_mut().enumerate() {
        if f.when == When::Queued && f.act != Act::Untouched {
            let seen = job_state(&log, &f.path);
            if seen == Seen::Queued {
                f.seen = Some(seen);
                act_on(f, spare_for[i].as_deref().unwrap_or(Path::new("")), rng);
                f.acted_at = Some(Instant::now());
            }
        }
    }
    let deadline = Instant::now() + secs(60);
    loop {
        let log = svc.log();
        let mut pending = 0;
        for (i, f) in files.iter_mut().enumerate() {
            if f.act == Act::Untouched || f.acted_at.is_some() {
                continue;
            }
            let seen = job_state(&log, &f.path);
            let due = match (f.when, seen) {
                (_, Seen::InMove) => true,
                // A queued act whose job had already started, or any act
                // whose job is over: do it now, and say so.
                (When::Queued, _) | (When::InMove, Seen::Done) => true,
                (When::InMove, Seen::Queued) => false,
            };
            if !due {
                pending += 1;
                continue;
            }
            if seen == Seen::InMove {
                let expected = f.expect.as_ref().map_or(0, Vec::len) as f64 / (12.0 * MIB as f64);
                sleep(Duration::from_secs_f64(
                    expected * 0.6 * (rng.next_u64() % 1000) as f64 / 1000.0,
                ));
            }
            // What the log says at the moment of the act.
            f.seen = Some(job_state(&svc.log(), &f.path));
            act_on(f, spare_for[i].as_deref().unwrap_or(Path::new("")), rng);
            f.acted_at = Some(Instant::now());
        }
        if pending == 0 {
            break;
        }
        if !svc.is_running() {
            problems.push(format!(
                "round {round}: the service died during the churn:\n{}",
                svc.tail(40)
            ));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: the churn did not finish in 60 s"
        );
        sleep(Duration::from_millis(10));
    }
    for f in &files {
        if f.act != Act::Untouched {
            let seen = f.seen.map_or("never", |s| match s {
                Seen::Queued => "queued",
                Seen::InMove => "in_move",
                Seen::Done => "after",
            });
            *acts.entry((f.act.name(), seen)).or_default() += 1;
        }
    }

    // Every job ends (a failed one is retried only after 10 minutes).
    if svc.is_running() {
        for f in &files {
            let p = f.path.clone();
            svc.wait_for_line(
                &format!("the end of {}'s job", p.display()),
                secs(60),
                |l| ends_job(l, &p),
            );
        }
    }
    let log = svc.log();
    let mut job_lines: Vec<String> = Vec::new();
    for f in &files {
        for l in log.lines().filter(|l| ends_job(l, &f.path)) {
            if l.contains("defragmented ") {
                counts.defragmented += 1;
            } else if l.contains("dropped job ") {
                counts.dropped += 1;
            } else if l.contains("failed ") {
                counts.failed_jobs += 1;
            } else {
                counts.skipped += 1;
            }
            job_lines.push(format!(
                "{}/{:?}: {}",
                f.act.name(),
                f.seen,
                l.split_once("  ").map_or(l, |x| x.1).trim()
            ));
        }
    }
    eprintln!(
        "churn round {round}: job outcomes:\n  {}",
        job_lines.join("\n  ")
    );
    if log.contains("panicked") {
        problems.push(format!(
            "round {round}: the service panicked:\n{}",
            svc.tail(40)
        ));
    }
    if svc.is_running() {
        svc.stop(secs(15));
    } else {
        problems.push(format!(
            "round {round}: the service is not running at the end"
        ));
    }
    drop(svc);

    // Content, identity, holes.
    for (i, f) in files.iter().enumerate() {
        let label = format!(
            "round {round}: {} ({}, {:?} at the act)",
            f.path.file_name().unwrap_or_default().to_string_lossy(),
            f.act.name(),
            f.seen
        );
        match &f.expect {
            None => {
                if f.final_path.exists() {
                    problems.push(format!("{label}: deleted, yet the path exists again"));
                }
            }
            Some(want) => {
                let got = read_all(&f.final_path);
                counts.files_verified += 1;
                counts.bytes_verified += got.len() as u64;
                if got != *want {
                    let first_diff = got
                        .iter()
                        .zip(want.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()));
                    problems.push(format!(
                        "{label}: content differs from what the test wrote ({} bytes, want {}; first difference at byte {first_diff})",
                        got.len(),
                        want.len()
                    ));
                }
            }
        }
        if f.act == Act::Rename && f.path.exists() {
            problems.push(format!(
                "{label}: the old name exists again after the rename"
            ));
        }
        if let Some(map) = &f.replacement_map {
            let now = fiemap(&f.final_path);
            if now != *map {
                problems.push(format!(
                    "{label}: the file now at the path (a new inode, never queued) was moved: extent map changed from {} to {} extents — the old file's job moved the wrong file",
                    map.len(),
                    now.len()
                ));
            }
            if f.act == Act::Replace {
                let k = spares
                    .iter()
                    .position(|s| Some(s) == spare_for[i].as_ref())
                    .expect("spare");
                if md5(&f.final_path) != spare_md5[k] {
                    problems.push(format!("{label}: the replacement's md5 changed"));
                }
            }
        }
        if let Some((off, len)) = f.hole {
            let (b0, b1) = (off / 4096, (off + len) / 4096);
            let mapped: Vec<Extent> = fiemap(&f.final_path)
                .into_iter()
                .filter(|e| e.logical < b1 && e.logical + e.len > b0)
                .collect();
            if !mapped.is_empty() {
                problems.push(format!(
                    "{label}: the punched blocks {b0}..{b1} are mapped again: {mapped:?}"
                ));
            }
        }
        if f.act == Act::Untouched {
            let after = filefrag_extents(&f.final_path);
            let ideal = ideal_extents(&f.final_path);
            if after > (ideal + 2).max(f.extents_before / 16) {
                problems.push(format!(
                    "{label}: left alone, yet not defragmented: {} -> {after} extents (ideal {ideal})",
                    f.extents_before
                ));
            }
        }
    }
    img.unmount();
    let (ok, out) = fsck_image(img.image_path());
    counts.fsck_runs += 1;
    if !ok {
        problems.push(format!("round {round}: e2fsck -fn is not clean:\n{out}"));
    }
    eprintln!(
        "churn round {round}: done in {:.1}s, {} problems",
        t0.elapsed().as_secs_f64(),
        problems.len()
    );
    problems
}
