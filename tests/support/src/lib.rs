//! Shared harness for defragd's integration tests: loop-mounted ext4, XFS
//! and btrfs images that clean up after themselves, a reproducible
//! fragmenter, and helpers that judge the result with tools nobody in this
//! project wrote (filefrag, e4defrag, e2fsck, xfs_bmap, xfs_repair, xfs_fsr,
//! btrfs check/du/defragment, md5sum, stat, lsattr, fincore).
//!
//! A crate of its own (a dev-dependency of defragd), so that it is compiled
//! once, not once per test binary; each binary names it as it used to name
//! its copy: `use defragd_testkit as common;`.
//!
//! Everything a test attaches or mounts is owned by a guard whose `Drop`
//! undoes it, also when the test panics. Nothing here touches a device,
//! mount or process the test did not create itself.

mod btrfs;
mod cache;
mod cmd;
mod defragd;
mod faults;
mod fixture;
mod hostile;
mod image;
mod jobs;
mod judge;
mod records;
mod scrape;
mod seeded;
mod service;
mod xfs;

pub use {
    btrfs::*, cache::*, cmd::*, defragd::*, faults::*, fixture::*, hostile::*, image::*, jobs::*,
    judge::*, records::*, scrape::*, seeded::*, service::*, xfs::*,
};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// True when the test may go on. Without root the test is skipped with a
/// message, unless DEFRAGD_REQUIRE_ROOT_TESTS=1 (CI), where a skip would hide
/// a missing test run and therefore fails instead.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { nix::libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("DEFRAGD_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("this test needs root (euid is {euid}) and DEFRAGD_REQUIRE_ROOT_TESTS=1 forbids skipping it");
    }
    eprintln!("SKIPPED: this test needs root (loop devices, mount); euid is {euid}");
    false
}
