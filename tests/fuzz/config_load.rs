//! Parts 4 and 5: `config::load_from` on random and mutated TOML and
//! environments never panics and names the source of every error; `defragd
//! config check FILE` as a process exits 0 or 78, never panics.

use super::*;

const SHIPPED_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/defragd.toml");

fn shipped() -> String {
    std::fs::read_to_string(SHIPPED_PATH).expect("read etc/defragd.toml")
}

/// Keys as `section.key` (or top-level `key`).
const KEYS: &[&str] = &[
    "state_dir",
    "throttle.max_mib_per_s",
    "throttle.chunk_mib",
    "throttle.pressure_percent",
    "throttle.windows",
    "policy.quiet_period",
    "policy.min_size",
    "policy.min_excess_extents",
    "policy.min_score",
    "policy.exclude",
    "policy.reserve_percent",
    "policy.convert_block_mapped",
    "policy.btrfs_extent_thresh",
    "policy.btrfs_nocow",
    "crawl.interval",
    "crawl.files_per_second",
    "watch.max_watches",
    "service.log_level",
    "control.socket",
    "control.group",
    "metrics.listen",
    "filesystem",
    "bogus.key",
    "throttle.bogus",
    "policy",
];

/// Values as TOML text: valid ones for some key, and everything else.
const TOML_VALUES: &[&str] = &[
    "0",
    "1",
    "64",
    "-1",
    "100000",
    "100001",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "99999999999999999999999999",
    "1.5",
    "1e308",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "true",
    "false",
    "\"\"",
    "\"30s\"",
    "\"0s\"",
    "\"7d\"",
    "\"8d\"",
    "\"1h 30m\"",
    "\"1MiB\"",
    "\"1 MB\"",
    "\"-1MiB\"",
    "\"99999999999999999999EiB\"",
    "\"info\"",
    "\"trace\"",
    "\"loud\"",
    "\"/srv\"",
    "\"relative/path\"",
    "\"/\"",
    "\"/run/defragd/control.sock\"",
    "\"unix:/run/m.sock\"",
    "\"127.0.0.1:9321\"",
    "\"[::1]:9321\"",
    "\"0.0.0.0:80\"",
    "\"wheel\"",
    "\"no-such-group-xyz\"",
    "\"4242\"",
    "[]",
    "[\"01:00-05:00\"]",
    "[\"22:00-06:00\", \"12:00-13:00\"]",
    "[\"24:00-01:00\"]",
    "[\"1:00-2:00\"]",
    "[\"01:00-01:00\"]",
    "[\"*.tmp\", \"/srv/**\"]",
    "[\"[\"]",
    "[\"relative/**\"]",
    "[1, 2]",
    "[[]]",
    "{}",
    "{ path = \"/srv\" }",
    "[{ path = \"/srv\", watch = [\"/srv/db\"] }]",
    "[{ path = \"/srv\" }, { path = \"/srv\" }]",
    "[{ path = 5 }]",
    "[{ nope = 1 }]",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "'''multi\nline'''",
    "\"\\u0000\"",
    "\"\\u001b[31mred\"",
    "\"a\\nb\"",
];

