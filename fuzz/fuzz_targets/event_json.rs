//! Fuzz target: the event and facts JSON decoders (`gatehouse policy eval --event EVENT.json
//! --facts FACTS.json`). The input is an event, or an event and facts separated by the first NUL
//! byte. Decoding never panics, a decoded value round-trips through JSON unchanged, and the
//! embedded default policy decides any decoded event with any decoded facts.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use model::{Event, Facts};
use policy::Policy;

static DEFAULT: LazyLock<Policy> = LazyLock::new(Policy::embedded_default);

fn round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(v).expect("a decoded value encodes");
    let back: T = serde_json::from_str(&json).expect("an encoded value decodes");
    assert_eq!(&back, v, "JSON round trip through {json}");
}

fuzz_target!(|data: &[u8]| {
    let (event, facts) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
        None => (data, None),
    };
    let event = serde_json::from_slice::<Event>(event).ok();
    let facts = match facts {
        Some(f) => serde_json::from_slice::<Facts>(f).ok(),
        // The whole input as facts too: the same decoder shapes, other types.
        None => serde_json::from_slice::<Facts>(data).ok(),
    };
    if let Some(e) = &event {
        round_trip(e);
    }
    if let Some(f) = &facts {
        round_trip(f);
    }
    if let Some(e) = &event {
        let _ = DEFAULT.decide(e, facts.as_ref().unwrap_or(&Facts::NONE));
    }
});
