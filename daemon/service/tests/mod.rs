//! The scheduler against the simulated engine: the worker, the queue, the
//! lifecycle and the store together, as any user, without a filesystem.

mod scheduler;
mod sim;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Settings;
use crate::ext4::{Ext4Detail, Layout, Superblock};
use crate::filesystem::{FsDetail, FsInfo, FsUuid};
use crate::mounts::{Covered, DiskId};
use crate::store::testutil::{new_job, TestClock, FS_A};
use crate::store::{HistoryEntry, Job, JobId, Store};

use super::shared::Shared;
use sim::{SimEngine, SimFile, Step, BLOCK};

/// When every test starts, in unix seconds.
const T0: i64 = 1_700_000_000;
/// Blocks per chunk: the settings' chunk size.
const CHUNK_BLOCKS: u64 = 16;

/// A service with one covered filesystem on one disk, a simulated engine
/// and a clock the test sets.
struct Rig {
    shared: Arc<Shared>,
    sim: SimEngine,
    clock: TestClock,
    disk: DiskId,
}

/// Settings under which the throttle never makes a test wait.
fn settings() -> Settings {
    let mut settings = Settings::default();
    let t = &mut settings.throttle;
    t.max_bytes_per_s = NonZeroU64::new(1 << 40).expect("not zero");
    t.chunk_bytes = NonZeroU64::new(CHUNK_BLOCKS * BLOCK).expect("not zero");
    t.pressure_percent = None;
    t.start_bytes_per_s = 0;
    settings
}

fn covered(disk: &DiskId) -> Covered {
    let mount_point = PathBuf::from("/sim/a");
    Covered {
        subvolume: 0,
        uuid: FS_A,
        mount_point: mount_point.clone(),
        dev: 0,
        disk: disk.clone(),
        backend: crate::backend::Backend::Ext4,
        info: FsInfo {
            dev: 0,
            mount_point,
            device: PathBuf::from("/dev/sim0"),
            block_size: BLOCK,
            uuid: FsUuid([0xa; 16]),
            read_only: false,
            dax: false,
            max_extent_blocks: crate::backend::ext4::MAX_EXTENT_BLOCKS,
            detail: FsDetail::Ext4(Ext4Detail {
                superblock: Superblock {
                    uuid: FsUuid([0xa; 16]),
                    block_size: u32::try_from(BLOCK).expect("small"),
                    blocks_per_group: 32_768,
                    groups_per_flex: None,
                    has_extents: true,
                    bigalloc: false,
                    inline_data: false,
                    encryption: false,
                },
                layout: Layout::Superblock,
                data_journal: false,
            }),
        },
    }
}

impl Rig {
    fn new() -> Rig {
        Rig::on(Store::open_in_memory().expect("in-memory store"))
    }

    /// A rig over `store` (a file, to be reopened as after a restart).
    fn on(store: Store) -> Rig {
        let clock = TestClock::default();
        clock.set(T0);
        let mut shared = Shared::new(clock.drive(store), settings());
        let sim = SimEngine::default();
        {
            let shared = Arc::get_mut(&mut shared).expect("not shared yet");
            let now = clock.clone();
            shared.set_clock(Arc::new(move || now.now()));
            shared.set_engine(Arc::new(sim.clone()));
        }
        let disk = DiskId("sim:0".into());
        shared.set_covered(HashMap::from([(FS_A, covered(&disk))]));
        Rig {
            shared,
            sim,
            clock,
            disk,
        }
    }

    /// Puts a file of `blocks` in 40 extents, whose attempts end as
    /// `script` says, and queues it.
    fn queue(&self, ino: u64, blocks: u64, script: Vec<Step>) -> JobId {
        let path = format!("data/file-{ino}");
        self.sim.add(
            &path,
            SimFile {
                ino,
                blocks,
                extents: 40,
                script: VecDeque::from(script),
            },
        );
        let mut job = new_job(FS_A, ino, 1.0);
        job.size_bytes = blocks * BLOCK;
        self.shared.store().enqueue(&job).expect("queued")
    }

    fn job(&self, id: JobId) -> Option<Job> {
        self.shared.store().job(id).expect("readable")
    }

    fn history(&self) -> Vec<HistoryEntry> {
        self.shared.store().recent_history(100).expect("readable")
    }

    fn advance(&self, secs: i64) {
        self.clock.set(self.clock.now() + secs);
    }

    fn turn(&self) -> super::worker::Turn {
        super::worker::turn(&self.shared, &self.disk)
    }
}
