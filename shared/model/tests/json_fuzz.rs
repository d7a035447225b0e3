//! Fuzzing the model's JSON decoders, which read untrusted files (`gatehouse policy eval
//! --event EVENT.json --facts FACTS.json`; docs/DESIGN.md 7: decoders of every untrusted input never
//! panic): arbitrary bytes, mutated valid events and facts, and deep nesting decode to `Ok` or
//! `Err`, never a panic; every valid event and facts value round-trips through JSON.

use model::{
    AccessFlags, AuditToken, CdHash, CertificateInfo, CodeSigning, Event, EventBody, Facts,
    FileIdentity, FileRef, MountDisposition, MountFlags, MountInfo, PackageTrust, Process, Sha256,
    SigningStatus, VolumeBus, VolumeInfo,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "/[a-zA-Z0-9_./ -]{0,40}",
        any::<String>(),
        Just(String::new()),
        Just("\u{0}\u{7f}\u{FFFD}\"\\\n".to_owned()),
    ]
}

fn identity() -> impl Strategy<Value = FileIdentity> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
    )
        .prop_map(|(dev, ino, size, mtime_ns, ctime_ns)| FileIdentity {
            dev,
            ino,
            size,
            mtime_ns,
            ctime_ns,
        })
}

fn file() -> impl Strategy<Value = FileRef> {
    (text(), prop::option::of(identity())).prop_map(|(path, identity)| FileRef { path, identity })
}

fn signing() -> impl Strategy<Value = CodeSigning> {
    (
        prop::sample::select(vec![
            SigningStatus::Production,
            SigningStatus::Development,
            SigningStatus::AdHoc,
            SigningStatus::Unsigned,
            SigningStatus::Invalid,
        ]),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(any::<[u8; 20]>().prop_map(CdHash)),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(status, team_id, signing_id, cdhash, flags, is_platform_binary)| CodeSigning {
                status,
                team_id,
                signing_id,
                cdhash,
                flags,
                is_platform_binary,
            },
        )
}

fn process() -> impl Strategy<Value = Process> {
    (
        any::<u32>(),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        any::<u32>(),
        any::<u32>(),
        file(),
        signing(),
        prop::option::of(any::<[u32; 8]>()),
    )
        .prop_map(
            |(pid, pid_version, ppid, uid, gid, executable, signing, token)| Process {
                pid,
                pid_version,
                ppid,
                uid,
                gid,
                executable,
                signing,
                audit_token: token.map(AuditToken),
            },
        )
}

fn flags() -> impl Strategy<Value = MountFlags> {
    any::<[bool; 4]>().prop_map(|[read_only, noexec, nosuid, nodev]| MountFlags {
        read_only,
        noexec,
        nosuid,
        nodev,
    })
}

fn mount() -> impl Strategy<Value = MountInfo> {
    (
        text(),
        text(),
        text(),
        flags(),
        prop::sample::select(vec![
            MountDisposition::External,
            MountDisposition::Internal,
            MountDisposition::Network,
            MountDisposition::Virtual,
            MountDisposition::Nullfs,
            MountDisposition::Unknown,
        ]),
        any::<u32>(),
    )
        .prop_map(
            |(source, mount_point, fs_type, flags, disposition, os_flags)| MountInfo {
                source,
                mount_point,
                fs_type,
                flags,
                disposition,
                os_flags,
            },
        )
}

fn access() -> impl Strategy<Value = Option<AccessFlags>> {
    prop::option::of(
        any::<[bool; 4]>().prop_map(|[read, write, append, truncate]| AccessFlags {
            read,
            write,
            append,
            truncate,
        }),
    )
}

/// Every event kind, with arbitrary contents.
fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        process().prop_map(|t| EventBody::Exec {
            target: Box::new(t)
        }),
        (file(), access()).prop_map(|(file, access)| EventBody::Open { file, access }),
        mount().prop_map(|mount| EventBody::Mount { mount }),
        mount().prop_map(|mount| EventBody::Remount { mount }),
        (file(), text()).prop_map(|(source, destination)| EventBody::Rename {
            source,
            destination
        }),
        file().prop_map(|file| EventBody::Unlink { file }),
        file().prop_map(|file| EventBody::Truncate { file }),
        (file(), text()).prop_map(|(source, destination)| EventBody::Link {
            source,
            destination
        }),
        text().prop_map(|destination| EventBody::Create { destination }),
        (file(), text()).prop_map(|(source, destination)| EventBody::Clone {
            source,
            destination
        }),
        (file(), text()).prop_map(|(source, destination)| EventBody::Copyfile {
            source,
            destination
        }),
        (file(), file()).prop_map(|(file1, file2)| EventBody::Exchangedata { file1, file2 }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (process(), body()).prop_map(|(process, body)| Event { process, body })
}

fn facts() -> impl Strategy<Value = Facts> {
    (
        prop::option::of(any::<[u8; 32]>().prop_map(Sha256)),
        prop::option::of(
            (
                any::<[u8; 32]>().prop_map(Sha256),
                prop::option::of(text()),
                any::<bool>(),
            )
                .prop_map(|(leaf_sha256, team_id, valid)| CertificateInfo {
                    leaf_sha256,
                    team_id,
                    valid,
                }),
        ),
        prop::option::of(
            (prop::option::of(text()), any::<bool>())
                .prop_map(|(package, trusted)| PackageTrust { package, trusted }),
        ),
        prop::option::of(
            (
                any::<bool>(),
                prop::sample::select(vec![
                    VolumeBus::Usb,
                    VolumeBus::Thunderbolt,
                    VolumeBus::Sd,
                    VolumeBus::Sata,
                    VolumeBus::Nvme,
                    VolumeBus::Virtual,
                    VolumeBus::Network,
                    VolumeBus::Other,
                ]),
                any::<bool>(),
                prop::option::of(text()),
                prop::option::of(text()),
            )
                .prop_map(|(removable, bus, encrypted, uuid, fs_type)| VolumeInfo {
                    removable,
                    bus,
                    encrypted,
                    uuid,
                    fs_type,
                }),
        ),
    )
        .prop_map(|(sha256, certificate, package, volume)| Facts {
            sha256,
            certificate,
            package,
            volume,
            file_kind: None,
        })
}

