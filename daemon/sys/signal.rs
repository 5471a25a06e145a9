//! Signal dispositions for the command-line tools.

/// Lets SIGPIPE end the process, as it ends other Unix tools, so that
/// `defragd check | head` stops quietly once the reader has gone, instead
/// of panicking on its next line (Rust ignores SIGPIPE, and `println!`
/// panics on EPIPE). For one-shot commands only: the service must never
/// end because a client closed its socket. A `defrag` ended this way
/// mid-move is as safe as one killed: the file keeps its data.
pub fn end_on_broken_pipe() {
    // SAFETY: SIG_DFL installs no handler; nothing else in the process
    // changes SIGPIPE's disposition.
    unsafe {
        nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
    }
}
