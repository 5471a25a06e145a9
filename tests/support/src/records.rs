//! Numbered records that a test's writer appends to a file while it is
//! being moved, each telling its own index, and the check that the
//! original data and every record are there, intact.

use std::path::Path;

use super::judge::{md5_prefix, read_all};
use super::seeded::Seeded;

/// One record: 8 bytes of magic, the index, then seeded bytes.
pub const RECORD: usize = 4096;

/// A kind of record: each test file its own magic and seed.
pub struct Records {
    magic: [u8; 8],
    seed: u64,
}

impl Records {
    pub const fn new(magic: &[u8; 8], seed: u64) -> Records {
        Records {
            magic: *magic,
            seed,
        }
    }

    /// Record `i`: magic, counter, then bytes that depend on the counter.
    pub fn record(&self, i: u64) -> Vec<u8> {
        let mut r = Seeded::new(i ^ self.seed).bytes(RECORD);
        r[..8].copy_from_slice(&self.magic);
        r[8..16].copy_from_slice(&i.to_le_bytes());
        r
    }

    /// The original data (`orig_size` bytes, md5 `orig_md5`) unchanged and
    /// `records` records after it, each intact.
    pub fn check_intact(
        &self,
        path: &Path,
        orig_size: u64,
        orig_md5: &str,
        records: u64,
    ) -> Result<(), String> {
        let data = read_all(path);
        let want = orig_size + records * RECORD as u64;
        if data.len() as u64 != want {
            return Err(format!(
                "file is {} bytes, want {want} ({records} records)",
                data.len()
            ));
        }
        let prefix = md5_prefix(path, orig_size);
        if prefix != orig_md5 {
            return Err(format!("original data changed: md5 {prefix} != {orig_md5}"));
        }
        for i in 0..records {
            let off = (orig_size + i * RECORD as u64) as usize;
            if data[off..off + RECORD] != self.record(i)[..] {
                return Err(format!("record {i} at offset {off} is damaged"));
            }
        }
        Ok(())
    }
}
