//! Fuzz target: the policy parser on arbitrary text. `Policy::parse` returns a policy or an
//! error whose line and column point inside the text; a policy that parses decides events of
//! every kind, with and without facts, without panicking, and parses again from its own source.
#![no_main]

use std::sync::LazyLock;

use gatehouse_fuzz::{check_position, sample_events};
use libfuzzer_sys::fuzz_target;
use model::{Event, Facts};
use policy::Policy;

static EVENTS: LazyLock<Vec<(Event, Facts)>> = LazyLock::new(sample_events);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse("fuzz.toml", text) {
        Ok(p) => {
            for (ev, facts) in EVENTS.iter() {
                let _ = p.decide(ev, facts);
                let _ = p.deadline(ev.kind());
            }
            let _ = (p.watched_paths(), p.mutes(), p.rule_count(), p.mode());
            assert_eq!(p.source(), text);
        }
        Err(e) => check_position(text, &e),
    }
});
