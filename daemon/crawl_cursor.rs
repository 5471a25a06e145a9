//! A resumable walk of one filesystem, for the background crawl and for
//! the watcher's trees. Entries come out in a fixed order (byte order of
//! names, directory by directory), so a crawl pass can be resumed after the
//! last file it assessed. It holds no file descriptor between calls: each
//! directory is opened from the mount's root when it is read, so `umount`
//! is never blocked by it. Directories are entered and listed by the rules
//! of every walk (`walk::enter_dir`, `walk::list_dir`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::escape::escaped;
use crate::sys;
use crate::walk::{enter_dir, list_dir, EntryKind};

/// Where a walk stands: the directories being walked, outermost first,
/// each with its entries not yet visited.
#[derive(Debug, Default)]
pub struct TreeCursor {
    stack: Vec<(PathBuf, VecDeque<(OsString, EntryKind)>)>,
    /// The directory the walk starts in, until it is entered.
    start: Option<PathBuf>,
    /// Everything up to and including this path was done by an earlier run.
    resume_after: Option<PathBuf>,
    /// The device number of the directory the walk starts in: a
    /// directory on another one, below it, is a nested btrfs subvolume
    /// (mounts are not crossed at all), not walked.
    dev: Option<u64>,
    /// Those nested subvolumes, relative to the root.
    other_subvolumes: Vec<PathBuf>,
}

/// What the walk comes to next.
#[derive(Debug)]
pub enum Visit {
    /// A directory entered (the start too), relative to the root, with its
    /// fd: the caller may use it, and must not keep it.
    Dir { rel: PathBuf, dir: OwnedFd },
    /// A regular file, relative to the root.
    File(PathBuf),
}

impl TreeCursor {
    /// A pass over the whole filesystem from the start, or after
    /// `resume_after` (relative to the root).
    pub fn new(resume_after: Option<PathBuf>) -> Self {
        TreeCursor {
            start: Some(PathBuf::new()),
            resume_after: resume_after.filter(|p| !p.as_os_str().is_empty()),
            ..TreeCursor::default()
        }
    }

    /// A walk of the tree at `start` (relative to the root) only.
    pub fn below(start: PathBuf) -> Self {
        TreeCursor {
            start: Some(start),
            ..TreeCursor::default()
        }
    }

    /// The directories this walk did not enter because each is another
    /// btrfs subvolume (relative to the root): a walk never leaves its
    /// subvolume, whose inode numbers are its own.
    pub fn other_subvolumes(&self) -> &[PathBuf] {
        &self.other_subvolumes
    }

    /// The next regular file, relative to the root; None when the pass is
    /// over. `root` is an open fd of the mount's root directory.
    pub fn next_file(&mut self, root: BorrowedFd<'_>) -> Option<PathBuf> {
        loop {
            if let Visit::File(path) = self.next_entry(root)? {
                return Some(path);
            }
        }
    }

    /// The next directory entered or regular file; None when the walk is
    /// over. `root` is an open fd of the mount's root directory.
    pub fn next_entry(&mut self, root: BorrowedFd<'_>) -> Option<Visit> {
        if let Some(start) = self.start.take() {
            if let Some(dir) = self.push_dir(root, &start) {
                return Some(Visit::Dir { rel: start, dir });
            }
        }
        loop {
            let (dir, entries) = self.stack.last_mut()?;
            let Some((name, kind)) = entries.pop_front() else {
                self.stack.pop();
                continue;
            };
            let path = dir.join(&name);
            match kind {
                EntryKind::File => return Some(Visit::File(path)),
                EntryKind::Directory => {
                    if let Some(dir) = self.push_dir(root, &path) {
                        return Some(Visit::Dir { rel: path, dir });
                    }
                }
                EntryKind::Other => {}
            }
        }
    }

