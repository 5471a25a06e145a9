//! The database's shape and how a file gets to it: connection settings, the
//! integrity check, and the ordered schema migrations recorded in
//! `PRAGMA user_version`. A migration, once released, is never edited:
//! changes are new entries at the end.

use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    V1_INITIAL,
    V2_CONVERSIONS,
    V3_WRITE_TRACKING,
    V4_FRAGMENTATION,
    V5_REQUEUES,
    V6_SUBVOLUMES,
];

/// The newest schema version this code understands.
pub(super) const KNOWN_VERSION: i64 = MIGRATIONS.len() as i64;

/// Paths are BLOBs of their exact bytes (see `codec`). AUTOINCREMENT keeps
/// ids from being reused after deletes, so a stale job id held by a worker
/// can never point at a newer job, and history ids stay in insertion order.
const V1_INITIAL: &str = "
CREATE TABLE filesystems (
    uuid        TEXT PRIMARY KEY NOT NULL,
    mount_point BLOB NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);

CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    fs_uuid        TEXT NOT NULL,
    ino            INTEGER NOT NULL,
    generation     INTEGER NOT NULL,
    path_hint      BLOB NOT NULL,
    size_bytes     INTEGER NOT NULL,
    extents_before INTEGER NOT NULL,
    ideal_extents  INTEGER NOT NULL,
    score          REAL NOT NULL,
    priority       REAL NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('queued', 'running')),
    next_block     INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    queued_at      INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    not_before     INTEGER NOT NULL,
    UNIQUE (fs_uuid, ino, generation)
);
CREATE INDEX jobs_in_take_order ON jobs (state, priority DESC, queued_at, id);

CREATE TABLE crawl_cursors (
    fs_uuid          TEXT PRIMARY KEY NOT NULL,
    pass_id          INTEGER NOT NULL,
    pass_started_at  INTEGER NOT NULL,
    cursor           BLOB NOT NULL,
    files_assessed   INTEGER NOT NULL DEFAULT 0,
    pass_finished_at INTEGER
);

CREATE TABLE history (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    fs_uuid        TEXT NOT NULL,
    ino            INTEGER NOT NULL,
    generation     INTEGER NOT NULL,
    path           BLOB NOT NULL,
    outcome        TEXT NOT NULL
                   CHECK (outcome IN ('defragmented', 'skipped', 'failed', 'dropped')),
    reason_code    TEXT,
    reason         TEXT,
    extents_before INTEGER NOT NULL,
    extents_after  INTEGER,
    bytes_moved    INTEGER NOT NULL DEFAULT 0,
    finished_at    INTEGER NOT NULL
);
CREATE INDEX history_by_finish ON history (finished_at);
";

/// Conversions of block-mapped files to extents (EXT4_IOC_MIGRATE), which
/// the kernel does not make crash-safe: a row is written before the call
/// and finished after it, so a crash in between names the file.
const V2_CONVERSIONS: &str = "
CREATE TABLE conversions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    fs_uuid     TEXT NOT NULL,
    ino         INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    path        BLOB NOT NULL,
    device      BLOB NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
);
";

/// Write tracking: files the service is done with until someone writes
/// them again (so that its own opens and moves never queue them anew), and
/// per filesystem the time up to which every write is known to have been
/// seen (so that a restart looks only at files changed since).
const V3_WRITE_TRACKING: &str = "
CREATE TABLE settled (
    fs_uuid     TEXT NOT NULL,
    ino         INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    mtime       INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    why         TEXT NOT NULL CHECK (why IN ('moved', 'no_gain')),
    settled_at  INTEGER NOT NULL,
    PRIMARY KEY (fs_uuid, ino, generation)
);
CREATE INDEX settled_by_age ON settled (settled_at);
ALTER TABLE filesystems ADD COLUMN tracked_until INTEGER;
";

