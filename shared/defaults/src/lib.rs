//! Gatehouse's per-OS defaults in one place: file and socket paths, service names, bundle and
//! signing identifiers, the helper's code-signing requirement, the directories the installer
//! (not the extension) creates, and the macOS system binaries the slow path depends on.
//!
//! A macOS system extension is started with no arguments, so whatever it needs must be right
//! by default; the binaries, the CLI, the policy compiler and the packaging (plists, pkg
//! scripts, checked by `tests/packaging.rs`) all read these values instead of repeating them.
//! Nothing here does I/O except [`check_parent`]'s caller-supplied probe.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

/// The operating system a build (or a `policy eval --os`) targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Os {
    Linux,
    Macos,
}

impl Os {
    /// The OS this binary was built for (anything not macOS behaves as Linux).
    pub const HOST: Os = if cfg!(target_os = "macos") {
        Os::Macos
    } else {
        Os::Linux
    };

    pub const ALL: [Os; 2] = [Os::Linux, Os::Macos];

    pub const fn as_str(self) -> &'static str {
        match self {
            Os::Linux => "linux",
            Os::Macos => "macos",
        }
    }

    /// The local rules file (`gatehouse rule add`), beside the policy file under the
    /// self-protected configuration directory: the extension loads it at start.
    pub const fn local_rules(self) -> &'static str {
        match self {
            Os::Linux => "/etc/gatehouse/local-rules.toml",
            Os::Macos => "/Library/Application Support/Gatehouse/local-rules.toml",
        }
    }

    /// The runtime mutes file (`gatehouse mute add|remove`), beside the local rules: the
    /// extension rewrites it atomically on every change and loads it at start, so a mute
    /// survives a restart as a local rule does.
    pub const fn mutes_file(self) -> &'static str {
        match self {
            Os::Linux => "/etc/gatehouse/mutes.toml",
            Os::Macos => "/Library/Application Support/Gatehouse/mutes.toml",
        }
    }

    /// The transitive allows file (files compiler processes wrote, `transitive_rules`), beside
    /// the mutes file: state the extension alone writes (atomically, after each burst of new
    /// allows and on `gatehouse rule transitive clear`) and reads back at start. Kept under
    /// the self-protected configuration directory rather than a state directory so that what
    /// is allowed at the next start is as protected as the policy that allowed it.
    pub const fn transitive_file(self) -> &'static str {
        match self {
            Os::Linux => "/etc/gatehouse/transitive.json",
            Os::Macos => "/Library/Application Support/Gatehouse/transitive.json",
        }
    }

    /// This OS's paths.
    pub const fn paths(self) -> &'static Paths {
        match self {
            Os::Linux => &LINUX,
            Os::Macos => &MACOS,
        }
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Os {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linux" => Ok(Os::Linux),
            "macos" | "darwin" => Ok(Os::Macos),
            _ => Err(format!("unknown OS {s:?}: expected linux or macos")),
        }
    }
}

/// Where one OS's build finds and puts things when no argument says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    /// The policy file read when `--policy` is absent; `None` means the embedded default.
    pub policy: Option<&'static str>,
    /// The control socket the `gatehouse` CLI talks to.
    pub control_socket: &'static str,
    /// The helper's Unix socket (Linux); macOS reaches the helper over XPC.
    pub helper_socket: Option<&'static str>,
    pub events_log: &'static str,
    /// The helper's executable as installed (macOS; Linux finds it next to the extension).
    pub helper_executable: Option<&'static str>,
    /// The helper's stderr log as the launchd job writes it (macOS).
    pub helper_log: Option<&'static str>,
    pub cli_executable: &'static str,
}

/// Where the macOS package installs the helper, the policy and the control socket.
pub const MACOS_SUPPORT_DIR: &str = "/Library/Application Support/Gatehouse";

