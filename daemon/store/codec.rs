//! Values in and out of the database. Linux paths are bytes, not text, so
//! they are stored as BLOBs of their exact bytes and never pass through a
//! UTF-8 conversion that could lose or reject a name; filesystem UUIDs are
//! stored as their text.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Row, ToSql};
use serde::Serializer;

use crate::filesystem::FsUuid;

pub(super) fn path_to_blob(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

pub(super) fn blob_to_path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

/// serde refuses to serialize a non-UTF-8 `PathBuf`; a status report must
/// still show such a file, so JSON gets the lossy form (the stored bytes stay
/// exact).
pub(super) fn serialize_path_lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// A u64 column. SQLite integers are i64; every count and block number here
/// fits, and one that does not is refused rather than wrapped to a negative.
pub(super) struct Uint(pub u64);

impl ToSql for Uint {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let value = i64::try_from(self.0)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(value.into())
    }
}

impl FromSql for Uint {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let signed = value.as_i64()?;
        u64::try_from(signed)
            .map(Uint)
            .map_err(|_| FromSqlError::OutOfRange(signed))
    }
}

pub(super) fn get_u64(row: &Row<'_>, column: &str) -> rusqlite::Result<u64> {
    row.get::<_, Uint>(column).map(|n| n.0)
}

pub(super) fn get_opt_u64(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<Uint>>(column)?.map(|n| n.0))
}

/// A `LIMIT` from a count; anything past i64 means "all".
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A filesystem UUID is stored as its text (TEXT columns, as every store
/// version has kept it).
impl ToSql for FsUuid {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.to_string().into())
    }
}

impl FromSql for FsUuid {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_bytes_round_trip() {
        let raw = b"dir/caf\xe9 \xff\xfe.log".to_vec();
        let path = blob_to_path(raw.clone());
        assert_eq!(path_to_blob(&path), raw.as_slice());
    }
}