/// Each filesystem's fragmentation as crawl passes measured it (the running
/// pass's tally beside its cursor, so a restart keeps it), and what the
/// service did there each local day (`day`: unix seconds of its midnight).
const V4_FRAGMENTATION: &str = "
ALTER TABLE crawl_cursors ADD COLUMN files_measured INTEGER NOT NULL DEFAULT 0;
ALTER TABLE crawl_cursors ADD COLUMN extents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE crawl_cursors ADD COLUMN ideal_extents INTEGER NOT NULL DEFAULT 0;

CREATE TABLE fragmentation (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    fs_uuid       TEXT NOT NULL,
    measured_at   INTEGER NOT NULL,
    files         INTEGER NOT NULL,
    extents       INTEGER NOT NULL,
    ideal_extents INTEGER NOT NULL
);
CREATE INDEX fragmentation_by_fs ON fragmentation (fs_uuid, id);

CREATE TABLE activity (
    fs_uuid            TEXT NOT NULL,
    day                INTEGER NOT NULL,
    files_defragmented INTEGER NOT NULL DEFAULT 0,
    bytes_moved        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (fs_uuid, day)
);
";

/// A job's harmless returns to the queue (interrupted, paused, busy under
/// a writer, recently written, I/O pressure...) and its waits for free
/// space are counted apart from its real failures, so that only failures
/// bring it to be given up. Before V5 `attempts` counted every take, which
/// cannot be told apart now: those takes become requeues, since counting
/// them as failures would make a job's first real failure its last.
const V5_REQUEUES: &str = "
ALTER TABLE jobs ADD COLUMN requeues INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN space_waits INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET requeues = attempts, attempts = 0;
";

/// On btrfs an inode number is unique only within its subvolume: a file
/// is (filesystem, subvolume, inode, generation). The queue and the
/// settled files are rebuilt with the subvolume in their key (SQLite
/// cannot change a table's constraints in place); every row from before
/// is on ext4 or XFS, which have no subvolumes: 0. The queue's id
/// sequence is carried over, so no id is ever reused.
const V6_SUBVOLUMES: &str = "
CREATE TABLE jobs_v6 (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    fs_uuid        TEXT NOT NULL,
    subvolume      INTEGER NOT NULL DEFAULT 0,
    ino            INTEGER NOT NULL,
    generation     INTEGER NOT NULL,
    path_hint      BLOB NOT NULL,
    size_bytes     INTEGER NOT NULL,
    extents_before INTEGER NOT NULL,
    ideal_extents  INTEGER NOT NULL,
    score          REAL NOT NULL,
    priority       REAL NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('queued', 'running')),
    next_block     INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    queued_at      INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    not_before     INTEGER NOT NULL,
    requeues       INTEGER NOT NULL DEFAULT 0,
    space_waits    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (fs_uuid, subvolume, ino, generation)
);
INSERT INTO jobs_v6 (id, fs_uuid, subvolume, ino, generation, path_hint, size_bytes,
    extents_before, ideal_extents, score, priority, state, next_block, attempts, last_error,
    queued_at, updated_at, not_before, requeues, space_waits)
SELECT id, fs_uuid, 0, ino, generation, path_hint, size_bytes, extents_before, ideal_extents,
    score, priority, state, next_block, attempts, last_error, queued_at, updated_at, not_before,
    requeues, space_waits
FROM jobs;
DELETE FROM sqlite_sequence WHERE name = 'jobs_v6';
INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs_v6', seq FROM sqlite_sequence WHERE name = 'jobs';
DROP TABLE jobs;
ALTER TABLE jobs_v6 RENAME TO jobs;
CREATE INDEX jobs_in_take_order ON jobs (state, priority DESC, queued_at, id);

