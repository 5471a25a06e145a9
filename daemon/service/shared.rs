//! What the service's threads share: the store, the settings, the covered
//! filesystems, the throttle, and the signals that stop and wake
//! them. Every lock here is held for microseconds, never across a move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::mounts::Covered;
use crate::store::Store;
use crate::throttle::TokenBucket;

/// Shared by every thread of the service.
pub struct Shared {
    store: Mutex<Store>,
    settings: RwLock<Arc<Settings>>,
    covered: RwLock<HashMap<String, Covered>>,
    bucket: Mutex<TokenBucket>,
    shutdown: AtomicBool,
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
            wake: (Mutex::new(0), Condvar::new()),
        })
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
        self.wake_all();
    }

    pub fn covered(&self) -> HashMap<String, Covered> {
        self.covered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn covered_fs(&self, uuid: &str) -> Option<Covered> {
        self.covered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uuid)
            .cloned()
    }

    pub fn set_covered(&self, covered: HashMap<String, Covered>) {
        *self.covered.write().unwrap_or_else(PoisonError::into_inner) = covered;
        self.wake_all();
    }

    /// How long to wait before moving `bytes` (all workers share one rate).
    pub fn throttle(&self, bytes: u64) -> Duration {
        lock(&self.bucket).take(bytes, Instant::now())
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Wakes every idle thread: there may be new work.
    pub fn wake_all(&self) {
        let (count, condvar) = &self.wake;
        *lock(count) += 1;
        condvar.notify_all();
    }

    /// Sleeps up to `timeout`, or until woken or shutting down.
    pub fn idle(&self, timeout: Duration) {
        let (count, condvar) = &self.wake;
        let guard = lock(count);
        let seen = *guard;
        if self.shutting_down() {
            return;
        }
        let _ = condvar
            .wait_timeout_while(guard, timeout, |now| *now == seen && !self.shutting_down())
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl Shared {
    /// Sleeps the whole of `duration` unless shutting down (being woken
    /// for new work does not cut it short).
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

fn bucket_for(settings: &Settings) -> TokenBucket {
    let t = &settings.throttle;
    TokenBucket::new(t.max_bytes_per_s.get(), t.chunk_bytes.get(), Instant::now())
}
