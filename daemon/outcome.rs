//! What happened to one file, in words an operator reads and in stable
//! codes a script reads. A skip is not a failure: nothing was wrong, there
//! was just nothing safe or worthwhile to do; and a no-op is never a success.

use serde::Serialize;

use crate::assess::Assessment;
use crate::sys;

/// Why a file was left as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SkipReason {
    #[error("is a symbolic link; defragd never follows links")]
    Symlink,
    #[error("is not a regular file ({0})")]
    NotRegular(&'static str),
    #[error("is on another filesystem than the tree being walked (a mount point)")]
    OtherFilesystem,
    #[error("{0}")]
    UnsupportedFilesystem(String),
    #[error("is empty or smaller than one block ({size} bytes); there is nothing to defragment")]
    TooSmall { size: u64 },
    #[error("is already contiguous ({extents} extents, ideal {ideal}); nothing to gain")]
    AlreadyContiguous { extents: u64, ideal: u64 },
    #[error(
        "is block-mapped (an ext3-era file): MOVE_EXT needs extents; converting it first is \
         off by default because the kernel's conversion is not crash-safe: enable \
         policy.convert_block_mapped (defragd defrag --convert-block-mapped) to convert it"
    )]
    BlockMapped,
    #[error(
        "is block-mapped and the filesystem has no extent feature: enable it with \
         `tune2fs -O extents` (unmounted) before block-mapped files can be converted"
    )]
    NoExtentFeature,
    #[error("keeps its data inline in the inode; there are no blocks to move")]
    InlineData,
    #[error("is immutable (chattr +i); clear the flag with `chattr -i` to defragment it")]
    Immutable,
    #[error("is append-only (chattr +a); clear the flag with `chattr -a` to defragment it")]
    AppendOnly,
    #[error("is encrypted (or verity-protected); the kernel cannot move its blocks")]
    Encrypted,
    #[error("is an active swap file; run `swapoff` on it first if it must be defragmented")]
    Swapfile,
    #[error("uses data journaling (data=journal or chattr +j); the kernel cannot move its blocks")]
    DataJournal,
    #[error("is on a bigalloc filesystem; the kernel cannot move extents there")]
    Bigalloc,
    #[error("is on a DAX mount or uses DAX; the kernel cannot move its blocks")]
    Dax,
    #[error("is on a read-only filesystem; remount it read-write to defragment")]
    ReadOnly,
    #[error("keeps its data on the realtime device; defragd moves data-device files only")]
    Realtime,
    /// Its blocks (every range worth defragmenting, on btrfs) are shared
    /// with a snapshot, a reflinked copy or a dedupe: rewriting them would
    /// unshare them.
    #[error(
        "shares its blocks with a snapshot or a reflinked copy; rewriting them would unshare \
         them and take more space, so they are left as they are"
    )]
    SharedExtents,
    #[error(
        "is marked not to be defragmented (the no-defrag flag, chattr +f); clear it with \
         `xfs_io -c 'chattr -f'` to defragment it"
    )]
    NoDefragFlag,
    /// XFS without rmapbt or exchange-range: SWAPEXT's crash recovery is
    /// broken there on this kernel, and the operator has not accepted it.
    #[error(
        "is on an XFS filesystem without the reverse-mapping btree, where a crash within \
         about a minute after the kernel's extent swap can leave a log that does not replay \
         (the filesystem then needs xfs_repair; xfs_fsr has the same risk); it is left alone. \
         Accept the risk with [policy] xfs_swapext_without_rmapbt = true (defragd defrag \
         --xfs-swapext-without-rmapbt)"
    )]
    SwapextNotCrashSafe,
    #[error(
        "needs {need} of free space for the new copy, but only {available} is free and \
         {reserve} is kept in reserve; free some space or lower --reserve-percent"
    )]
    NotEnoughFreeSpace {
        need: Size,
        available: Size,
        reserve: Size,
    },
    #[error(
        "no contiguous free space: the best the allocator found has {donor_runs} pieces, the \
         file has {file_runs}; free space is itself fragmented, so moving would not help"
    )]
    NoContiguousFreeSpace { file_runs: u64, donor_runs: u64 },
    #[error("is busy: {0}; try again later")]
    Busy(String),
    #[error("was written {ago_secs} s ago; it is left alone until it has been quiet for the quiet period")]
    RecentlyWritten { ago_secs: u64 },
    #[error("is no longer the file that was queued (deleted, or replaced by another file at the same path)")]
    Replaced,
    /// Gone between being found (listed in its directory, or queued) and
    /// being opened: ordinary churn, such as a log rotated away.
    #[error("was deleted or renamed after it was found; nothing to do")]
    Vanished,
    #[error(
        "is in a read-only subvolume (a read-only snapshot); nothing in it can be rewritten \
         until it is made writable (`btrfs property set SUBVOL ro false`)"
    )]
    ReadOnlySubvolume,
    #[error(
        "is nodatacow (chattr +C, or the mount's nodatacow): its writer chose in-place \
         writes (a VM image or a database); defragmenting it is off unless the btrfs \
         nodatacow policy allows it"
    )]
    NoCow,
    #[error(
        "holds compressed data, but neither its btrfs.compression property nor its mount \
         says with what; it is left alone rather than stored uncompressed or recompressed \
         differently (set the property with `btrfs property set FILE compression zstd`)"
    )]
    CompressionUnknown,
}

