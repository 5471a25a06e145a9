//! The service: `defragd` with no subcommand. Loads the config, opens the
//! store, covers the ext4 filesystems, and runs the crawl, the watcher and
//! one worker per disk until SIGTERM or SIGINT, after which the current
//! chunk finishes, its progress is recorded and the process exits 0.
//! SIGHUP reloads the config (a bad one keeps the running config).

mod candidates;
mod catch_up;
mod controller;
mod crawler;
mod engine;
mod exposition;
mod hold;
mod lifecycle;
mod media;
mod metrics;
mod pending;
mod shared;
mod status;
mod systemd;
mod tracker;
mod watcher;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config;
use crate::escape::{escaped, escaped_display};
use crate::filesystem::FsUuid;
use crate::mounts::{self, DiskId};
use crate::store::Store;

use shared::Shared;

/// How long shutdown waits for the threads to finish their chunk.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// How often mounts are re-read when /proc/self/mountinfo cannot be polled.
const MOUNT_RECHECK: Duration = Duration::from_secs(30);

/// The service's modules read the clock as `super::unix_now`.
pub(crate) use crate::clock::unix_now;

/// Runs the service until it is told to stop.
pub fn run(config_path: Option<&Path>) -> ExitCode {
    let settings = match config::load(config_path) {
        Ok(settings) => settings,
        Err(errors) => {
            eprintln!("defragd: the configuration is not valid:\n{errors}");
            return ExitCode::from(config::EX_CONFIG);
        }
    };
    crate::logging::init(&settings.service.log_level);
    let store = match Store::open(&settings.state_dir) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(
                "cannot open the store in {}: {e}",
                escaped(&settings.state_dir)
            );
            return ExitCode::FAILURE;
        }
    };
    match store.requeue_interrupted() {
        Ok(jobs) => {
            for job in &jobs {
                // No cursor: nothing of the move was kept (XFS swaps the
                // whole file at the end, so its cursor is always 0).
                if job.next_block == 0 {
                    tracing::info!(
                        "job {} {} was interrupted before any of its progress was kept; it \
                         starts over from the beginning",
                        job.id,
                        escaped(&job.path_hint)
                    );
                } else {
                    tracing::info!(
                        "job {} {} was interrupted at block {}; it resumes there",
                        job.id,
                        escaped(&job.path_hint),
                        job.next_block
                    );
                }
            }
        }
        Err(e) => tracing::warn!("cannot requeue interrupted jobs: {e}"),
    }
    report_interrupted_conversions(&store);
    let shared = Shared::new(store, settings);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("defragd-main")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(shared, config_path.map(Path::to_path_buf)));
    // A watcher's measurement may still be running on the blocking pool:
    // it holds no move, so it is not waited for long.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// A conversion to extents that a crash interrupted may have left an inode
/// for e2fsck to reclaim (the kernel's conversion is not crash-safe): say
/// exactly which file and what to do, once.
fn report_interrupted_conversions(store: &Store) {
    let unfinished = match store.unfinished_conversions() {
        Ok(unfinished) => unfinished,
        Err(e) => {
            tracing::warn!("cannot read the record of conversions: {e}");
            return;
        }
    };
    for conversion in unfinished {
        tracing::error!(
            "defragd was converting {} (inode {}) to extents when it stopped; the kernel's conversion is not \
             crash-safe and may have left an inode for e2fsck to reclaim (the file's data is kept): run \
             `e2fsck -f {}` at the next maintenance window, with the filesystem unmounted",
            escaped(&conversion.path),
            conversion.file.ino,
            escaped(&conversion.device)
        );
        if let Err(e) = store.finish_conversion(conversion.id) {
            tracing::warn!("cannot mark the interrupted conversion as reported: {e}");
        }
    }
}

/// The threads the service runs, by what they serve.
#[derive(Default)]
struct Threads {
    workers: HashMap<DiskId, JoinHandle<()>>,
    crawlers: HashMap<FsUuid, JoinHandle<()>>,
}

