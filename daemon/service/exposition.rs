//! Serves the metrics in the Prometheus text format over HTTP, on a unix
//! socket or a loopback TCP port (`[metrics] listen`). One GET at a time per
//! connection, answered and closed; a slow or hostile client is cut off.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::config::MetricsListen;

use super::shared::Shared;

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Listener {
    /// The listener, its path, and the socket file's (device, inode): the
    /// file is removed at the end only while it is still this one.
    Unix(UnixListener, PathBuf, (u64, u64)),
    Tcp(TcpListener),
}

/// Binds the metrics endpoint; errors say what to fix.
pub fn bind(listen: &MetricsListen) -> Result<Listener, String> {
    match listen {
        MetricsListen::Unix(path) => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            clear_stale(path)?;
            let listener = UnixListener::bind(path).map_err(|e| {
                format!(
                    "cannot serve metrics on {}: {e}; fix metrics.listen",
                    path.display()
                )
            })?;
            let identity = socket_identity(path).unwrap_or_default();
            Ok(Listener::Unix(listener, path.clone(), identity))
        }
        MetricsListen::Tcp(addr) => {
            let std_listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}; fix metrics.listen"))?;
            std_listener
                .set_nonblocking(true)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            let listener = TcpListener::from_std(std_listener)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            Ok(Listener::Tcp(listener))
        }
    }
}

/// Answers scrapes until `stop` turns true.
pub async fn serve(listener: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = accept(&listener) => match accepted {
                Ok(Conn::Unix(stream)) => { tokio::spawn(answer(stream, Arc::clone(&shared))); }
                Ok(Conn::Tcp(stream)) => { tokio::spawn(answer(stream, Arc::clone(&shared))); }
                Err(e) => {
                    tracing::debug!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Listener::Unix(_, path, identity) = &listener {
        // Another process may have taken the path since: its socket stays.
        if socket_identity(path) == Some(*identity) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket file left by an earlier run, which would make bind
/// fail, but never one that something still answers on: that is a live
/// process's (most likely another defragd with the same metrics.listen).
fn clear_stale(path: &Path) -> Result<(), String> {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Ok(());
    }
    match crate::control::server::someone_listens(path) {
        Ok(false) => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Ok(true) => Err(format!(
            "cannot serve metrics on {}: another process listens there (another defragd \
             seems to be running); stop it, or give this one another metrics.listen",
            path.display()
        )),
        Err(e) => Err(format!(
            "cannot serve metrics on {}: cannot tell whether another process listens \
             there: {e}",
            path.display()
        )),
    }
}

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Unix(l, ..) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Arc<Shared>) {
    let head = match tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let response = respond(&head, || shared.metrics.render());
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends an HTTP request head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The whole HTTP response to a request head.
fn respond(head: &str, body: impl FnOnce() -> String) -> String {
    let mut words = head.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics" | "/")) => ("200 OK", body()),
        (Some("GET"), Some(_)) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".to_string()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::{bind, respond, Listener};
    use crate::config::MetricsListen;

    #[tokio::test]
    async fn a_socket_someone_listens_on_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = bind(&MetricsListen::Unix(path.clone()))
            .err()
            .expect("bound over a live socket");
        assert!(err.contains("another defragd seems to be running"), "{err}");
        // The other process's socket still answers.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(other);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&MetricsListen::Unix(path.clone())).unwrap();
        assert!(matches!(listener, Listener::Unix(..)));
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn get_metrics_gets_the_text() {
        let r = respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || {
            "a 1\n".into()
        });
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\na 1\n"),
            "{r}"
        );
        assert!(r.contains("Content-Length: 4\r\n"));
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(respond("POST /metrics HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 405"));
        assert!(respond("GET /other HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 404"));
        assert!(respond("", String::new).starts_with("HTTP/1.1 405"));
    }
}