impl SkipReason {
    /// A stable code for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::Symlink => "symlink",
            SkipReason::NotRegular(_) => "not_regular",
            SkipReason::OtherFilesystem => "other_filesystem",
            SkipReason::UnsupportedFilesystem(_) => "unsupported_filesystem",
            SkipReason::TooSmall { .. } => "too_small",
            SkipReason::AlreadyContiguous { .. } => "already_contiguous",
            SkipReason::BlockMapped => "block_mapped",
            SkipReason::NoExtentFeature => "no_extent_feature",
            SkipReason::InlineData => "inline_data",
            SkipReason::Immutable => "immutable",
            SkipReason::AppendOnly => "append_only",
            SkipReason::Encrypted => "encrypted",
            SkipReason::Swapfile => "swapfile",
            SkipReason::DataJournal => "data_journal",
            SkipReason::Bigalloc => "bigalloc",
            SkipReason::Dax => "dax",
            SkipReason::ReadOnly => "read_only",
            SkipReason::Realtime => "realtime",
            SkipReason::SharedExtents => "shared_extents",
            SkipReason::NoDefragFlag => "no_defrag_flag",
            SkipReason::SwapextNotCrashSafe => "swapext_not_crash_safe",
            SkipReason::NotEnoughFreeSpace { .. } => "not_enough_free_space",
            SkipReason::NoContiguousFreeSpace { .. } => "no_contiguous_free_space",
            SkipReason::Busy(_) => "busy",
            SkipReason::RecentlyWritten { .. } => "recently_written",
            SkipReason::Replaced => "replaced",
            SkipReason::Vanished => "vanished",
            SkipReason::ReadOnlySubvolume => "read_only_subvolume",
            SkipReason::NoCow => "nocow",
            SkipReason::CompressionUnknown => "compression_unknown",
        }
    }
}

/// Who chose where a move's data went: what a move that gained nothing is
/// put down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A donor whose layout was checked before it took the file's place
    /// (ext4, XFS): a result no better means the file or the free space
    /// changed under the move.
    CheckedDonor,
    /// The filesystem's allocator, as the kernel rewrote the data (btrfs):
    /// nothing says beforehand where it will write.
    Allocator,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::CheckedDonor => "another writer took the free space during the move",
            Placement::Allocator => {
                "the filesystem wrote the data back in no fewer pieces (where it writes is its \
                 allocator's choice, not defragd's)"
            }
        })
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FailReason {
    #[error("{0}")]
    Kernel(KernelError),
    #[error("{0}")]
    Filesystem(String),
    #[error(
        "the kernel moved only {moved} of {asked} blocks at block {at}: the file changed during \
         the move; its data is intact, try again later"
    )]
    ShortMove { at: u64, asked: u64, moved: u64 },
    #[error("the new copy's blocks did not match the file's data ranges ({0}); nothing was moved")]
    DonorMismatch(String),
    #[error(
        "moved, but the result is no better ({before} -> {after} pieces): {placed_by}; the data \
         is intact"
    )]
    NoImprovement {
        before: u64,
        after: u64,
        placed_by: Placement,
    },
    /// Not the kernel failing: a writer appended to the file during the
    /// move faster than its tail could be moved after it, and the file as
    /// a whole ended no better than it started.
    #[error(
        "a writer appended {appended} during the move and the file ended in {after} extents \
         against {before} before; the data is intact; it is worth moving again once the \
         writer is quiet"
    )]
    WriterOutpaced {
        before: u64,
        after: u64,
        appended: Size,
    },
}

