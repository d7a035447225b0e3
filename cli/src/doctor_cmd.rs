//! `gatehouse doctor`: checks what Gatehouse needs on this machine (root, kernel features, the
//! extension and the helper answering, the policy and local rules valid, the permissions of the
//! files that decide what is checked, disk space for the events log), one line per check with
//! what to do when it is not right.
//!
//! The assessments are pure functions of what was observed (table-tested below); observing is
//! at the edge, in [`doctor`]. Nothing here can hang the machine: the fanotify probe uses a
//! notification group (never a permission one, whose unanswered events would block every
//! exec), and every socket call is bounded by the control client's timeouts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::control::DEFAULT_CONTROL_SOCKET;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print machine-readable JSON (an array of checks).
    #[arg(long)]
    pub json: bool,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// The helper's socket (Linux), pinged directly.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_HELPER_SOCKET)]
    pub helper_socket: PathBuf,
    /// The policy file to check; the running extension's when omitted (or this OS's default).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The local rules file to check.
    #[arg(long, value_name = "FILE", default_value = defaults::Os::HOST.local_rules())]
    pub local_rules: PathBuf,
    /// The runtime mutes file to check.
    #[arg(long, value_name = "FILE", default_value = defaults::Os::HOST.mutes_file())]
    pub mutes_file: PathBuf,
    /// The transitive allows file to check (what it holds is allowed at the next start).
    #[arg(long, value_name = "FILE", default_value = defaults::Os::HOST.transitive_file())]
    pub transitive_file: PathBuf,
    /// The events log whose directory, permissions and free space are checked.
    #[arg(long, value_name = "FILE", default_value = defaults::Os::HOST.paths().events_log)]
    pub events_log: PathBuf,
    /// Linux: filesystems the extension marks (its --scope), probed for fanotify filesystem
    /// marks. Repeatable.
    #[arg(long = "scope", value_name = "PATH", default_value = "/")]
    pub scope: Vec<PathBuf>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    /// Works, but not as a deployment should.
    Warn,
    /// Gatehouse cannot do its job as configured.
    Fail,
    /// Not checked (needs root, or not on this OS).
    Skip,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
            Level::Skip => "skip",
        }
    }
}

/// One check's outcome: what was found and, unless it is fine, what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub check: String,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

fn finding(check: &str, level: Level, detail: String, fix: Option<String>) -> Finding {
    Finding {
        check: check.to_owned(),
        level,
        detail,
        fix,
    }
}

fn ok(check: &str, detail: String) -> Finding {
    finding(check, Level::Ok, detail, None)
}

pub fn assess_root(euid: u32) -> Finding {
    if euid == 0 {
        ok("root", "running as root".to_owned())
    } else {
        finding(
            "root",
            Level::Fail,
            format!("running as uid {euid}; fanotify, the sockets and the logs are root-only"),
            Some("run it as root: sudo gatehouse doctor".to_owned()),
        )
    }
}