CREATE TABLE settled_v6 (
    fs_uuid     TEXT NOT NULL,
    subvolume   INTEGER NOT NULL DEFAULT 0,
    ino         INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    mtime       INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    why         TEXT NOT NULL CHECK (why IN ('moved', 'no_gain')),
    settled_at  INTEGER NOT NULL,
    PRIMARY KEY (fs_uuid, subvolume, ino, generation)
);
INSERT INTO settled_v6 (fs_uuid, subvolume, ino, generation, mtime, size_bytes, why, settled_at)
SELECT fs_uuid, 0, ino, generation, mtime, size_bytes, why, settled_at FROM settled;
DROP TABLE settled;
ALTER TABLE settled_v6 RENAME TO settled;
CREATE INDEX settled_by_age ON settled (settled_at);

ALTER TABLE history ADD COLUMN subvolume INTEGER NOT NULL DEFAULT 0;
";

/// The schema version recorded in the file (0 for a new, empty one).
pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// `None` when SQLite finds the file sound, else what it found wrong. The
/// database is small (a queue and a bounded history), so checking at every
/// start costs little and catches damage before it surfaces mid-job.
pub(super) fn integrity_problems(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut findings = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        findings.push(row.get::<_, String>(0)?);
        Ok(())
    })?;
    if findings.len() == 1 && findings[0] == "ok" {
        Ok(None)
    } else {
        Ok(Some(findings.join("; ")))
    }
}

/// WAL lets status readers run beside the worker's writes; NORMAL skips the
/// fsync per commit, so a crash may lose the last cursor update, which only
/// redoes a chunk. Returns the journal mode SQLite actually chose.
pub(super) fn set_pragmas(conn: &Connection) -> rusqlite::Result<String> {
    let mode = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(mode)
}

