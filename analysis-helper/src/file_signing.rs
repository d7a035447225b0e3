//! A file's code signature as `gatehouse fileinfo` shows it (Santa's `santactl fileinfo`):
//! platform-neutral data and the pure mapping to what the kernel would report at exec, so the
//! CLI's decision uses the same policy code as the extension. Read on macOS by
//! `macos::signing::file_signing`, by path: informational, never a decision's identity (the
//! extension takes that from the kernel's message).

use model::{CdHash, CodeSigning, Sha256, SigningStatus, cs_flags};

use crate::analyzer::Validity;

/// The code directory asks for the hardened runtime (`kSecCodeSignatureRuntime`, `CS_RUNTIME`).
pub const CS_RUNTIME: u32 = 0x0001_0000;
/// Signed by the linker (an ad hoc signature, `CS_LINKER_SIGNED`).
pub const CS_LINKER_SIGNED: u32 = 0x0002_0000;

/// One certificate of a signing chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCert {
    /// SHA-256 of the certificate's DER (what certificate rules name).
    pub sha256: Sha256,
    /// `SecCertificateCopySubjectSummary`: usually the common name.
    pub summary: String,
}

/// What the Security framework reported about a file's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSigning {
    pub validity: Validity,
    /// `kSecCodeInfoIdentifier`: the signing id (`com.apple.ls`).
    pub identifier: Option<String>,
    pub team_id: Option<String>,
    /// `kSecCodeInfoUnique`.
    pub cdhash: Option<CdHash>,
    /// `kSecCodeInfoFlags`: the code directory's flags (the `CS_*` bits it asks for).
    pub flags: u32,
    /// `kSecCodeInfoPlatformIdentifier`: non-zero for Apple's platform binaries.
    pub platform_identifier: u32,
    /// Leaf first.
    pub chain: Vec<ChainCert>,
}

impl FileSigning {
    /// The kind of signature, in the order the extension classifies a process's from the
    /// kernel's flags (`es-extension`'s `convert::signing_status`): ad hoc or linker-signed
    /// (no chain), platform code (production), a development leaf ("Apple Development: ...",
    /// or the older "Mac Developer" / "iPhone Developer": what makes the kernel set
    /// `CS_DEV_CODE`), a team (production), otherwise development (a certificate without a
    /// team, e.g. self-signed).
    pub fn status(&self) -> SigningStatus {
        match self.validity {
            Validity::Unsigned => SigningStatus::Unsigned,
            Validity::Invalid(_) => SigningStatus::Invalid,
            Validity::Valid => match self.chain.first() {
                None => SigningStatus::AdHoc,
                Some(_) if self.flags & (cs_flags::CS_ADHOC | CS_LINKER_SIGNED) != 0 => {
                    SigningStatus::AdHoc
                }
                Some(_) if self.platform_identifier != 0 => SigningStatus::Production,
                Some(leaf)
                    if ["Apple Development", "Mac Developer", "iPhone Developer"]
                        .iter()
                        .any(|p| leaf.summary.starts_with(p)) =>
                {
                    SigningStatus::Development
                }
                Some(_) if self.team_id.is_some() => SigningStatus::Production,
                Some(_) => SigningStatus::Development,
            },
        }
    }

    /// The signing facts as `es_process_t` would carry them once the file is executed:
    /// `CS_VALID` when the signature validates, the code directory's flags, and `CS_HARD |
    /// CS_KILL` for hardened-runtime and platform code (the kernel enforces those at exec), so
    /// the CDHash counts exactly when the extension would count it. An invalid or absent
    /// signature carries no identifiers, as the kernel reports none.
    pub fn code_signing(&self) -> CodeSigning {
        if self.validity != Validity::Valid {
            return CodeSigning {
                status: self.status(),
                ..CodeSigning::unsigned()
            };
        }
        let platform = self.platform_identifier != 0;
        let mut flags = self.flags | cs_flags::CS_VALID;
        if platform || self.flags & CS_RUNTIME != 0 {
            flags |= cs_flags::CS_HARD | cs_flags::CS_KILL;
        }
        if platform {
            flags |= cs_flags::CS_PLATFORM_BINARY;
        }
        CodeSigning {
            status: self.status(),
            team_id: self.team_id.clone(),
            signing_id: self.identifier.clone(),
            cdhash: self.cdhash,
            flags,
            is_platform_binary: platform,
        }
    }

    /// The certificate facts a certificate rule reads (what the helper's `BoundSigning`
    /// reports for a running process): the leaf's SHA-256 and the team, valid when the
    /// signature validated. `None` without a chain (ad hoc, unsigned).
    pub fn certificate(&self) -> Option<model::CertificateInfo> {
        self.chain.first().map(|leaf| model::CertificateInfo {
            leaf_sha256: leaf.sha256,
            team_id: self.team_id.clone(),
            valid: self.validity == Validity::Valid,
        })
    }