impl FailReason {
    pub fn code(&self) -> &'static str {
        match self {
            // The file was in use or written during the move (XFS's swap
            // refused for it): a retry, not a fault.
            FailReason::Kernel(e) if e.kind == KernelErrorKind::Busy => "busy",
            FailReason::Kernel(_) => "kernel_error",
            FailReason::Filesystem(_) => "filesystem_error",
            FailReason::ShortMove { .. } => "short_move",
            FailReason::DonorMismatch(_) => "donor_mismatch",
            FailReason::NoImprovement { .. } => "no_improvement",
            FailReason::WriterOutpaced { .. } => "writer_outpaced",
        }
    }

    /// The file's extents at the end of the move, where the reason knows
    /// them (a move that ran to its end and was measured).
    pub fn extents_after(&self) -> Option<u64> {
        match self {
            FailReason::WriterOutpaced { after, .. } => Some(*after),
            _ => None,
        }
    }
}

/// What the generic layer knows of a kernel failure: the kind it acts on
/// (retry soon, retry later, give up) and the backend's words for it. The
/// backend and the syscall layer map their errors to it; nothing above
/// them names an errno or a backend's error variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct KernelError {
    pub kind: KernelErrorKind,
    /// What happened and what to do, in the backend's words.
    pub detail: String,
}

/// The kinds of kernel failure a job's fate depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelErrorKind {
    /// Pages locked or under writeback: passes in moments.
    Busy,
    /// The filesystem is full.
    NoSpace,
    /// The disk failed or the filesystem was shut down.
    Io,
    /// The filesystem is (or was remounted) read-only.
    ReadOnly,
    /// The file is gone.
    NotFound,
    Other,
}

impl From<sys::Error> for KernelError {
    fn from(e: sys::Error) -> Self {
        let kind = match e {
            sys::Error::Busy => KernelErrorKind::Busy,
            sys::Error::NoSpace => KernelErrorKind::NoSpace,
            sys::Error::Io => KernelErrorKind::Io,
            sys::Error::ReadOnly => KernelErrorKind::ReadOnly,
            sys::Error::NotFound => KernelErrorKind::NotFound,
            _ => KernelErrorKind::Other,
        };
        KernelError {
            kind,
            detail: e.to_string(),
        }
    }
}

impl From<sys::Error> for FailReason {
    fn from(e: sys::Error) -> Self {
        FailReason::Kernel(e.into())
    }
}

/// Why a file was not moved before anything changed: left alone (a
/// skip), or the kernel or the filesystem in the way (a failure).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Skip(SkipReason),
    Fail(FailReason),
}

impl From<SkipReason> for Refusal {
    fn from(r: SkipReason) -> Self {
        Refusal::Skip(r)
    }
}

impl From<sys::Error> for Refusal {
    fn from(e: sys::Error) -> Self {
        match e {
            sys::Error::Symlink => Refusal::Skip(SkipReason::Symlink),
            sys::Error::CrossesMount => Refusal::Skip(SkipReason::OtherFilesystem),
            sys::Error::ReadOnly => Refusal::Skip(SkipReason::ReadOnly),
            sys::Error::NotFound => Refusal::Skip(SkipReason::Vanished),
            other => Refusal::Fail(other.into()),
        }
    }
}

/// A byte count that prints as `1.2 GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size(pub u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", indicatif::BinaryBytes(self.0))
    }
}

/// The result of a completed move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moved {
    pub before: Assessment,
    pub after: Assessment,
    pub bytes_moved: u64,
    /// The file was block-mapped and converted to extents first.
    pub converted: bool,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Defragmented(Moved),
    /// --dry-run: every check passed; this is what would be moved.
    WouldDefragment(Assessment),
    Skipped {
        reason: SkipReason,
        before: Option<Assessment>,
    },
    Failed {
        reason: FailReason,
        before: Option<Assessment>,
        bytes_moved: u64,
    },
    /// Stopped between chunks on request; `next_block` is where to resume.
    Interrupted {
        before: Assessment,
        next_block: u64,
        bytes_moved: u64,
    },
    /// Converted to extents, but then not defragmented, for `reason`.
    Converted {
        before: Assessment,
        reason: String,
    },
}

