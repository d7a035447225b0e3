//! Every file the CLI reads (policies, Santa imports, event and facts JSON) goes through here:
//! regular files only, read with a size limit (see `protocol::bounded`), so `/dev/zero`, a FIFO
//! or a huge file is a prompt error, never an out-of-memory or a hang.

use std::path::Path;

pub use protocol::bounded::{JSON_INPUT_MAX_BYTES, POLICY_MAX_BYTES};

/// A policy (or Santa rules) file as text, at most [`POLICY_MAX_BYTES`].
pub fn policy_text(path: &Path) -> anyhow::Result<String> {
    Ok(protocol::bounded::read_text(path, POLICY_MAX_BYTES)?)
}

/// A policy-sized input as raw bytes (a plist may be binary).
pub fn policy_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(protocol::bounded::read_file(path, POLICY_MAX_BYTES)?)
}

/// An event or facts JSON file as text, at most [`JSON_INPUT_MAX_BYTES`].
pub fn json_text(path: &Path) -> anyhow::Result<String> {
    Ok(protocol::bounded::read_text(path, JSON_INPUT_MAX_BYTES)?)
}
