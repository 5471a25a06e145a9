//! Loop-mounted images and other mounts, swapfiles and file flags, each
//! owned by a guard whose Drop undoes it (also when the test panics).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use super::cmd::{run_ok, sh, sh_status};
use super::faults::{fsck_kind, fsck_name};

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("defragd-test-")
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp")
}

/// Unmounts `mnt` (a mount this test made): a few polite tries, then lazy.
fn unmount_dir(mnt: &Path) {
    // Up to 15 s: a process this test started may still be exiting. A lazy
    // unmount is the last resort only, since the filesystem then stays
    // live (journal unreplayed) until its last user goes, and an e2fsck of
    // the image right after it reports a dirty filesystem.
    for attempt in 0..50 {
        let (ok, _, err) = sh_status("umount", [mnt]);
        if ok {
            return;
        }
        if attempt % 10 == 0 {
            // Who holds it (fuser, from psmisc, if present): for the log.
            let users = Command::new("fuser")
                .arg("-vm")
                .arg(mnt)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            eprintln!(
                "umount {} failed (try {attempt}): {}; users:\n{}",
                mnt.display(),
                err.trim(),
                users.trim()
            );
        }
        sleep(Duration::from_millis(300));
    }
    let (ok, _, err) = sh_status("umount", [OsStr::new("-l"), mnt.as_os_str()]);
    if !ok {
        eprintln!("umount -l {} failed: {}", mnt.display(), err.trim());
    }
}

fn detach_loop(dev: &str) {
    for _ in 0..5 {
        let (ok, _, err) = sh_status("losetup", ["-d", dev]);
        if ok {
            return;
        }
        eprintln!("losetup -d {dev} failed: {}", err.trim());
        sleep(Duration::from_millis(300));
    }
}

/// Which filesystem to make on an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// `mkfs.ext4`
    Ext4,
    /// `mkfs.ext3`, mounted with `-t ext4`: files are block-mapped.
    Ext3AsExt4,
    /// `mkfs.ext4 -O bigalloc`
    Ext4Bigalloc,
    /// `mkfs.xfs -f` (xfsprogs 6.1 refuses images under 300 MiB).
    Xfs,
    /// `mkfs.btrfs -f` (single device; data single, metadata DUP).
    Btrfs,
}

impl FsKind {
    /// The type given to `mount -t`.
    pub fn fs_type(self) -> &'static str {
        match self {
            FsKind::Ext4 | FsKind::Ext3AsExt4 | FsKind::Ext4Bigalloc => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
        }
    }

    /// Whether e2fsck, filefrag's ext4 figures, e4defrag apply.
    pub fn is_ext4(self) -> bool {
        self.fs_type() == "ext4"
    }

    /// The mkfs command for this kind (the image path still to be added).
    fn mkfs(self) -> Command {
        // ext4: 4 KiB blocks always (small images would get 1 KiB ones), no
        // root-reserved blocks so "free space" means one thing. XFS and
        // btrfs use 4 KiB blocks on their own and reserve nothing for root.
        let (program, args): (&str, &[&str]) = match self {
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F", "-b", "4096", "-m", "0"]),
            FsKind::Ext3AsExt4 => ("mkfs.ext3", &["-q", "-F", "-b", "4096", "-m", "0"]),
            FsKind::Ext4Bigalloc => (
                "mkfs.ext4",
                &["-q", "-F", "-b", "4096", "-m", "0", "-O", "bigalloc"],
            ),
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-f"]),
            FsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"]),
        };
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub size_mib: u64,
    pub kind: FsKind,
    /// Extra mount options, e.g. "data=journal".
    pub mount_opts: Option<String>,
    /// Extra mkfs options, e.g. `-m rmapbt=1` for XFS.
    pub mkfs_opts: Vec<String>,
}

/// `opts` with `extra` added, unless already there.
fn with_option(opts: Option<&str>, extra: &str) -> String {
    match opts {
        Some(o) if o.split(',').any(|x| x == extra) => o.to_string(),
        Some(o) if !o.is_empty() => format!("{o},{extra}"),
        _ => extra.to_string(),
    }
}

