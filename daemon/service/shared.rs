//! What the service's threads share: the store, the settings, the covered
//! filesystems, the throttle, and the signals that stop and wake
//! them. Every lock here is held for microseconds, never across a move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::budget::{self, Ledgers, Standing};
use crate::config::Settings;
use crate::filesystem::FsUuid;
use crate::medium::Medium;
use crate::mounts::{Covered, DiskId};
use crate::ramp::{self, Ramp, Verdict};
use crate::store::Store;
use crate::throttle::{paced_rate, PressureGauge, TokenBucket};

use super::engine::{Engine, Kernel};
use super::media::Media;
use super::metrics::Metrics;
use super::tracker::Tracking;

/// What one worker is moving right now.
#[derive(Debug, Clone, PartialEq)]
pub struct MovingNow {
    pub path: std::path::PathBuf,
    pub moved_bytes: u64,
    pub total_bytes: u64,
    /// Since when the kernel has had the file (a chunk, a commit, the
    /// donor); None while the worker itself waits (the throttle). A frozen
    /// filesystem holds it there until it is thawed.
    pub in_kernel_since: Option<Instant>,
    /// Whether that wait was reported as a stall.
    pub stall_reported: bool,
    /// Whether the move is under way: every check passed and the first
    /// chunk went to the kernel. Until then the worker only checks the
    /// file (which it may well leave alone: written too recently, replaced,
    /// ...), and the status must not say it is defragmenting it.
    pub under_way: bool,
}

impl MovingNow {
    /// A move just handed to the kernel.
    pub fn starting(path: std::path::PathBuf, moved_bytes: u64, total_bytes: u64) -> Self {
        MovingNow {
            path,
            moved_bytes,
            total_bytes,
            in_kernel_since: Some(Instant::now()),
            stall_reported: false,
            under_way: true,
        }
    }

    /// A job just taken: its file is being checked, nothing moves yet.
    /// `moved_bytes` is where a resumed move will go on from.
    pub fn checking(path: std::path::PathBuf, moved_bytes: u64, total_bytes: u64) -> Self {
        MovingNow {
            under_way: false,
            ..MovingNow::starting(path, moved_bytes, total_bytes)
        }
    }

    /// How long the kernel has held the move, when that is `STALLED` or more.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.in_kernel_since
            .map(|since| since.elapsed())
            .filter(|held| *held >= STALLED)
    }
}

/// How long the kernel may hold one step of a move before the status says
/// so and the log warns: a chunk takes milliseconds, a commit under heavy
/// load a second or two; a frozen filesystem holds it until thawed.
pub const STALLED: Duration = Duration::from_secs(10);

/// Whether the operator paused moving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pause {
    Running,
    Indefinitely,
    /// Until this instant (and this unix time, for people).
    Until(Instant, i64),
}

/// Moves slowed down by I/O pressure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slowed {
    /// I/O pressure over the last second, in percent.
    pub pressure: f64,
    /// The rate it allows; 0 holds moves back.
    pub bytes_per_s: u64,
}

/// Moves kept below the ceiling by their disk's ramp (see `crate::ramp`):
/// others heard using the disk, answered slower than usual, I/O pressure,
/// or the move's own slow commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yielding {
    /// What the ramp last heard or saw.
    pub verdict: Verdict,
    /// The rate moves go at meanwhile; 0: they wait.
    pub bytes_per_s: u64,
}

impl Yielding {
    /// Whether others use the disk (rather than its being slow).
    pub fn others_use_the_disk(&self) -> bool {
        matches!(self.verdict, Verdict::InUse { .. })
    }
}

fn yielding(ramp: &Ramp) -> Option<Yielding> {
    match ramp.last_verdict()? {
        Verdict::Quiet => None,
        verdict => Some(Yielding {
            verdict,
            bytes_per_s: ramp.rate(),
        }),
    }
}

