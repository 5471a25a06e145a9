//! Opening, reopening, crashing and damaging real database files.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::testutil::{defragmented, file, filesystems, new_job, FS_A};
use super::*;

fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE_NAME)
}

/// Files in `dir` whose names start with `prefix`, sorted.
fn names_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` and returns what it logged.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn a_new_state_dir_is_created_private_with_the_current_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var/lib/defragd");
    let store = Store::open(&dir).unwrap();
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(db_path(&dir).is_file());
    assert_eq!(
        schema::user_version(&store.conn).unwrap(),
        schema::KNOWN_VERSION
    );
}

#[test]
fn an_uncreatable_state_dir_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-dir");
    fs::write(&blocker, b"").unwrap();
    let err = Store::open(&blocker.join("state")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("state directory"), "{err}");
}

#[test]
fn wal_mode_and_normal_sync_are_on() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    let sync: i64 = store
        .conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 1, "synchronous should be NORMAL (1)");
}

#[test]
fn a_filesystem_uuid_is_stored_as_the_text_it_always_was() {
    let store = Store::open_in_memory().unwrap();
    store.enqueue(&new_job(FS_A, 12, 1.0)).unwrap();
    let text: String = store
        .conn
        .query_row("SELECT fs_uuid FROM jobs", [], |row| row.get(0))
        .unwrap();
    assert_eq!(text, "0b5e4c1a-aaaa-4d6e-9f00-000000000001");
    // A row written with that text (by an older defragd) reads back typed.
    let job = store.next_job(&[FS_A], i64::MAX).unwrap().unwrap();
    assert_eq!(job.file.fs_uuid, FS_A);
}

#[test]
fn reopening_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(tmp.path()).unwrap();
        store.upsert_filesystem(FS_A, Path::new("/srv")).unwrap();
        store.start_pass(FS_A, 100).unwrap();
        store
            .save_crawl_cursor(FS_A, Path::new("a/b"), 12, &Tally::default())
            .unwrap();
        let done = store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
        store.next_job(&filesystems(&[FS_A]), 100).unwrap();
        store.finish_job(done, &defragmented(4096)).unwrap();
        store.enqueue(&new_job(FS_A, 2, 1.0)).unwrap()
    };
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.filesystems().unwrap().len(), 1);
    assert_eq!(
        store.crawl_cursor(FS_A).unwrap().unwrap().files_assessed,
        12
    );
    assert_eq!(store.recent_history(10).unwrap().len(), 1);
    assert_eq!(store.top_jobs(10).unwrap()[0].id, id);
}

#[test]
fn a_crash_mid_job_resumes_at_the_saved_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = filesystems(&[FS_A]);
    let id = {
        let store = Store::open(tmp.path()).unwrap();
        let id = store.enqueue(&new_job(FS_A, 9, 1.0)).unwrap();
        store.next_job(&fs, 100).unwrap().unwrap();
        store.save_cursor(id, 2048).unwrap();
        // A crash: the connection is never closed or checkpointed.
        std::mem::forget(store);
        id
    };
    let store = Store::open(tmp.path()).unwrap();
    let resumed = store.requeue_interrupted().unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!((resumed[0].id, resumed[0].next_block), (id, 2048));
    assert_eq!(resumed[0].state, JobState::Queued);
    let again = store.next_job(&fs, 200).unwrap().unwrap();
    assert_eq!(
        (again.id, again.next_block, again.attempts),
        (id, 2048, 0),
        "a crash is no failure of the job"
    );
}

#[test]
fn garbage_in_place_of_the_database_is_moved_aside_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = b"this is not an SQLite database ".repeat(200);
    fs::write(db_path(tmp.path()), &garbage).unwrap();

    let (opened, logs) = capture_logs(|| Store::open(tmp.path()));
    let store = opened.unwrap();

    let aside = names_starting(tmp.path(), "state.db.corrupt-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(tmp.path().join(&aside[0])).unwrap(), garbage);
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(
        logs.contains("corrupt") && logs.contains(&aside[0]),
        "{logs}"
    );
    assert!(logs.contains("crawl will rediscover"), "{logs}");

    store.enqueue(&new_job(FS_A, 1, 1.0)).unwrap();
    assert_eq!(store.queue_len().unwrap(), 1);
}

#[test]
fn damaged_pages_are_found_at_open_and_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        for ino in 0..300 {
            store.enqueue(&new_job(FS_A, ino, 1.0)).unwrap();
        }
    }
    let path = db_path(tmp.path());
    let mut bytes = fs::read(&path).unwrap();
    assert!(bytes.len() > 3 * 4096, "database too small to damage");
    bytes[4096..3 * 4096].fill(0xa5);
    fs::write(&path, bytes).unwrap();

    let (opened, logs) = capture_logs(|| Store::open(tmp.path()));
    let store = opened.unwrap();
    assert_eq!(store.queue_len().unwrap(), 0);
    assert_eq!(names_starting(tmp.path(), "state.db.corrupt-").len(), 1);
    assert!(logs.contains("corrupt"), "{logs}");
}

#[test]
fn a_second_corruption_in_the_same_second_keeps_the_first_copy() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..2u8 {
        fs::write(db_path(tmp.path()), vec![round; 8192]).unwrap();
        capture_logs(|| Store::open(tmp.path())).0.unwrap();
    }
    assert_eq!(names_starting(tmp.path(), "state.db.corrupt-").len(), 2);
}

#[test]
fn a_database_from_a_newer_defragd_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    let path = db_path(tmp.path());
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let before = fs::read(&path).unwrap();

    let err = Store::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::FromNewerVersion { found: 99, known, .. } if known == schema::KNOWN_VERSION),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("newer defragd") && message.contains("untouched"),
        "{message}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(names_starting(tmp.path(), "state.db.corrupt-").is_empty());
}

#[test]
fn a_lowered_history_limit_prunes_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        for ino in 0..5 {
            let id = store.enqueue(&new_job(FS_A, ino, 1.0)).unwrap();
            store.finish_job(id, &defragmented(1)).unwrap();
        }
    }
    let options = StoreOptions {
        history_limit: 2,
        ..StoreOptions::default()
    };
    let store = Store::open_with(tmp.path(), &options).unwrap();
    assert_eq!(store.recent_history(10).unwrap().len(), 2);
}

#[test]
fn paths_that_are_not_utf8_round_trip_through_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let odd = Path::new(OsStr::from_bytes(b"data/caf\xe9/\xff\xfe.bin"));
    let mount = Path::new(OsStr::from_bytes(b"/mnt/\x80vol"));
    {
        let store = Store::open(tmp.path()).unwrap();
        store.upsert_filesystem(FS_A, mount).unwrap();
        store.start_pass(FS_A, 100).unwrap();
        store
            .save_crawl_cursor(FS_A, odd, 1, &Tally::default())
            .unwrap();
        let mut job = new_job(FS_A, 5, 1.0);
        job.path_hint = odd.to_owned();
        store.enqueue(&job).unwrap();
        job.file = file(FS_A, 6);
        let id = store.enqueue(&job).unwrap();
        store.drop_job(id, "removed by defragctl").unwrap();
    }
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.filesystems().unwrap()[0].mount_point, mount);
    assert_eq!(store.crawl_cursor(FS_A).unwrap().unwrap().cursor, odd);
    assert_eq!(store.top_jobs(1).unwrap()[0].path_hint, odd);
    let history = store.recent_history(1).unwrap();
    assert_eq!(history[0].path, odd);
    // JSON cannot hold the raw bytes; it gets a readable form, not an error.
    let json = serde_json::to_string(&history[0]).unwrap();
    assert!(json.contains("data/caf"), "{json}");
}

#[test]
fn a_version_4_database_with_a_job_under_way_opens_and_resumes_it() {
    // As a package upgrade finds it: a job taken three times (each take
    // counted then) and interrupted at block 2048.
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut conn = Connection::open(db_path(tmp.path())).unwrap();
        schema::migrate(&mut conn, &schema::MIGRATIONS[..4]).unwrap();
        conn.execute(
            "INSERT INTO jobs (fs_uuid, ino, generation, path_hint, size_bytes, extents_before,
                               ideal_extents, score, priority, state, next_block, attempts,
                               queued_at, updated_at, not_before)
             VALUES (?1, 9, 7, x'61', 4096, 40, 1, 0.9, 1.0, 'running', 2048, 3, 100, 100, 0)",
            [FS_A],
        )
        .unwrap();
    }
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(
        schema::user_version(&store.conn).unwrap(),
        schema::KNOWN_VERSION
    );
    let resumed = store.requeue_interrupted().unwrap();
    assert_eq!(resumed.len(), 1);
    let job = &resumed[0];
    assert_eq!((job.file.clone(), job.next_block), (file(FS_A, 9), 2048));
    assert_eq!(
        (job.attempts, job.requeues, job.space_waits),
        (0, 3, 0),
        "takes of old cannot be told apart: none is held against the job"
    );
}
