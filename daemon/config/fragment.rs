//! Fragments: what one source says, in the shape of the file but unchecked.
//! A source is one TOML file or one `DEFRAGD__SECTION__KEY` environment
//! variable. Every field is optional, so that a drop-in can set a single
//! key. Every leaf is a [`Raw`] value that accepts anything, so that a value
//! of the wrong type is reported by `validate` together with what is
//! allowed, instead of as a bare serde type error; serde here only rejects
//! unknown keys and sections of the wrong shape.
//!
//! This module must not decide what is valid: that is `validate`'s job.

use std::fmt;

use ::config::{Environment, File, FileFormat, Map, Source, Value, ValueKind};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{printable, ConfigError, Origin};

/// The prefix of the environment variables that override the files.
pub const ENV_PREFIX: &str = "DEFRAGD";
/// Between the prefix, the section and the key: `DEFRAGD__THROTTLE__CHUNK_MIB`.
pub const ENV_SEPARATOR: &str = "__";

/// One value as a source wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Raw>),
    /// A table where a single value belongs; its contents do not matter,
    /// as it is always an error.
    Table,
}

/// How a value is shown in an error: as TOML would write it.
impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::Float(x) if x.is_nan() => write!(f, "nan"),
            // Debug keeps the ".0" of a whole float: "1.0" explains why a
            // whole number was refused.
            Raw::Float(x) => write!(f, "{x:?}"),
            Raw::Str(s) => write!(f, "{}", quote(s)),
            Raw::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Raw::Table => write!(f, "{{ ... }}"),
        }
    }
}

/// A TOML basic string: the form `render` writes and errors quote.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // TOML allows no other control character (nor DEL) in a string.
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        // Beyond every range defragd accepts; the float keeps it out of range.
        Ok(i128::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Raw::Table)
    }
}

/// One source, shaped like defragd.toml.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of defragd settings")]
pub struct Fragment {
    pub state_dir: Option<Raw>,
    /// A source that sets it replaces the whole list.
    #[serde(default, deserialize_with = "filesystem_list")]
    pub filesystem: Option<Vec<FilesystemFragment>>,
    pub throttle: Option<ThrottleFragment>,
    pub policy: Option<PolicyFragment>,
    pub crawl: Option<CrawlFragment>,
    pub watch: Option<WatchFragment>,
    pub service: Option<ServiceFragment>,
    pub control: Option<ControlFragment>,
    pub metrics: Option<MetricsFragment>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[filesystem]] table")]
pub struct FilesystemFragment {
    pub path: Option<Raw>,
    pub watch: Option<Raw>,
    pub medium: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [throttle] table")]
pub struct ThrottleFragment {
    pub max_mib_per_s: Option<Raw>,
    pub chunk_mib: Option<Raw>,
    pub pressure_percent: Option<Raw>,
    pub min_mib_per_s: Option<Raw>,
    pub windows: Option<Raw>,
    pub start_mib_per_s: Option<Raw>,
    pub write_budget_ssd: Option<Raw>,
    pub write_budget_hdd: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [policy] table")]
pub struct PolicyFragment {
    pub quiet_period: Option<Raw>,
    pub min_size: Option<Raw>,
    pub min_excess_extents: Option<Raw>,
    pub min_score: Option<Raw>,
    pub exclude: Option<Raw>,
    pub reserve_percent: Option<Raw>,
    pub convert_block_mapped: Option<Raw>,
    pub xfs_swapext_without_rmapbt: Option<Raw>,
    pub btrfs_extent_thresh: Option<Raw>,
    pub btrfs_nocow: Option<Raw>,
    pub boundary_ms_hdd: Option<Raw>,
    pub boundary_ms_ssd: Option<Raw>,
    pub min_saved_ms_per_gib: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [crawl] table")]
pub struct CrawlFragment {
    pub interval: Option<Raw>,
    pub files_per_second: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [watch] table")]
pub struct WatchFragment {
    pub max_watches: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [service] table")]
pub struct ServiceFragment {
    pub log_level: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [control] table")]
pub struct ControlFragment {
    pub socket: Option<Raw>,
    pub group: Option<Raw>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [metrics] table")]
pub struct MetricsFragment {
    pub listen: Option<Raw>,
}

/// `filesystem` as a list of tables, with an error that says so when it is
/// something else: the likely mistake is `DEFRAGD__FILESYSTEM=/srv`.
fn filesystem_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<FilesystemFragment>>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<FilesystemFragment>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "a list of [[filesystem]] tables (in the environment: '[{{ path = \"/srv\" }}]')"
            )
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(entry) = seq.next_element()? {
                list.push(entry);
            }
            Ok(list)
        }
    }