/// Shared by every thread of the service.
pub struct Shared {
    store: Mutex<Store>,
    settings: RwLock<Arc<Settings>>,
    covered: RwLock<HashMap<FsUuid, Covered>>,
    bucket: Mutex<TokenBucket>,
    shutdown: AtomicBool,
    pause: Mutex<Pause>,
    /// Reads I/O pressure for the pace.
    gauge: Mutex<PressureGauge>,
    /// How I/O pressure slows moves now; None at full speed.
    slowed: Mutex<Option<Slowed>>,
    moving: Mutex<HashMap<DiskId, MovingNow>>,
    /// Why the last reload was refused, until a reload succeeds.
    reload_error: Mutex<Option<String>>,
    /// Why each configured path was not covered at the last look, so that
    /// a refusal is logged once, not at every mount change.
    refusals: Mutex<HashMap<std::path::PathBuf, String>>,
    /// How writes are found on each covered filesystem, by uuid.
    tracking: Mutex<HashMap<FsUuid, Tracking>>,
    /// Bytes moved since the local midnight it names (unix time).
    moved_today: Mutex<(i64, u64)>,
    pub metrics: Metrics,
    /// Each covered filesystem's medium, decided once.
    media: Media,
    /// Each moving disk's ramp: the job's rate, following the disk's latency.
    ramps: Mutex<HashMap<DiskId, Ramp>>,
    /// Bytes moved on each device today, against its write budget.
    ledgers: Mutex<Ledgers>,
    /// Today's local midnight and the next (unix time); a test's own.
    day: DayClock,
    /// Unix seconds now, for the queue (when a job is due); a test's own.
    clock: Clock,
    /// What runs the workers' jobs: the kernel, or a test's simulation.
    engine: Arc<dyn Engine>,
    /// Bumped whenever there may be new work or a state change; threads
    /// that idle wait on it.
    wake: (Mutex<u64>, Condvar),
}

