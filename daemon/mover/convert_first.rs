//! Converting a block-mapped (ext3-era) file to extents as a pre-step of
//! its move, when the operator asked for it: the conversion itself is
//! `crate::convert`'s; this runs it and then the move, and makes one
//! outcome of both.

use super::{defragment, MoveOptions, Supervisor};
use crate::backend::Inspected;
use crate::convert::{convert, ConversionLog, Converting};
use crate::inspect::Filesystems;
use crate::outcome::{Moved, Outcome, Refusal};
use crate::target::Target;

/// The supervisor, as the conversion's log.
struct Announce<'a>(&'a mut dyn Supervisor);

impl ConversionLog for Announce<'_> {
    fn converting(&mut self, file: &Converting<'_>) {
        self.0.converting(file);
    }

    fn converted(&mut self) {
        self.0.converted();
    }
}

/// Converts the block-mapped file `inspected` to extents, then defragments
/// it as usual; one outcome for both.
pub(super) fn convert_then_defragment(
    target: &Target,
    inspected: Inspected,
    filesystems: &mut Filesystems,
    options: &MoveOptions,
    supervisor: &mut dyn Supervisor,
) -> Outcome {
    let before = inspected.assessment;
    let mut log = Announce(supervisor);
    let converted = convert(
        target,
        &inspected,
        options.quiet_period,
        options.dry_run,
        &mut log,
    );
    let supervisor = log.0;
    if let Err(reason) = converted {
        return match reason {
            Refusal::Skip(reason) => Outcome::Skipped {
                reason,
                before: Some(before),
            },
            Refusal::Fail(reason) => Outcome::Failed {
                reason,
                before: Some(before),
                bytes_moved: 0,
            },
        };
    }
    drop(inspected);
    let extents_only = MoveOptions {
        convert_block_mapped: false,
        ..options.clone()
    };
    match defragment(target, filesystems, &extents_only, 0, supervisor) {
        Outcome::Defragmented(moved) => Outcome::Defragmented(Moved {
            before,
            converted: true,
            ..moved
        }),
        Outcome::Skipped { reason, .. } => Outcome::Converted {
            before,
            reason: reason.to_string(),
        },
        Outcome::Failed {
            reason,
            bytes_moved,
            ..
        } => Outcome::Failed {
            reason,
            before: Some(before),
            bytes_moved,
        },
        other => other,
    }
}