impl Threads {
    /// Starts what the covered filesystems need and forgets finished ones.
    fn sync(&mut self, shared: &Arc<Shared>) {
        self.workers.retain(|_, h| !h.is_finished());
        self.crawlers.retain(|_, h| !h.is_finished());
        for fs in shared.covered().into_values() {
            if !self.workers.contains_key(&fs.disk) {
                let (s, disk) = (Arc::clone(shared), fs.disk.clone());
                match std::thread::Builder::new()
                    .name(format!("worker-{}", disk.0))
                    .spawn(move || worker::run(s, disk))
                {
                    Ok(handle) => {
                        self.workers.insert(fs.disk.clone(), handle);
                    }
                    Err(e) => {
                        tracing::error!("cannot start the worker for disk {}: {e}", fs.disk.0)
                    }
                }
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = self.crawlers.entry(fs.uuid) {
                let (s, uuid) = (Arc::clone(shared), fs.uuid);
                match std::thread::Builder::new()
                    .name("crawl".into())
                    .spawn(move || crawler::run(s, uuid))
                {
                    Ok(handle) => {
                        slot.insert(handle);
                    }
                    Err(e) => tracing::error!(
                        "cannot start the crawl of {}: {e}",
                        escaped(&fs.mount_point)
                    ),
                }
            }
        }
    }

    /// Waits for every thread, at most until `deadline`.
    async fn join(self, deadline: Instant) {
        let handles: Vec<JoinHandle<()>> = self
            .workers
            .into_values()
            .chain(self.crawlers.into_values())
            .collect();
        while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(shared: Arc<Shared>, config_path: Option<std::path::PathBuf>) -> ExitCode {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    refresh_covered(&shared);
    let mut threads = Threads::default();
    threads.sync(&shared);
    let tracker = Arc::new(tracker::Tracker::new());
    tracker.sync(&shared);
    let (stop_tracker, tracker_stopped) = watch::channel(false);
    {
        let (tracker, shared) = (Arc::clone(&tracker), Arc::clone(&shared));
        tokio::spawn(async move { tracker.run(shared, tracker_stopped).await });
    }
    let mut watcher = start_watcher(&shared);
    let mut mounts = MountChanges::new();
    let reloaded = Arc::new(tokio::sync::Notify::new());
    let (stop_control, control_stopped) = watch::channel(false);
    let controller = Arc::new(controller::ServiceController {
        shared: Arc::clone(&shared),
        config_path: config_path.clone(),
        reloaded: Arc::clone(&reloaded),
    });
    if let Err(e) = start_control(&shared, controller, control_stopped.clone()) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = start_metrics(&shared, control_stopped) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    // The status is refreshed, and the watchdog fed, from this loop only:
    // if the loop hangs, systemd notices and restarts the service.
    let watchdog = systemd::watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hang_at = test_hang_deadline();
    let mut last_status = status::report(&shared).summary;
    systemd::ready(&last_status);
    tracing::info!("defragd is running: {last_status}");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // A refused config is logged and shown in the status.
                let _ = reload(&shared, config_path.as_deref());
                tracker.sync(&shared);
                watcher = restart_watcher(&shared, watcher);
                threads.sync(&shared);
            }
            _ = reloaded.notified() => {
                tracker.sync(&shared);
                watcher = restart_watcher(&shared, watcher);
                threads.sync(&shared);
            }
            _ = mounts.changed() => {
                if refresh_covered(&shared) {
                    tracker.sync(&shared);
                    watcher = restart_watcher(&shared, watcher);
                }
                threads.sync(&shared);
            }
            _ = tick.tick() => {
                if hang_at.is_some_and(|at| Instant::now() >= at) {
                    tracing::warn!("test switch: the main loop hangs now");
                    std::thread::sleep(Duration::MAX);
                }
                for (path, held) in shared.new_stalls() {
                    tracing::warn!(
                        "{}: the kernel has held the move for {}: the filesystem may be frozen \
                         (`fsfreeze -u` thaws it) or its disk stalled; the move goes on when it can",
                        escaped(&path),
                        status::human_duration(held)
                    );
                }
                let report = status::report(&shared);
                update_gauges(&shared, &report);
                let summary = report.summary;
                if summary != last_status {
                    systemd::status(&summary);
                    last_status = summary;
                }
                if watchdog.is_some() {
                    systemd::watchdog();
                }
            }
        }
    }
    tracing::info!("stopping: finishing the current chunk");
    systemd::stopping();
    shared.begin_shutdown();
    tracker.save_seen(&shared);
    let _ = stop_tracker.send(true);
    let _ = watcher.send(true);
    let _ = stop_control.send(true);
    threads.join(Instant::now() + SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Opens the control socket for defragctl; an error stops the service
/// (another instance is running, or the socket cannot be made).
fn start_control(
    shared: &Arc<Shared>,
    controller: Arc<controller::ServiceController>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = shared.settings();
    let control = &settings.control;
    let group = match &control.group {
        Some(name) => {
            Some(crate::control::resolve_group(name).map_err(|e| format!("control.group: {e}"))?)
        }
        None => None,
    };
    let socket =
        crate::control::ControlSocket::bind(&control.socket, group).map_err(|e| e.to_string())?;
    tracing::info!("listening for defragctl on {}", escaped(&control.socket));
    tokio::spawn(socket.run(controller, stop));
    Ok(())
}

/// Serves the metrics when `[metrics] listen` asks for it.
fn start_metrics(shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> Result<(), String> {
    let Some(listen) = shared.settings().metrics.listen.clone() else {
        return Ok(());
    };
    let listener = exposition::bind(&listen)?;
    tracing::info!("serving metrics on {listen}");
    tokio::spawn(exposition::serve(listener, Arc::clone(shared), stop));
    Ok(())
}

/// How often the status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Test-only switch: `DEFRAGD_TEST_HANG_MAIN_LOOP_AFTER=SECONDS` makes the
/// main loop hang that long after start, so that a test can see systemd's
/// watchdog kill and restart the service. Only in builds with feature
/// `testing`: a release binary ignores the variable.
#[cfg(feature = "testing")]
fn test_hang_deadline() -> Option<Instant> {
    let secs: u64 = std::env::var("DEFRAGD_TEST_HANG_MAIN_LOOP_AFTER")
        .ok()?
        .parse()
        .ok()?;
    tracing::warn!("test switch set: the main loop will hang after {secs} s");
    Some(Instant::now() + Duration::from_secs(secs))
}

#[cfg(not(feature = "testing"))]
fn test_hang_deadline() -> Option<Instant> {
    None
}

fn update_gauges(shared: &Shared, report: &crate::control::protocol::StatusReport) {
    let m = &shared.metrics;
    m.queue_length
        .set(i64::try_from(report.queued).unwrap_or(i64::MAX));
    m.throttle_state.set(match report.state.as_str() {
        "paused" => 1,
        "pressure" => 2,
        "window" => 3,
        "budget" => 4,
        "yielding" => 5,
        _ => 0,
    });
    for fs in &report.filesystems {
        let labels = vec![("disk".to_string(), fs.disk.clone())];
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        m.written_today
            .get_or_create(&labels)
            .set(gauge(fs.written_today_bytes));
        match fs.write_budget_bytes {
            Some(budget) => {
                m.write_budget.get_or_create(&labels).set(gauge(budget));
            }
            None => {
                m.write_budget.remove(&labels);
            }
        }
    }
    let max = shared.settings().throttle.max_bytes_per_s.get();
    let rate = match (shared.slowed(), shared.yielding_any()) {
        (Some(s), Some(y)) => s.bytes_per_s.min(y.bytes_per_s),
        (Some(s), None) => s.bytes_per_s,
        (None, Some(y)) => y.bytes_per_s,
        (None, None) => max,
    };
    m.throttle_rate.set(i64::try_from(rate).unwrap_or(i64::MAX));
    // Read here too, not only while moving: pressure is worth a graph
    // beside the moves it holds back.
    m.io_pressure
        .set(shared.io_pressure().map_or(0.0, |percent| percent / 100.0));
    let moving = shared.moving();
    m.moves_in_progress
        .set(i64::try_from(moving.len()).unwrap_or(i64::MAX));
    let held = moving
        .iter()
        .filter_map(|mv| mv.in_kernel_since.map(|since| since.elapsed()))
        .max()
        .unwrap_or_default();
    m.kernel_hold.set(held.as_secs_f64());
    m.set_fragmentation(report.filesystems.iter().filter_map(|fs| {
        let f = fs.fragmentation.as_ref()?;
        let tally = crate::store::Tally {
            files: f.files,
            extents: f.extents,
            ideal_extents: f.ideal_extents,
        };
        Some((fs.mount_point.as_path(), fs.uuid.as_str(), tally))
    }));
}

/// Reloads the config: a bad one is refused and the running one kept.
pub(crate) fn reload(
    shared: &Shared,
    config_path: Option<&Path>,
) -> Result<(), config::ConfigErrors> {
    systemd::reloading();
    let result = config::load(config_path);
    match &result {
        Ok(settings) => {
            shared.set_settings(settings.clone());
            shared.set_reload_error(None);
            refresh_covered(shared);
            tracing::info!("configuration reloaded");
        }
        Err(errors) => {
            shared.set_reload_error(Some(errors.to_string()));
            tracing::error!(
                "the new configuration is not valid; keeping the running one:\n{errors}"
            );
        }
    }
    let summary = status::report(shared).summary;
    systemd::ready(&summary);
    result.map(drop)
}

/// Recomputes the covered filesystems; true when the set changed.
fn refresh_covered(shared: &Shared) -> bool {
    let settings = shared.settings();
    let configured = !settings.filesystems.is_empty();
    let candidates: Vec<std::path::PathBuf> = if configured {
        settings
            .filesystems
            .iter()
            .map(|f| f.path.clone())
            .collect()
    } else {
        mounts::supported_mount_points()
    };
    let mut covered = HashMap::new();
    let mut refused = HashMap::new();
    let mut said = HashMap::new();
    for path in candidates {
        match mounts::cover(&path) {
            // Two mounts of one filesystem (of one btrfs subvolume) are
            // covered once, through the first.
            Ok(fs) => {
                covered.entry(fs.uuid).or_insert(fs);
            }
            Err(e) => {
                said.insert(e.path.clone(), escaped_display(&e).to_string());
                refused.insert(e.path, e.why);
            }
        }
    }
    // Mounts change often (a container starting, a loop device): say why a
    // path is not covered when that is news, not at every change.
    for (_, why) in shared.new_refusals(said) {
        if configured {
            tracing::warn!("not covering {why}");
        } else {
            tracing::debug!("not covering {why}");
        }
    }
    let before = shared.covered();
    let same = before.len() == covered.len()
        && before.iter().all(|(k, v)| {
            covered
                .get(k)
                .is_some_and(|c| c.mount_point == v.mount_point && c.dev == v.dev)
        });
    if same {
        return false;
    }
    for (uuid, fs) in &before {
        if !covered.contains_key(uuid) {
            let why = refused
                .get(&fs.mount_point)
                .filter(|why| !matches!(why, mounts::Why::NotMountPoint | mounts::Why::Open(_)))
                .map_or_else(
                    || "unmounted".to_string(),
                    |why| escaped_display(why).to_string(),
                );
            tracing::info!(
                "{} is gone ({why}); dropping its queued work (a crawl finds it again once it is back)",
                escaped(&fs.mount_point)
            );
            if let Err(e) = shared.store().forget_filesystem(*uuid) {
                tracing::warn!("cannot drop the queue of {}: {e}", escaped(&fs.mount_point));
            }
        }
    }
    for fs in covered.values() {
        if !before.contains_key(&fs.uuid) {
            let subvolume = match fs.subvolume {
                0 => String::new(),
                id => format!(" subvolume {id}"),
            };
            tracing::info!(
                "covering {} ({} {}{subvolume}, disk {})",
                escaped(&fs.mount_point),
                fs.backend.fs_type(),
                fs.uuid,
                fs.disk.0
            );
            if let Some(note) = fs.info.layout_note() {
                tracing::warn!("{note}");
            }
            let allow_swapext = settings.policy.xfs_swapext_without_rmapbt;
            if let Err(reason) = fs.backend.refuse_risky(&fs.info, allow_swapext) {
                tracing::warn!(
                    "{}: its files are assessed but not moved: every one {reason}",
                    escaped(&fs.mount_point)
                );
            }
        }
        if let Err(e) = shared.store().upsert_filesystem(fs.uuid, &fs.mount_point) {
            tracing::warn!("cannot record {}: {e}", escaped(&fs.mount_point));
        }
    }
    shared.set_covered(covered);
    true
}

/// The `watch` trees of the covered filesystems whose writes fanotify
/// does not track: there, inotify watches them.
fn watch_trees(shared: &Shared) -> Vec<watcher::Tree> {
    let (settings, covered) = (shared.settings(), shared.covered());
    settings
        .filesystems
        .iter()
        .flat_map(|f| {
            let fs = covered
                .values()
                .find(|c| c.mount_point == f.path)
                .filter(|c| !shared.tracking(c.uuid).sees_whole_filesystem())
                .cloned();
            f.watch.iter().filter_map(move |path| {
                fs.clone().map(|fs| watcher::Tree {
                    fs,
                    path: path.clone(),
                })
            })
        })
        .collect()
}

fn start_watcher(shared: &Arc<Shared>) -> watch::Sender<bool> {
    let (stop, stopped) = watch::channel(false);
    let trees = watch_trees(shared);
    tokio::spawn(watcher::run(Arc::clone(shared), trees, stopped));
    stop
}

fn restart_watcher(shared: &Arc<Shared>, old: watch::Sender<bool>) -> watch::Sender<bool> {
    let _ = old.send(true);
    start_watcher(shared)
}

/// Notices mounts and unmounts: the kernel flags /proc/self/mountinfo
/// with POLLPRI when the mount table changes.
struct MountChanges {
    file: Option<tokio::io::unix::AsyncFd<std::fs::File>>,
}

impl MountChanges {
    fn new() -> Self {
        let file = std::fs::File::open("/proc/self/mountinfo")
            .ok()
            .and_then(|f| {
                // SAFETY: the AsyncFd owns the File, whose fd stays open and the
                // same until the AsyncFd drops it.
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        f,
                        tokio::io::Interest::PRIORITY,
                    )
                }
                .ok()
            });
        if file.is_none() {
            tracing::warn!(
                "cannot poll /proc/self/mountinfo; mounts are re-read every {} s",
                MOUNT_RECHECK.as_secs()
            );
        }
        MountChanges { file }
    }

    async fn changed(&mut self) {
        match &self.file {
            Some(file) => match file.ready(tokio::io::Interest::PRIORITY).await {
                Ok(mut guard) => {
                    // Re-arm: reading the file to its end clears the event.
                    use std::io::Read;
                    let mut sink = Vec::new();
                    let mut f = guard.get_inner();
                    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
                    let _ = f.read_to_end(&mut sink);
                    guard.clear_ready();
                }
                Err(_) => tokio::time::sleep(MOUNT_RECHECK).await,
            },
            None => tokio::time::sleep(MOUNT_RECHECK).await,
        }
    }
}
