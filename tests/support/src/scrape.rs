//! Scraping the service's metrics endpoint on its unix socket, with a plain
//! HTTP GET, as a Prometheus agent on the machine would.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The whole HTTP response to `GET /metrics`.
pub fn scrape(socket: &Path) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the metrics socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

/// The `[metrics]` table that serves them on `socket`.
pub fn metrics_config(socket: &Path) -> String {
    format!(
        "\n[metrics]\nlisten = {}\n",
        super::toml_str(&format!("unix:{}", socket.display()))
    )
}