const LINUX: Paths = Paths {
    policy: None,
    control_socket: "/run/gatehouse/control.sock",
    helper_socket: Some("/run/gatehouse/helper.sock"),
    events_log: "/var/log/gatehouse/events.jsonl",
    helper_executable: None,
    helper_log: None,
    cli_executable: "/usr/local/bin/gatehouse",
};

const MACOS: Paths = Paths {
    policy: Some("/Library/Application Support/Gatehouse/policy.toml"),
    control_socket: "/Library/Application Support/Gatehouse/control.sock",
    helper_socket: None,
    events_log: "/var/log/gatehouse/events.jsonl",
    helper_executable: Some("/Library/Application Support/Gatehouse/gatehouse-helper"),
    helper_log: Some("/var/log/gatehouse/helper.log"),
    cli_executable: "/usr/local/bin/gatehouse",
};

/// macOS identities: the bundle and signing identifiers `build-pkg.sh` signs with.
pub mod macos {
    /// The system extension's bundle id, which is also its signing identifier.
    pub const EXTENSION_ID: &str = "dev.gatehouse.extension";
    /// The host app that submits the `OSSystemExtensionRequest`.
    pub const APP_ID: &str = "dev.gatehouse.app";
    /// `codesign -i` of the helper.
    pub const HELPER_SIGNING_ID: &str = "dev.gatehouse.helper";
    /// The helper's launchd label and the mach service it advertises.
    pub const HELPER_LABEL: &str = "dev.gatehouse.helper";
    pub const HELPER_MACH_SERVICE: &str = "dev.gatehouse.helper";
    /// `codesign -i` of the CLI.
    pub const CLI_SIGNING_ID: &str = "dev.gatehouse.cli";
    /// The pkg's component identifier.
    pub const PKG_ID: &str = "dev.gatehouse.pkg";
    /// The launchd plist the pkg installs.
    pub const HELPER_PLIST: &str = "/Library/LaunchDaemons/dev.gatehouse.helper.plist";
    /// The block notifier: a launch agent in each user session running `Gatehouse notify`.
    pub const NOTIFIER_LABEL: &str = "dev.gatehouse.notifier";
    pub const NOTIFIER_PLIST: &str = "/Library/LaunchAgents/dev.gatehouse.notifier.plist";
    /// The host app's executable (the notifier agent runs it with `notify`).
    pub const APP_EXECUTABLE: &str = "/Applications/Gatehouse.app/Contents/MacOS/Gatehouse";

    /// The mach service the system extension may advertise (`NSEndpointSecurityMachServiceName`:
    /// it must start with the team id).
    pub fn extension_mach_service(team_id: &str) -> String {
        format!("{team_id}.{EXTENSION_ID}.xpc")
    }
}

/// The Apple developer team Gatehouse's macOS binaries are signed by, compiled in from
/// `GATEHOUSE_TEAM_ID` at build time (`build-pkg.sh` documents it). `None` in development
/// builds: then no signing requirement is compiled in and the team-bound pins are absent.
pub const TEAM_ID: Option<&str> = option_env!("GATEHOUSE_TEAM_ID");

// A mistyped team id must fail the build, not produce a requirement nothing satisfies.
const _: () = if let Some(t) = TEAM_ID {
    assert!(
        is_team_id(t),
        "GATEHOUSE_TEAM_ID must be 10 upper-case letters or digits"
    );
};

/// An Apple team identifier: 10 upper-case ASCII letters or digits.
pub const fn is_team_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_uppercase() || b[i].is_ascii_digit()) {
            return false;
        }
        i += 1;
    }
    true
}

/// A code-signing requirement for Developer ID signed code of `team_id` with `identifier`:
/// Apple's anchor, the Developer ID intermediate (OID 1.2.840.113635.100.6.2.6) and leaf
/// (1.2.840.113635.100.6.1.13) markers, the team in the leaf's OU, and the identifier.
pub fn developer_id_requirement(identifier: &str, team_id: &str) -> String {
    format!(
        "anchor apple generic and certificate 1[field.1.2.840.113635.100.6.2.6] and \
         certificate leaf[field.1.2.840.113635.100.6.1.13] and \
         certificate leaf[subject.OU] = \"{team_id}\" and identifier \"{identifier}\""
    )
}