    deserializer.deserialize_seq(ListVisitor).map(Some)
}

/// The fragment of one TOML file's text; the first error when it has any.
#[cfg(test)]
pub fn from_toml(text: &str, origin: &Origin) -> Result<Fragment, ConfigError> {
    let (fragment, mut errors) = from_toml_reporting_all(text, origin);
    match fragment {
        Some(fragment) if errors.is_empty() => Ok(fragment),
        _ if !errors.is_empty() => Err(errors.remove(0)),
        _ => unreachable!("no fragment is always reported with an error"),
    }
}

/// The fragment of one TOML file's text, and every error in it: unknown
/// keys and tables are reported and left out, so that one typo does not
/// hide the rest of the file (whose values `validate` then checks). No
/// fragment when the file is not TOML or a section has the wrong shape.
pub fn from_toml_reporting_all(
    text: &str,
    origin: &Origin,
) -> (Option<Fragment>, Vec<ConfigError>) {
    // `collect` on the source, not a `Config` builder: the builder would
    // read each top-level key as a path expression, so a quoted key such as
    // "x[99999999]" would grow a huge array.
    let mut table = match File::from_str(text, FileFormat::Toml).collect() {
        Ok(table) => table,
        Err(error) => return (None, vec![syntax_error(origin, &error)]),
    };
    let mut errors = Vec::new();
    // Each round either succeeds, or drops one unknown key, or stops.
    loop {
        let value = Value::new(None, ValueKind::Table(table.clone()));
        let (section, message) = match Fragment::deserialize(value) {
            Ok(fragment) => return (Some(fragment), errors),
            Err(error) => split_error(error),
        };
        let dropped = unknown_field(&message)
            .is_some_and(|(field, _)| remove_key(&mut table, section.as_deref(), field));
        errors.push(to_config_error(origin, section, &message));
        // Every round copies the table: past a screenful of unknown keys
        // the file is refused without looking for more.
        if !dropped || errors.len() >= MAX_UNKNOWN_KEYS {
            return (None, errors);
        }
    }
}

/// The most unknown keys reported from one file.
const MAX_UNKNOWN_KEYS: usize = 50;

/// Removes `field` from the table at `section` ("throttle",
/// "filesystem[1]"; None for the top level); false when it is not there.
fn remove_key(table: &mut Map<String, Value>, section: Option<&str>, field: &str) -> bool {
    let mut current = table;
    for segment in section.into_iter().flat_map(|s| s.split('.')) {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix(']').and_then(|i| i.parse::<usize>().ok()),
            ),
            None => (segment, None),
        };
        let Some(value) = current.get_mut(name) else {
            return false;
        };
        let value = match index {
            None => value,
            Some(i) => match &mut value.kind {
                ValueKind::Array(items) => match items.get_mut(i) {
                    Some(item) => item,
                    None => return false,
                },
                _ => return false,
            },
        };
        current = match &mut value.kind {
            ValueKind::Table(inner) => inner,
            _ => return false,
        };
    }
    current.remove(field).is_some()
}

/// The fragment of one environment variable, or `None` when the variable is
/// not one of defragd's (or is empty, which reads as unset, as in a shell).
pub fn from_env(name: &str, value: &str) -> Result<Option<Fragment>, ConfigError> {
    let origin = Origin::Env(name.to_owned());
    let single: Map<String, String> = [(name.to_owned(), value.to_owned())].into();
    // The crate's Environment source does the key mapping (prefix, `__`,
    // lower case) and turns "32" or "true" into numbers and booleans.
    let collected = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .ignore_empty(true)
        .source(Some(single))
        .collect()
        .map_err(|error| ConfigError::Unreadable {
            origin: origin.clone(),
            reason: printable(&error.to_string()),
        })?;
    let Some((key, mut parsed)) = collected.into_iter().next() else {
        return Ok(None);
    };
    // Lists (policy.exclude, throttle.windows, even [[filesystem]]) are
    // written as a TOML array: no separator character is safe inside glob
    // patterns and paths.
    if value.trim_start().starts_with('[') && !NEVER_LISTS.contains(&key.as_str()) {
        parsed = toml_array(value, &origin)?;
    }
    deserialize(nest(&key, parsed), &origin).map(Some)
}

/// Keys whose values may start with `[` without being a list: an IPv6
/// address such as "[::1]:9321" is a string.
const NEVER_LISTS: [&str; 1] = ["metrics.listen"];

/// `throttle.chunk_mib = v` as the table `{ throttle: { chunk_mib: v } }`.
fn nest(dotted_key: &str, value: Value) -> Map<String, Value> {
    let mut segments = dotted_key.rsplit('.');
    let last = segments.next().unwrap_or_default().to_owned();
    let mut table: Map<String, Value> = [(last, value)].into();
    for segment in segments {
        let inner = Value::new(None, ValueKind::Table(table));
        table = [(segment.to_owned(), inner)].into();
    }
    table
}

/// An environment value such as `["/srv/scratch/**", "*.tmp"]`, read as
/// the TOML array it is written as.
fn toml_array(text: &str, origin: &Origin) -> Result<Value, ConfigError> {
    let not_an_array = |message: String| ConfigError::Syntax {
        origin: origin.clone(),
        message,
    };
    let mut table = File::from_str(&format!("value = {text}"), FileFormat::Toml)
        .collect()
        .map_err(|error| not_an_array(condense_toml_error(&error.to_string())))?;
    // A newline in the value could smuggle in more keys; allow none.
    match table.remove("value") {
        Some(value) if table.is_empty() => Ok(value),
        _ => Err(not_an_array(
            "a value that starts with `[` must be one TOML array, like [\"a\", \"b\"]".into(),
        )),
    }
}

fn deserialize(table: Map<String, Value>, origin: &Origin) -> Result<Fragment, ConfigError> {
    Fragment::deserialize(Value::new(None, ValueKind::Table(table)))
        .map_err(|error| shape_error(origin, error))
}

fn syntax_error(origin: &Origin, error: &::config::ConfigError) -> ConfigError {
    ConfigError::Syntax {
        origin: origin.clone(),
        message: condense_toml_error(&error.to_string()),
    }
}

/// The TOML parser's message on one line: "line 3, column 9: invalid
/// string" instead of a header, a quoted excerpt with a caret, and the
/// message. The excerpt is the user's text and may be anything. Some
/// errors ("recursion limit") come without a header or an excerpt.
fn condense_toml_error(text: &str) -> String {
    let mut place = None;
    let mut message = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match line.strip_prefix("TOML parse error at ") {
            Some(at) if i == 0 => place = Some(at.trim()),
            _ if is_excerpt_line(line) || line.trim().is_empty() => {}
            _ => message.push(line.trim()),
        }
    }
    let message = message.join("; ");
    printable(&match place {
        Some(place) => format!("{place}: {message}"),
        None => message,
    })
}