impl Outcome {
    /// The word a report starts with.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Defragmented(Moved {
                converted: true, ..
            }) => "converted_and_defragmented",
            Outcome::Defragmented(_) => "defragmented",
            Outcome::Converted { .. } => "converted",
            Outcome::WouldDefragment(_) => "would_defragment",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
            Outcome::Interrupted { .. } => "interrupted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_sentences_about_the_file() {
        let r = SkipReason::NotEnoughFreeSpace {
            need: Size(3 << 30),
            available: Size(1 << 30),
            reserve: Size(512 << 20),
        };
        let text = r.to_string();
        assert!(
            text.contains("3.00 GiB") && text.contains("--reserve-percent"),
            "{text}"
        );
        assert_eq!(r.code(), "not_enough_free_space");
    }

    #[test]
    fn failure_codes_are_distinct_and_only_a_measured_failure_has_an_after() {
        let reasons = [
            FailReason::Kernel(sys::Error::Io.into()),
            FailReason::Filesystem(String::new()),
            FailReason::ShortMove {
                at: 0,
                asked: 2,
                moved: 1,
            },
            FailReason::DonorMismatch(String::new()),
            FailReason::NoImprovement {
                before: 3,
                after: 3,
                placed_by: Placement::CheckedDonor,
            },
            FailReason::WriterOutpaced {
                before: 3,
                after: 5,
                appended: Size(1 << 20),
            },
        ];
        let mut codes: Vec<_> = reasons.iter().map(FailReason::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), reasons.len());
        let afters: Vec<_> = reasons.iter().map(FailReason::extents_after).collect();
        assert_eq!(afters, [None, None, None, None, None, Some(5)]);
    }

    #[test]
    fn kernel_errors_keep_their_words_and_carry_the_kind_a_job_acts_on() {
        let kinds = [
            (sys::Error::Busy, KernelErrorKind::Busy),
            (sys::Error::NoSpace, KernelErrorKind::NoSpace),
            (sys::Error::Io, KernelErrorKind::Io),
            (sys::Error::ReadOnly, KernelErrorKind::ReadOnly),
            (sys::Error::NotFound, KernelErrorKind::NotFound),
            (sys::Error::InvalidMove, KernelErrorKind::Other),
        ];
        for (error, kind) in kinds {
            let words = error.to_string();
            let reason = FailReason::from(error);
            assert_eq!(reason.to_string(), words);
            assert!(matches!(reason, FailReason::Kernel(KernelError { kind: k, .. }) if k == kind));
        }
    }

    #[test]
    fn codes_are_distinct() {
        let reasons = [
            SkipReason::Symlink,
            SkipReason::NotRegular("fifo"),
            SkipReason::OtherFilesystem,
            SkipReason::UnsupportedFilesystem(String::new()),
            SkipReason::TooSmall { size: 0 },
            SkipReason::AlreadyContiguous {
                extents: 1,
                ideal: 1,
            },
            SkipReason::BlockMapped,
            SkipReason::NoExtentFeature,
            SkipReason::InlineData,
            SkipReason::Immutable,
            SkipReason::AppendOnly,
            SkipReason::Encrypted,
            SkipReason::Swapfile,
            SkipReason::DataJournal,
            SkipReason::Bigalloc,
            SkipReason::Dax,
            SkipReason::ReadOnly,
            SkipReason::Realtime,
            SkipReason::SharedExtents,
            SkipReason::NoDefragFlag,
            SkipReason::SwapextNotCrashSafe,
            SkipReason::NotEnoughFreeSpace {
                need: Size(0),
                available: Size(0),
                reserve: Size(0),
            },
            SkipReason::NoContiguousFreeSpace {
                file_runs: 2,
                donor_runs: 2,
            },
            SkipReason::Busy(String::new()),
            SkipReason::RecentlyWritten { ago_secs: 1 },
            SkipReason::Replaced,
            SkipReason::Vanished,
            SkipReason::ReadOnlySubvolume,
            SkipReason::NoCow,
            SkipReason::CompressionUnknown,
        ];
        let mut codes: Vec<_> = reasons.iter().map(SkipReason::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), reasons.len());
    }
}