/// The requirement the extension holds the helper's XPC peer to when no
/// `--helper-requirement` is given (a system extension gets no arguments): compiled in from
/// [`TEAM_ID`]; `None` in development builds.
pub fn helper_requirement() -> Option<String> {
    TEAM_ID.map(|t| developer_id_requirement(macos::HELPER_SIGNING_ID, t))
}

/// The requirement the helper holds its XPC peers to (the launchd plist passes it with
/// `@TEAM_ID@` substituted).
pub fn extension_requirement(team_id: &str) -> String {
    developer_id_requirement(macos::EXTENSION_ID, team_id)
}

/// Directories the extension itself may create at start-up. On Linux the runtime and log
/// directories are made on demand, as before. On macOS none: `/` is the read-only system
/// volume, and a system extension that fails on a `mkdir` exits before `es_new_client`, which
/// launchd then restarts in a loop; the installer creates [`installer_dirs`] instead.
pub fn dirs_to_create(os: Os) -> &'static [&'static str] {
    match os {
        Os::Linux => &["/run/gatehouse", "/var/log/gatehouse"],
        Os::Macos => &[],
    }
}

/// Directories the package installer must create (the pkg payload and `postinstall`).
pub fn installer_dirs(os: Os) -> &'static [&'static str] {
    match os {
        Os::Linux => &[],
        Os::Macos => &[MACOS_SUPPORT_DIR, "/var/log/gatehouse"],
    }
}

/// A file the extension would write whose directory it may not create and that is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingDir {
    /// What the file is for ("control socket", "events log").
    pub what: &'static str,
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl fmt::Display for MissingDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} {} is off: its directory {} does not exist, and the extension never creates \
             directories on macOS; reinstall the Gatehouse pkg (its postinstall creates it) or \
             run `sudo mkdir -p '{}'`, then restart the extension",
            self.what,
            self.path.display(),
            self.dir.display(),
            self.dir.display()
        )
    }
}

impl std::error::Error for MissingDir {}

/// Whether the extension on `os` can use `path` (the `what` file) as configured: its directory
/// exists (`dir_exists` is asked, once), or the extension may create it ([`Os::Linux`]). On
/// macOS a missing directory is reported, and the caller degrades (runs without that file)
/// rather than exits: protection matters more than the control socket or the events log.
pub fn check_parent(
    os: Os,
    what: &'static str,
    path: &Path,
    dir_exists: impl FnOnce(&Path) -> bool,
) -> Result<(), MissingDir> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if os == Os::Linux || dir_exists(dir) {
        return Ok(());
    }
    Err(MissingDir {
        what,
        path: path.to_owned(),
        dir: dir.to_owned(),
    })
}

/// A macOS system binary the slow path depends on, recognised by the kernel's platform-binary
/// flag, an enforced CDHash and this signing identifier (the path is for display only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemDependency {
    pub signing_id: &'static str,
    pub path: &'static str,
}

const fn dep(signing_id: &'static str, path: &'static str) -> SystemDependency {
    SystemDependency { signing_id, path }
}

