//! Finding the files under an operator-given path without being tricked:
//! directories are opened relative to their parent's fd with no symlink
//! followed and no mount crossed; entries are visited in name order (so a
//! walk is repeatable); lost+found at a filesystem's root is left alone.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::dir::{Dir, Type};
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, SFlag};

use crate::ext4;
use crate::inspect::Target;
use crate::outcome::SkipReason;

/// ext4's root directory is always inode 2.
pub const EXT4_ROOT_INO: u64 = 2;

/// What the walk found.
#[derive(Debug)]
pub enum Found {
    File(Target),
    /// An operator-given path that is refused outright (a symlink).
    Refused {
        path: PathBuf,
        reason: SkipReason,
    },
}

/// How deep to go below a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only the files directly in it.
    Shallow,
    /// The whole tree, within one filesystem.
    Recursive,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: ext4::Error },
}

/// Calls `visit` for every file at or under `root`.
pub fn walk(root: &Path, depth: Depth, visit: &mut dyn FnMut(Found)) -> Result<(), WalkError> {
    let meta = std::fs::symlink_metadata(root).map_err(|source| WalkError::Stat {
        path: root.into(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        visit(Found::Refused {
            path: root.into(),
            reason: SkipReason::Symlink,
        });
        return Ok(());
    }
    if !meta.is_dir() {
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = root
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_else(|| root.as_os_str().to_os_string());
        let dir = ext4::open_dir(parent).map_err(|source| WalkError::Open {
            path: parent.into(),
            source,
        })?;
        visit(Found::File(Target {
            dir: Arc::new(dir),
            name,
            path: root.into(),
            expected_dev: None,
            expected_identity: None,
        }));
        return Ok(());
    }
    let dir = ext4::open_dir(root).map_err(|source| WalkError::Open {
        path: root.into(),
        source,
    })?;
    let dev = ext4::stat(dir.as_fd())
        .map_err(|source| WalkError::Open {
            path: root.into(),
            source,
        })?
        .st_dev;
    walk_tree(Arc::new(dir), root.to_path_buf(), dev, depth, visit);
    Ok(())
}

/// One directory being walked: its fd, its path and the entries left.
struct Level {
    dir: Arc<OwnedFd>,
    path: PathBuf,
    entries: std::vec::IntoIter<(OsString, EntryKind)>,
}

/// What a directory entry is, as far as a walk cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File,
    Other,
}

fn walk_tree(
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    dev: u64,
    depth: Depth,
    visit: &mut dyn FnMut(Found),
) {
    // An explicit stack: a hostile tree can be deeper than the thread's stack.
    let mut stack = Vec::new();
    if let Some(level) = open_level(root, root_path) {
        stack.push(level);
    }
    while let Some(level) = stack.last_mut() {
        let Some((name, kind)) = level.entries.next() else {
            stack.pop();
            continue;
        };
        let path = level.path.join(&name);
        match kind {
            EntryKind::File => visit(Found::File(Target {
                dir: Arc::clone(&level.dir),
                name,
                path,
                expected_dev: Some(dev),
                expected_identity: None,
            })),
            EntryKind::Directory if depth == Depth::Recursive => {
                if name.as_bytes() == b"lost+found" && is_fs_root(&level.dir) {
                    continue;
                }
                match ext4::open_dir_beneath(level.dir.as_fd(), Path::new(&name)) {
                    Ok(dir) => {
                        if let Some(next) = open_level(Arc::new(dir), path) {
                            stack.push(next);
                        }
                    }
                    Err(ext4::Error::CrossesMount) => {
                        tracing::debug!("{}: a mount point, not crossed", path.display())
                    }
                    Err(ext4::Error::Symlink) => {
                        tracing::debug!("{}: became a symlink, not followed", path.display())
                    }
                    Err(e) => tracing::warn!("{}: cannot open directory: {e}", path.display()),
                }
            }
            EntryKind::Directory | EntryKind::Other => {}
        }
    }
}

fn is_fs_root(dir: &OwnedFd) -> bool {
    ext4::stat(dir.as_fd()).is_ok_and(|s| s.st_ino == EXT4_ROOT_INO)
}

/// Reads a directory's entries, sorted by name.
fn open_level(dir: Arc<OwnedFd>, path: PathBuf) -> Option<Level> {
    let entries = match read_entries(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("{}: cannot read directory: {e}", path.display());
            return None;
        }
    };
    Some(Level {
        dir,
        path,
        entries: entries.into_iter(),
    })
}

/// Reads a directory's entries (without . and ..), sorted by name bytes.
pub fn read_entries(dir: &OwnedFd) -> nix::Result<Vec<(OsString, EntryKind)>> {
    // fdopendir takes ownership of its fd and moves its offset: give it a
    // fresh one of the same directory.
    let own = nix::fcntl::openat(
        dir.as_fd(),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut handle = Dir::from_fd(own)?;
    let mut entries = Vec::new();
    for entry in handle.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(Type::Directory) => EntryKind::Directory,
            Some(Type::File) => EntryKind::File,
            Some(_) => EntryKind::Other,
            None => kind_by_stat(dir, name),
        };
        entries.push((name.to_os_string(), kind));
    }
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}

/// For filesystems that do not report entry types.
fn kind_by_stat(dir: &OwnedFd, name: &OsStr) -> EntryKind {
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => EntryKind::Directory,
            SFlag::S_IFREG => EntryKind::File,
            _ => EntryKind::Other,
        },
        Err(_) => EntryKind::Other,
    }
}
