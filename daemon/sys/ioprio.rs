//! ioprio_set(2): nix has no wrapper, so the raw syscall lives here.

use nix::errno::Errno;

use super::error::{Error, Result};

const IOPRIO_WHO_PROCESS: nix::libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_CLASS_IDLE: u32 = 3;

/// Puts the calling thread in the idle I/O class: its requests are served
/// only when no other process wants the disk.
pub fn set_current_thread_idle() -> Result<()> {
    let prio = (IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) as nix::libc::c_int;
    // SAFETY: ioprio_set takes three integers; `who = 0` is the calling thread.
    let rc = unsafe { nix::libc::syscall(nix::libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
    Errno::result(rc)
        .map(drop)
        .map_err(|errno| Error::of("ioprio_set", errno))
}
