//! The macOS Endpoint Security backend (issue 7), behind the contract in `crate::backend`.
//!
//! - `client`: the ES client, created and answered through `endpoint-sec-sys` with a block
//!   handler that converts each AUTH message at once and hands it to the core.
//! - `convert`: an `endpoint_sec::Message` into a `model::Event` (message data only).
//! - `responder`: the `Responder` (`es_respond_flags_result` for AUTH_OPEN, else
//!   `es_respond_auth_result`).
//! - `control`: the `KernelControl` (path mutes, target-path mutes, throttled cache clears).
//! - `time`: mach absolute time for deadlines.
//! - `helper_xpc`: the asynchronous XPC client to the helper's mach service.
//! - `run`: start-up order, the main thread's CFRunLoop, signals and clean shutdown.
//!
//! Every decision these make (deadline budget, signing status, mount flags, answer encoding,
//! subscriptions) lives in `sys::es_convert`, which is tested on Linux.

pub mod client;
pub mod control;
pub mod convert;
pub mod helper_xpc;
pub mod responder;
pub mod run;
pub mod time;

pub use client::EsClient;
pub use control::EsControl;
pub use responder::EsResponder;
pub use run::{MacError, MacOptions, run};
