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
        format!("launchctl bootstrap system {}", macos::HELPER_PLIST),
        format!("launchctl bootout system/{}", macos::HELPER_LABEL),
        format!("\"$payload{}\"", paths.cli_executable),
        "GATEHOUSE_TEAM_ID".to_owned(),
    ];
    for m in &must {
        assert!(script.contains(m.as_str()), "build-pkg.sh lacks {m:?}");
    }
    // The installer, not the extension, makes every directory the extension writes into.
    let post = script
        .split("<<'POST'")
        .nth(1)
        .and_then(|s| s.split("\nPOST\n").next())
        .expect("postinstall heredoc");
    for dir in installer_dirs(Os::Macos) {
        assert!(
            post.contains(&format!("mkdir -p \"{dir}\"")),
            "postinstall does not create {dir}"
        );
    }
}
