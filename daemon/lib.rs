pub mod assess;
pub mod backend;
/// The XFS backend. It lives in `backend/xfs/` and is declared here only
/// until the backend seam is generic (backend/mod.rs is being reworked):
/// then it becomes `backend::xfs`, one line there and none here.
#[path = "backend/xfs/mod.rs"]
pub mod backend_xfs;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod convert;
pub mod crawl_cursor;
pub mod eligibility;
pub mod escape;
pub mod ext4;
pub mod filesystem;
pub mod inspect;
pub mod logging;
pub mod medium;
pub mod mounts;
pub mod mover;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod ramp;
pub mod service;
pub mod store;
pub mod sys;
pub mod target;
pub mod throttle;
pub mod walk;
pub mod xfs;
