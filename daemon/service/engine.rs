//! What runs a job for the worker: its one seam. The kernel engine finds
//! the file beneath its mount and hands it to the mover; the tests' engine
//! (`tests::sim`) moves files in memory through the same `Supervisor`
//! callbacks, so that the queue, retries, resume, pause and shutdown are
//! tested without root. An engine only reports what happened: what
//! becomes of the job is the lifecycle's to decide.

use std::os::fd::AsFd;

use crate::inspect::Filesystems;
use crate::mounts::{reopen_root, Covered};
use crate::mover::{MoveOptions, Supervisor};
use crate::outcome::Outcome;
use crate::store::Job;
use crate::target::Target;

use super::candidates::target_for;
use super::lifecycle::Attempt;

/// Runs jobs' moves.
pub trait Engine: Send + Sync {
    /// Puts the calling thread (a worker) in the idle I/O class.
    fn lower_io_priority(&self) -> Result<(), crate::sys::Error>;

    /// Finds `job`'s file on `fs`, ready to move. Holds the file's
    /// directory open until the returned job is dropped.
    fn open(&self, fs: &Covered, job: &Job) -> Result<Box<dyn OpenJob>, Unopened>;
}

/// A job whose file was found.
pub trait OpenJob {
    /// The file as it was before the service opened it, if it is still
    /// the job's inode: if nobody writes it after the move, it is not
    /// considered again.
    fn before_open(&self) -> Option<FileStamp>;

    /// Moves the file from logical block `resume_at`, chunk by chunk under
    /// `supervisor`.
    fn defragment(
        &mut self,
        options: &MoveOptions,
        resume_at: u64,
        supervisor: &mut dyn Supervisor,
    ) -> Outcome;
}

/// What identifies a file's content for `settle`: unchanged, it needs no
/// second look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub mtime: i64,
    pub size: u64,
}

/// Why a job's file could not be found.
#[derive(Debug, Clone, PartialEq)]
pub enum Unopened {
    /// Its filesystem is not mounted where it was.
    NotMounted,
    /// No file at its path.
    NotFound,
    /// Its directory could not be opened.
    Failed(String),
}

impl From<Unopened> for Attempt {
    fn from(unopened: Unopened) -> Self {
        match unopened {
            Unopened::NotMounted => Attempt::NotMounted,
            Unopened::NotFound => Attempt::NotFound,
            Unopened::Failed(why) => Attempt::OpenFailed(why),
        }
    }
}

/// The real engine: the kernel moves the data (see `mover`).
pub struct Kernel;

impl Engine for Kernel {
    fn lower_io_priority(&self) -> Result<(), crate::sys::Error> {
        crate::sys::set_current_thread_idle()
    }

    fn open(&self, fs: &Covered, job: &Job) -> Result<Box<dyn OpenJob>, Unopened> {
        let root = reopen_root(fs).ok_or(Unopened::NotMounted)?;
        let mut target = match target_for(fs, root.as_fd(), &job.path_hint) {
            Ok(target) => target,
            Err(crate::sys::Error::NotFound) => return Err(Unopened::NotFound),
            Err(e) => return Err(Unopened::Failed(e.to_string())),
        };
        target.expected_identity = Some(crate::target::FileKey {
            subvolume: job.file.subvolume,
            ino: job.file.ino,
            generation: job.file.generation,
        });
        Ok(Box::new(KernelJob {
            target,
            ino: job.file.ino,
        }))
    }
}

struct KernelJob {
    target: Target,
    ino: u64,
}

impl OpenJob for KernelJob {
    fn before_open(&self) -> Option<FileStamp> {
        crate::sys::stat_beneath(self.target.dir.as_fd(), &self.target.name)
            .ok()
            .filter(|stat| stat.ino == self.ino)
            .map(|stat| FileStamp {
                mtime: stat.mtime,
                size: stat.size,
            })
    }

    fn defragment(
        &mut self,
        options: &MoveOptions,
        resume_at: u64,
        supervisor: &mut dyn Supervisor,
    ) -> Outcome {
        let mut filesystems = Filesystems::default();
        crate::mover::defragment(
            &self.target,
            &mut filesystems,
            options,
            resume_at,
            supervisor,
        )
    }
}
