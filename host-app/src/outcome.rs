//! What the host app decides, free of Objective-C: its arguments, the replacement answer, and
//! how each delegate callback becomes one line for the administrator and an exit code. Kept
//! here so every branch is table-tested on Linux; `macos.rs` only forwards callbacks.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(target_os = "macos"),
    allow(
        dead_code,
        reason = "the delegate callbacks that use these are macOS-only; the tests run them on every OS"
    )
)]

use std::fmt;
use std::time::Duration;

/// The request the app submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Activate,
    Deactivate,
}

/// Parsed arguments: `activate|deactivate [--wait SECONDS]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    pub action: Action,
    /// How long to wait for the system's answer (user approval included) before giving up.
    pub wait: Duration,
}

/// How long `activate` waits by default: long enough for a person to open System Settings and
/// approve the extension; an MDM-approved extension answers in seconds.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

pub const USAGE: &str = "usage: Gatehouse activate|deactivate [--wait SECONDS] | Gatehouse notify";

pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
    let mut action = None;
    let mut wait = DEFAULT_WAIT;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "activate" if action.is_none() => action = Some(Action::Activate),
            "deactivate" if action.is_none() => action = Some(Action::Deactivate),
            "--wait" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("--wait needs SECONDS; {USAGE}"))?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--wait {v:?} is not a number of seconds; {USAGE}"))?;
                wait = Duration::from_secs(secs);
            }
            // Launch Services adds `-psn_...` when the app is opened from the Finder.
            p if p.starts_with("-psn_") => {}
            other => return Err(format!("unexpected argument {other:?}; {USAGE}")),
        }
    }
    let action = action.ok_or_else(|| USAGE.to_owned())?;
    Ok(Args { action, wait })
}

/// The answer to "replace the active extension with this one?". Always replace: the installer
/// put this version in the app on purpose (an upgrade, or an administrator's downgrade), and
/// refusing would leave the old extension running beside a new helper and CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    Replace,
}

pub fn replacement(existing: &str, new: &str) -> (Replacement, String) {
    (
        Replacement::Replace,
        format!("replacing the active extension {existing} with {new}"),
    )
}

/// What the delegate was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    NeedsUserApproval,
    /// `OSSystemExtensionRequestResult`: 0 completed, 1 will complete after reboot.
    Finished {
        result: i64,
    },
    /// `NSError` from `OSSystemExtensionErrorDomain` (or another domain).
    Failed {
        domain: String,
        code: i64,
        description: String,
    },
}

/// The app's exit codes (`gatehouse extension` passes them on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Done = 0,
    Failed = 1,
    Usage = 2,
    /// Still waiting for the user's approval when the wait ended; the request stays pending
    /// only while the app runs, so run `activate` again after approving.
    AwaitingApproval = 3,
    /// Accepted; takes effect after a reboot.
    AfterReboot = 4,
}

/// One step of the conversation: what to print, and whether it ends the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: String,
    pub exit: Option<Exit>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Activate => "activation",
            Action::Deactivate => "deactivation",
        })
    }
}

/// `OSSystemExtensionErrorDomain` codes (SystemExtensions/OSSystemExtensionError.h), each with
/// what to do about it.
fn explain(code: i64) -> &'static str {
    match code {
        2 => {
            "the app lacks the com.apple.developer.system-extension.install entitlement: the build was signed without its provisioning profile"
        }
        3 => {
            "Gatehouse.app must be in /Applications to install a system extension: reinstall the package"
        }
        4 => {
            "the extension bundle is missing from Gatehouse.app/Contents/Library/SystemExtensions: reinstall the package"
        }
        5..=7 => {
            "the extension's Info.plist is wrong (identifier or category): rebuild the package"
        }
        8 => "the extension's code signature is invalid: reinstall a notarized package",
        9 => {
            "macOS could not validate the extension (entitlements or notarization): check `log show --predicate 'subsystem == \"com.apple.sx\"'`"
        }
        10 => {
            "a configuration profile (MDM) forbids this extension: allow team and bundle id in the System Extensions payload"
        }
        11 => "the request was canceled",
        12 => "a newer request replaced this one",
        13 => "the administrator did not authorize the change",
        _ => "see Console.app (subsystem com.apple.sx) for details",
    }
}

