//! Event and fact builders shared by the policy tests and summaries that make tables short.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the builders"
)]

use model::{
    AccessFlags, CertificateInfo, CodeSigning, Event, EventBody, Facts, FileKind, FileRef,
    MountDisposition, MountFlags, MountInfo, Outcome, PackageTrust, Process, Reason, Sha256,
    SigningStatus, Verdict, VolumeBus, VolumeInfo, cs_flags,
};

pub const ENFORCED: u32 = cs_flags::CS_VALID | cs_flags::CS_HARD | cs_flags::CS_KILL;

pub fn hex(byte: &str, n: usize) -> String {
    byte.repeat(n)
}

pub fn sha(byte: &str) -> Sha256 {
    hex(byte, 32).parse().unwrap()
}

pub fn process(path: &str, signing: CodeSigning) -> Process {
    Process {
        pid: 100,
        pid_version: None,
        ppid: Some(1),
        uid: 501,
        gid: 20,
        executable: FileRef::new(path),
        signing,
        audit_token: None,
    }
}

/// A signature: status, team id, signing id, CDHash byte (repeated), flags, platform.
pub fn sig(
    status: SigningStatus,
    team: Option<&str>,
    sid: Option<&str>,
    cd: Option<&str>,
    flags: u32,
    platform: bool,
) -> CodeSigning {
    CodeSigning {
        status,
        team_id: team.map(str::to_owned),
        signing_id: sid.map(str::to_owned),
        cdhash: cd.map(|b| hex(b, 20).parse().unwrap()),
        flags,
        is_platform_binary: platform,
    }
}

pub fn shell() -> Process {
    process("/bin/zsh", CodeSigning::unsigned())
}

pub fn exec(path: &str, signing: CodeSigning) -> Event {
    Event {
        process: shell(),
        body: EventBody::Exec {
            target: Box::new(process(path, signing)),
        },
    }
}

pub fn open(by: Process, path: &str, access: Option<AccessFlags>) -> Event {
    Event {
        process: by,
        body: EventBody::Open {
            file: FileRef::new(path),
            access,
        },
    }
}

pub const WRITE: Option<AccessFlags> = Some(AccessFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
});
pub const READ: Option<AccessFlags> = Some(AccessFlags::READ);

pub fn file_event(by: Process, kind: &str, a: &str, b: &str) -> Event {
    let body = match kind {
        "rename" => EventBody::Rename {
            source: FileRef::new(a),
            destination: b.into(),
        },
        "link" => EventBody::Link {
            source: FileRef::new(a),
            destination: b.into(),
        },
        "unlink" => EventBody::Unlink {
            file: FileRef::new(a),
        },
        "truncate" => EventBody::Truncate {
            file: FileRef::new(a),
        },
        "create" => EventBody::Create {
            destination: a.into(),
        },
        "clone" => EventBody::Clone {
            source: FileRef::new(a),
            destination: b.into(),
        },
        "copyfile" => EventBody::Copyfile {
            source: FileRef::new(a),
            destination: b.into(),
        },
        "exchangedata" => EventBody::Exchangedata {
            file1: FileRef::new(a),
            file2: FileRef::new(b),
        },
        other => panic!("unknown kind {other}"),
    };
    Event { process: by, body }
}

pub fn mount(source: &str, fs: &str, disposition: MountDisposition, flags: MountFlags) -> Event {
    Event {
        process: process("/sbin/mount", CodeSigning::unsigned()),
        body: EventBody::Mount {
            mount: MountInfo {
                source: source.into(),
                mount_point: "/Volumes/X".into(),
                fs_type: fs.into(),
                flags,
                disposition,
                os_flags: 0,
            },
        },
    }
}

/// Facts about an ELF binary with this SHA-256.
pub fn facts_sha(byte: &str) -> Facts {
    Facts {
        sha256: Some(sha(byte)),
        file_kind: Some(FileKind::Elf),
        ..Facts::NONE
    }
}

pub fn facts_cert(byte: &str) -> Facts {
    Facts {
        certificate: Some(CertificateInfo {
            leaf_sha256: sha(byte),
            team_id: None,
            valid: true,
        }),
        ..Facts::NONE
    }
}

pub fn facts_package(trusted: bool) -> Facts {
    Facts {
        package: Some(PackageTrust {
            package: Some("coreutils".into()),
            trusted,
        }),
        file_kind: Some(FileKind::Elf),
        ..Facts::NONE
    }
}

pub fn facts_volume(removable: bool, encrypted: bool, bus: VolumeBus) -> Facts {
    Facts {
        volume: Some(VolumeInfo {
            removable,
            bus,
            encrypted,
            uuid: None,
            fs_type: None,
        }),
        ..Facts::NONE
    }
}

/// A short summary of an outcome: `allow:RULE`, `deny:RULE`, `allow:platform`,
/// `deny:invalid_signature`, `would_deny`, `deny:default`, `allow:default`, `allow:muted`,
/// `audit:RULE`, or `analyze:sha256+certificate+package+volume` (only the needed parts).
pub fn summary(o: &Outcome) -> String {
    match o {
        Outcome::Analyze(r) => {
            let n = r.needs;
            let parts: Vec<&str> = [
                (n.sha256, "sha256"),
                (n.certificate, "certificate"),
                (n.package, "package"),
                (n.volume, "volume"),
                (n.file_kind, "file_kind"),
            ]
            .iter()
            .filter(|(b, _)| *b)
            .map(|(_, s)| *s)
            .collect();
            format!("analyze:{}", parts.join("+"))
        }
        Outcome::Decided(d) => {
            let why = match &d.reason {
                Reason::Rule { rule } => rule.name.clone(),
                Reason::Default => "default".into(),
                Reason::PlatformBinary => "platform".into(),
                Reason::InvalidSignature => "invalid_signature".into(),
                Reason::Muted => "muted".into(),
                Reason::Cached => "cached".into(),
                Reason::SlowPathDependency => "slow_path_dependency".into(),
                Reason::NotABinary => "not_a_binary".into(),
                Reason::Fallback { why } => format!("fallback_{}", why.as_str()),
            };
            if d.would_deny {
                assert_eq!(d.verdict, Verdict::Allow);
                return "would_deny".into();
            }
            if d.audit_only {
                assert_eq!(d.verdict, Verdict::Allow);
                return format!("audit:{why}");
            }
            match d.verdict {
                Verdict::Allow => format!("allow:{why}"),
                Verdict::Deny => format!("deny:{why}"),
            }
        }
    }
}