/// Decode `bytes` as everything the CLI reads from a user's file; results are ignored, panics
/// are not.
fn decode_all(bytes: &[u8]) {
    let _ = serde_json::from_slice::<Event>(bytes);
    let _ = serde_json::from_slice::<Facts>(bytes);
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = serde_json::from_str::<Event>(s);
        let _ = serde_json::from_str::<Facts>(s);
    }
}

/// JSON fragments spliced into valid documents: wrong types, huge numbers, bad digests, unknown
/// tags and keys, broken escapes, structure characters.
const FRAGMENTS: &[&str] = &[
    "null",
    "-1",
    "4294967296",
    "18446744073709551616",
    "1e400",
    "-0.0",
    "\"exec\"",
    "\"bogus_kind\"",
    "\"kind\":\"mount\"",
    "\"kind\":\"exec\",\"kind\":\"open\"",
    "\"sha256\":\"zz\"",
    "\"cdhash\":\"0123\"",
    "\"\\ud800\"",
    "\"\\u00e9\\u0000\"",
    "\"\\x\"",
    "{}",
    "[]",
    "[[[[[[[[",
    "}}}}",
    ",",
    ":",
    "\"",
    "\"unknown_key\":1",
    "true",
    "\u{FEFF}",
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte { at: usize, mask: u8 },
    Truncate { at: usize },
    DeleteRange { at: usize, len: usize },
    Insert { at: usize, fragment: usize },
    InsertBytes { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::FlipByte { at, mask }),
        2 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), 1..16usize).prop_map(|(at, len)| Mutation::DeleteRange { at, len }),
        3 => (any::<usize>(), 0..FRAGMENTS.len())
            .prop_map(|(at, fragment)| Mutation::Insert { at, fragment }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::InsertBytes { at, bytes }),
    ]
}

fn apply(doc: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, n: usize| i % (n + 1);
    match m {
        Mutation::FlipByte { at: i, mask } => {
            if !doc.is_empty() {
                let i = *i % doc.len();
                doc[i] ^= mask;
            }
        }
        Mutation::Truncate { at: i } => doc.truncate(at(*i, doc.len())),
        Mutation::DeleteRange { at: i, len } => {
            let start = at(*i, doc.len());
            let end = (start + len).min(doc.len());
            doc.drain(start..end);
        }
        Mutation::Insert { at: i, fragment } => {
            let i = at(*i, doc.len());
            doc.splice(i..i, FRAGMENTS[*fragment].bytes());
        }
        Mutation::InsertBytes { at: i, bytes } => {
            let i = at(*i, doc.len());
            doc.splice(i..i, bytes.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn json_shaped_text_never_panics(
        text in "[{}\\[\\]\",:0-9a-z_ \\\\.eE+-]{0,200}"
    ) {
        decode_all(text.as_bytes());
    }

    #[test]
    fn mutated_events_never_panic(
        ev in event(),
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut doc = serde_json::to_vec(&ev).unwrap();
        for m in &edits {
            apply(&mut doc, m);
        }
        decode_all(&doc);
    }

    #[test]
    fn mutated_facts_never_panic(
        f in facts(),
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut doc = serde_json::to_vec(&f).unwrap();
        for m in &edits {
            apply(&mut doc, m);
        }
        decode_all(&doc);
    }

    #[test]
    fn events_round_trip(ev in event()) {
        let json = serde_json::to_vec(&ev).unwrap();
        let back: Event = serde_json::from_slice(&json)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&json))))?;
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn facts_round_trip(f in facts()) {
        let json = serde_json::to_vec(&f).unwrap();
        let back: Facts = serde_json::from_slice(&json)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&json))))?;
        prop_assert_eq!(back, f);
    }
}

/// Nesting far past serde_json's recursion limit is an error, not a stack overflow.
#[test]
fn deep_nesting_is_an_error() {
    for open in ["[", "{\"a\":", "{\"process\":"] {
        let doc = open.repeat(100_000);
        assert!(serde_json::from_str::<Event>(&doc).is_err());
        assert!(serde_json::from_str::<Facts>(&doc).is_err());
    }
}

/// The document `gatehouse policy eval` is documented with decodes to the event it describes.
#[test]
fn documented_cli_event_decodes() {
    let doc = r#"{"process":{"pid":10,"uid":0,"executable":{"path":"/bin/sh"},"signing":{"status":"unsigned"}},
        "kind":"exec","target":{"pid":11,"uid":0,"executable":{"path":"/usr/local/bin/tool"},
        "signing":{"status":"unsigned"}}}"#;
    let ev: Event = serde_json::from_str(doc).unwrap();
    let EventBody::Exec { target } = &ev.body else {
        panic!("not an exec: {ev:?}");
    };
    assert_eq!(target.executable.path, "/usr/local/bin/tool");
    assert_eq!(ev.process.pid, 10);
}
