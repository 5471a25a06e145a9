//! Durations and sizes as people write them ("30s", "24h", "64MiB"), and
//! back, in a form that parses to the same value.

use std::time::Duration;

use bytesize::ByteSize;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// "30s", "10m", "2h", "7d", "1h 30m" (humantime's syntax).
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// The shortest exact form in one unit ("30s", "15m", "24h", "7d").
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        // Not a whole number of seconds: humantime's "1s 500ms" parses back.
        return humantime::format_duration(duration).to_string();
    }
    // Days only from two on, so that a day reads "24h", as the shipped
    // file writes the crawl interval.
    if secs >= 2 * DAY && secs.is_multiple_of(DAY) {
        format!("{}d", secs / DAY)
    } else if secs != 0 && secs.is_multiple_of(HOUR) {
        format!("{}h", secs / HOUR)
    } else if secs != 0 && secs.is_multiple_of(MINUTE) {
        format!("{}m", secs / MINUTE)
    } else {
        format!("{secs}s")
    }
}

/// "1MiB", "512 KiB", "2GB" (decimal), "4096" (bytes). `None` also for a
/// size that does not fit in 64 bits, which the parser would silently cap.
pub fn parse_size(text: &str) -> Option<u64> {
    let bytes = text.trim().parse::<ByteSize>().ok()?.as_u64();
    (bytes != u64::MAX).then_some(bytes)
}

/// The largest binary unit that divides the size exactly: "64MiB", "3KiB", "1536B".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("EiB", 60),
        ("PiB", 50),
        ("TiB", 40),
        ("GiB", 30),
        ("MiB", 20),
        ("KiB", 10),
    ];
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for secs in [
            0, 1, 30, 59, 60, 90, 900, 3600, 5400, 86_400, 172_800, 604_800, 2_592_000,
        ] {
            let d = Duration::from_secs(secs);
            let text = format_duration(d);
            assert_eq!(parse_duration(&text), Some(d), "{text}");
        }
        let d = Duration::from_millis(1500);
        assert_eq!(parse_duration(&format_duration(d)), Some(d));
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn sizes_round_trip() {
        for bytes in [
            0,
            1,
            1000,
            1024,
            1536,
            1 << 20,
            64 << 20,
            3 << 30,
            (1 << 40) + 1,
        ] {
            let text = format_size(bytes);
            assert_eq!(parse_size(&text), Some(bytes), "{text}");
        }
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(3 << 10), "3KiB");
        assert_eq!(format_size(1536), "1536B");
    }

    #[test]
    fn bad_text_is_none() {
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("99999999999999999999999d"), None);
        assert_eq!(parse_size("-1MiB"), None);
        assert_eq!(parse_size("1 parsec"), None);
        assert_eq!(parse_size("999999EiB"), None);
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
    }
}
