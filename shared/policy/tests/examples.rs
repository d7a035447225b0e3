//! Every policy in the repository's examples/ directory is accepted.

use std::path::Path;

use policy::Policy;

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let origin = path.display().to_string();
            if let Err(e) = Policy::parse(&origin, &text) {
                panic!("{e}");
            }
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    for required in [
        "developer-laptop.toml",
        "kiosk.toml",
        "server-packaged-only.toml",
    ] {
        assert!(
            seen.iter().any(|s| s == required),
            "{required} missing from {seen:?}"
        );
    }
}

#[test]
fn embedded_default_parses() {
    Policy::parse("default.toml", policy::EMBEDDED_DEFAULT_TOML).unwrap();
}