impl ImageSpec {
    pub fn ext4(size_mib: u64) -> Self {
        ImageSpec {
            size_mib,
            kind: FsKind::Ext4,
            mount_opts: None,
            mkfs_opts: Vec::new(),
        }
    }
    /// An XFS image; at least 300 MiB (mkfs.xfs refuses less). Made with
    /// the reverse-mapping btree (`-m rmapbt=1`), where defragd swaps by
    /// default; `.mkfs_opts(&["-m", "rmapbt=0"])` makes the kind where
    /// SWAPEXT's crash recovery is broken on this kernel and defragd
    /// leaves files alone unless told otherwise.
    pub fn xfs(size_mib: u64) -> Self {
        ImageSpec::ext4(size_mib)
            .kind(FsKind::Xfs)
            .mkfs_opts(&["-m", "rmapbt=1"])
    }
    /// A btrfs image; at least 128 MiB (mkfs.btrfs refuses much less).
    pub fn btrfs(size_mib: u64) -> Self {
        ImageSpec::ext4(size_mib).kind(FsKind::Btrfs)
    }
    pub fn kind(mut self, kind: FsKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn mount_opts(mut self, opts: &str) -> Self {
        self.mount_opts = Some(opts.to_string());
        self
    }
    /// Options given to mkfs before the image path.
    pub fn mkfs_opts(mut self, opts: &[&str]) -> Self {
        self.mkfs_opts = opts.iter().map(|o| o.to_string()).collect();
        self
    }
}

/// An image file in its own temp dir, attached to its own loop device
/// (direct I/O, so I/O behaves like a disk) and mounted on a dir in that temp
/// dir. Drop unmounts and detaches.
pub struct LoopImage {
    pub spec: ImageSpec,
    img: PathBuf,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
    // Last field: removed after Drop::drop has unmounted and detached (held,
    // never read).
    _dir: tempfile::TempDir,
}

impl LoopImage {
    /// truncate + mkfs + losetup + mount.
    pub fn create(spec: ImageSpec) -> LoopImage {
        let dir = tempdir();
        let img = dir.path().join("fs.img");
        sh(
            "truncate",
            [
                OsStr::new("-s"),
                OsStr::new(&format!("{}M", spec.size_mib)),
                img.as_os_str(),
            ],
        );
        run_ok(spec.kind.mkfs().args(&spec.mkfs_opts).arg(&img));
        Self::attach_and_mount(dir, img, spec)
    }

    /// Attaches and mounts an image file that exists already (a copy of
    /// another image, as a power cut left it, say), with its mount point in
    /// `dir`, which goes with the guard.
    pub fn adopt(dir: tempfile::TempDir, img: PathBuf, spec: ImageSpec) -> LoopImage {
        Self::attach_and_mount(dir, img, spec)
    }

    fn attach_and_mount(dir: tempfile::TempDir, img: PathBuf, spec: ImageSpec) -> LoopImage {
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("create mount point");
        let mut me = LoopImage {
            spec,
            img,
            mnt,
            dev: None,
            mounted: false,
            _dir: dir,
        };
        me.mount();
        me
    }

    /// Attaches (if needed) and mounts.
    pub fn mount(&mut self) {
        if self.dev.is_none() {
            let dev = sh(
                "losetup",
                [
                    OsStr::new("-f"),
                    OsStr::new("--show"),
                    OsStr::new("--direct-io=on"),
                    self.img.as_os_str(),
                ],
            );
            self.dev = Some(dev.trim().to_string());
        }
        if !self.mounted {
            let dev = self.dev.clone().unwrap_or_default();
            let mut cmd = Command::new("mount");
            cmd.args(["-t", self.spec.kind.fs_type()]);
            if let Some(o) = &self.spec.mount_opts {
                cmd.args(["-o", o]);
            }
            cmd.arg(&dev).arg(&self.mnt);
            run_ok(&mut cmd);
            self.mounted = true;
        }
    }

    /// Unmounts and detaches (idempotent).
    pub fn unmount(&mut self) {
        if self.mounted {
            unmount_dir(&self.mnt);
            self.mounted = false;
        }
        if let Some(dev) = self.dev.take() {
            detach_loop(&dev);
        }
    }

