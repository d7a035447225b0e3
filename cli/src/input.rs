//! Every file the CLI reads (policies, Santa imports, event and facts JSON) goes through here:
//! regular files only, read with a size limit (see `protocol::bounded`), so `/dev/zero`, a FIFO
//! or a huge file is a prompt error, never an out-of-memory or a hang.

use std::path::{Path, PathBuf};

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

/// The static policy tier a command decides with: `given`, else `os`'s installed policy file
/// when it exists, else the embedded default; and where it came from.
pub fn static_policy(
    given: Option<&Path>,
    os: policy::Os,
) -> anyhow::Result<(policy::Policy, String)> {
    let installed = os.paths().policy.map(PathBuf::from).filter(|p| p.exists());
    match given.map(Path::to_path_buf).or(installed) {
        Some(p) => {
            let origin = p.display().to_string();
            let text = policy_text(&p)?;
            let policy = policy::Policy::parse_for(&origin, &text, os)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((policy, origin))
        }
        None => Ok((
            policy::Policy::embedded_default_for(os),
            "<embedded default>".to_owned(),
        )),
    }
}