/// An excerpt line of the parser's message: "  |", "3 | text", "  |   ^".
fn is_excerpt_line(line: &str) -> bool {
    match line.split_once('|') {
        Some((gutter, _)) => gutter.trim().chars().all(|c| c.is_ascii_digit()),
        None => false,
    }
}

/// A serde error (an unknown key or a section of the wrong shape) as one
/// of ours. The crate gives the path of the section it happened in as
/// `key` ("throttle", "filesystem[1]"), and serde names the field in the
/// message.
fn shape_error(origin: &Origin, error: ::config::ConfigError) -> ConfigError {
    let (section, message) = split_error(error);
    to_config_error(origin, section, &message)
}

/// The section a serde error happened in, and its message.
fn split_error(error: ::config::ConfigError) -> (Option<String>, String) {
    use ::config::ConfigError as E;
    let (section, message) = match error {
        E::At { error, key, .. } => (key, error.to_string()),
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key,
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        other => (None, other.to_string()),
    };
    (section.filter(|key| !key.is_empty()), message)
}

fn to_config_error(origin: &Origin, section: Option<String>, message: &str) -> ConfigError {
    if let Some((field, expected)) = unknown_field(message) {
        let key = match &section {
            Some(section) => format!("{section}.{field}"),
            None => field.to_owned(),
        };
        return ConfigError::UnknownKey {
            origin: origin.clone(),
            key: printable(&key),
            expected: printable(expected),
        };
    }
    ConfigError::Shape {
        origin: origin.clone(),
        key: printable(section.as_deref().unwrap_or("(top level)")),
        message: printable(message),
    }
}