    /// Unmounts and mounts again. ext4 hands blocks freed by a burst of
    /// deletions back to the allocator lazily: right after the filler is
    /// deleted (and `sync -f`), a 64 MiB fallocate got 72 or 137 extents
    /// where after a remount (or a 2 s wait) it gets 1. Settling makes the
    /// free space what it looks like, for defragd and e4defrag alike.
    pub fn settle(&mut self) {
        self.unmount();
        self.mount();
    }

    /// One `umount` of the mount point, no retry, no lazy fallback (for a
    /// test whose point is that the first try works). On success the image
    /// is unmounted (still attached); on failure it stays mounted and the
    /// error is returned.
    pub fn umount_once(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Err(format!("{} is not mounted", self.mnt.display()));
        }
        let (ok, out, err) = sh_status("umount", [&self.mnt]);
        if ok {
            self.mounted = false;
            Ok(())
        } else {
            Err(format!("{}{}", out.trim(), err.trim()))
        }
    }

    /// `mount -o remount,OPTS`.
    pub fn remount(&mut self, opts: &str) {
        sh(
            "mount",
            [
                OsStr::new("-o"),
                OsStr::new(&format!("remount,{opts}")),
                self.mnt.as_os_str(),
            ],
        );
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.mnt
    }

    pub fn image_path(&self) -> &Path {
        &self.img
    }

    pub fn device(&self) -> Option<&str> {
        self.dev.as_deref()
    }

    /// Unmounts, then checks the image with the checker of its kind
    /// (`e2fsck -fn`, `xfs_repair -n`, `btrfs check --readonly`; see
    /// `fsck_kind`); asserts it is clean. Returns the checker's output.
    /// The image stays unmounted (call `mount` to go on). After a shutdown
    /// use `replay_and_fsck`: a log not replayed reads as damage.
    pub fn unmount_and_fsck(&mut self) -> String {
        self.unmount();
        self.assert_clean()
    }

    /// After a shutdown (or any unclean stop): unmount, mount again so the
    /// log replays as at a reboot, unmount, then check as
    /// `unmount_and_fsck` does. Returns the checker's output.
    pub fn replay_and_fsck(&mut self) -> String {
        self.unmount();
        self.mount();
        self.unmount();
        self.assert_clean()
    }

    fn assert_clean(&self) -> String {
        let (ok, report) = fsck_kind(&self.img, self.spec.kind);
        assert!(
            ok,
            "{} of {} is not clean:\n{report}",
            fsck_name(self.spec.kind),
            self.img.display()
        );
        report
    }