pub fn step(action: Action, event: &Event) -> Step {
    match event {
        Event::NeedsUserApproval => Step {
            line: format!(
                "{action} needs approval: open System Settings > Privacy & Security and allow \"Gatehouse\" (waiting)"
            ),
            exit: None,
        },
        Event::Finished { result: 0 } => Step {
            line: format!("{action} completed"),
            exit: Some(Exit::Done),
        },
        Event::Finished { result: 1 } => Step {
            line: format!("{action} accepted; it completes after a reboot"),
            exit: Some(Exit::AfterReboot),
        },
        Event::Finished { result } => Step {
            line: format!("{action} finished with an unknown result {result}"),
            exit: Some(Exit::Failed),
        },
        Event::Failed {
            domain,
            code,
            description,
        } => {
            let why = if domain == "OSSystemExtensionErrorDomain" {
                explain(*code)
            } else {
                "see Console.app for details"
            };
            Step {
                line: format!("{action} failed: {description} ({domain} {code}): {why}"),
                exit: Some(Exit::Failed),
            }
        }
    }
}

/// The last word when the wait runs out.
pub fn timed_out(action: Action, approval_pending: bool, waited: Duration) -> Step {
    if approval_pending {
        Step {
            line: format!(
                "{action} still awaits approval after {}s: approve it in System Settings, then run it again",
                waited.as_secs()
            ),
            exit: Some(Exit::AwaitingApproval),
        }
    } else {
        Step {
            line: format!("no answer from macOS after {}s", waited.as_secs()),
            exit: Some(Exit::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    /// (arguments, the parse: action and wait, or an error)
    type ArgCase<'a> = (&'a [&'a str], Option<(Action, Duration)>);

    #[test]
    fn arguments_table() {
        let s = Duration::from_secs;
        let cases: &[ArgCase<'_>] = &[
            (&["activate"], Some((Action::Activate, DEFAULT_WAIT))),
            (&["deactivate"], Some((Action::Deactivate, DEFAULT_WAIT))),
            (&["activate", "--wait", "5"], Some((Action::Activate, s(5)))),
            (
                &["-psn_0_12345", "activate"],
                Some((Action::Activate, DEFAULT_WAIT)),
            ),
            (&[], None),
            (&["activate", "deactivate"], None),
            (&["activate", "--wait"], None),
            (&["activate", "--wait", "soon"], None),
            (&["install"], None),
        ];
        for (a, want) in cases {
            let got = args(a).ok().map(|x| (x.action, x.wait));
            assert_eq!(got, *want, "{a:?}");
        }
    }

    #[test]
    fn callbacks_table() {
        let failed = |domain: &str, code| Event::Failed {
            domain: domain.into(),
            code,
            description: "boom".into(),
        };
        // (event, exit, a word the line must contain)
        let cases = [
            (Event::NeedsUserApproval, None, "Privacy & Security"),
            (Event::Finished { result: 0 }, Some(Exit::Done), "completed"),
            (
                Event::Finished { result: 1 },
                Some(Exit::AfterReboot),
                "reboot",
            ),
            (Event::Finished { result: 7 }, Some(Exit::Failed), "unknown"),
            (
                failed("OSSystemExtensionErrorDomain", 3),
                Some(Exit::Failed),
                "/Applications",
            ),
            (
                failed("OSSystemExtensionErrorDomain", 10),
                Some(Exit::Failed),
                "MDM",
            ),
            (
                failed("OSSystemExtensionErrorDomain", 99),
                Some(Exit::Failed),
                "Console",
            ),
            (
                failed("NSCocoaErrorDomain", 3),
                Some(Exit::Failed),
                "Console",
            ),
        ];
        for (event, exit, word) in cases {
            let s = step(Action::Activate, &event);
            assert_eq!(s.exit, exit, "{event:?}");
            assert!(s.line.contains(word), "{event:?}: {}", s.line);
        }
    }

    #[test]
    fn timeouts_and_replacement() {
        let w = Duration::from_secs(300);
        assert_eq!(
            timed_out(Action::Activate, true, w).exit,
            Some(Exit::AwaitingApproval)
        );
        assert_eq!(
            timed_out(Action::Activate, false, w).exit,
            Some(Exit::Failed)
        );
        let (r, line) = replacement("1.0 (1)", "1.1 (2)");
        assert_eq!(r, Replacement::Replace);
        assert!(line.contains("1.0 (1)") && line.contains("1.1 (2)"));
    }
}
