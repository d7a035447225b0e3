//! Fuzz target: the Santa importer. The input is rules JSON, or a file-access plist, or both
//! separated by the first NUL byte. Import never panics, and whatever it produces is a policy
//! that `Policy::parse` accepts (`gatehouse policy import-santa` writes it out as the policy).
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::Policy;

fn import(rules: Option<&[u8]>, plist: Option<&[u8]>) {
    let rules = match rules.map(std::str::from_utf8) {
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return,
        None => None,
    };
    if let Ok(imported) = policy::santa::import(rules, plist) {
        if let Err(e) = Policy::parse("imported.toml", &imported.policy) {
            panic!(
                "the import does not parse: {e}\n--- policy ---\n{}",
                imported.policy
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.iter().position(|b| *b == 0) {
        Some(nul) => import(Some(&data[..nul]), Some(&data[nul + 1..])),
        None => {
            import(Some(data), None);
            import(None, Some(data));
        }
    }
});