    /// Makes an identical copy: unmount this image, `cp --sparse=always` it
    /// into a new temp dir, mount both (each on its own loop device). On
    /// XFS both are mounted with `-o nouuid` from then on: XFS refuses a
    /// second filesystem with a UUID already mounted, whichever of the
    /// two is mounted first (after a `settle` of either, say). btrfs
    /// (kernel 6.7+) gives the second copy a temporary fsid by itself.
    pub fn duplicate(&mut self) -> LoopImage {
        self.unmount();
        if self.spec.kind == FsKind::Xfs {
            self.spec.mount_opts = Some(with_option(self.spec.mount_opts.as_deref(), "nouuid"));
        }
        let dir = tempdir();
        let img = dir.path().join("fs.img");
        sh(
            "cp",
            [
                OsStr::new("--sparse=always"),
                self.img.as_os_str(),
                img.as_os_str(),
            ],
        );
        self.mount();
        Self::attach_and_mount(dir, img, self.spec.clone())
    }
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A mount this test made that is not a LoopImage: a tmpfs (a non-ext4
/// filesystem) or a bind mount. Drop unmounts it.
pub struct MountGuard {
    mnt: PathBuf,
    mounted: bool,
    // Holds the tmpfs mount point; None for a bind mount onto a caller's dir.
    _dir: Option<tempfile::TempDir>,
}

impl MountGuard {
    /// A tmpfs of `size_mib` on a new temp dir.
    pub fn tmpfs(size_mib: u64) -> MountGuard {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("create mount point");
        sh(
            "mount",
            [
                OsStr::new("-t"),
                OsStr::new("tmpfs"),
                OsStr::new("-o"),
                OsStr::new(&format!("size={size_mib}m")),
                OsStr::new("defragd-test-tmpfs"),
                mnt.as_os_str(),
            ],
        );
        MountGuard {
            mnt,
            mounted: true,
            _dir: Some(dir),
        }
    }

    /// `mount --bind SRC DST` (DST: a directory this test made).
    pub fn bind(src: &Path, dst: &Path) -> MountGuard {
        sh(
            "mount",
            [OsStr::new("--bind"), src.as_os_str(), dst.as_os_str()],
        );
        MountGuard {
            mnt: dst.to_path_buf(),
            mounted: true,
            _dir: None,
        }
    }

    /// The btrfs subvolume `subvolume` of the filesystem on `device` (a
    /// LoopImage's), mounted on a new temp dir (`-o subvol=`).
    pub fn btrfs_subvolume(device: &str, subvolume: &str) -> MountGuard {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("create mount point");
        sh(
            "mount",
            [
                OsStr::new("-t"),
                OsStr::new("btrfs"),
                OsStr::new("-o"),
                OsStr::new(&format!("subvol={subvolume}")),
                OsStr::new(device),
                mnt.as_os_str(),
            ],
        );
        MountGuard {
            mnt,
            mounted: true,
            _dir: Some(dir),
        }
    }

    pub fn root(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            unmount_dir(&self.mnt);
            self.mounted = false;
        }
    }
}

/// A swapfile this test activated; Drop runs swapoff. Declare it after the
/// LoopImage it lives on, so it is dropped (swapoff) before the unmount.
pub struct SwapGuard {
    path: PathBuf,
}

impl SwapGuard {
    pub fn activate(path: &Path) -> SwapGuard {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 600 swapfile");
        sh("mkswap", [path]);
        sh("swapon", [path]);
        SwapGuard {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SwapGuard {
    fn drop(&mut self) {
        let (ok, _, err) = sh_status("swapoff", [&self.path]);
        if !ok {
            eprintln!("swapoff {} failed: {}", self.path.display(), err.trim());
        }
    }
}

/// A `chattr +X` flag this test set; Drop runs `chattr -X`.
pub struct ChattrGuard {
    path: PathBuf,
    flag: char,
}

impl ChattrGuard {
    pub fn set(path: &Path, flag: char) -> ChattrGuard {
        sh(
            "chattr",
            [OsStr::new(&format!("+{flag}")), path.as_os_str()],
        );
        ChattrGuard {
            path: path.to_path_buf(),
            flag,
        }
    }
}

impl Drop for ChattrGuard {
    fn drop(&mut self) {
        let (ok, _, err) = sh_status(
            "chattr",
            [
                OsStr::new(&format!("-{}", self.flag)),
                self.path.as_os_str(),
            ],
        );
        if !ok {
            eprintln!(
                "chattr -{} {} failed: {}",
                self.flag,
                self.path.display(),
                err.trim()
            );
        }
    }
}

/// A filesystem this test froze (`fsfreeze -f`); Drop thaws it, so that a
/// failing test never leaves a frozen filesystem (whose unmount would hang).
/// Declare it after the LoopImage, so it is dropped first.
pub struct FreezeGuard {
    mount_point: PathBuf,
    frozen: bool,
}

impl FreezeGuard {
    pub fn freeze(mount_point: &Path) -> FreezeGuard {
        sh("fsfreeze", [OsStr::new("-f"), mount_point.as_os_str()]);
        FreezeGuard {
            mount_point: mount_point.to_path_buf(),
            frozen: true,
        }
    }

    pub fn thaw(&mut self) {
        if std::mem::take(&mut self.frozen) {
            sh("fsfreeze", [OsStr::new("-u"), self.mount_point.as_os_str()]);
        }
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if !self.frozen {
            return;
        }
        let (ok, _, err) = sh_status("fsfreeze", [OsStr::new("-u"), self.mount_point.as_os_str()]);
        if !ok {
            eprintln!(
                "fsfreeze -u {} failed: {}",
                self.mount_point.display(),
                err.trim()
            );
        }
    }
}
