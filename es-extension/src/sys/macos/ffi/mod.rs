//! The thin FFI layer: the only code that touches `endpoint-sec`, `endpoint-sec-sys`, Mach and
//! the main thread's run loop. Each file maps calls one to one and decides nothing.
//!
//! - `client`: `FfiClient`, the [`EsApi`](super::api::EsApi) over one `es_client_t`, and the
//!   handler block that reads each message and calls `Handler::on_message`.
//! - `read`: an `endpoint_sec::Message` into the owned `message::EsMessage`.
//! - `time`: mach absolute time and the timebase.
//! - `token`: an audit token for a pid, without leaking the task-name port.
//! - `notify`: the XPC service the host app's notifier agent long-polls for block notices.
//! - `unified_log`: the unified log through syslog(3), for events-log records and `tracing`.
//! - `run`: the OS version check, the helper's XPC transport, signals and the CFRunLoop
//!   around `session::Session`.

pub mod client;
pub mod notify;
pub mod read;
pub mod run;
pub mod time;
pub mod token;
pub mod unified_log;

pub use client::{FfiClient, FfiMsg};
pub use run::{MacError, MacOptions, run};