/// The fanotify probe: `init` is `fanotify_init(FAN_CLASS_CONTENT)` (permission events
/// compiled in), `marks` each scope's `FAN_MARK_FILESYSTEM` of `FAN_OPEN_EXEC` in a
/// notification group (filesystem marks and exec events, Linux 5.0+, on that filesystem).
#[cfg(target_os = "linux")]
pub fn assess_fanotify(
    release: &str,
    init: Result<(), nix::errno::Errno>,
    marks: &[(String, Result<(), nix::errno::Errno>)],
) -> Vec<Finding> {
    use nix::errno::Errno;
    let mut out = Vec::new();
    match init {
        Ok(()) => out.push(ok(
            "fanotify",
            format!("kernel {release}: fanotify with permission events"),
        )),
        Err(e) => {
            let (detail, fix) = match e {
                Errno::EPERM => (
                    "fanotify_init refused: needs CAP_SYS_ADMIN".to_owned(),
                    "run as root (and outside a container that drops CAP_SYS_ADMIN)",
                ),
                Errno::EINVAL => (
                    format!(
                        "kernel {release} has no fanotify permission events \
                         (CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
                    ),
                    "use a kernel built with CONFIG_FANOTIFY_ACCESS_PERMISSIONS=y (every \
                     major distribution's is)",
                ),
                Errno::ENOSYS => (
                    format!("kernel {release} has no fanotify"),
                    "use a kernel built with CONFIG_FANOTIFY=y",
                ),
                other => (
                    format!("fanotify_init failed: {}", other.desc()),
                    "see fanotify_init(2) for this error",
                ),
            };
            out.push(finding(
                "fanotify",
                Level::Fail,
                detail,
                Some(fix.to_owned()),
            ));
            return out;
        }
    }
    for (path, r) in marks {
        let check = "scope";
        out.push(match r {
            Ok(()) => ok(
                check,
                format!("{path}: filesystem marks for exec events work here"),
            ),
            Err(e) => {
                let why = match e {
                    Errno::EINVAL => "the kernel lacks FAN_MARK_FILESYSTEM or FAN_OPEN_EXEC \
                                      (Linux 5.0 or later is needed)"
                        .to_owned(),
                    Errno::EXDEV | Errno::ENODEV | Errno::EOPNOTSUPP => format!(
                        "this filesystem cannot take a filesystem mark ({}): a btrfs subvolume \
                         or a filesystem without a unique fsid",
                        e.desc()
                    ),
                    Errno::ENOENT => "the path does not exist".to_owned(),
                    other => other.desc().to_owned(),
                };
                finding(
                    check,
                    Level::Fail,
                    format!("{path}: fanotify_mark(FAN_MARK_FILESYSTEM) failed: {why}"),
                    Some(format!(
                        "give --scope the filesystem's root mount instead of {path}, or leave \
                         it out of scope"
                    )),
                )
            }
        });
    }
    out
}

/// A file or directory that decides what Gatehouse checks (the policy, local rules, mutes, the
/// configuration directory) or holds its records: owned by root, writable by nobody else.
/// `meta` is `(uid, mode)`, or `None` when it does not exist.
pub fn assess_owner_and_mode(
    check: &str,
    path: &Path,
    meta: Option<(u32, u32)>,
    missing: Level,
) -> Finding {
    let shown = path.display();
    let Some((uid, mode)) = meta else {
        return if missing == Level::Ok {
            ok(
                check,
                format!("{shown} does not exist (none, or made when needed)"),
            )
        } else {
            finding(
                check,
                missing,
                format!("{shown} does not exist"),
                Some(format!("create {shown} (the packages do)")),
            )
        };
    };
    let mut problems = Vec::new();
    if uid != 0 {
        problems.push(format!("owned by uid {uid}, not root"));
    }
    if mode & 0o022 != 0 {
        problems.push(format!(
            "mode {:04o}: writable by group or others",
            mode & 0o7777
        ));
    }
    if problems.is_empty() {
        ok(
            check,
            format!("{shown}: root-owned, mode {:04o}", mode & 0o7777),
        )
    } else {
        finding(
            check,
            Level::Fail,
            format!(
                "{shown}: {}; whoever can write it decides what Gatehouse checks or records",
                problems.join(", ")
            ),
            Some(format!("chown root {shown} && chmod go-w {shown}")),
        )
    }
}

/// The control socket: only root (mode 0600) may ask the extension to load a policy or mute.
pub fn assess_socket_mode(path: &Path, meta: Option<(u32, u32)>) -> Finding {
    match meta {
        None => finding(
            "control socket",
            Level::Skip,
            format!(
                "{} does not exist (the extension is not running)",
                path.display()
            ),
            None,
        ),
        Some((uid, mode)) if uid == 0 && mode & 0o077 == 0 => ok(
            "control socket",
            format!("{}: root-only (mode {:04o})", path.display(), mode & 0o7777),
        ),
        Some((uid, mode)) => finding(
            "control socket",
            Level::Fail,
            format!(
                "{}: uid {uid}, mode {:04o}: others may reach the extension's control socket",
                path.display(),
                mode & 0o7777
            ),
            Some("restart the extension: it binds the socket root-only".to_owned()),
        ),
    }
}

