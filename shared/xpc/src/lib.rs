//! A small hand-written libxpc binding on `block2` + `dispatch2`: a mach-service listener for the
//! helper, a client for the extension, dictionary messages with a data field carrying protocol
//! frames, asynchronous replies, and the peer code-signing requirement check. Empty on other OSes.
//!
//! Only the asynchronous reply call is bound (`xpc_connection_send_message_with_reply`); the
//! `_sync` variant is deliberately absent, so no path that an Endpoint Security event waits on
//! can block on the helper. Needs macOS 12 or later (peer code-signing requirements); Gatehouse
//! supports macOS 13 and later.
#![cfg_attr(not(target_os = "macos"), forbid(unsafe_code))]

#[cfg(target_os = "macos")]
mod connection;
#[cfg(target_os = "macos")]
mod error;
#[cfg(target_os = "macos")]
mod listener;
#[cfg(target_os = "macos")]
mod object;
#[cfg(target_os = "macos")]
mod sys;

#[cfg(target_os = "macos")]
pub use connection::{ConnectOptions, Connection};
#[cfg(target_os = "macos")]
pub use dispatch2::{DispatchQueue, DispatchRetained};
#[cfg(target_os = "macos")]
pub use error::XpcError;
#[cfg(target_os = "macos")]
pub use listener::{Incoming, Listener, PeerInfo, Reply, ServerEvent};
#[cfg(target_os = "macos")]
pub use object::{FrameKind, Message};
