//! The control plane between the running service and `defragctl`: a unix
//! socket under /run/defragd speaking one JSON line per request and per
//! response. The service answers through the `Controller` trait; this module
//! never touches the store, the workers or a filesystem itself.

pub mod client;
pub mod format;
pub mod protocol;
pub mod server;

#[cfg(test)]
mod tests;

pub use client::{request, ClientError};
pub use protocol::{Controller, Request, Response, ResponseData, DEFAULT_SOCKET};
pub use server::{peer_allowed, resolve_group, ControlError, ControlSocket};
