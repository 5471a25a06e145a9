//! A resumable walk of one filesystem for the background crawl. Files come
//! out in a fixed order (byte order of names, directory by directory), so a
//! pass can be resumed after the last file it assessed. It holds no file
//! descriptor between calls: each directory is opened from the mount's root
//! when it is read and closed at once, so `umount` is never blocked by it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::escape::escaped;
use crate::sys;
use crate::walk::{read_entries, EntryKind};

/// Where a crawl pass stands: the directories being walked, outermost
/// first, each with its entries not yet visited.
#[derive(Debug, Default)]
pub struct TreeCursor {
    stack: Vec<(PathBuf, VecDeque<(OsString, EntryKind)>)>,
    started: bool,
    /// Everything up to and including this path was done by an earlier run.
    resume_after: Option<PathBuf>,
}

impl TreeCursor {
    /// A pass from the start, or after `resume_after` (relative to the root).
    pub fn new(resume_after: Option<PathBuf>) -> Self {
        TreeCursor {
            stack: Vec::new(),
            started: false,
            resume_after: resume_after.filter(|p| !p.as_os_str().is_empty()),
        }
    }

    /// The next regular file, relative to the root; None when the pass is
    /// over. `root` is an open fd of the mount's root directory.
    pub fn next_file(&mut self, root: BorrowedFd<'_>) -> Option<PathBuf> {
        if !self.started {
            self.started = true;
            self.push_dir(root, PathBuf::new());
        }
        loop {
            let (dir, entries) = self.stack.last_mut()?;
            let Some((name, kind)) = entries.pop_front() else {
                self.stack.pop();
                continue;
            };
            let path = dir.join(&name);
            match kind {
                EntryKind::File => return Some(path),
                EntryKind::Directory => self.push_dir(root, path),
                EntryKind::Other => {}
            }
        }
    }

    fn push_dir(&mut self, root: BorrowedFd<'_>, rel: PathBuf) {
        let at_root = rel.as_os_str().is_empty();
        let opened = if at_root {
            sys::open_dir_beneath(root, Path::new("."))
        } else {
            sys::open_dir_beneath(root, &rel)
        };
        let dir = match opened {
            Ok(dir) => dir,
            Err(sys::Error::CrossesMount) => return,
            // The root failing means the whole filesystem goes uncrawled:
            // say so loudly.
            Err(e) if at_root => {
                tracing::warn!(
                    "crawl: cannot open the filesystem's root: {e}; nothing there is crawled"
                );
                return;
            }
            Err(e) => {
                tracing::debug!("crawl: cannot open directory {}: {e}", escaped(&rel));
                return;
            }
        };
        let entries = match read_entries(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!("crawl: cannot read directory {}: {e}", escaped(&rel));
                return;
            }
        };
        drop(dir);
        let first = self
            .resume_after
            .as_deref()
            .and_then(|cursor| component_after(cursor, &rel));
        let entries = entries
            .into_iter()
            .filter(|(name, _)| !(at_root && name.as_bytes() == b"lost+found"))
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
        self.stack.push((rel, entries));
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
}
