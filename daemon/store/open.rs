//! Getting a usable connection: create the state directory, open the file,
//! check it, bring its schema up to date. A damaged file is moved aside with
//! its side files and replaced, because the store only saves work that the
//! crawl can rediscover; a file from a newer defragd is refused untouched,
//! because that defragd may still want it.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::escape::escaped;

use super::error::is_corruption;
use super::schema::{self, KNOWN_VERSION, MIGRATIONS};
use super::{StoreError, StoreOptions, DB_FILE_NAME};

/// Why a connection could not be prepared.
enum Failure {
    /// The file is damaged: move it aside and start afresh.
    Corrupt(String),
    /// Anything else: report it and leave the file alone.
    Fatal(StoreError),
}

pub(super) fn open_file(
    state_dir: &Path,
    options: &StoreOptions,
) -> Result<Connection, StoreError> {
    create_state_dir(state_dir)?;
    let path = state_dir.join(DB_FILE_NAME);
    match connect(&path, options) {
        Ok(conn) => Ok(conn),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Corrupt(reason)) => {
            let aside = move_aside(&path)?;
            tracing::error!(
                "the state database {} is corrupt ({reason}); moved it aside to {} and started \
                 a new, empty one: queued jobs, crawl progress and history are gone, and the \
                 crawl will rediscover the work",
                escaped(&path),
                escaped(&aside)
            );
            connect(&path, options).map_err(|failure| match failure {
                Failure::Fatal(e) => e,
                Failure::Corrupt(reason) => StoreError::StillCorrupt { path, reason },
            })
        }
    }
}

pub(super) fn open_memory(options: &StoreOptions) -> Result<Connection, StoreError> {
    let path = Path::new(":memory:");
    let mut conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    match prepare(&mut conn, path, options) {
        Ok(_) => Ok(conn),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Corrupt(reason)) => Err(StoreError::StillCorrupt {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// The directory holds paths of users' files: only the service may read it.
fn create_state_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

fn connect(path: &Path, options: &StoreOptions) -> Result<Connection, Failure> {
    let mut conn = Connection::open(path).map_err(|e| opening(path, e))?;
    let mode = prepare(&mut conn, path, options)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            "the state database {} runs in {mode} journal mode, not WAL: status queries may \
             wait for the worker's writes",
            escaped(path)
        );
    }
    Ok(conn)
}

/// Checks and upgrades an open database; returns its journal mode. The
/// version is read before anything is written, so a newer file is never
/// modified.
fn prepare(conn: &mut Connection, path: &Path, options: &StoreOptions) -> Result<String, Failure> {
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| opening(path, e))?;
    let found = schema::user_version(conn).map_err(|e| opening(path, e))?;
    if found > KNOWN_VERSION {
        return Err(Failure::Fatal(StoreError::FromNewerVersion {
            path: path.to_owned(),
            found,
            known: KNOWN_VERSION,
        }));
    }
    if let Some(problems) = schema::integrity_problems(conn).map_err(|e| opening(path, e))? {
        return Err(Failure::Corrupt(problems));
    }
    let mode = schema::set_pragmas(conn).map_err(|e| opening(path, e))?;
    schema::migrate(conn, MIGRATIONS).map_err(|(version, source)| {
        if is_corruption(&source) {
            Failure::Corrupt(source.to_string())
        } else {
            Failure::Fatal(StoreError::Migration {
                path: path.to_owned(),
                version,
                source,
            })
        }
    })?;
    Ok(mode)
}

fn opening(path: &Path, source: rusqlite::Error) -> Failure {
    if is_corruption(&source) {
        Failure::Corrupt(source.to_string())
    } else {
        Failure::Fatal(StoreError::Open {
            path: path.to_owned(),
            source,
        })
    }
}

/// Renames the database and its side files to `<name>.corrupt-<unix time>`.
/// Side files go first: a stale -wal left beside a new database would be
/// replayed into it.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let aside = free_aside_name(path);
    for suffix in ["-wal", "-shm", "-journal", ""] {
        let from = with_suffix(path, suffix);
        let to = with_suffix(&aside, suffix);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::MoveAside {
                    path: from,
                    aside: to,
                    source,
                })
            }
        }
    }
    Ok(aside)
}

/// Never overwrites an earlier corrupt copy, even one from the same second.
fn free_aside_name(path: &Path) -> PathBuf {
    let base = with_suffix(path, &format!(".corrupt-{}", crate::clock::unix_now()));
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.symlink_metadata().is_ok() {
        candidate = with_suffix(&base, &format!(".{n}"));
        n += 1;
    }
    candidate
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_files_move_with_the_database_and_nothing_is_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(DB_FILE_NAME);
        for suffix in ["", "-wal", "-shm"] {
            fs::write(with_suffix(&path, suffix), suffix).unwrap();
        }
        let first = move_aside(&path).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert!(!with_suffix(&path, suffix).exists(), "{suffix} left behind");
            let moved = fs::read(with_suffix(&first, suffix)).unwrap();
            assert_eq!(moved, suffix.as_bytes());
        }
        assert!(!with_suffix(&first, "-journal").exists());

        fs::write(&path, b"again").unwrap();
        let second = move_aside(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&second).unwrap(), b"again");
        assert_eq!(fs::read(&first).unwrap(), b"");
    }

    #[test]
    fn the_aside_name_says_corrupt_and_when() {
        let aside = free_aside_name(Path::new("/nonexistent/state.db"));
        let name = aside.file_name().unwrap().to_string_lossy().into_owned();
        let stamp = name.strip_prefix("state.db.corrupt-").unwrap();
        assert!(stamp.parse::<u64>().unwrap() > 1_600_000_000, "{name}");
    }
}