/// Free space for the events log: its rotation keeps at most `need` bytes.
pub fn assess_disk(dir: &Path, available: Result<u64, String>, need: u64) -> Finding {
    const MIB: u64 = 1024 * 1024;
    match available {
        Err(e) => finding(
            "disk space",
            Level::Fail,
            format!("cannot stat {}: {e}", dir.display()),
            Some(format!(
                "create {} (the packages do) or pass --events-log",
                dir.display()
            )),
        ),
        Ok(a) if a >= need => ok(
            "disk space",
            format!(
                "{} MiB free in {}; the events log uses at most {} MiB",
                a / MIB,
                dir.display(),
                need / MIB
            ),
        ),
        Ok(a) => finding(
            "disk space",
            if a < need / 8 {
                Level::Fail
            } else {
                Level::Warn
            },
            format!(
                "{} MiB free in {}; the events log may use {} MiB (records that do not fit are \
                 counted in log_write_failed, not written)",
                a / MIB,
                dir.display(),
                need / MIB
            ),
            Some(format!(
                "free space on {}, or lower --events-log-max-bytes / --events-log-keep",
                dir.display()
            )),
        ),
    }
}

/// A policy or local rules file: valid, missing (with `missing` as its level) or invalid.
pub fn assess_parse(check: &str, path: &Path, parsed: Option<Result<String, String>>) -> Finding {
    match parsed {
        None => finding(
            check,
            Level::Ok,
            format!("{}: none (nothing to check)", path.display()),
            None,
        ),
        Some(Ok(summary)) => ok(check, format!("{}: valid, {summary}", path.display())),
        Some(Err(e)) => finding(
            check,
            Level::Fail,
            e,
            Some(format!(
                "fix {} (`gatehouse policy check` shows where), then reload",
                path.display()
            )),
        ),
    }
}

/// The running policy against the file: the same content, or a file changed since it loaded.
pub fn assess_running_policy(file_sha256: Option<&str>, running_sha256: Option<&str>) -> Finding {
    match (file_sha256, running_sha256) {
        (Some(f), Some(r)) if f == r => ok(
            "policy in force",
            "the running extension enforces this file's content".to_owned(),
        ),
        (Some(_), Some(_)) => finding(
            "policy in force",
            Level::Warn,
            "the file changed since the extension loaded it: the running policy is older"
                .to_owned(),
            Some(
                "load it: gatehouse policy load FILE (or systemctl reload gatehouse-extension)"
                    .to_owned(),
            ),
        ),
        _ => finding(
            "policy in force",
            Level::Skip,
            "not compared (no file, or the extension is not running)".to_owned(),
            None,
        ),
    }
}

/// The text form: one line per check, its fix indented below it.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out += &format!("{:<4}  {:<18} {}\n", f.level.label(), f.check, f.detail);
        if let Some(fix) = &f.fix {
            out += &format!("      {:<18} -> {fix}\n", "");
        }
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    out += &format!(
        "\n{} ok, {} warnings, {} failures, {} skipped\n",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail),
        count(Level::Skip)
    );
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// statvfs's field types differ by OS (32-bit block counts on macOS).
fn wide(v: impl Into<u64>) -> u64 {
    v.into()
}

fn owner_and_mode(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.uid(), m.mode()))
}

/// A file Gatehouse reads at start (missing is fine), checked for ownership when present.
fn optional_file(check: &str, path: &Path) -> Finding {
    match owner_and_mode(path) {
        None => ok(check, format!("{}: none", path.display())),
        meta => assess_owner_and_mode(check, path, meta, Level::Ok),
    }
}

