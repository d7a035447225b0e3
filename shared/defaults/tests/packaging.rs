//! The macOS packaging (plists, entitlements, `build-pkg.sh`) names what the defaults module
//! says: a system extension gets no arguments, so a name that drifts here is a broken install.

use std::path::PathBuf;

use defaults::{MACOS_SUPPORT_DIR, Os, extension_requirement, installer_dirs, macos};
use plist::{Dictionary, Value};

/// The placeholder `build-pkg.sh` substitutes with the team id.
const TEAM: &str = "@TEAM_ID@";

fn packaging(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/macos")
        .join(rel)
}

fn dict(rel: &str) -> Dictionary {
    let path = packaging(rel);
    Value::from_file(&path)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        .into_dictionary()
        .unwrap_or_else(|| panic!("{} is not a dictionary", path.display()))
}

fn string<'a>(d: &'a Dictionary, key: &str) -> &'a str {
    d.get(key)
        .and_then(Value::as_string)
        .unwrap_or_else(|| panic!("no string {key}"))
}

#[test]
fn helper_launchd_job_matches_defaults() {
    let d = dict("launchd/dev.gatehouse.helper.plist");
    let paths = Os::Macos.paths();
    assert_eq!(string(&d, "Label"), macos::HELPER_LABEL);
    assert_eq!(string(&d, "UserName"), "root");
    assert_eq!(Some(string(&d, "StandardErrorPath")), paths.helper_log);
    let args: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(Value::as_array)
        .expect("ProgramArguments")
        .iter()
        .map(|v| v.as_string().expect("string argument"))
        .collect();
    assert_eq!(Some(args[0]), paths.helper_executable);
    let req = args
        .iter()
        .position(|a| *a == "--peer-requirement")
        .map(|i| args[i + 1])
        .expect("--peer-requirement");
    assert_eq!(req, extension_requirement(TEAM));
    let services = d
        .get("MachServices")
        .and_then(Value::as_dictionary)
        .expect("MachServices");
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        [macos::HELPER_MACH_SERVICE]
    );
}

#[test]
fn notifier_launch_agent_matches_defaults() {
    let d = dict("launchd/dev.gatehouse.notifier.plist");
    assert_eq!(string(&d, "Label"), macos::NOTIFIER_LABEL);
    assert_eq!(string(&d, "AssociatedBundleIdentifiers"), macos::APP_ID);
    assert_eq!(string(&d, "LimitLoadToSessionType"), "Aqua");
    assert!(
        d.get("UserName").is_none(),
        "an agent runs as the session's user"
    );
    let args: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(Value::as_array)
        .expect("ProgramArguments")
        .iter()
        .map(|v| v.as_string().expect("string argument"))
        .collect();
    assert_eq!(args, [macos::APP_EXECUTABLE, "notify"]);
}

#[test]
fn extension_bundle_matches_defaults() {
    let info = dict("extension/Info.plist");
    assert_eq!(string(&info, "CFBundleIdentifier"), macos::EXTENSION_ID);
    assert_eq!(string(&info, "CFBundleExecutable"), "gatehouse-extension");
    assert_eq!(
        string(&info, "NSEndpointSecurityMachServiceName"),
        macos::extension_mach_service(TEAM)
    );
    let ext = dict("extension/gatehouse-extension.entitlements");
    assert_eq!(
        string(&ext, "com.apple.application-identifier"),
        format!("{TEAM}.{}", macos::EXTENSION_ID)
    );
    let app = dict("extension/host-app.entitlements");
    assert_eq!(
        string(&app, "com.apple.application-identifier"),
        format!("{TEAM}.{}", macos::APP_ID)
    );
}