    /// Enters `rel` and queues its entries (those past the resume point);
    /// its fd when it was entered, even if it could not be listed.
    fn push_dir(&mut self, root: BorrowedFd<'_>, rel: &Path) -> Option<OwnedFd> {
        // Logged relative to the mount point, its root as ".".
        let shown = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let dir = enter_dir(root, rel, shown)?;
        if let Ok(stat) = sys::stat(dir.as_fd()) {
            match self.dev {
                None => self.dev = Some(stat.st_dev),
                Some(dev) if dev != stat.st_dev => {
                    tracing::debug!("{}: another btrfs subvolume, not walked", escaped(shown));
                    self.other_subvolumes.push(rel.to_path_buf());
                    return None;
                }
                Some(_) => {}
            }
        }
        let entries = list_dir(&dir, shown).unwrap_or_default();
        let first = self
            .resume_after
            .as_deref()
            .and_then(|cursor| component_after(cursor, rel));
        let entries = entries
            .into_iter()
            .filter(|(name, kind)| match &first {
                None => true,
                // Before the cursor's branch: done. The cursor's own file:
                // done. Its directory: walked, filtered further down.
                Some(first) => match name.as_bytes().cmp(first.as_bytes()) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => *kind == EntryKind::Directory,
                    std::cmp::Ordering::Greater => true,
                },
            })
            .collect();
        self.stack.push((rel.to_path_buf(), entries));
        Some(dir)
    }
}

/// The component of `cursor` right below directory `dir`, when the cursor
/// lies inside `dir`.
fn component_after(cursor: &Path, dir: &Path) -> Option<OsString> {
    let rest = cursor.strip_prefix(dir).ok()?;
    match rest.components().next()? {
        Component::Normal(name) => Some(name.to_os_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use std::os::fd::AsFd;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in ["a/1", "a/2", "b/c/3", "b/4", "d", "e/5"] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"x").expect("write");
        }
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("a/link")).expect("symlink");
        dir
    }

    fn all(cursor: &mut TreeCursor, root: &Path) -> Vec<String> {
        let fd = sys::open_dir(root).expect("open root");
        std::iter::from_fn(|| cursor.next_file(fd.as_fd()))
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn walks_in_name_order_without_links() {
        let t = tree();
        assert_eq!(
            all(&mut TreeCursor::new(None), t.path()),
            ["a/1", "a/2", "b/4", "b/c/3", "d", "e/5"]
        );
    }

    #[test]
    fn resumes_after_the_cursor() {
        let t = tree();
        let mut c = TreeCursor::new(Some(PathBuf::from("b/4")));
        assert_eq!(all(&mut c, t.path()), ["b/c/3", "d", "e/5"]);
        let mut c = TreeCursor::new(Some(PathBuf::from("a/2")));
        assert_eq!(all(&mut c, t.path()), ["b/4", "b/c/3", "d", "e/5"]);
        let mut c = TreeCursor::new(Some(PathBuf::from("e/5")));
        assert!(all(&mut c, t.path()).is_empty());
    }

    #[test]
    fn a_vanished_cursor_resumes_at_its_place() {
        let t = tree();
        // "b/zz" no longer exists: continue with what sorts after it.
        let mut c = TreeCursor::new(Some(PathBuf::from("b/zz")));
        assert_eq!(all(&mut c, t.path()), ["d", "e/5"]);
    }

    #[test]
    fn a_walk_below_a_directory_enters_it_and_its_subdirectories() {
        let t = tree();
        let fd = sys::open_dir(t.path()).expect("open root");
        let mut c = TreeCursor::below(PathBuf::from("b"));
        let seen: Vec<String> = std::iter::from_fn(|| c.next_entry(fd.as_fd()))
            .map(|v| match v {
                Visit::Dir { rel, .. } => format!("dir {}", rel.display()),
                Visit::File(rel) => rel.display().to_string(),
            })
            .collect();
        assert_eq!(seen, ["dir b", "b/4", "dir b/c", "b/c/3"]);
    }

    #[test]
    fn a_symlinked_directory_is_not_entered() {
        let t = tree();
        std::os::unix::fs::symlink(t.path().join("b"), t.path().join("c-link")).expect("symlink");
        assert_eq!(
            all(&mut TreeCursor::new(None), t.path()),
            ["a/1", "a/2", "b/4", "b/c/3", "d", "e/5"]
        );
        // Not even as the start of a walk.
        let fd = sys::open_dir(t.path()).expect("open root");
        let mut c = TreeCursor::below(PathBuf::from("c-link"));
        assert!(c.next_entry(fd.as_fd()).is_none());
    }
}