/// ("max_mib_per_sec", "expected one of ...") from serde's message
/// "unknown field `max_mib_per_sec`, expected one of ...".
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    message.strip_prefix("unknown field `")?.split_once("`, ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::File("/etc/defragd/defragd.toml".into())
    }

    #[test]
    fn leaves_keep_any_type_for_validation() {
        let fragment = from_toml(
            "state_dir = 5\n[throttle]\nchunk_mib = \"x\"\n[policy]\nexclude = [\"*.tmp\", 3]\nmin_score = { a = 1 }\n",
            &origin(),
        )
        .unwrap();
        assert_eq!(fragment.state_dir, Some(Raw::Int(5)));
        let throttle = fragment.throttle.unwrap();
        assert_eq!(throttle.chunk_mib, Some(Raw::Str("x".into())));
        let policy = fragment.policy.unwrap();
        assert_eq!(
            policy.exclude,
            Some(Raw::List(vec![Raw::Str("*.tmp".into()), Raw::Int(3)]))
        );
        assert_eq!(policy.min_score, Some(Raw::Table));
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let error = from_toml("[throttle]\nmax_mib_per_sec = 3\n", &origin()).unwrap_err();
        let ConfigError::UnknownKey { key, expected, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(key, "throttle.max_mib_per_sec");
        assert!(expected.contains("max_mib_per_s"), "{expected}");

        let error = from_toml("stat_dir = \"/x\"\n", &origin()).unwrap_err();
        assert!(
            matches!(&error, ConfigError::UnknownKey { key, .. } if key == "stat_dir"),
            "{error:?}"
        );

        let error = from_toml(
            "[[filesystem]]\npath = \"/a\"\n[[filesystem]]\npaht = \"/b\"\n",
            &origin(),
        )
        .unwrap_err();
        assert!(
            matches!(&error, ConfigError::UnknownKey { key, .. } if key == "filesystem[1].paht"),
            "{error:?}"
        );
    }

    #[test]
    fn section_of_the_wrong_shape_is_named() {
        let error = from_toml("throttle = 5\n", &origin()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/etc/defragd/defragd.toml: throttle: invalid type: integer `5`, expected a [throttle] table"
        );
        let error = from_toml("filesystem = \"/srv\"\n", &origin()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/etc/defragd/defragd.toml: filesystem: invalid type: string \"/srv\", \
             expected a list of [[filesystem]] tables (in the environment: '[{ path = \"/srv\" }]')"
        );
    }

    #[test]
    fn malformed_toml_names_line_and_column_on_one_line() {
        let error = from_toml(
            "state_dir = \"/x\"\n[throttle]\nchunk_mib = = 3\n",
            &origin(),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ConfigError::Syntax { .. }), "{text}");
        assert!(
            text.starts_with("/etc/defragd/defragd.toml: not valid TOML: line 3, column"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn parser_errors_without_a_place_are_kept() {
        let deep = format!("a = {}", "[".repeat(100_000));
        let error = from_toml(&deep, &origin()).unwrap_err();
        assert!(error.to_string().contains("recursion"), "{error}");
        let error = from_toml("a = 99999999999999999999\n", &origin()).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("not valid TOML: number too large to fit in target type"),
            "{error}"
        );
    }

    #[test]
    fn environment_variables_map_to_keys_and_types() {
        let fragment = from_env("DEFRAGD__THROTTLE__MAX_MIB_PER_S", "32")
            .unwrap()
            .unwrap();
        assert_eq!(fragment.throttle.unwrap().max_mib_per_s, Some(Raw::Int(32)));

        let fragment = from_env("DEFRAGD__STATE_DIR", "/x").unwrap().unwrap();
        assert_eq!(fragment.state_dir, Some(Raw::Str("/x".into())));

        let fragment = from_env("DEFRAGD__POLICY__EXCLUDE", r#"["/a/{b,c}/**", "*.tmp"]"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            fragment.policy.unwrap().exclude,
            Some(Raw::List(vec![
                Raw::Str("/a/{b,c}/**".into()),
                Raw::Str("*.tmp".into())
            ]))
        );

        let fragment = from_env("DEFRAGD__THROTTLE__WINDOWS", r#"["01:00-05:00"]"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            fragment.throttle.unwrap().windows,
            Some(Raw::List(vec![Raw::Str("01:00-05:00".into())]))
        );

        let fragment = from_env("DEFRAGD__FILESYSTEM", r#"[{ path = "/srv" }]"#)
            .unwrap()
            .unwrap();
        assert_eq!(fragment.filesystem.unwrap().len(), 1);

        // "true" and "false" in any case are booleans; anything else is left
        // as written, for `validate` to refuse.
        for (value, raw) in [
            ("true", Raw::Bool(true)),
            ("FALSE", Raw::Bool(false)),
            ("yes", Raw::Str("yes".into())),
            ("1", Raw::Int(1)),
        ] {
            let fragment = from_env("DEFRAGD__POLICY__CONVERT_BLOCK_MAPPED", value)
                .unwrap()
                .unwrap();
            assert_eq!(fragment.policy.unwrap().convert_block_mapped, Some(raw));
        }
    }

    #[test]
    fn an_ipv6_listen_address_is_not_a_list() {
        let fragment = from_env("DEFRAGD__METRICS__LISTEN", "[::1]:9321")
            .unwrap()
            .unwrap();
        assert_eq!(
            fragment.metrics.unwrap().listen,
            Some(Raw::Str("[::1]:9321".into()))
        );
        let fragment = from_env("DEFRAGD__CONTROL__GROUP", "defragctl")
            .unwrap()
            .unwrap();
        assert_eq!(
            fragment.control.unwrap().group,
            Some(Raw::Str("defragctl".into()))
        );
    }

    #[test]
    fn other_and_empty_variables_are_not_ours() {
        assert_eq!(from_env("DEFRAGD_LOG", "debug").unwrap(), None);
        assert_eq!(from_env("PATH", "/usr/bin").unwrap(), None);
        assert_eq!(from_env("DEFRAGD__STATE_DIR", "").unwrap(), None);
    }

    #[test]
    fn environment_array_cannot_smuggle_keys() {
        let error =
            from_env("DEFRAGD__POLICY__EXCLUDE", "[\"a\"]\nstate_dir = \"/x\"").unwrap_err();
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
        let error = from_env("DEFRAGD__POLICY__EXCLUDE", "[\"a\"").unwrap_err();
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
    }

    #[test]
    fn unknown_environment_key_is_named() {
        let error = from_env("DEFRAGD__THROTTLE__MAX_MIB", "3").unwrap_err();
        assert!(
            matches!(&error, ConfigError::UnknownKey { key, origin: Origin::Env(name), .. }
                if key == "throttle.max_mib" && name == "DEFRAGD__THROTTLE__MAX_MIB"),
            "{error:?}"
        );
    }

    #[test]
    fn quoting_escapes_what_toml_requires() {
        assert_eq!(quote("a\"b\\c\n\u{7f}"), r#""a\"b\\c\n\u007F""#);
    }
}