/// Applies every migration past the file's version in one transaction, so a
/// failure leaves the file exactly as it was. On failure, returns the
/// version that could not be reached.
pub(super) fn migrate(
    conn: &mut Connection,
    migrations: &[&str],
) -> Result<(), (usize, rusqlite::Error)> {
    let current = user_version(conn).map_err(|e| (0, e))?;
    let start = usize::try_from(current).unwrap_or(0);
    if start >= migrations.len() {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| (start + 1, e))?;
    for (index, sql) in migrations.iter().enumerate().skip(start) {
        let version = index + 1;
        tx.execute_batch(sql).map_err(|e| (version, e))?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(|e| (version, e))?;
    }
    tx.commit().map_err(|e| (migrations.len(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let names = stmt.query_map([], |row| row.get(0)).unwrap();
        names.map(Result::unwrap).collect()
    }

    #[test]
    fn an_empty_database_migrates_to_the_known_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(user_version(&conn).unwrap(), 0);
        migrate(&mut conn, MIGRATIONS).unwrap();
        assert_eq!(user_version(&conn).unwrap(), KNOWN_VERSION);
        let names = tables(&conn);
        for table in ["crawl_cursors", "filesystems", "history", "jobs"] {
            assert!(
                names.iter().any(|n| n == table),
                "{table} missing: {names:?}"
            );
        }
    }

    #[test]
    fn a_crawl_under_way_keeps_its_cursor_through_version_3() {
        // A store from before fragmentation was recorded, as a package
        // upgrade finds it: the pass goes on with an empty tally.
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &MIGRATIONS[..2]).unwrap();
        conn.execute(
            "INSERT INTO crawl_cursors (fs_uuid, pass_id, pass_started_at, cursor, files_assessed)
             VALUES ('u', 3, 100, x'61', 7)",
            [],
        )
        .unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        let row: (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT pass_id, files_assessed, files_measured, extents FROM crawl_cursors",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(row, (3, 7, 0, 0));
        assert!(tables(&conn).iter().any(|t| t == "fragmentation"));
        assert!(tables(&conn).iter().any(|t| t == "activity"));
    }

    #[test]
    fn jobs_from_before_version_6_are_in_subvolume_0_and_keep_their_ids() {
        // A queue from ext4 or XFS: its jobs keep their ids, cursors and
        // counters, in subvolume 0; the id sequence goes on past the
        // highest id ever given (a job deleted since included).
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &MIGRATIONS[..5]).unwrap();
        let insert = "INSERT INTO jobs (fs_uuid, ino, generation, path_hint, size_bytes,
                          extents_before, ideal_extents, score, priority, state, next_block,
                          attempts, requeues, queued_at, updated_at, not_before)
                      VALUES ('u', ?1, 1, x'61', 4096, 9, 1, 0.5, 1.0, 'queued', 64, 2, 3,
                              100, 100, 0)";
        conn.execute(insert, [12]).unwrap();
        conn.execute(insert, [13]).unwrap();
        conn.execute("DELETE FROM jobs WHERE ino = 13", []).unwrap();
        conn.execute(
            "INSERT INTO settled (fs_uuid, ino, generation, mtime, size_bytes, why, settled_at)
             VALUES ('u', 12, 1, 5, 4096, 'moved', 6)",
            [],
        )
        .unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        let row: (i64, i64, i64, i64, i64) = conn
            .query_row(
                "SELECT id, subvolume, next_block, attempts, requeues FROM jobs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(row, (1, 0, 64, 2, 3));
        let settled: i64 = conn
            .query_row("SELECT subvolume FROM settled WHERE ino = 12", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(settled, 0);
        // The same inode number in another subvolume is another file.
        conn.execute(
            "INSERT INTO jobs (fs_uuid, subvolume, ino, generation, path_hint, size_bytes,
                               extents_before, ideal_extents, score, priority, state,
                               queued_at, updated_at, not_before)
             VALUES ('u', 256, 12, 1, x'62', 4096, 9, 1, 0.5, 1.0, 'queued', 100, 100, 0)",
            [],
        )
        .unwrap();
        let newest: i64 = conn
            .query_row("SELECT max(id) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(newest, 3, "id 2 was given once and must not come back");
    }

    #[test]
    fn takes_counted_before_version_5_become_requeues() {
        // A store from before failures were counted apart: a job taken
        // three times (each a harmless requeue or a failure, nobody knows)
        // keeps its cursor and may still fail five times.
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &MIGRATIONS[..4]).unwrap();
        conn.execute(
            "INSERT INTO jobs (fs_uuid, ino, generation, path_hint, size_bytes, extents_before,
                               ideal_extents, score, priority, state, next_block, attempts,
                               queued_at, updated_at, not_before)
             VALUES ('u', 12, 1, x'61', 4096, 9, 1, 0.5, 1.0, 'queued', 64, 3, 100, 100, 0)",
            [],
        )
        .unwrap();
        migrate(&mut conn, &MIGRATIONS[..5]).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 5);
        let row: (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT next_block, attempts, requeues, space_waits FROM jobs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(row, (64, 0, 3, 0));
    }

    #[test]
    fn migrating_again_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        assert_eq!(user_version(&conn).unwrap(), KNOWN_VERSION);
    }

    #[test]
    fn only_the_missing_migrations_run_in_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &["CREATE TABLE a (x);"]).unwrap();
        let later = [
            "CREATE TABLE a (x);",
            "CREATE TABLE b (x);",
            "ALTER TABLE b ADD y;",
        ];
        migrate(&mut conn, &later).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 3);
        assert_eq!(tables(&conn), ["a", "b"]);
    }

    #[test]
    fn a_failing_migration_leaves_the_file_as_it_was() {
        let mut conn = Connection::open_in_memory().unwrap();
        let broken = ["CREATE TABLE a (x);", "CREATE TABLE b (x); NOT SQL;"];
        let (version, _) = migrate(&mut conn, &broken).unwrap_err();
        assert_eq!(version, 2);
        assert_eq!(user_version(&conn).unwrap(), 0);
        assert!(tables(&conn).is_empty());
    }

    #[test]
    fn a_fresh_database_passes_the_integrity_check() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        assert_eq!(integrity_problems(&conn).unwrap(), None);
    }
}