/// A value as TOML text.
fn toml_values() -> BoxedStrategy<String> {
    prop_oneof![
        7 => select(TOML_VALUES).prop_map(str::to_string),
        1 => random_text(40).prop_map(|t| format!("\"{}\"", t.replace(['"', '\\'], ""))),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => vec(select(TOML_VALUES), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
    .boxed()
}

/// Text with a bit of everything: ASCII, controls, quotes, unicode.
pub(super) fn random_text(max: usize) -> BoxedStrategy<String> {
    let char = prop_oneof![
        7 => proptest::char::range('a', 'z'),
        1 => proptest::char::range('\0', '\u{1f}'),
        1 => select(vec!['"', '\\', '\'', '[', ']', '=', '#', '.', '\n', '\u{7f}']),
        1 => select(vec!['é', '€', '𝄞', '\u{202e}', '\u{feff}', 'ß']),
    ];
    vec(char, 0..=max).prop_map(String::from_iter).boxed()
}

/// Section headers of a random document ("[filesystem]" in brackets makes
/// the [[filesystem]] header).
const SECTIONS: &[&str] = &[
    "",
    "throttle",
    "policy",
    "crawl",
    "watch",
    "service",
    "control",
    "metrics",
    "[filesystem]",
    "bogus",
    "throttle.sub",
    "\"quoted key\"",
];

/// Keys of a random document: the real ones, in any section, and others.
const DOCUMENT_KEYS: &[&str] = &[
    "state_dir",
    "max_mib_per_s",
    "chunk_mib",
    "pressure_percent",
    "windows",
    "quiet_period",
    "min_size",
    "min_excess_extents",
    "min_score",
    "exclude",
    "reserve_percent",
    "convert_block_mapped",
    "btrfs_extent_thresh",
    "btrfs_nocow",
    "interval",
    "files_per_second",
    "max_watches",
    "log_level",
    "socket",
    "group",
    "listen",
    "path",
    "watch",
    "filesystem",
    "\"x[99999999]\"",
    "a.b.c",
    "typo_key",
];

/// A random TOML-ish document built from sections, keys and values.
fn random_toml() -> BoxedStrategy<String> {
    let line = (select(DOCUMENT_KEYS), toml_values());
    vec((select(SECTIONS), vec(line, 0..=5)), 0..=8)
        .prop_map(|sections| {
            let mut out = String::new();
            for (section, lines) in sections {
                if !section.is_empty() {
                    out.push_str(&format!("[{section}]\n"));
                }
                for (key, value) in lines {
                    out.push_str(&format!("{key} = {value}\n"));
                }
            }
            out
        })
        .boxed()
}

/// One byte of a text changed, as a flipped bit or a bad copy would. The
/// `Index` picks a place in the text whatever its length.
#[derive(Clone, Copy, Debug)]
pub(super) enum ByteEdit {
    Set(Index, u8),
    Xor(Index, u8),
    Insert(Index, u8),
    Remove(Index),
}

impl ByteEdit {
    pub(super) fn apply(self, bytes: &mut Vec<u8>) {
        // A place in 0..=len: an insert may append; the others need a byte.
        let len = bytes.len();
        let at = |i: Index| i.index(len + 1);
        match self {
            ByteEdit::Set(i, b) => {
                if let Some(byte) = bytes.get_mut(at(i)) {
                    *byte = b;
                }
            }
            ByteEdit::Xor(i, b) => {
                if let Some(byte) = bytes.get_mut(at(i)) {
                    *byte ^= b;
                }
            }
            ByteEdit::Insert(i, b) => bytes.insert(at(i), b),
            ByteEdit::Remove(i) => {
                if at(i) < len {
                    bytes.remove(at(i));
                }
            }
        }
    }
}

/// One change to the shipped file. Lines are numbered in the file as the
/// edits before left it; a number past its end means the last line (or,
/// to insert, the end).
#[derive(Clone, Debug)]
enum Edit {
    Remove(usize),
    Duplicate(usize),
    /// Uncomment a line (enables the [[filesystem]] example).
    Uncomment(usize),
    /// A new value for a `key = value` line.
    Revalue(usize, String),
    /// A `key = value` line for any key, under its section's header.
    Insert(usize, &'static str, String),
    Swap(usize, usize),
    /// A random document after the end.
    Append(String),
    /// Cut anywhere (a half-written file).
    Truncate(Index),
    /// A byte of a line flipped, inserted or deleted.
    Byte(usize, ByteEdit),
    /// A line of random text.
    InsertText(usize, String),
    /// A line's value in another type: a number quoted, a string bare.
    Retype(usize),
}

fn edits(lines: usize) -> BoxedStrategy<Edit> {
    let line = 0..lines.max(1);
    let byte = prop_oneof![
        (any::<Index>(), 0..7u32).prop_map(|(at, bit)| ByteEdit::Xor(at, 1 << bit)),
        (any::<Index>(), 0..0x80u8).prop_map(|(at, b)| ByteEdit::Insert(at, b)),
        any::<Index>().prop_map(ByteEdit::Remove),
    ];
    prop_oneof![
        1 => line.clone().prop_map(Edit::Remove),
        1 => line.clone().prop_map(Edit::Duplicate),
        1 => line.clone().prop_map(Edit::Uncomment),
        1 => (line.clone(), toml_values()).prop_map(|(i, v)| Edit::Revalue(i, v)),
        1 => (line.clone(), select(KEYS), toml_values()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
        1 => (line.clone(), line.clone()).prop_map(|(i, j)| Edit::Swap(i, j)),
        1 => random_toml().prop_map(Edit::Append),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (line.clone(), byte).prop_map(|(i, e)| Edit::Byte(i, e)),
        1 => (line.clone(), random_text(60)).prop_map(|(i, t)| Edit::InsertText(i, t)),
        2 => line.prop_map(Edit::Retype),
    ]
    .boxed()
}

/// `text` changed by `edits`, with or without a newline at the end.
fn edited(text: &str, edits: &[Edit], newline: bool) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for edit in edits {
        // The line numbered `i`, if the file has any; the place to insert
        // before it.
        let line = |i: usize| lines.len().checked_sub(1).map(|last| i.min(last));
        let place = |i: usize| i.min(lines.len());
        match edit {
            Edit::Remove(i) => {
                if let Some(i) = line(*i) {
                    lines.remove(i);
                }
            }
            Edit::Duplicate(i) => {
                if let Some(i) = line(*i) {
                    lines.insert(i, lines[i].clone());
                }
            }
            Edit::Uncomment(i) => {
                if let Some(i) = line(*i) {
                    lines[i] = lines[i].trim_start_matches(['#', ' ']).to_string();
                }
            }
            Edit::Revalue(i, value) => {
                if let Some(i) = line(*i) {
                    if let Some((key, _)) = lines[i].split_once(" = ") {
                        lines[i] = format!("{key} = {value}");
                    }
                }
            }
            Edit::Insert(i, key, value) => {
                let new = match key.split_once('.') {
                    Some((section, key)) => format!("[{section}]\n{key} = {value}"),
                    None => format!("{key} = {value}"),
                };
                lines.insert(place(*i), new);
            }
            Edit::Swap(i, j) => {
                if let (Some(i), Some(j)) = (line(*i), line(*j)) {
                    lines.swap(i, j);
                }
            }
            Edit::Append(document) => lines.push(document.clone()),
            Edit::Truncate(cut) => {
                let text = lines.join("\n");
                let cut = cut.index(text.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|c| text.is_char_boundary(*c))
                    .unwrap_or(0);
                lines = text[..cut].lines().map(str::to_string).collect();
            }
            Edit::Byte(i, change) => {
                if let Some(i) = line(*i) {
                    let mut bytes = lines[i].clone().into_bytes();
                    change.apply(&mut bytes);
                    lines[i] = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            Edit::InsertText(i, text) => lines.insert(place(*i), text.clone()),
            Edit::Retype(i) => {
                if let Some(i) = line(*i) {
                    if let Some((key, value)) = lines[i].clone().split_once(" = ") {
                        let value = value.trim();
                        lines[i] = match value.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                            Some(inner) => format!("{key} = {inner}"),
                            None => format!("{key} = \"{value}\""),
                        };
                    }
                }
            }
        }
    }
    let mut out = lines.join("\n");
    if newline {
        out.push('\n');
    }
    out
}

/// A config file: the shipped one, the shipped one edited, a random
/// document, or random bytes (not even UTF-8).
#[derive(Clone, Debug)]
enum ConfigText {
    Shipped,
    Edited { edits: Vec<Edit>, newline: bool },
    Document(String),
    Bytes(Vec<u8>),
}

impl ConfigText {
    fn bytes(&self, shipped: &str) -> Vec<u8> {
        match self {
            ConfigText::Shipped => shipped.as_bytes().to_vec(),
            ConfigText::Edited { edits, newline } => edited(shipped, edits, *newline).into_bytes(),
            ConfigText::Document(text) => text.as_bytes().to_vec(),
            ConfigText::Bytes(bytes) => bytes.clone(),
        }
    }
}

/// Config files; `lines`: the shipped file's.
fn config_texts(lines: usize) -> BoxedStrategy<ConfigText> {
    let edited = (vec(edits(lines), 1..=3), proptest::bool::weighted(0.75))
        .prop_map(|(edits, newline)| ConfigText::Edited { edits, newline });
    prop_oneof![
        1 => Just(ConfigText::Shipped),
        6 => edited,
        2 => random_toml().prop_map(ConfigText::Document),
        1 => vec(any::<u8>(), 0..300).prop_map(ConfigText::Bytes),
    ]
    .boxed()
}

/// The environment variable name of a key.
fn env_name(key: &str) -> String {
    format!("DEFRAGD__{}", key.replace('.', "__").to_uppercase())
}

/// Environments: none, or a few DEFRAGD__ variables (and a few others)
/// with good and bad values.
fn environments() -> BoxedStrategy<Vec<(String, String)>> {
    let name = prop_oneof![
        3 => select(KEYS).prop_map(env_name),
        1 => select(KEYS).prop_map(|k| env_name(k).to_lowercase()),
        1 => Just("DEFRAGD__".to_string()),
        1 => Just("DEFRAGD____THROTTLE".to_string()),
        1 => random_text(12).prop_map(|t| format!("DEFRAGD__{t}")),
        1 => Just("DEFRAGD_LOG".to_string()),
        1 => Just("PATH".to_string()),
        1 => Just("DEFRAGD__THROTTLE__CHUNK_MIB__EXTRA".to_string()),
    ];
    let broken = vec![
        "[",
        "[[",
        "]",
        "[\"a\", 1]",
        "[{ path = \"/srv\" }]",
        "[1,",
        "{}",
        "\u{0}",
    ];
    let value = prop_oneof![
        2 => toml_values().prop_map(|v| v.trim_matches('"').to_string()),
        1 => random_text(30),
        1 => Just(String::new()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => select(broken).prop_map(str::to_string),
    ];
    let variable = (name, value);
    prop_oneof![
        1 => Just(Vec::new()),
        1 => vec(variable.clone(), 1..=1),
        2 => vec(variable, 1..=6),
    ]
    .boxed()
}

/// Whether every error names its source and is one line. `sources`: the
/// origins the load could have read.
fn check_errors(errors: &ConfigErrors, sources: &[Origin]) -> Vec<String> {
    let mut bad = Vec::new();
    if errors.0.is_empty() {
        bad.push("an Err with no errors in it".into());
    }
    let prefixes: Vec<String> = sources.iter().map(|o| format!("{o}: ")).collect();
    for e in &errors.0 {
        let msg = e.to_string();
        if msg.contains('\n') || msg.contains('\r') {
            bad.push(format!("an error message of several lines: {msg:?}"));
        }
        if !prefixes.iter().any(|p| msg.starts_with(p.as_str())) {
            bad.push(format!("an error that names no source it read: {msg:?}"));
        }
        if msg.chars().any(|c| c.is_control()) {
            bad.push(format!("a control character in an error message: {msg:?}"));
        }
    }
    bad
}

struct ConfigCase {
    dir: tempfile::TempDir,
    main: PathBuf,
    drop_in: Option<PathBuf>,
}

impl ConfigCase {
    fn new(main_text: &[u8], drop_in: Option<&[u8]>) -> ConfigCase {
        let dir = tempfile::tempdir().expect("temp dir");
        let main = dir.path().join("defragd.toml");
        std::fs::write(&main, main_text).expect("write config");
        let drop_in = drop_in.map(|text| {
            let d = dir.path().join("conf.d");
            std::fs::create_dir_all(&d).expect("mkdir conf.d");
            let p = d.join("50-fuzz.toml");
            std::fs::write(&p, text).expect("write drop-in");
            p
        });
        ConfigCase { dir, main, drop_in }
    }

    fn sources(&self, env: &[(String, String)]) -> Vec<Origin> {
        let mut v = vec![
            Origin::File(self.main.clone()),
            Origin::File(self.dir.path().join("conf.d")),
        ];
        if let Some(p) = &self.drop_in {
            v.push(Origin::File(p.clone()));
        }
        v.extend(env.iter().map(|(k, _)| Origin::Env(k.clone())));
        v
    }
}

/// What `config::load_from` is given: a main file, maybe a drop-in, an
/// environment.
#[derive(Clone, Debug)]
struct ConfigInput {
    main: ConfigText,
    drop_in: Option<ConfigText>,
    env: Vec<(String, String)>,
}

impl ConfigInput {
    fn is_malformed(&self) -> bool {
        !matches!(self.main, ConfigText::Shipped) || self.drop_in.is_some() || !self.env.is_empty()
    }

    /// The files written for it.
    fn files(&self, shipped: &str) -> ConfigCase {
        let drop_in = self.drop_in.as_ref().map(|d| d.bytes(shipped));
        ConfigCase::new(&self.main.bytes(shipped), drop_in.as_deref())
    }
}

/// Config inputs, with a drop-in at odds `drop_in`.
fn config_inputs(shipped: &str, drop_in: f64) -> impl Strategy<Value = ConfigInput> {
    let lines = shipped.lines().count();
    (
        config_texts(lines),
        proptest::option::weighted(drop_in, config_texts(lines)),
        environments(),
    )
        .prop_map(|(main, drop_in, env)| ConfigInput { main, drop_in, env })
}

#[test]
fn config_load_never_panics_and_names_the_source_of_every_error() {
    let part = Part::new("fuzz/config_load");
    let shipped = shipped();
    let (loaded, refused) = (Cell::new(0u64), Cell::new(0u64));
    part.check(cases(2500), config_inputs(&shipped, 0.25), |input| {
        let new = part.new_case(input.is_malformed());
        let count = |n: &Cell<u64>| n.set(n.get() + u64::from(new));
        let c = input.files(&shipped);
        match catch(|| config::load_from(Some(&c.main), input.env.clone())) {
            Err(p) => vec![format!("load_from panicked: {p}")],
            Ok(Ok(settings)) => {
                count(&loaded);
                // What loads renders to a file that loads the same.
                let text = settings.render();
                let again = ConfigCase::new(text.as_bytes(), None);
                match catch(|| config::load_from(Some(&again.main), Vec::new())) {
                    Ok(Ok(back)) if back == settings => Vec::new(),
                    Ok(Ok(back)) => vec![format!(
                        "rendered settings load back different: {settings:?} vs {back:?}"
                    )],
                    Ok(Err(e)) => vec![format!("rendered settings do not load ({e}):\n{text}")],
                    Err(p) => vec![format!("reloading the render panicked: {p}")],
                }
            }
            Ok(Err(errors)) => {
                count(&refused);
                check_errors(&errors, &c.sources(&input.env))
            }
        }
    });
    part.note("loaded", loaded.get());
    part.note("refused", refused.get());
    part.finish();
}

// ---------------------------------------------------------------------------
// 5. `defragd config check FILE` as a process.

#[derive(Clone, Debug)]
struct ProcessCase {
    config: ConfigInput,
    /// A DEFRAGD__ variable that is not UTF-8: the loader must refuse it,
    /// not skip it.
    non_utf8_variable: bool,
}

impl ProcessCase {
    /// The environment as a process can be given it.
    fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .config
            .env
            .iter()
            // A NUL cannot be passed to a process at all.
            .filter(|(k, v)| {
                !k.contains('\0') && !v.contains('\0') && !k.is_empty() && !k.contains('=')
            })
            // Not the process's own PATH.
            .filter(|(k, _)| k != "PATH")
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        if self.non_utf8_variable {
            env.push((
                OsString::from("DEFRAGD__THROTTLE__CHUNK_MIB"),
                OsString::from_vec(vec![b'4', 0xff, 0xfe]),
            ));
        }
        env
    }
}

#[test]
fn config_check_exits_0_or_78_and_never_panics() {
    let part = Part::new("fuzz/config_check_process");
    let shipped = shipped();
    let (valid, invalid) = (Cell::new(0u64), Cell::new(0u64));
    let inputs = (config_inputs(&shipped, 0.2), proptest::bool::weighted(0.1)).prop_map(
        |(config, non_utf8_variable)| ProcessCase {
            config,
            non_utf8_variable,
        },
    );
    part.check(cases(300), inputs, |case| {
        let env = case.env();
        let config = &case.config;
        let malformed = !matches!(config.main, ConfigText::Shipped)
            || config.drop_in.is_some()
            || !env.is_empty();
        let new = part.new_case(malformed);
        match run_config_check(&config.files(&shipped), &env) {
            Ok(code) => {
                let n = if code == 0 { &valid } else { &invalid };
                n.set(n.get() + u64::from(new));
                Vec::new()
            }
            Err(failure) => vec![failure],
        }
    });
    part.note("exit0", valid.get());
    part.note("exit78", invalid.get());
    part.finish();
}

/// Runs `defragd config check` on the files of `c`: its exit status, or
/// what is wrong with what it did.
fn run_config_check(c: &ConfigCase, env: &[(OsString, OsString)]) -> Result<i32, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defragd"));
    cmd.args(["config", "check"]).arg(&c.main);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("DEFRAGD")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = common::run_raw(&mut cmd);
    let code = out.status.code();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let describe = || {
        format!(
            "exit {code:?}; stderr {:?}",
            stderr.chars().take(600).collect::<String>()
        )
    };
    if stderr.contains("panicked") || code.is_none() {
        return Err(format!(
            "defragd config check panicked or died: {}",
            describe()
        ));
    }
    if !matches!(code, Some(0) | Some(78)) {
        return Err(format!("exit status not 0 or 78: {}", describe()));
    }
    // The same decision as in this process (all-UTF-8 environments only).
    // A process has one value per name: the last one set.
    let mut unique: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in env {
        unique.retain(|(name, _)| name != k);
        unique.push((k.clone(), v.clone()));
    }
    let utf8: Option<Vec<(String, String)>> = unique
        .iter()
        .map(|(k, v)| Some((k.clone().into_string().ok()?, v.clone().into_string().ok()?)))
        .collect();
    if let Some(env) = utf8 {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.to_ascii_uppercase().starts_with("DEFRAGD__"))
            .collect();
        let here = config::load_from(Some(&c.main), env);
        if here.is_ok() != (code == Some(0)) {
            return Err(format!(
                "the process and load_from disagree (here: {}): {}",
                if here.is_ok() { "valid" } else { "invalid" },
                describe()
            ));
        }
    } else if code != Some(78) {
        return Err(format!(
            "a non-UTF-8 DEFRAGD__ variable was accepted: {}",
            describe()
        ));
    }
    if code == Some(0) {
        // What it prints is a config that loads.
        let again = ConfigCase::new(stdout.as_bytes(), None);
        if let Err(e) = config::load_from(Some(&again.main), Vec::new()) {
            return Err(format!("its output does not load ({e}): {}", describe()));
        }
    } else if !stderr.contains("not valid") {
        return Err(format!("exit 78 without saying why: {}", describe()));
    }
    Ok(code.unwrap_or(-1))
}
