//! The service's side of the control socket: what `defragctl` asks for,
//! answered from the shared state.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::control::protocol::{
    Controller, DefragReply, Done, HistoryLine, QueueEntry, StatusReport,
};
use crate::filesystem::FsUuid;
use crate::mounts::{reopen_root, Covered};
use crate::walk::{walk, Depth, Found};

use super::candidates::{consider_file, Considered, Urgency};
use super::shared::{Pause, Shared};
use super::{status, unix_now};

/// The most files one `defragctl defrag` of a tree queues.
const MAX_FILES_PER_REQUEST: usize = 100_000;

pub struct ServiceController {
    pub shared: Arc<Shared>,
    pub config_path: Option<PathBuf>,
    /// Tells the main loop that the config changed (the watcher restarts).
    pub reloaded: Arc<Notify>,
}

impl ServiceController {
    fn mount_of(&self, uuid: FsUuid) -> Option<PathBuf> {
        self.shared.covered_fs(uuid).map(|fs| fs.mount_point)
    }
}

/// The covered filesystem holding `path` (the longest mount point above it).
fn covering(shared: &Shared, path: &Path) -> Option<Covered> {
    shared
        .covered()
        .into_values()
        .filter(|fs| path.starts_with(&fs.mount_point))
        .max_by_key(|fs| fs.mount_point.as_os_str().len())
}

impl Controller for ServiceController {
    fn status(&self) -> StatusReport {
        status::report(&self.shared)
    }

    fn pause(&self, for_secs: Option<u64>) -> Result<Done, String> {
        let pause = match for_secs {
            None => Pause::Indefinitely,
            Some(secs) => {
                let secs_i64 =
                    i64::try_from(secs).map_err(|_| "the pause is too long".to_string())?;
                let until = Instant::now()
                    .checked_add(Duration::from_secs(secs))
                    .ok_or("the pause is too long")?;
                Pause::Until(until, unix_now().saturating_add(secs_i64))
            }
        };
        self.shared.set_pause(pause);
        tracing::info!(
            "paused by operator{}",
            for_secs.map(|s| format!(" for {s} s")).unwrap_or_default()
        );
        let message = match for_secs {
            None => "paused: moves stop within one chunk; `defragctl resume` continues".to_string(),
            Some(secs) => format!(
                "paused for {}: moves stop within one chunk",
                status::human_duration(Duration::from_secs(secs))
            ),
        };
        Ok(Done { message })
    }

    fn resume(&self) -> Result<Done, String> {
        self.shared.set_pause(Pause::Running);
        tracing::info!("resumed by operator");
        Ok(Done {
            message: "resumed".into(),
        })
    }

    fn queue(&self, limit: usize) -> Result<Vec<QueueEntry>, String> {
        let jobs = self
            .shared
            .store()
            .top_jobs(limit)
            .map_err(|e| e.to_string())?;
        Ok(jobs
            .iter()
            .map(|job| QueueEntry::from_job(job, self.mount_of(job.file.fs_uuid).as_deref()))
            .collect())
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryLine>, String> {
        let entries = self
            .shared
            .store()
            .recent_history(limit)
            .map_err(|e| e.to_string())?;
        Ok(entries
            .iter()
            .map(|e| HistoryLine::from_entry(e, self.mount_of(e.file.fs_uuid).as_deref()))
            .collect())
    }

    fn defrag(&self, paths: Vec<PathBuf>) -> Vec<DefragReply> {
        let mut replies = Vec::new();
        for path in paths {
            let reply = |result: &str, message: String| DefragReply {
                path: path.clone(),
                result: result.into(),
                message,
            };
            if !path.is_absolute() {
                replies.push(reply("error", "give an absolute path".into()));
                continue;
            }
            let Some(fs) = covering(&self.shared, &path) else {
                replies.push(reply(
                    "error",
                    "not on a filesystem the service covers".into(),
                ));
                continue;
            };
            let mut queued = 0usize;
            let mut last = None;
            let walked = walk(&path, Depth::Recursive, &mut |found| {
                let Found::File(target) = found else {
                    last = Some((
                        "left",
                        "is a symbolic link; defragd never follows links".to_string(),
                    ));
                    return;
                };
                if queued >= MAX_FILES_PER_REQUEST
                    || target.expected_dev.is_some_and(|d| d != fs.dev)
                {
                    return;
                }
                let Ok(rel) = target.path.strip_prefix(&fs.mount_point) else {
                    return;
                };
                let Some(root) = reopen_root(&fs) else { return };
                match consider_file(
                    &self.shared,
                    &fs,
                    root.as_fd(),
                    rel,
                    Urgency::Operator,
                    unix_now(),
                ) {
                    Considered::Queued { .. } => {
                        queued += 1;
                        last = Some(("queued", "queued at the highest priority".into()));
                    }
                    Considered::Running => {
                        last = Some(("left", "it is being moved right now".into()))
                    }
                    Considered::Left(why) => last = Some(("left", why.to_string())),
                    Considered::Gone => last = Some(("error", "no such file".into())),
                    Considered::Failed(why) => last = Some(("error", why)),
                }
            });
            replies.push(match (walked, path.is_dir(), last) {
                (Err(e), _, _) => reply("error", e.to_string()),
                (Ok(()), true, _) => reply(
                    if queued > 0 { "queued" } else { "left" },
                    format!("{queued} files queued at the highest priority"),
                ),
                (Ok(()), false, Some((result, message))) => reply(result, message),
                (Ok(()), false, None) => reply("left", "nothing to do".into()),
            });
        }
        replies
    }

    fn reload(&self) -> Result<Done, String> {
        let result = super::reload(&self.shared, self.config_path.as_deref());
        // Either way the main loop refreshes what depends on the config.
        self.reloaded.notify_one();
        result.map_err(|e| {
            format!("the new configuration is not valid; the running one is kept:\n{e}")
        })?;
        Ok(Done {
            message: "configuration reloaded".into(),
        })
    }
}
