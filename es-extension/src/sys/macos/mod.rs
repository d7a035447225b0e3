//! The macOS Endpoint Security backend, behind the contract in `crate::backend`.
//!
//! Two layers. `ffi` (macOS only) is the only code that touches `endpoint-sec`,
//! `endpoint-sec-sys`, Mach or the run loop; it maps [`api::EsApi`] calls one to one onto C
//! calls and reads each message into owned fields. Everything else decides, is compiled on
//! every OS, and is tested against the simulator (`sim`):
//!
//! - `api`: the [`EsApi`](api::EsApi) trait (one ES client) and the audit token type.
//! - `message`: one ES message as owned data, and its `model::Event`.
//! - `convert`: pure conversions (deadline budget, signing flags, mounts, answer encoding, ES
//!   result codes, subscriptions, `/private` path forms), table-tested.
//! - `handler`: what runs on a client's delivery queue (truncated paths get the fallback).
//! - `responder`: the `Responder` (`es_respond_flags_result` for AUTH_OPEN, else
//!   `es_respond_auth_result`).
//! - `control`: the `KernelControl` (mutes, watched targets with inverted target muting,
//!   cache clears).
//! - `session`: start-up order, the two clients, subscriptions, helper muting, shutdown.
//! - `sim` (tests and the `es-sim` feature): libEndpointSecurity's part, played by the book.
//!
//! Dependencies run one way: `ffi` -> `session` -> `handler`/`control` -> `responder` ->
//! `api`/`message`/`convert`.

pub mod api;
pub mod control;
pub mod convert;
#[cfg(target_os = "macos")]
pub mod ffi;
pub mod handler;
pub mod message;
pub mod responder;
pub mod session;
#[cfg(any(test, feature = "es-sim"))]
pub mod sim;

#[cfg(target_os = "macos")]
pub use ffi::{MacError, MacOptions, run};
