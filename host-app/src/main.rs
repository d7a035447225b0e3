//! `Gatehouse.app`'s executable: asks macOS to activate (install, or replace on upgrade) or
//! deactivate the Gatehouse system extension, prints each step, and exits with a code that says
//! how it ended (`outcome::Exit`). Apple lets only the app that contains a system extension
//! submit these requests, so `gatehouse extension activate|deactivate` and the installer's
//! postinstall run this. Every decision is in `outcome.rs`; `macos.rs` is the Objective-C edge.
//!
//! `Gatehouse notify` is the notifier agent (the `dev.gatehouse.notifier` launch agent runs it
//! in each user's session): it long-polls the extension's block-notice XPC service and posts
//! each block of the user's processes as a notification, the message the person blocked is
//! told (`notifier.rs` decides; `macos.rs` talks XPC and UserNotifications).

#[cfg(target_os = "macos")]
mod macos;
mod notifier;
mod outcome;

use std::process::ExitCode;

use outcome::Exit;

/// The system extension's bundle identifier (packaging/macos/extension/Info.plist, checked
/// against the same constant by shared/defaults/tests/packaging.rs).
pub const EXTENSION_BUNDLE_ID: &str = defaults::macos::EXTENSION_ID;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("notify") {
        return ExitCode::from(notify() as u8);
    }
    let args = match outcome::parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Gatehouse: {e}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let exit = run(args);
    ExitCode::from(exit as u8)
}

#[cfg(target_os = "macos")]
fn run(args: outcome::Args) -> Exit {
    macos::submit(args, EXTENSION_BUNDLE_ID)
}

#[cfg(not(target_os = "macos"))]
fn run(args: outcome::Args) -> Exit {
    eprintln!(
        "Gatehouse: {} of the system extension {EXTENSION_BUNDLE_ID} is macOS-only",
        args.action
    );
    Exit::Failed
}

#[cfg(target_os = "macos")]
fn notify() -> Exit {
    macos::notify()
}

#[cfg(not(target_os = "macos"))]
fn notify() -> Exit {
    eprintln!("Gatehouse: the block notifier is macOS-only");
    Exit::Failed
}
