//! Property tests over random inputs (no root needed), run under proptest:
//! thousands of cases a part, drawn from strategies by a runner keyed by
//! the part's seed, which is printed (replay a run with
//! DEFRAGD_FUZZ_SEED=0x...; DEFRAGD_FUZZ_SCALE=N runs N times the cases).
//! A property stops at its first failing case and shrinks it: proptest
//! simplifies the input (fewer extents, smaller numbers, fewer edits) while
//! it still fails, and the part fails with that minimal input.
//! Each part ends in one `SUMMARY part seed=.. cases=N faults=M failures=F`
//! line; `faults` counts the malformed inputs among the cases (unsorted,
//! overlapping, zero-length or absurd extents, mutated config files, bad
//! environment values, hostile responses); the runs of the shrinker are not
//! cases.
//!
//! Parts (this file holds the runner they share, each module its parts):
//! - `fiemap`: `ExtentMap::from_fiemap` on random FIEMAP lists never panics,
//!   and its figures keep their invariants;
//! - `chunks`: `plan::chunks` covers exactly the blocks of the ranges at or
//!   after `resume_at`, never across a hole, in chunks of 1..=chunk_blocks;
//!   `clip_to_eof`, alone and in the pipeline map → ranges → clip → chunks;
//! - `config_load`: `config::load_from` on random and mutated TOML and
//!   environments never panics, and either loads (and what it loads renders
//!   and loads back the same) or returns one-line errors that each name
//!   their source; `defragd config check FILE` as a process: exit 0 or 78,
//!   never a panic;
//! - `defragctl_output`: what defragctl does with whatever a socket
//!   answers: `decode_response` and `format::human` / `format::json` never
//!   panic, and text from the service cannot forge output lines or drive
//!   the terminal.

use defragd_testkit as common;

mod chunks;
mod config_load;
mod defragctl_output;
mod fiemap;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Command;

use common::{catch, fuzz_seed, quiet_panics, Seeded, Tally};
use defragd::assess::{clip_to_eof, e4defrag_best, Assessment, BlockRange, ExtentMap};
use defragd::config::{self, ConfigErrors, Origin};
use defragd::control::protocol::{
    ActivityReport, CoveredFs, DefragReply, Done, FragmentationReport, HistoryLine, Moving,
    QueueEntry, Request, ResponseData, StatusReport,
};
use defragd::control::{client, format};
use defragd::plan::{chunk_blocks, chunks};
use defragd::sys::{Extent, ExtentFlags};
use proptest::arbitrary::any;
use proptest::collection::vec;
use proptest::sample::{select, Index};
use proptest::strategy::{BoxedStrategy, Just, Strategy};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use proptest::{prop_compose, prop_oneof};

/// Case counts, scaled by DEFRAGD_FUZZ_SCALE (default 1).
fn cases(base: u64) -> u64 {
    let scale: u64 = std::env::var("DEFRAGD_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    base * scale.max(1)
}

/// One part of the suite: the tally behind its SUMMARY line, and the
/// generator that keys the runner of each of its properties.
struct Part {
    tally: RefCell<Tally>,
    rng: RefCell<Seeded>,
    /// Set at a property's first failing case: the runs after it are
    /// proptest shrinking that case, not new cases.
    shrinking: Cell<bool>,
}

impl Part {
    fn new(name: &str) -> Part {
        let seed = fuzz_seed(name);
        Part {
            tally: RefCell::new(Tally::new(name, Some(seed))),
            rng: RefCell::new(Seeded::new(seed)),
            shrinking: Cell::new(false),
        }
    }

    /// Counts a new case, and a fault when its input is malformed. False,
    /// and nothing counted, on a run of the shrinker.
    fn new_case(&self, fault: bool) -> bool {
        if self.shrinking.get() {
            return false;
        }
        let mut tally = self.tally.borrow_mut();
        tally.cases += 1;
        if fault {
            tally.faults += 1;
        }
        true
    }

    /// Checks `property` on `cases` inputs drawn from `inputs`; it returns
    /// what it found broken, nothing when the case passes. The first failing
    /// input is shrunk and becomes this part's failure, with the minimal
    /// input; a panic anywhere in the property is a failure that says so.
    fn check<S: Strategy>(
        &self,
        cases: u64,
        inputs: S,
        property: impl Fn(S::Value) -> Vec<String>,
    ) {
        let config = Config {
            cases: u32::try_from(cases).unwrap_or(u32::MAX),
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, self.rng.borrow_mut().fork().0);
        let outcome = quiet_panics(|| {
            runner.run(&inputs, |input| {
                let bad = catch(|| property(input))
                    .unwrap_or_else(|p| vec![format!("the property panicked: {p}")]);
                if bad.is_empty() {
                    return Ok(());
                }
                self.shrinking.set(true);
                Err(TestCaseError::fail(bad.join("; ")))
            })
        });
        self.shrinking.set(false);
        let mut tally = self.tally.borrow_mut();
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, minimal)) => {
                tally.kind(reason.message());
                tally.fail(format!(
                    "{reason}\n    minimal failing input (shrunk): {minimal:?}"
                ));
            }
            Err(TestError::Abort(why)) => tally.fail(format!("proptest gave up: {why}")),
        }
    }

    fn note(&self, key: &str, value: impl fmt::Display) {
        self.tally.borrow_mut().note(key, value);
    }

    fn finish(self) {
        self.tally.into_inner().finish();
    }
}

/// Any u64, of any magnitude (uniform bits would almost always be huge).
fn any_magnitude() -> impl Strategy<Value = u64> {
    (any::<u64>(), 0..64u32).prop_map(|(bits, shift)| bits >> shift)
}

const BLOCK_SIZES: &[u64] = &[1024, 2048, 4096, 16384, 65536];
