//! The event and facts JSON examples in FORMAT.md parse as the model's JSON forms and decide
//! (so the documentation cannot drift from what `policy eval --event/--facts` reads).

use model::{Event, Facts, Outcome};
use policy::{Os, Policy};

fn json_blocks(doc: &str) -> Vec<String> {
    let start = doc
        .find("## `policy eval`: event and facts JSON")
        .expect("FORMAT.md has the eval JSON section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .split("```json\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("closed block")].to_owned())
        .collect()
}

#[test]
fn format_md_eval_examples_parse_and_decide() {
    let doc = include_str!("../FORMAT.md");
    let blocks = json_blocks(doc);
    assert_eq!(blocks.len(), 4, "three events and one facts object");
    let p = Policy::embedded_default_for(Os::Macos);
    let facts: Facts = serde_json::from_str(&blocks[3]).expect("facts example parses");
    assert!(facts.sha256.is_some() && facts.certificate.is_some());
    assert!(facts.package.is_some() && facts.volume.is_some());
    let kinds: Vec<String> = blocks[..3]
        .iter()
        .map(|b| {
            let ev: Event = serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
            assert!(matches!(p.decide(&ev, &facts), Outcome::Decided(_)), "{b}");
            ev.kind().as_str().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["exec", "open", "mount"]);
}
