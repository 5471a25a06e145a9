//! A filesystem's UUID: with an inode number and generation, it names a
//! file for good. Every backend reads it from its own superblock; above the
//! seam it is this type, and its text (lowercase, 8-4-4-4-12) is what the
//! store keeps and the control socket and logs show.

use std::fmt;
use std::str::FromStr;

/// A filesystem's UUID, the 16 bytes as its superblock holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FsUuid(pub [u8; 16]);

impl fmt::Display for FsUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FsUuid {
    /// A UUID named by a short tag, for tests: the tag's bytes, then zeros.
    #[cfg(test)]
    pub fn for_test(tag: &str) -> FsUuid {
        let mut bytes = [0u8; 16];
        for (b, t) in bytes.iter_mut().zip(tag.bytes()) {
            *b = t;
        }
        FsUuid(bytes)
    }
}

/// Text that is not a UUID in the 8-4-4-4-12 form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a filesystem UUID (32 hexadecimal digits as 8-4-4-4-12)")]
pub struct BadUuid(pub String);

impl FromStr for FsUuid {
    type Err = BadUuid;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadUuid(text.chars().take(64).collect());
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let digits: String = groups.concat();
        // from_str_radix alone would take a sign.
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = digits.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(FsUuid(bytes))
    }
}

/// As its text, wherever it is serialized (a store row's file identity,
/// the control socket's replies).
impl serde::Serialize for FsUuid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FsUuid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let uuid = FsUuid([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba,
            0xdc, 0xfe,
        ]);
        let text = uuid.to_string();
        assert_eq!(text, "01234567-89ab-cdef-1032-547698badcfe");
        assert_eq!(text.parse::<FsUuid>(), Ok(uuid));
        assert_eq!(
            "01234567-89AB-CDEF-1032-547698BADCFE".parse::<FsUuid>(),
            Ok(uuid)
        );
    }

    #[test]
    fn rejects_what_is_not_a_uuid() {
        for text in [
            "",
            "ext4",
            "01234567-89ab-cdef-1032-547698badcf",
            "0123456789abcdef1032547698badcfe",
            "01234567-89ab-cdef-1032-547698badcfg",
            "+1234567-89ab-cdef-1032-547698badcfe",
            "01234567-89ab-cdef-1032-5476é8badcf",
        ] {
            assert!(text.parse::<FsUuid>().is_err(), "{text}");
        }
    }
}
