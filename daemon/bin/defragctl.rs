//! `defragctl`: controls the running defragd service over its socket under
//! /run/defragd. The service and its control socket are not built yet, so
//! for now this only says so.

use std::process::ExitCode;

/// The status defragctl exits with when the service is not running.
const EXIT_NOT_RUNNING: u8 = 3;

fn main() -> ExitCode {
    eprintln!(
        "defragctl: the defragd service is not running (its control socket, /run/defragd/control.sock, \
         is not part of this version yet); use `defragd check` and `defragd defrag` meanwhile"
    );
    ExitCode::from(EXIT_NOT_RUNNING)
}
