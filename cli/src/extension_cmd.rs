//! `gatehouse extension activate|deactivate|status`: the macOS system extension's lifecycle.
//!
//! Apple only lets the app that contains a system extension submit an
//! `OSSystemExtensionRequest`, so the CLI does not submit it itself: `activate` and
//! `deactivate` run the host app's executable (`/Applications/Gatehouse.app/Contents/MacOS/
//! Gatehouse`, built from host-app/), which prints each step and exits with a code that says how
//! it ended; the CLI passes both on. `status` reads `systemextensionsctl list`. On other OSes
//! every subcommand says it is macOS-only.

use std::process::ExitCode;

use clap::Subcommand;

/// The extension's bundle identifier (packaging/macos/extension/Info.plist).
pub const EXTENSION_BUNDLE_ID: &str = defaults::macos::EXTENSION_ID;
/// The host app that embeds the extension and submits the activation requests.
pub const HOST_APP: &str = "/Applications/Gatehouse.app";
/// Its executable (host-app/, `CFBundleExecutable` in packaging/macos/app/Info.plist).
#[cfg_attr(
    not(target_os = "macos"),
    expect(dead_code, reason = "run by `activate`/`deactivate` on macOS only")
)]
pub const HOST_APP_EXECUTABLE: &str = "/Applications/Gatehouse.app/Contents/MacOS/Gatehouse";

#[derive(Debug, Subcommand)]
pub enum ExtensionCommand {
    /// Ask macOS to install and enable the system extension (the user approves it once in
    /// System Settings > Privacy & Security).
    Activate,
    /// Ask macOS to remove the system extension.
    Deactivate,
    /// Whether the extension is installed, enabled and activated (exit 1 if not active).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One `systemextensionsctl list` row for our extension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtensionState {
    pub team_id: String,
    pub bundle_id: String,
    pub version: String,
    /// The bracketed state, e.g. `activated enabled` or `activated waiting for user`.
    pub state: String,
    pub enabled: bool,
    pub active: bool,
}

/// Find `bundle_id` in `systemextensionsctl list` output. Rows look like
/// `*\t*\tTEAMID\tdev.gatehouse.extension (1.0/1)\tGatehouse\t[activated enabled]`; the first
/// two columns are `*` flags for enabled and active.
#[cfg_attr(
    all(not(target_os = "macos"), not(test)),
    expect(
        dead_code,
        reason = "called by `status` on macOS; unit-tested everywhere"
    )
)]
pub fn parse_systemextensionsctl(output: &str, bundle_id: &str) -> Option<ExtensionState> {
    output.lines().find_map(|line| {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cols.len() < 6 {
            return None;
        }
        let (id, version) = match cols[3].split_once(' ') {
            Some((id, v)) => (id, v.trim_matches(|c| c == '(' || c == ')')),
            None => (cols[3], ""),
        };
        if id != bundle_id {
            return None;
        }
        let state = cols[cols.len() - 1]
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        Some(ExtensionState {
            team_id: cols[2].to_owned(),
            bundle_id: id.to_owned(),
            version: version.to_owned(),
            enabled: cols[0] == "*",
            active: cols[1] == "*" && state.starts_with("activated"),
            state,
        })
    })
}

#[cfg(target_os = "macos")]
pub fn extension(c: ExtensionCommand) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use std::process::Command;

    match c {
        ExtensionCommand::Activate | ExtensionCommand::Deactivate => {
            let verb = if matches!(c, ExtensionCommand::Activate) {
                "activate"
            } else {
                "deactivate"
            };
            if !std::path::Path::new(HOST_APP).exists() {
                anyhow::bail!(
                    "{HOST_APP} is not installed: install the Gatehouse package (it contains the \
                     host app that submits the system extension request), then retry"
                );
            }
            // The app's own exit code says how it ended (host-app/src/outcome.rs: 0 done,
            // 1 failed, 3 still awaiting approval, 4 after a reboot); its lines say what to do.
            let status = Command::new(HOST_APP_EXECUTABLE)
                .arg(verb)
                .status()
                .with_context(|| format!("running {HOST_APP_EXECUTABLE} {verb}"))?;
            Ok(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                None => anyhow::bail!("{HOST_APP_EXECUTABLE} {verb} was killed ({status})"),
            })
        }
        ExtensionCommand::Status { json } => {
            let out = Command::new("/usr/bin/systemextensionsctl")
                .arg("list")
                .output()
                .context("running /usr/bin/systemextensionsctl list")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let state = parse_systemextensionsctl(&text, EXTENSION_BUNDLE_ID);
            if json {
                println!("{}", serde_json::to_string(&state)?);
            } else {
                match &state {
                    Some(s) => println!(
                        "{} {} (team {}): {}",
                        s.bundle_id, s.version, s.team_id, s.state
                    ),
                    None => println!("{EXTENSION_BUNDLE_ID}: not installed"),
                }
            }
            Ok(if state.is_some_and(|s| s.active && s.enabled) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(not(target_os = "macos"))]
pub fn extension(_c: ExtensionCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`gatehouse extension` manages the macOS system extension {EXTENSION_BUNDLE_ID} (through \
         {HOST_APP}) and is macOS-only; on Linux use `gatehouse run`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "2 extension(s)\n\
--- com.apple.system_extension.endpoint_security\n\
enabled\tactive\tteamID\tbundleID (version)\tname\t[state]\n\
*\t*\tABCDE12345\tdev.gatehouse.extension (1.2/7)\tGatehouse\t[activated enabled]\n\
\t\tZZZZZ99999\tcom.other.agent (3.0/1)\tOther\t[terminated waiting to uninstall on reboot]\n";

    #[test]
    fn parse_table() {
        let waiting = "*\t\tABCDE12345\tdev.gatehouse.extension (1.0/1)\tGatehouse\t[activated waiting for user]\n";
        // (output, bundle, expected (enabled, active, state))
        let cases = [
            (
                LIST,
                EXTENSION_BUNDLE_ID,
                Some((true, true, "activated enabled")),
            ),
            (
                LIST,
                "com.other.agent",
                Some((false, false, "terminated waiting to uninstall on reboot")),
            ),
            (
                waiting,
                EXTENSION_BUNDLE_ID,
                Some((true, false, "activated waiting for user")),
            ),
            ("0 extension(s)\n", EXTENSION_BUNDLE_ID, None),
            ("", EXTENSION_BUNDLE_ID, None),
        ];
        for (out, id, want) in cases {
            let got = parse_systemextensionsctl(out, id).map(|s| (s.enabled, s.active, s.state));
            assert_eq!(
                got,
                want.map(|(e, a, s)| (e, a, s.to_owned())),
                "{id} in {out:?}"
            );
        }
        let s = parse_systemextensionsctl(LIST, EXTENSION_BUNDLE_ID).unwrap();
        assert_eq!(
            (s.team_id.as_str(), s.version.as_str()),
            ("ABCDE12345", "1.2/7")
        );
    }
}
