//! A simulated engine, as stratisd's SimEngine: files in memory, each with
//! a script of how its attempts end. Moves go chunk by chunk through the
//! worker's own `Supervisor`, so the throttle, pause, shutdown and the
//! cursor's checkpoints are the real ones; only the kernel is not.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::assess::Assessment;
use crate::mounts::Covered;
use crate::mover::{Control, MoveOptions, Progress, Supervisor};
use crate::outcome::{FailReason, Moved, Outcome, SkipReason};
use crate::store::Job;

use super::super::engine::{Engine, FileStamp, OpenJob, Unopened};
use super::super::shared::lock;

/// The simulated filesystem's block size.
pub const BLOCK: u64 = 4096;

/// How one attempt at a file ends.
#[derive(Debug, Clone)]
pub enum Step {
    /// Moves from the cursor to the end: defragmented, unless stopped.
    Move,
    /// Moves `chunks` chunks from the cursor, then fails.
    FailAfter { chunks: u64, reason: FailReason },
    /// Ends at once, before any chunk, with this outcome.
    End(Outcome),
}

/// A file in memory.
#[derive(Debug, Clone)]
pub struct SimFile {
    pub ino: u64,
    pub blocks: u64,
    pub extents: u64,
    /// How its next attempts end, in order; then every attempt moves.
    pub script: VecDeque<Step>,
}

/// What the simulation saw: each attempt's start and each chunk moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Each attempt's file and the block it started from.
    pub starts: Vec<(PathBuf, u64)>,
    /// Each chunk moved: its file, first block and length in blocks.
    pub chunks: Vec<(PathBuf, u64, u64)>,
}

/// Called before each chunk with the chunk's index in its attempt: a test
/// pauses or stops the service there.
pub type ChunkHook = Box<dyn Fn(u64) + Send>;

#[derive(Default)]
struct Inner {
    files: Mutex<HashMap<PathBuf, SimFile>>,
    seen: Mutex<Seen>,
    hook: Mutex<Option<ChunkHook>>,
}

/// The engine; clones share their files.
#[derive(Clone, Default)]
pub struct SimEngine(Arc<Inner>);

impl SimEngine {
    /// Puts a file at `path` (relative to its filesystem's mount).
    pub fn add(&self, path: &str, file: SimFile) {
        lock(&self.0.files).insert(PathBuf::from(path), file);
    }

    pub fn remove(&self, path: &str) {
        lock(&self.0.files).remove(Path::new(path));
    }

    pub fn file(&self, path: &str) -> Option<SimFile> {
        lock(&self.0.files).get(Path::new(path)).cloned()
    }

    pub fn seen(&self) -> Seen {
        lock(&self.0.seen).clone()
    }

    pub fn on_chunk(&self, hook: impl Fn(u64) + Send + 'static) {
        *lock(&self.0.hook) = Some(Box::new(hook));
    }
}

impl Engine for SimEngine {
    fn lower_io_priority(&self) -> Result<(), crate::sys::Error> {
        Ok(())
    }

    fn open(&self, _fs: &Covered, job: &Job) -> Result<Box<dyn OpenJob>, Unopened> {
        if !lock(&self.0.files).contains_key(&job.path_hint) {
            return Err(Unopened::NotFound);
        }
        Ok(Box::new(SimJob {
            engine: self.clone(),
            path: job.path_hint.clone(),
            ino: job.file.ino,
        }))
    }
}

struct SimJob {
    engine: SimEngine,
    path: PathBuf,
    /// The job's inode: another at its path is another file.
    ino: u64,
}

fn skipped(reason: SkipReason) -> Outcome {
    Outcome::Skipped {
        reason,
        before: None,
    }
}

fn assessment(blocks: u64, extents: u64) -> Assessment {
    Assessment {
        size_bytes: blocks * BLOCK,
        extents,
        fiemap_entries: extents,
        physical_runs: extents,
        ideal_extents: 1,
        data_ranges: 1,
        blocks,
        score: if extents > 1 { 90.0 } else { 0.0 },
    }
}

impl OpenJob for SimJob {
    fn before_open(&self) -> Option<FileStamp> {
        let files = lock(&self.engine.0.files);
        files.get(&self.path).map(|file| FileStamp {
            mtime: 1_000,
            size: file.blocks * BLOCK,
        })
    }

    fn defragment(
        &mut self,
        options: &MoveOptions,
        resume_at: u64,
        supervisor: &mut dyn Supervisor,
    ) -> Outcome {
        let inner = &self.engine.0;
        let (step, blocks, extents) = {
            let mut files = lock(&inner.files);
            let Some(file) = files.get_mut(&self.path) else {
                return skipped(SkipReason::Vanished);
            };
            if file.ino != self.ino {
                return skipped(SkipReason::Replaced);
            }
            let step = file.script.pop_front().unwrap_or(Step::Move);
            (step, file.blocks, file.extents)
        };
        lock(&inner.seen)
            .starts
            .push((self.path.clone(), resume_at));
        let before = assessment(blocks, extents);
        let (stop_after, failure) = match step {
            Step::End(outcome) => return outcome,
            Step::Move => (u64::MAX, None),
            Step::FailAfter { chunks, reason } => (chunks, Some(reason)),
        };
        let chunk_blocks = (options.chunk_bytes / BLOCK).max(1);
        let mut next = resume_at;
        let mut bytes_moved = 0;
        let mut chunk = 0;
        while next < blocks {
            if chunk == stop_after {
                break;
            }
            if let Some(hook) = lock(&inner.hook).as_ref() {
                hook(chunk);
            }
            let len = chunk_blocks.min(blocks - next);
            if supervisor.before_chunk(len * BLOCK) == Control::Stop {
                return Outcome::Interrupted {
                    before,
                    next_block: next,
                    bytes_moved,
                };
            }
            lock(&inner.seen)
                .chunks
                .push((self.path.clone(), next, len));
            next += len;
            bytes_moved += len * BLOCK;
            chunk += 1;
            supervisor.after_chunk(&Progress {
                chunk_bytes: len * BLOCK,
                moved_bytes: bytes_moved,
                total_bytes: blocks * BLOCK,
                next_block: next,
                offset_bytes: next * BLOCK,
                durable: true,
            });
        }
        if let Some(reason) = failure {
            return Outcome::Failed {
                reason,
                before: Some(before),
                bytes_moved,
            };
        }
        if let Some(file) = lock(&inner.files).get_mut(&self.path) {
            file.extents = 1;
        }
        Outcome::Defragmented(Moved {
            before,
            after: assessment(blocks, 1),
            bytes_moved,
            converted: false,
        })
    }
}
