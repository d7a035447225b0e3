//! The macOS unified log (Console.app, `log show`, `log stream`), reached through syslog(3).
//!
//! Why syslog(3) and not `os_log`: `os_log` is a family of C macros that need the SDK's headers
//! and a per-image `__dso_handle`, so every Rust binding compiles a C shim with the macOS SDK
//! (tracing-oslog, oslog, apple-log), which cannot be built or checked off a Mac. Since macOS
//! 10.12 syslog(3) is a front end of the unified log: each call becomes one unified-log entry of
//! the calling process (LOG_NOTICE and LOG_WARNING at the default level, which is persisted;
//! LOG_ERR at the error level), filterable with
//! `log show --predicate 'process == "gatehouse-extension"'`. What is lost is a subsystem and
//! category of our own; the process name and the sender image take their place.
//!
//! syslog(3) on macOS is thread-safe and does not wait for logd (entries go to a shared-memory
//! buffer), but it is still only called from the events-log writer thread and from `tracing`
//! on non-delivery threads: the delivery thread never logs (ARCHITECTURE.md, invariant 1).

use std::ffi::{CString, c_int};
use std::io;

/// The identity every entry carries (the process name in `log show`).
const IDENT: &std::ffi::CStr = c"gatehouse-extension";
/// An entry longer than this is cut (the unified log truncates long dynamic strings itself;
/// cutting here keeps the copy bounded).
pub const ENTRY_MAX: usize = 16 * 1024;

/// Opens the process's syslog identity once; every later call reuses it.
fn open() {
    static OPEN: std::sync::Once = std::sync::Once::new();
    OPEN.call_once(|| {
        // SAFETY: `IDENT` is a `'static` NUL-terminated string, so the pointer openlog(3)
        // keeps stays valid for the life of the process; the option and facility are libc's
        // constants. `Once` makes this the only openlog call, so no other thread changes the
        // identity while syslog(3) reads it.
        unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    });
}

/// One entry at syslog priority `priority` (`libc::LOG_*`). Interior NULs become spaces, so
/// the whole text is logged; it is cut at [`ENTRY_MAX`] bytes on a character boundary.
/// Returns whether the text was handed to the log.
pub fn send(priority: c_int, text: &str) -> bool {
    open();
    let mut end = text.len().min(ENTRY_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let Ok(msg) = CString::new(text[..end].replace('\0', " ")) else {
        return false;
    };
    // SAFETY: the format is the literal "%s" and exactly one argument follows it, a valid
    // NUL-terminated C string (`msg`) that outlives the call; syslog(3) copies what it logs.
    // Passing the text as an argument, never as the format, keeps a `%` in a path or rule
    // message from being read as a conversion.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
    true
}

/// The events-log records' system log on macOS ([`crate::core::eventlog::SystemLog`]).
#[derive(Debug, Default)]
pub struct UnifiedLog;

impl crate::core::eventlog::SystemLog for UnifiedLog {
    fn name(&self) -> &'static str {
        "unified log"
    }

    fn send(&self, line: &str, deny: bool) -> bool {
        send(
            if deny {
                libc::LOG_WARNING
            } else {
                libc::LOG_NOTICE
            },
            line,
        )
    }
}

/// `tracing`'s writer on macOS: a system extension's stderr goes nowhere, so the extension's
/// own log lines go to the unified log, one entry per line, at the line's level.
#[derive(Debug, Default)]
pub struct MakeUnifiedLogWriter;

/// One log line, buffered until `tracing` drops the writer.
#[derive(Debug)]
pub struct UnifiedLogWriter {
    priority: c_int,
    buf: Vec<u8>,
}

impl io::Write for UnifiedLogWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = ENTRY_MAX.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&b[..b.len().min(room)]);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for UnifiedLogWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if !text.is_empty() {
            send(self.priority, text);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeUnifiedLogWriter {
    type Writer = UnifiedLogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        UnifiedLogWriter {
            priority: libc::LOG_NOTICE,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_NOTICE,
            tracing::Level::DEBUG => libc::LOG_INFO,
            tracing::Level::TRACE => libc::LOG_DEBUG,
        };
        UnifiedLogWriter {
            priority,
            buf: Vec::new(),
        }
    }
}