pub fn doctor(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut findings = Vec::new();
    let euid = nix::unistd::geteuid().as_raw();
    findings.push(assess_root(euid));
    let os = defaults::Os::HOST;

    #[cfg(target_os = "linux")]
    if euid == 0 {
        findings.extend(probe_fanotify(&a.scope));
    } else {
        findings.push(finding(
            "fanotify",
            Level::Skip,
            "needs root".to_owned(),
            None,
        ));
    }

    // The extension, and what it is running.
    let status = crate::control::fetch_status_detail(&a.control_socket);
    let running = match &status {
        Ok(d) => {
            findings.push(ok(
                "extension",
                format!(
                    "{} (pid {}), {} mode, policy version {}",
                    d.status.agent, d.status.pid, d.status.mode, d.status.policy_version
                ),
            ));
            Some(d)
        }
        Err(e) => {
            // The control client's message already says what to do.
            findings.push(finding("extension", Level::Fail, format!("{e:#}"), None));
            None
        }
    };
    findings.push(assess_socket_mode(
        &a.control_socket,
        owner_and_mode(&a.control_socket),
    ));

    // The helper: directly on Linux (works with the extension down), and as the extension
    // sees it.
    if os == defaults::Os::Linux {
        findings.push(
            match crate::control::ping_helper_directly(&a.helper_socket) {
                Ok((agent, pid, _, rtt)) => ok(
                    "helper",
                    format!(
                        "{agent} (pid {pid}) answered on {} in {} us",
                        a.helper_socket.display(),
                        rtt.as_micros()
                    ),
                ),
                // The message already says what to do.
                Err(e) => finding("helper", Level::Fail, format!("{e:#}"), None),
            },
        );
    }
    if let Some(d) = running {
        findings.push(if d.status.helper_connected && !d.helper_breaker_open {
            ok(
                "helper link",
                "the extension is connected to the helper".to_owned(),
            )
        } else {
            finding(
                "helper link",
                Level::Warn,
                "the extension is not connected to the helper (or its breaker is open): \
                 analyses get the policy's fallback"
                    .to_owned(),
                Some("check the helper (above) and `gatehouse stats`".to_owned()),
            )
        });
    }

    // The policy: the named file, the running one's, or this OS's default.
    let policy_path = a
        .policy
        .clone()
        .or_else(|| {
            running
                .map(|d| PathBuf::from(&d.status.policy_origin))
                .filter(|p| p.is_absolute())
        })
        .or_else(|| os.paths().policy.map(PathBuf::from));
    let mut file_sha = None;
    match &policy_path {
        None => findings.push(finding(
            "policy",
            Level::Warn,
            "no policy file: the embedded default runs (monitor mode: nothing is denied)"
                .to_owned(),
            Some(
                "write /etc/gatehouse/policy.toml (see examples/) and start the extension \
                 with --policy"
                    .to_owned(),
            ),
        )),
        Some(p) => {
            let parsed = protocol::bounded::read_file(p, protocol::bounded::POLICY_MAX_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    file_sha = Some(sha256_hex(&bytes));
                    let text = String::from_utf8(bytes)
                        .map_err(|e| format!("{} is not UTF-8: {e}", p.display()))?;
                    policy::Policy::parse(&p.display().to_string(), &text)
                        .map(|pol| {
                            format!(
                                "{} mode, {} rules",
                                format!("{:?}", pol.mode()).to_lowercase(),
                                pol.rule_count()
                            )
                        })
                        .map_err(|e| e.to_string())
                });
            findings.push(assess_parse("policy", p, Some(parsed)));
            findings.push(assess_owner_and_mode(
                "policy file",
                p,
                owner_and_mode(p),
                Level::Fail,
            ));
        }
    }
    findings.push(assess_running_policy(
        file_sha.as_deref(),
        running.map(|d| d.policy_sha256.as_str()),
    ));

    // Local rules and runtime mutes: read at start, so they decide what is checked too.
    let local =
        match protocol::bounded::read_text(&a.local_rules, policy::local::LOCAL_RULES_MAX_BYTES) {
            Err(protocol::bounded::InputError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => Some(Err(e.to_string())),
            Ok(text) => Some(
                policy::LocalRules::parse_for(&a.local_rules.display().to_string(), &text, os)
                    .map(|l| format!("{} rules", l.len()))
                    .map_err(|e| e.to_string()),
            ),
        };
    findings.push(assess_parse("local rules", &a.local_rules, local));
    findings.push(optional_file("local rules file", &a.local_rules));
    findings.push(optional_file("mutes file", &a.mutes_file));
    findings.push(optional_file("transitive file", &a.transitive_file));
    if let Some(dir) = a.local_rules.parent() {
        findings.push(assess_owner_and_mode(
            "config directory",
            dir,
            owner_and_mode(dir),
            Level::Warn,
        ));
    }

    // The events log: its directory, and room for its rotation (the extension's defaults:
    // 16 MiB per file, 5 rotated files kept, so at most 6 files).
    let log_dir = a
        .events_log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    findings.push(assess_owner_and_mode(
        "events log dir",
        &log_dir,
        owner_and_mode(&log_dir),
        if os == defaults::Os::Linux {
            // The extension creates it on Linux.
            Level::Ok
        } else {
            Level::Fail
        },
    ));
    if owner_and_mode(&a.events_log).is_some() {
        findings.push(assess_owner_and_mode(
            "events log",
            &a.events_log,
            owner_and_mode(&a.events_log),
            Level::Ok,
        ));
    }
    let probe_dir = if log_dir.exists() {
        log_dir.clone()
    } else {
        log_dir.parent().unwrap_or(Path::new("/")).to_owned()
    };
    let available = nix::sys::statvfs::statvfs(&probe_dir)
        .map(|s| wide(s.blocks_available()).saturating_mul(wide(s.fragment_size())))
        .map_err(|e| e.desc().to_owned());
    findings.push(assess_disk(&probe_dir, available, 6 * 16 * 1024 * 1024));

    if a.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&findings));
    }
    Ok(if findings.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The kernel's fanotify, probed without any permission mark: `fanotify_init` of a content
/// (permission) group, closed at once with no mark; then a notification group's filesystem
/// mark of exec events on each scope, which can never block anyone.
#[cfg(target_os = "linux")]
fn probe_fanotify(scopes: &[PathBuf]) -> Vec<Finding> {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let init = Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
        EventFFlags::O_RDONLY,
    )
    .map(drop);
    let marks: Vec<(String, nix::Result<()>)> = match Fanotify::init(
        InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
        EventFFlags::O_RDONLY,
    ) {
        Ok(group) => scopes
            .iter()
            .map(|p| {
                let r = group.mark(
                    MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                    MaskFlags::FAN_OPEN_EXEC,
                    nix::fcntl::AT_FDCWD,
                    Some(p.as_path()),
                );
                (p.display().to_string(), r)
            })
            .collect(),
        Err(e) => scopes
            .iter()
            .map(|p| (p.display().to_string(), Err(e)))
            .collect(),
    };
    assess_fanotify(&release, init, &marks)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_os = "linux")]
    use nix::errno::Errno;

    #[test]
    fn root_table() {
        assert_eq!(assess_root(0).level, Level::Ok);
        let f = assess_root(1000);
        assert_eq!(f.level, Level::Fail);
        assert!(f.fix.unwrap().contains("sudo"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn fanotify_table() {
        // (fanotify_init, each scope's mark, the levels found, a text the report has)
        type Case = (
            Result<(), Errno>,
            Vec<Result<(), Errno>>,
            Vec<Level>,
            &'static str,
        );
        let cases: [Case; 5] = [
            (
                Ok(()),
                vec![Ok(())],
                vec![Level::Ok, Level::Ok],
                "permission events",
            ),
            (
                Err(Errno::EINVAL),
                vec![],
                vec![Level::Fail],
                "CONFIG_FANOTIFY_ACCESS",
            ),
            (
                Err(Errno::EPERM),
                vec![],
                vec![Level::Fail],
                "CAP_SYS_ADMIN",
            ),
            (
                Ok(()),
                vec![Err(Errno::EXDEV)],
                vec![Level::Ok, Level::Fail],
                "btrfs subvolume",
            ),
            (
                Ok(()),
                vec![Err(Errno::EINVAL), Ok(())],
                vec![Level::Ok, Level::Fail, Level::Ok],
                "Linux 5.0",
            ),
        ];
        for (init, marks, levels, text) in cases {
            let marks: Vec<(String, Result<(), Errno>)> =
                marks.into_iter().map(|r| ("/".to_owned(), r)).collect();
            let got = assess_fanotify("6.1.0", init, &marks);
            assert_eq!(
                got.iter().map(|f| f.level).collect::<Vec<_>>(),
                levels,
                "{got:?}"
            );
            let all = render(&got);
            assert!(all.contains(text), "{text} not in {all}");
            for f in got.iter().filter(|f| f.level == Level::Fail) {
                assert!(f.fix.is_some(), "a failure says what to do: {f:?}");
            }
        }
    }

    #[test]
    fn owner_and_mode_table() {
        let p = Path::new("/etc/gatehouse/policy.toml");
        let cases = [
            (
                Some((0, 0o100644)),
                Level::Fail,
                Level::Ok,
                "root-owned, mode 0644",
            ),
            (Some((0, 0o100600)), Level::Fail, Level::Ok, "mode 0600"),
            (
                Some((0, 0o100664)),
                Level::Fail,
                Level::Fail,
                "writable by group",
            ),
            (
                Some((0, 0o100646)),
                Level::Fail,
                Level::Fail,
                "writable by group or others",
            ),
            (
                Some((1000, 0o100644)),
                Level::Fail,
                Level::Fail,
                "uid 1000, not root",
            ),
            (None, Level::Fail, Level::Fail, "does not exist"),
            (None, Level::Ok, Level::Ok, "does not exist"),
        ];
        for (meta, missing, want, text) in cases {
            let f = assess_owner_and_mode("policy file", p, meta, missing);
            assert_eq!(f.level, want, "{meta:?}: {f:?}");
            assert!(f.detail.contains(text), "{f:?}");
            assert_eq!(f.fix.is_some(), want != Level::Ok, "{f:?}");
        }
    }

    #[test]
    fn socket_mode_table() {
        let p = Path::new("/run/gatehouse/control.sock");
        let cases = [
            (Some((0, 0o140600)), Level::Ok),
            (Some((0, 0o140666)), Level::Fail),
            (Some((1000, 0o140600)), Level::Fail),
            (None, Level::Skip),
        ];
        for (meta, want) in cases {
            assert_eq!(assess_socket_mode(p, meta).level, want, "{meta:?}");
        }
    }

    #[test]
    fn disk_table() {
        let mib = 1024 * 1024;
        let d = Path::new("/var/log/gatehouse");
        let cases = [
            (Ok(1000 * mib), Level::Ok, "1000 MiB free"),
            (Ok(50 * mib), Level::Warn, "may use 96 MiB"),
            (Ok(mib), Level::Fail, "1 MiB free"),
            (
                Err("No such file or directory".to_owned()),
                Level::Fail,
                "cannot stat",
            ),
        ];
        for (avail, want, text) in cases {
            let f = assess_disk(d, avail, 96 * mib);
            assert_eq!(f.level, want, "{f:?}");
            assert!(f.detail.contains(text), "{f:?}");
        }
    }

    #[test]
    fn parse_and_running_policy_table() {
        let p = Path::new("/etc/gatehouse/policy.toml");
        assert_eq!(assess_parse("policy", p, None).level, Level::Ok);
        assert_eq!(
            assess_parse("policy", p, Some(Ok("3 rules".into()))).level,
            Level::Ok
        );
        let bad = assess_parse("policy", p, Some(Err("line 3: bad".into())));
        assert_eq!(bad.level, Level::Fail);
        assert!(bad.fix.unwrap().contains("gatehouse policy check"));
        let cases = [
            (Some("a"), Some("a"), Level::Ok),
            (Some("a"), Some("b"), Level::Warn),
            (None, Some("b"), Level::Skip),
            (Some("a"), None, Level::Skip),
        ];
        for (f, r, want) in cases {
            assert_eq!(assess_running_policy(f, r).level, want, "{f:?} {r:?}");
        }
    }

    #[test]
    fn render_puts_the_fix_under_its_check_and_counts() {
        let text = render(&[
            assess_root(0),
            assess_root(5),
            assess_socket_mode(Path::new("/s"), None),
        ]);
        assert!(text.starts_with("ok    root "), "{text}");
        assert!(text.contains("FAIL  root "), "{text}");
        assert!(text.contains("-> run it as root"), "{text}");
        assert!(
            text.ends_with("1 ok, 0 warnings, 1 failures, 1 skipped\n"),
            "{text}"
        );
    }
}