#[test]
fn pkg_script_matches_defaults() {
    let path = packaging("build-pkg.sh");
    let script = std::fs::read_to_string(&path).expect("build-pkg.sh");
    let paths = Os::Macos.paths();
    let helper = paths.helper_executable.expect("macOS helper path");
    let helper_dir = std::path::Path::new(helper).parent().unwrap();
    assert_eq!(helper_dir, std::path::Path::new(MACOS_SUPPORT_DIR));
    let must = [
        format!("-i {} ", macos::HELPER_SIGNING_ID),
        format!("-i {} ", macos::CLI_SIGNING_ID),
        format!("--identifier {} ", macos::PKG_ID),
        format!("{}.systemextension", macos::EXTENSION_ID),
        format!("support=\"$payload{MACOS_SUPPORT_DIR}\""),
        format!("\"$support/{}\"", helper.rsplit('/').next().unwrap()),
        format!("\"$payload{}\"", paths.cli_executable),
        "GATEHOUSE_TEAM_ID".to_owned(),
    ];
    for m in &must {
        assert!(script.contains(m.as_str()), "build-pkg.sh lacks {m:?}");
    }
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn plist_at(path: &std::path::Path) -> Dictionary {
    Value::from_file(path)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        .into_dictionary()
        .unwrap_or_else(|| panic!("{} is not a dictionary", path.display()))
}

/// `build-pkg.sh --stage-only` lays out the pkg's payload and scripts on Linux: every path, bundle
/// id, label and script agrees with the defaults module, the team id is substituted everywhere,
/// and the installer, upgrade and uninstall scripts name the same things.
#[test]
fn staged_payload_matches_defaults() {
    let out = tempfile::tempdir().unwrap();
    let team = "ABCDE12345";
    let st = std::process::Command::new("sh")
        .arg(packaging("build-pkg.sh"))
        .arg("--stage-only")
        .arg(out.path())
        .env("TEAM_ID", team)
        .status()
        .expect("run build-pkg.sh");
    assert!(st.success(), "build-pkg.sh --stage-only: {st:?}");
    let payload = out.path().join("payload");
    let at = |p: &str| payload.join(p.trim_start_matches('/'));
    let paths = Os::Macos.paths();

    // The host app and the extension inside it.
    let app = at("/Applications/Gatehouse.app/Contents");
    let info = plist_at(&app.join("Info.plist"));
    assert_eq!(string(&info, "CFBundleIdentifier"), macos::APP_ID);
    assert_eq!(string(&info, "CFBundlePackageType"), "APPL");
    let exe = string(&info, "CFBundleExecutable");
    assert!(
        executable(&app.join("MacOS").join(exe)),
        "app executable {exe}"
    );
    let sysx = app.join(format!(
        "Library/SystemExtensions/{}.systemextension/Contents",
        macos::EXTENSION_ID
    ));
    let ext = plist_at(&sysx.join("Info.plist"));
    assert_eq!(string(&ext, "CFBundleIdentifier"), macos::EXTENSION_ID);
    assert_eq!(
        string(&ext, "NSEndpointSecurityMachServiceName"),
        macos::extension_mach_service(team)
    );
    let ext_exe = string(&ext, "CFBundleExecutable");
    assert!(executable(&sysx.join("MacOS").join(ext_exe)));

    // The helper, its job, the CLI and the uninstaller.
    let helper = paths.helper_executable.unwrap();
    assert!(executable(&at(helper)), "{helper}");
    assert!(executable(&at(paths.cli_executable)));
    let job = plist_at(&at(macos::HELPER_PLIST));
    assert_eq!(string(&job, "Label"), macos::HELPER_LABEL);
    let agent = plist_at(&at(macos::NOTIFIER_PLIST));
    assert_eq!(string(&agent, "Label"), macos::NOTIFIER_LABEL);
    assert!(
        executable(&at(macos::APP_EXECUTABLE)),
        "{}",
        macos::APP_EXECUTABLE
    );
    let uninstall = at(&format!("{MACOS_SUPPORT_DIR}/uninstall.sh"));
    assert!(executable(&uninstall));
    let un = read(&uninstall);
    for (what, must) in [
        ("deactivates", " deactivate".to_owned()),
        (
            "boots the job out",
            format!("launchctl bootout system/{}", macos::HELPER_LABEL),
        ),
        ("removes the app", "rm -rf \"$APP\"".to_owned()),
        ("removes the job", format!("rm -f {}", macos::HELPER_PLIST)),
        (
            "removes the agent",
            format!("rm -f {}", macos::NOTIFIER_PLIST),
        ),
        ("removes the CLI", format!("rm -f {}", paths.cli_executable)),
        (
            "removes the support dir",
            format!("rm -rf \"{MACOS_SUPPORT_DIR}\""),
        ),
        (
            "forgets the receipt",
            format!("pkgutil --forget {}", macos::PKG_ID),
        ),
    ] {
        assert!(un.contains(&must), "uninstall.sh {what}: lacks {must:?}");
    }

    // No placeholder left in anything the installer puts on disk.
    for p in [
        app.join("Info.plist"),
        sysx.join("Info.plist"),
        at(macos::HELPER_PLIST),
    ] {
        assert!(
            !read(&p).contains('@'),
            "unsubstituted placeholder in {}",
            p.display()
        );
    }

    // Scripts.
    let scripts = out.path().join("scripts");
    let pre = read(&scripts.join("preinstall"));
    let post = read(&scripts.join("postinstall"));
    assert!(executable(&scripts.join("preinstall")) && executable(&scripts.join("postinstall")));
    assert!(pre.contains(&format!("LABEL={}", macos::HELPER_LABEL)));
    assert!(
        pre.contains(helper),
        "preinstall waits for {helper} to exit"
    );
    for dir in installer_dirs(Os::Macos) {
        assert!(
            post.contains(&format!("mkdir -p \"{dir}\"")),
            "postinstall does not create {dir}"
        );
    }
    assert!(post.contains(&format!(
        "launchctl bootstrap system {}",
        macos::HELPER_PLIST
    )));
    assert!(post.contains(&format!("launchctl bootout system/{}", macos::HELPER_LABEL)));
    assert!(
        post.contains(&format!(
            "/Applications/Gatehouse.app/Contents/MacOS/{exe}\" activate"
        )),
        "postinstall requests activation or replacement"
    );
    assert!(!post.contains("policy.toml\"") && !un.is_empty());

    // The app is not relocatable, and the distribution installs our component.
    let work = out.path().join("work");
    let component = Value::from_file(work.join("component.plist")).unwrap();
    let c = component.as_array().unwrap()[0].as_dictionary().unwrap();
    assert_eq!(
        c.get("BundleIsRelocatable").and_then(Value::as_boolean),
        Some(false)
    );
    assert_eq!(
        string(c, "RootRelativeBundlePath"),
        "Applications/Gatehouse.app"
    );
    let dist = read(&work.join("distribution.xml"));
    assert!(dist.contains(&format!("<pkg-ref id=\"{}\"", macos::PKG_ID)));
    assert!(!dist.contains('@'), "version substituted");
}
