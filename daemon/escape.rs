//! Untrusted text made safe for one log line or one line on a terminal:
//! file names, mount points, error text that names them, and whatever the
//! control socket answers. Anyone who can create a file can choose its name,
//! so a raw newline could forge a log or output line, and an escape sequence
//! could drive the operator's terminal.
//!
//! Control characters (C0, DEL, C1), line and paragraph separators and
//! bidirectional overrides are written as `\n`, `\t`, `\r` or `\u{..}`;
//! bytes that are not UTF-8 as `\x..`. Text with none of them is shown
//! unchanged, and escaping escaped text changes nothing. JSON output does
//! not use this: serde escapes, and scripts get the exact name.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::{self, Display, Write};
use std::os::unix::ffi::OsStrExt;

/// Text shown with its dangerous characters escaped (see the module doc).
#[derive(Debug, Clone)]
pub struct Escaped<'a>(Cow<'a, [u8]>);

/// A path, file name or string, escaped where it is shown:
/// `tracing::info!("moved {}", escaped(&path))`.
pub fn escaped<T: AsRef<OsStr> + ?Sized>(text: &T) -> Escaped<'_> {
    Escaped(Cow::Borrowed(text.as_ref().as_bytes()))
}

/// Any displayable value (an error naming a path, say), escaped.
pub fn escaped_display(value: &dyn Display) -> Escaped<'static> {
    Escaped(Cow::Owned(value.to_string().into_bytes()))
}

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_some() || f.precision().is_some() {
            // Padding counts the characters shown, escapes included.
            let mut shown = String::new();
            write_escaped(&mut shown, &self.0)?;
            return f.pad(&shown);
        }
        write_escaped(f, &self.0)
    }
}

fn write_escaped(out: &mut dyn Write, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        let text = chunk.valid();
        if text.chars().any(needs_escape) {
            for c in text.chars() {
                match c {
                    '\n' => out.write_str("\\n")?,
                    '\t' => out.write_str("\\t")?,
                    '\r' => out.write_str("\\r")?,
                    c if needs_escape(c) => write!(out, "\\u{{{:x}}}", u32::from(c))?,
                    c => out.write_char(c)?,
                }
            }
        } else {
            out.write_str(text)?;
        }
        for byte in chunk.invalid() {
            write!(out, "\\x{byte:02x}")?;
        }
    }
    Ok(())
}

/// Characters that can end a line, move the cursor, talk to the terminal,
/// or make the text read in another order than it is stored.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{061c}' | '\u{200e}' | '\u{200f}' // bidi marks
                | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidi isolates
        )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn plain_text_is_shown_unchanged() {
        assert_eq!(escaped("/srv/db/big.ibd").to_string(), "/srv/db/big.ibd");
        assert_eq!(
            escaped(Path::new("/srv/été ∕ x\\n")).to_string(),
            "/srv/été ∕ x\\n"
        );
        assert_eq!(escaped("").to_string(), "");
    }

    #[test]
    fn line_breaks_and_terminal_controls_are_escaped() {
        assert_eq!(
            escaped("a\u{1b}[2Jb\tc\r\nd\u{7}\u{7f}\u{9b}").to_string(),
            "a\\u{1b}[2Jb\\tc\\r\\nd\\u{7}\\u{7f}\\u{9b}"
        );
        assert_eq!(
            escaped("x\u{2028}y\u{202e}z").to_string(),
            "x\\u{2028}y\\u{202e}z"
        );
        let twice = escaped(&escaped("a\nb").to_string()).to_string();
        assert_eq!(twice, "a\\nb");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        let name = OsStr::from_bytes(b"/srv/\xff\xfe\n");
        assert_eq!(escaped(name).to_string(), "/srv/\\xff\\xfe\\n");
    }

    #[test]
    fn errors_are_escaped_and_padding_counts_what_is_shown() {
        let e = std::io::Error::other("cannot open /a\nforged");
        assert_eq!(escaped_display(&e).to_string(), "cannot open /a\\nforged");
        assert_eq!(format!("[{:<6}]", escaped("a\tb")), "[a\\tb  ]");
        assert_eq!(format!("[{:>3}]", escaped("ab")), "[ ab]");
    }
}