/// Locks a mutex, taking over a poisoned one: a panic elsewhere must not
/// stop the service, and the data behind these locks stays consistent
/// (the store is transactional, the rest is plain values).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(store: Store, settings: Settings) -> Arc<Self> {
        let bucket = bucket_for(&settings);
        Arc::new(Shared {
            store: Mutex::new(store),
            settings: RwLock::new(Arc::new(settings)),
            covered: RwLock::new(HashMap::new()),
            bucket: Mutex::new(bucket),
            shutdown: AtomicBool::new(false),
            pause: Mutex::new(Pause::Running),
            gauge: Mutex::new(PressureGauge::default()),
            slowed: Mutex::new(None),
            moving: Mutex::new(HashMap::new()),
            moved_today: Mutex::new((0, 0)),
            reload_error: Mutex::new(None),
            refusals: Mutex::new(HashMap::new()),
            tracking: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            media: Media::default(),
            ledgers: Mutex::new(Ledgers::default()),
            ramps: Mutex::new(HashMap::new()),
            day: Arc::new(local_day),
            clock: Arc::new(super::unix_now),
            engine: Arc::new(Kernel),
            wake: (Mutex::new(0), Condvar::new()),
        })
    }

    /// Records why each path was not covered now; the ones whose reason is
    /// new since the last call (to be said once).
    pub fn new_refusals(
        &self,
        now: HashMap<std::path::PathBuf, String>,
    ) -> Vec<(std::path::PathBuf, String)> {
        let mut known = lock(&self.refusals);
        let mut fresh: Vec<_> = now
            .iter()
            .filter(|(path, why)| known.get(*path) != Some(*why))
            .map(|(path, why)| (path.clone(), why.clone()))
            .collect();
        fresh.sort();
        *known = now;
        fresh
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Installs new settings (a reload); the throttle takes the new rate.
    pub fn set_settings(&self, settings: Settings) {
        *lock(&self.bucket) = bucket_for(&settings);
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
        self.media.forget();
        self.wake_all();
    }

    pub fn covered(&self) -> HashMap<FsUuid, Covered> {
        self.covered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn covered_fs(&self, uuid: FsUuid) -> Option<Covered> {
        self.covered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uuid)
            .cloned()
    }

    pub fn set_covered(&self, covered: HashMap<FsUuid, Covered>) {
        *self.covered.write().unwrap_or_else(PoisonError::into_inner) = covered;
        self.media.forget();
        self.wake_all();
    }

    /// How long to wait before moving `bytes` (all workers share one rate).
    pub fn throttle(&self, bytes: u64) -> Duration {
        lock(&self.bucket).take(bytes, Instant::now())
    }

    /// Measures `fs`'s device through `file` if its medium is still to be
    /// measured (see `media::Media::measure_with`).
    pub fn measure_medium(
        &self,
        fs: &Covered,
        file: std::os::fd::BorrowedFd<'_>,
        map: &crate::assess::ExtentMap,
        block_size: u64,
    ) {
        self.media
            .measure_with(&self.settings(), fs, file, map, block_size);
    }

    /// `fs`'s medium: as the config says, else measured, else its disk's
    /// rotational flag.
    pub fn medium(&self, fs: &Covered) -> crate::medium::MediumDecided {
        self.media.of(&self.settings(), fs)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Is moving paused by the operator? An expired pause ends here.
    pub fn pause(&self) -> Pause {
        let mut pause = lock(&self.pause);
        if let Pause::Until(until, _) = *pause {
            if Instant::now() >= until {
                *pause = Pause::Running;
            }
        }
        *pause
    }

    pub fn paused(&self) -> bool {
        self.pause() != Pause::Running
    }

    pub fn set_pause(&self, pause: Pause) {
        *lock(&self.pause) = pause;
        self.wake_all();
    }

    /// Sets the shared rate from the I/O pressure now and returns it, in
    /// bytes per second; 0 holds moves back until pressure falls.
    pub fn pace(&self) -> u64 {
        let settings = self.settings();
        let t = &settings.throttle;
        let max = t.max_bytes_per_s.get();
        let now = Instant::now();
        let slowed = t.pressure_percent.and_then(|start| {
            let pressure = lock(&self.gauge).percent(now)?;
            let bytes_per_s = paced_rate(max, t.min_bytes_per_s, start, pressure);
            (bytes_per_s < max).then_some(Slowed {
                pressure,
                bytes_per_s,
            })
        });
        let rate = slowed.map_or(max, |s| s.bytes_per_s);
        if rate > 0 {
            lock(&self.bucket).set_rate(rate, now);
        }
        *lock(&self.slowed) = slowed;
        rate
    }

    /// I/O pressure over the last second or so, in percent (None without
    /// PSI). Shares the pace's readings.
    pub fn io_pressure(&self) -> Option<f64> {
        lock(&self.gauge).percent(Instant::now())
    }

    /// A job on `disk` starts: it listens to the disk before its first
    /// chunk, unless the ramp is off or the disk's counters cannot be read.
    pub fn start_ramp(&self, disk: &DiskId) {
        let t = &self.settings().throttle;
        let mut ramps = lock(&self.ramps);
        if t.start_bytes_per_s == 0 || ramp::read_stat(disk).is_none() {
            ramps.remove(disk);
            return;
        }
        let ramp = Ramp::new(
            t.start_bytes_per_s,
            t.min_bytes_per_s,
            t.max_bytes_per_s.get(),
        );
        ramps.insert(disk.clone(), ramp);
    }

    /// The job on `disk` ended.
    pub fn end_ramp(&self, disk: &DiskId) {
        lock(&self.ramps).remove(disk);
    }

    /// How long the throttle would have the next chunk of `bytes` wait,
    /// taking nothing.
    pub fn throttle_wait(&self, bytes: u64) -> Duration {
        lock(&self.bucket).wait_for(bytes, Instant::now())
    }

    /// Whether the move on `disk` listens at the end of the throttle's
    /// `wait`, right before its chunk (see `Ramp::listens_through`).
    pub fn listens_through(&self, disk: &DiskId, wait: Duration) -> bool {
        lock(&self.ramps)
            .get(disk)
            .is_some_and(|ramp| ramp.listens_through(wait, Instant::now()))
    }

    /// Whether the move on `disk` is due to listen before its next chunk.
    pub fn listen_due(&self, disk: &DiskId) -> bool {
        lock(&self.ramps)
            .get(disk)
            .is_some_and(|ramp| ramp.due(Instant::now()))
    }

    /// Listens to `disk` for `at_least` (never less than the shortest
    /// window) while the move issues nothing, and sets the ramp's rate
    /// from what was heard. The caller has waited for the move's own
    /// write-back. Without a ramp on `disk`, just sleeps.
    pub fn listen(&self, disk: &DiskId, at_least: Duration) {
        if !lock(&self.ramps).contains_key(disk) {
            self.sleep(at_least);
            return;
        }
        self.sleep(ramp::SETTLE);
        let from = ramp::read_stat(disk);
        self.sleep(at_least.saturating_sub(ramp::SETTLE).max(ramp::WINDOW));
        let to = ramp::read_stat(disk);
        let Some(heard) = from.zip(to).and_then(|(from, to)| ramp::heard(&from, &to)) else {
            return;
        };
        let max = self.settings().throttle.max_bytes_per_s.get();
        let pressured = self.pace() < max;
        let mut ramps = lock(&self.ramps);
        let Some(ramp) = ramps.get_mut(disk) else {
            return;
        };
        let before = ramp.rate();
        let (rate, verdict) = ramp.observe(heard, pressured, Instant::now());
        if rate != before {
            tracing::debug!("disk {}: {verdict:?}; moves go at {rate} B/s", disk.0);
        }
    }

    /// One of the move's commits on `disk` took `took`: a slow one slows
    /// the next chunks (see `Ramp::committed`).
    pub fn committed(&self, disk: &DiskId, took: Duration) {
        if let Some(ramp) = lock(&self.ramps).get_mut(disk) {
            if let Some((rate, verdict)) = ramp.committed(took) {
                tracing::debug!("disk {}: {verdict:?}; moves go at {rate} B/s", disk.0);
            }
        }
    }

    /// [`pace`](Self::pace) for a move on `disk`: the rate I/O pressure
    /// allows, no faster than the disk's ramp. 0 holds moves back.
    pub fn pace_on(&self, disk: &DiskId) -> u64 {
        let paced = self.pace();
        let rate = lock(&self.ramps)
            .get(disk)
            .map_or(paced, |ramp| ramp.rate().min(paced));
        if rate > 0 {
            lock(&self.bucket).set_rate(rate, Instant::now());
        }
        rate
    }

    /// Why the move on `disk` goes below the ceiling, if its ramp holds it
    /// there: what the ramp last heard or saw, and the rate.
    pub fn yielding(&self, disk: &DiskId) -> Option<Yielding> {
        lock(&self.ramps).get(disk).and_then(yielding)
    }

    /// [`yielding`](Self::yielding) of any disk: the one held most.
    pub fn yielding_any(&self) -> Option<Yielding> {
        lock(&self.ramps)
            .values()
            .filter_map(yielding)
            .min_by_key(|y| y.bytes_per_s)
    }

    /// How I/O pressure slows moves now (None: full speed, or no move).
    pub fn slowed(&self) -> Option<Slowed> {
        *lock(&self.slowed)
    }

    /// Forgets the pace once a worker stops moving.
    pub fn clear_slowed(&self) {
        *lock(&self.slowed) = None;
    }

    pub fn moving(&self) -> Vec<MovingNow> {
        lock(&self.moving).values().cloned().collect()
    }

    /// Records what `disk`'s worker is moving (None: nothing).
    pub fn set_moving(&self, disk: &DiskId, now: Option<MovingNow>) {
        let mut moving = lock(&self.moving);
        match now {
            Some(now) => moving.insert(disk.clone(), now),
            None => moving.remove(disk),
        };
    }

    /// `disk`'s worker passed every check and starts moving.
    pub fn move_under_way(&self, disk: &DiskId) {
        if let Some(m) = lock(&self.moving).get_mut(disk) {
            m.under_way = true;
        }
    }

    /// `disk`'s worker hands the next step of its move to the kernel.
    pub fn kernel_has_it(&self, disk: &DiskId) {
        if let Some(m) = lock(&self.moving).get_mut(disk) {
            m.in_kernel_since = Some(Instant::now());
            m.stall_reported = false;
        }
    }

    /// `disk`'s worker got its move back from the kernel. Returns how long
    /// the kernel had held it when that was reported as a stall.
    pub fn back_from_kernel(&self, disk: &DiskId) -> Option<Duration> {
        let mut moving = lock(&self.moving);
        let m = moving.get_mut(disk)?;
        let held = m.in_kernel_since.take().map(|since| since.elapsed());
        std::mem::take(&mut m.stall_reported)
            .then_some(held)
            .flatten()
    }

    /// `disk`'s worker is `moved_bytes` into its file.
    pub fn set_moved(&self, disk: &DiskId, moved_bytes: u64) {
        if let Some(m) = lock(&self.moving).get_mut(disk) {
            m.moved_bytes = moved_bytes;
        }
    }

    /// Moves the kernel has held for `STALLED` or more that were not yet
    /// reported; they count as reported from now on.
    pub fn new_stalls(&self) -> Vec<(std::path::PathBuf, Duration)> {
        let mut moving = lock(&self.moving);
        moving
            .values_mut()
            .filter(|m| !m.stall_reported)
            .filter_map(|m| {
                let held = m.stalled_for()?;
                m.stall_reported = true;
                Some((m.path.clone(), held))
            })
            .collect()
    }

    /// How writes are found on the filesystem `uuid` (crawl only until
    /// the tracker has said otherwise).
    pub fn tracking(&self, uuid: FsUuid) -> Tracking {
        lock(&self.tracking)
            .get(&uuid)
            .cloned()
            .unwrap_or(Tracking::CrawlOnly {
                why: "write tracking has not started".into(),
            })
    }

    pub fn set_tracking(&self, uuid: FsUuid, tracking: Tracking) {
        self.metrics.set_tracking(uuid, tracking.mode());
        lock(&self.tracking).insert(uuid, tracking);
    }

    pub fn forget_tracking(&self, uuid: FsUuid) {
        if let Some(old) = lock(&self.tracking).remove(&uuid) {
            self.metrics.clear_tracking(uuid, old.mode());
        }
    }

    pub fn reload_error(&self) -> Option<String> {
        lock(&self.reload_error).clone()
    }

    pub fn set_reload_error(&self, error: Option<String>) {
        *lock(&self.reload_error) = error;
    }

    /// How long until the maintenance windows open: zero inside one (or
    /// when none are configured).
    pub fn until_window(&self) -> Duration {
        let now = chrono::Local::now();
        let minute = chrono::Timelike::hour(&now) * 60 + chrono::Timelike::minute(&now);
        let minute = u16::try_from(minute).unwrap_or(0);
        match crate::config::minutes_until_open(&self.settings().throttle.windows, minute) {
            Some(0) | None => Duration::ZERO,
            Some(minutes) => Duration::from_secs(u64::from(minutes) * 60),
        }
    }

    /// Counts bytes just moved on `disk` (today's total, the device's
    /// budget and the metrics).
    pub fn add_moved(&self, disk: &DiskId, bytes: u64) {
        let (today, _) = (self.day)();
        self.seed_ledger(disk, today);
        lock(&self.ledgers).spend(disk, bytes, today);
        self.metrics.bytes_moved.inc_by(bytes);
        let mut today = lock(&self.moved_today);
        self.roll_day(&mut today);
        today.1 += bytes;
    }

    /// Uses another clock for the day (tests: the day turns at will).
    #[cfg(test)]
    pub fn set_day_clock(&mut self, day: DayClock) {
        self.day = day;
    }

    /// Unix seconds now, as the queue sees time.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Uses another clock for the queue (tests: jobs fall due at will).
    #[cfg(test)]
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    /// Runs jobs with another engine (tests: a simulation).
    #[cfg(test)]
    pub fn set_engine(&mut self, engine: Arc<dyn Engine>) {
        self.engine = engine;
    }

    /// `disk`'s daily write budget (None: unlimited), what was moved on it
    /// today, and where that leaves it. The budget follows the medium of
    /// its filesystems; flash if any of them is.
    pub fn budget(&self, disk: &DiskId) -> (Option<u64>, u64, Standing) {
        let settings = self.settings();
        let flash = self
            .covered()
            .values()
            .filter(|fs| &fs.disk == disk)
            .any(|fs| self.media.of(&settings, fs).medium == Medium::Ssd);
        let medium = if flash { Medium::Ssd } else { Medium::Hdd };
        let limit = settings.throttle.write_budget(medium);
        let (today, next) = (self.day)();
        self.seed_ledger(disk, today);
        let spent = lock(&self.ledgers).spent(disk, today);
        (limit, spent, budget::standing(limit, spent, next))
    }

    /// Until when moves on `disk` wait for its budget, if it is spent.
    pub fn budget_spent_until(&self, disk: &DiskId) -> Option<i64> {
        match self.budget(disk).2 {
            Standing::Spent { until } => Some(until),
            _ => None,
        }
    }

    /// The first count of a day after a start takes what the history
    /// recorded on `disk`'s filesystems since midnight.
    fn seed_ledger(&self, disk: &DiskId, today: i64) {
        if lock(&self.ledgers).knows(disk, today) {
            return;
        }
        let uuids: Vec<FsUuid> = self
            .covered()
            .into_values()
            .filter(|fs| &fs.disk == disk)
            .map(|fs| fs.uuid)
            .collect();
        let recorded = self
            .store()
            .bytes_moved_since_on(today, &uuids)
            .unwrap_or(0);
        let mut ledgers = lock(&self.ledgers);
        if !ledgers.knows(disk, today) {
            ledgers.spend(disk, recorded, today);
        }
    }

    /// Bytes moved since the last local midnight.
    pub fn moved_today(&self) -> u64 {
        let mut today = lock(&self.moved_today);
        self.roll_day(&mut today);
        today.1
    }

    /// Starts a new day's count when the day changed; the first count
    /// after a start takes what the history recorded since midnight.
    fn roll_day(&self, today: &mut (i64, u64)) {
        let midnight = local_midnight();
        if today.0 != midnight {
            let recorded = if today.0 == 0 {
                self.store().bytes_moved_since(midnight).unwrap_or(0)
            } else {
                0
            };
            *today = (midnight, recorded);
        }
    }

    /// Wakes every idle thread: there may be new work.
    pub fn wake_all(&self) {
        let (count, condvar) = &self.wake;
        *lock(count) += 1;
        condvar.notify_all();
    }

    /// Sleeps up to `timeout`, or until woken or shutting down.
    pub fn idle(&self, timeout: Duration) {
        self.idle_since(self.wake_ticket(), timeout);
    }

    /// Where the wake-ups stand: taken before looking for work, and given
    /// to `idle_since`, so that a wake-up between the look and the sleep
    /// (work queued just then) is not lost.
    pub fn wake_ticket(&self) -> u64 {
        *lock(&self.wake.0)
    }

    /// Sleeps up to `timeout`, or until woken after `ticket` was taken
    /// (at once if that already happened), or shutting down.
    pub fn idle_since(&self, ticket: u64, timeout: Duration) {
        let (count, condvar) = &self.wake;
        let guard = lock(count);
        if self.shutting_down() {
            return;
        }
        let _ = condvar
            .wait_timeout_while(guard, timeout, |now| {
                *now == ticket && !self.shutting_down()
            })
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl Shared {
    /// Sleeps the whole of `duration` unless shutting down (being woken
    /// for new work does not cut it short). Every wait of a worker thread
    /// (the throttle's included) goes through here, so a stop never waits
    /// for a sleep to end.
    pub fn sleep(&self, duration: Duration) {
        let end = Instant::now() + duration;
        while !self.shutting_down() {
            let now = Instant::now();
            if now >= end {
                return;
            }
            self.idle(end - now);
        }
    }
}

/// Unix seconds now.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Today's start and the next day's (unix time of local midnights).
pub type DayClock = Arc<dyn Fn() -> (i64, i64) + Send + Sync>;

/// The local day now: its midnight and the next (a day may be 23 or 25
/// hours long where clocks change).
fn local_day() -> (i64, i64) {
    let today = local_midnight();
    let next = chrono::Local::now()
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|m| m.and_local_timezone(chrono::Local).earliest())
        .map_or(today + 86_400, |m| m.timestamp());
    (today, next)
}

/// Unix time of the last local midnight: "today" for people.
pub fn local_midnight() -> i64 {
    let now = chrono::Local::now();
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .and_then(|midnight| midnight.and_local_timezone(chrono::Local).earliest())
        .map_or(now.timestamp() - 86_400, |m| m.timestamp())
}

fn bucket_for(settings: &Settings) -> TokenBucket {
    let t = &settings.throttle;
    TokenBucket::new(t.max_bytes_per_s.get(), t.chunk_bytes.get(), Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Shared::new(
            Store::open_in_memory().expect("in-memory store"),
            Settings::default(),
        )
    }

    #[test]
    fn a_refusal_is_news_once_until_its_reason_changes() {
        let shared = shared();
        use std::path::PathBuf;
        let at = |why: &str| HashMap::from([(PathBuf::from("/srv"), why.to_string())]);
        assert_eq!(shared.new_refusals(at("tmpfs")).len(), 1);
        assert!(shared.new_refusals(at("tmpfs")).is_empty());
        assert_eq!(
            shared.new_refusals(at("read-only")),
            vec![(PathBuf::from("/srv"), "read-only".to_string())]
        );
        assert!(shared.new_refusals(HashMap::new()).is_empty());
        assert_eq!(shared.new_refusals(at("read-only")).len(), 1);
    }

    #[test]
    fn a_wake_between_the_look_and_the_sleep_is_not_lost() {
        let shared = shared();
        let ticket = shared.wake_ticket();
        // Work queued after the worker looked, before it sleeps.
        shared.wake_all();
        let t = Instant::now();
        shared.idle_since(ticket, Duration::from_secs(30));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slept {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn without_a_wake_idle_sleeps_its_time() {
        let shared = shared();
        let t = Instant::now();
        shared.idle_since(shared.wake_ticket(), Duration::from_millis(200));
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_throttle_sleep_ends_when_shutdown_begins() {
        let shared = shared();
        let stopper = Arc::clone(&shared);
        let stop = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            stopper.begin_shutdown();
        });
        let t = Instant::now();
        shared.sleep(Duration::from_secs(60));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slept {:?}",
            t.elapsed()
        );
        stop.join().expect("the stopper thread");
        // Once shutting down, a sleep returns at once.
        let t = Instant::now();
        shared.sleep(Duration::from_secs(60));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_stall_is_reported_once_and_its_end_once() {
        let shared = shared();
        let disk = DiskId("7:0".into());
        shared.set_moving(&disk, Some(MovingNow::starting("/f".into(), 0, 1 << 20)));
        assert!(shared.new_stalls().is_empty(), "a fresh move is no stall");
        if let Some(m) = lock(&shared.moving).get_mut(&disk) {
            m.in_kernel_since = Instant::now().checked_sub(STALLED);
        }
        let stalls = shared.new_stalls();
        assert_eq!(stalls.len(), 1);
        assert!(stalls[0].1 >= STALLED);
        assert!(shared.new_stalls().is_empty(), "reported once");
        assert!(shared
            .back_from_kernel(&disk)
            .is_some_and(|held| held >= STALLED));
        assert_eq!(shared.back_from_kernel(&disk), None, "its end is told once");
        // The worker's own wait (in_kernel_since None) is never a stall.
        assert!(shared.new_stalls().is_empty());
    }

    #[test]
    fn a_spent_budget_holds_moves_until_the_day_turns() {
        const MIB: u64 = 1 << 20;
        const DAY0: i64 = 1_700_006_400;
        let mut settings = Settings::default();
        settings.throttle.write_budget_hdd = std::num::NonZeroU64::new(4 * MIB);
        let mut shared = Shared::new(Store::open_in_memory().expect("store"), settings);
        let day = Arc::new(std::sync::atomic::AtomicI64::new(DAY0));
        let clock = Arc::clone(&day);
        Arc::get_mut(&mut shared)
            .expect("not shared yet")
            .set_day_clock(Arc::new(move || {
                let today = clock.load(Ordering::SeqCst);
                (today, today + 86_400)
            }));
        let disk = DiskId("7:0".into());
        let other = DiskId("7:1".into());
        assert_eq!(
            shared.budget(&disk),
            (Some(4 * MIB), 0, Standing::Left(4 * MIB))
        );
        shared.add_moved(&disk, 3 * MIB);
        assert_eq!(shared.budget_spent_until(&disk), None, "1 MiB left");
        shared.add_moved(&disk, MIB);
        assert_eq!(shared.budget_spent_until(&disk), Some(DAY0 + 86_400));
        assert_eq!(shared.budget_spent_until(&other), None, "per device");
        // An hour later, the same day: still spent.
        assert_eq!(shared.budget_spent_until(&disk), Some(DAY0 + 86_400));
        // The day turns: moves go on, from a fresh budget.
        day.store(DAY0 + 86_400, Ordering::SeqCst);
        assert_eq!(shared.budget_spent_until(&disk), None);
        assert_eq!(shared.budget(&disk).1, 0);
        // Disks have no budget unless one is set.
        let unlimited = Shared::new(Store::open_in_memory().expect("store"), Settings::default());
        unlimited.add_moved(&disk, 1 << 40);
        assert_eq!(unlimited.budget(&disk).2, Standing::Unlimited);
    }
}
