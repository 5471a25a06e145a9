//! Is a file an active swap file? The kernel only answers ETXTBSY, which a
//! running executable also gets; /proc/swaps tells the two apart.

use std::os::unix::fs::MetadataExt;

/// True when the file (`dev`, `ino`) is listed in /proc/swaps.
pub fn is_active_swapfile(dev: u64, ino: u64) -> bool {
    let Ok(swaps) = std::fs::read_to_string("/proc/swaps") else {
        return false;
    };
    swaps
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .any(|path| {
            // /proc/swaps escapes spaces and the like as octal (\040).
            let path = unescape_octal(path);
            std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
        })
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = u16::from(d[0] - b'0') * 64
                    + u16::from(d[1] - b'0') * 8
                    + u16::from(d[2] - b'0');
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(super::unescape_octal(r"/srv/my\040swap"), "/srv/my swap");
        assert_eq!(super::unescape_octal(r"/a\b"), r"/a\b");
        assert_eq!(super::unescape_octal(r"\777"), "\u{fffd}"); // no panic on overflow
    }
}