/// The macOS binaries whose execs are allowed on the fast path whatever the policy's SHA-256
/// rules say (`slow-path-never-gates-itself`). The helper's Security-framework calls wait on
/// trust evaluation, code-signing, directory and preference daemons, which launchd starts on
/// demand through xpcproxy; with a SHA-256 rule every exec needs the helper, so their launch
/// would wait for the helper that waits for them (docs/FIELD-REPORT.md). The list follows
/// Endpoint Security's own default mute set (the daemons it mutes to avoid the same deadlock,
/// `es_muted_paths_events` on a fresh client) plus the daemons the helper's calls reach.
pub const MACOS_SLOW_PATH_DEPENDENCIES: &[SystemDependency] = &[
    // Process launch itself.
    dep("com.apple.xpc.launchd", "/sbin/launchd"),
    dep("com.apple.xpc.proxy", "/usr/libexec/xpcproxy"),
    dep("com.apple.runningboardd", "/usr/libexec/runningboardd"),
    // Code signing and trust evaluation (SecCodeCheckValidity, SecTrust).
    dep("com.apple.trustd", "/usr/libexec/trustd"),
    dep("com.apple.syspolicyd", "/usr/libexec/syspolicyd"),
    dep("com.apple.securityd", "/usr/sbin/securityd"),
    dep("com.apple.MobileFileIntegrity", "/usr/libexec/amfid"),
    dep("com.apple.ocspd", "/usr/sbin/ocspd"),
    dep(
        "com.apple.CodeSigningHelper",
        "/System/Library/Frameworks/Security.framework/Versions/A/XPCServices/com.apple.CodeSigningHelper.xpc",
    ),
    // Users, preferences, privacy and launch services the frameworks consult.
    dep("com.apple.opendirectoryd", "/usr/libexec/opendirectoryd"),
    dep("com.apple.cfprefsd.xpc.daemon", "/usr/sbin/cfprefsd"),
    dep(
        "com.apple.tccd",
        "/System/Library/PrivateFrameworks/TCC.framework/Support/tccd",
    ),
    dep(
        "com.apple.coreservicesd",
        "/System/Library/CoreServices/coreservicesd",
    ),
    dep("com.apple.notifyd", "/usr/sbin/notifyd"),
    dep("com.apple.configd", "/usr/libexec/configd"),
    dep("com.apple.mDNSResponder", "/usr/sbin/mDNSResponder"),
    // Volumes (the helper's DiskArbitration calls), logging, ES and system extensions.
    dep(
        "com.apple.diskarbitrationd",
        "/usr/libexec/diskarbitrationd",
    ),
    dep("com.apple.logd", "/usr/libexec/logd"),
    dep(
        "com.apple.endpointsecurityd",
        "/usr/libexec/endpointsecurityd",
    ),
    dep(
        "com.apple.sysextd",
        "/System/Library/Frameworks/SystemExtensions.framework/Versions/A/Helpers/sysextd",
    ),
    dep("com.apple.kernelmanagerd", "/usr/libexec/kernelmanagerd"),
    dep("com.apple.watchdogd", "/usr/libexec/watchdogd"),
];