    /// Santa's signing-id form: `TEAMID:identifier`, `platform:identifier` for Apple's own
    /// code, or the bare identifier for ad hoc code (which no signing-id rule matches).
    pub fn santa_signing_id(&self) -> Option<String> {
        let id = self.identifier.as_deref()?;
        if self.validity != Validity::Valid {
            return None;
        }
        Some(match (&self.team_id, self.platform_identifier != 0) {
            (_, true) => format!("platform:{id}"),
            (Some(team), false) => format!("{team}:{id}"),
            (None, false) => id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(n: u8, summary: &str) -> ChainCert {
        ChainCert {
            sha256: Sha256([n; 32]),
            summary: summary.to_owned(),
        }
    }

    fn signing(
        validity: Validity,
        flags: u32,
        platform: u32,
        chain: Vec<ChainCert>,
    ) -> FileSigning {
        FileSigning {
            validity,
            identifier: Some("com.example.tool".to_owned()),
            team_id: (!chain.is_empty() && platform == 0).then(|| "EQHXZ8M8AV".to_owned()),
            cdhash: Some(CdHash([7; 20])),
            flags,
            platform_identifier: platform,
            chain,
        }
    }

    /// Classification and the kernel's view of each kind of signature (Santa's
    /// `SNTFileInfo`/`santactl fileinfo` fields; XNU's `CS_*` flags at exec).
    #[test]
    fn signing_table() {
        use SigningStatus::*;
        let dev = || {
            vec![
                cert(1, "Apple Development: Jo (ABCDE12345)"),
                cert(2, "Apple WWDR"),
            ]
        };
        let prod = || {
            vec![
                cert(3, "Developer ID Application: Example (EQHXZ8M8AV)"),
                cert(4, "Developer ID CA"),
            ]
        };
        let apple = || {
            vec![
                cert(5, "Software Signing"),
                cert(6, "Apple Code Signing CA"),
            ]
        };
        // (signature, status, cdhash enforced at exec, Santa signing id)
        let rows: Vec<(FileSigning, SigningStatus, bool, Option<&str>)> = vec![
            (
                signing(Validity::Unsigned, 0, 0, vec![]),
                Unsigned,
                false,
                None,
            ),
            (
                signing(Validity::Invalid(-67061), CS_RUNTIME, 0, prod()),
                Invalid,
                false,
                None,
            ),
            (
                signing(Validity::Valid, cs_flags::CS_ADHOC, 0, vec![]),
                AdHoc,
                false,
                Some("com.example.tool"),
            ),
            (
                signing(Validity::Valid, CS_LINKER_SIGNED, 0, vec![]),
                AdHoc,
                false,
                Some("com.example.tool"),
            ),
            // A certificate without a team (self-signed): development, as the extension says.
            (
                FileSigning {
                    team_id: None,
                    ..signing(Validity::Valid, 0, 0, vec![cert(9, "My Cert")])
                },
                Development,
                false,
                Some("com.example.tool"),
            ),
            (
                signing(Validity::Valid, 0, 0, dev()),
                Development,
                false,
                Some("EQHXZ8M8AV:com.example.tool"),
            ),
            (
                signing(Validity::Valid, CS_RUNTIME, 0, prod()),
                Production,
                true,
                Some("EQHXZ8M8AV:com.example.tool"),
            ),
            (
                signing(Validity::Valid, 0, 0, prod()),
                Production,
                false,
                Some("EQHXZ8M8AV:com.example.tool"),
            ),
            (
                signing(Validity::Valid, 0, 1, apple()),
                Production,
                true,
                Some("platform:com.example.tool"),
            ),
        ];
        for (s, status, enforced, santa_id) in rows {
            let cs = s.code_signing();
            assert_eq!(s.status(), status, "{s:?}");
            assert_eq!(cs.status, status, "{s:?}");
            assert_eq!(cs.cdhash_enforced(), enforced, "{s:?}");
            assert_eq!(s.santa_signing_id().as_deref(), santa_id, "{s:?}");
            assert_eq!(cs.is_platform_binary, s.platform_identifier != 0, "{s:?}");
            assert_eq!(
                s.certificate().map(|c| (c.leaf_sha256, c.valid)),
                s.chain
                    .first()
                    .map(|c| (c.sha256, s.validity == Validity::Valid)),
                "{s:?}"
            );
            if s.validity == Validity::Valid {
                assert_eq!(cs.signing_id, s.identifier, "{s:?}");
                assert_eq!(cs.team_id, s.team_id, "{s:?}");
            } else {
                assert_eq!(
                    (cs.signing_id, cs.team_id, cs.cdhash),
                    (None, None, None),
                    "{s:?}"
                );
            }
        }
    }
}