/// macOS processes that install packages, allowed by the embedded self-protection to update
/// Gatehouse's files so that a pkg upgrade works while the extension runs. They match only as
/// platform binaries (the kernel's flag) with this signing id: Installer.app and
/// `/usr/sbin/installer`, the PackageKit daemons that write the payload, and the service that
/// runs the pkg's scripts.
pub const MACOS_INSTALLER_SIGNING_IDS: &[&str] = &[
    "com.apple.installer",
    "com.apple.installd",
    "com.apple.system_installd",
    "com.apple.package_script_service",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_names_round_trip() {
        for os in Os::ALL {
            assert_eq!(os.as_str().parse::<Os>(), Ok(os));
        }
        assert_eq!("darwin".parse::<Os>(), Ok(Os::Macos));
        assert!(
            "windows"
                .parse::<Os>()
                .unwrap_err()
                .contains("linux or macos")
        );
        assert_eq!(
            Os::HOST,
            if cfg!(target_os = "macos") {
                Os::Macos
            } else {
                Os::Linux
            }
        );
    }

    #[test]
    fn dirs_to_create_table() {
        let cases: [(Os, &[&str]); 2] = [
            (Os::Linux, &["/run/gatehouse", "/var/log/gatehouse"]),
            (Os::Macos, &[]),
        ];
        for (os, want) in cases {
            assert_eq!(dirs_to_create(os), want, "{os}");
        }
        // Every file the extension writes by default lives in a directory it creates (Linux)
        // or the installer creates (macOS).
        for os in Os::ALL {
            let p = os.paths();
            let mut dirs: Vec<&str> = dirs_to_create(os).to_vec();
            dirs.extend(installer_dirs(os));
            for file in [
                Some(p.control_socket),
                Some(p.events_log),
                p.helper_socket,
                p.helper_log,
            ]
            .into_iter()
            .flatten()
            {
                let parent = Path::new(file).parent().unwrap();
                assert!(
                    dirs.iter().any(|d| Path::new(d) == parent),
                    "{os}: nobody creates {}",
                    parent.display()
                );
            }
        }
    }

    #[test]
    fn check_parent_table() {
        let sock = Path::new("/Library/Application Support/Gatehouse/control.sock");
        let cases = [
            (Os::Linux, false, true),
            (Os::Linux, true, true),
            (Os::Macos, true, true),
            (Os::Macos, false, false),
        ];
        for (os, exists, ok) in cases {
            let r = check_parent(os, "control socket", sock, |_| exists);
            assert_eq!(r.is_ok(), ok, "{os} exists={exists}");
            if let Err(e) = r {
                let text = e.to_string();
                assert!(text.contains("control socket"), "{text}");
                assert!(
                    text.contains("Application Support/Gatehouse does not"),
                    "{text}"
                );
                assert!(text.contains("reinstall"), "{text}");
            }
        }
        // A bare file name has no directory to check.
        assert!(check_parent(Os::Macos, "events log", Path::new("x"), |_| false).is_ok());
    }

    #[test]
    fn requirements_name_identifier_and_team() {
        let r = developer_id_requirement("dev.gatehouse.helper", "ABCDE12345");
        assert!(r.starts_with("anchor apple generic and "), "{r}");
        assert!(
            r.contains("certificate leaf[subject.OU] = \"ABCDE12345\""),
            "{r}"
        );
        assert!(r.ends_with("identifier \"dev.gatehouse.helper\""), "{r}");
        assert!(r.contains("1.2.840.113635.100.6.2.6"), "{r}");
        assert!(r.contains("1.2.840.113635.100.6.1.13"), "{r}");
        assert_eq!(helper_requirement().is_some(), TEAM_ID.is_some());
        assert_eq!(
            macos::extension_mach_service("ABCDE12345"),
            "ABCDE12345.dev.gatehouse.extension.xpc"
        );
    }

    #[test]
    fn team_id_table() {
        for (s, ok) in [
            ("ABCDE12345", true),
            ("abcde12345", false),
            ("ABCDE1234", false),
            ("ABCDE123456", false),
            ("ABCDE-2345", false),
            ("", false),
        ] {
            assert_eq!(is_team_id(s), ok, "{s:?}");
        }
    }

    #[test]
    fn dependency_list_is_well_formed() {
        let mut ids: Vec<&str> = MACOS_SLOW_PATH_DEPENDENCIES
            .iter()
            .map(|d| d.signing_id)
            .collect();
        for required in [
            "com.apple.trustd",
            "com.apple.syspolicyd",
            "com.apple.securityd",
            "com.apple.MobileFileIntegrity",
            "com.apple.ocspd",
            "com.apple.opendirectoryd",
            "com.apple.diskarbitrationd",
            "com.apple.xpc.proxy",
            "com.apple.xpc.launchd",
            "com.apple.tccd",
            "com.apple.runningboardd",
        ] {
            assert!(ids.contains(&required), "{required} missing");
        }
        for d in MACOS_SLOW_PATH_DEPENDENCIES {
            assert!(d.signing_id.starts_with("com.apple."), "{d:?}");
            assert!(d.path.starts_with('/'), "{d:?}");
        }
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "a signing id is listed twice");
    }
}
