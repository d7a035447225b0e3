//! Leaf certificates and team ids from the Security framework, for certificate rules (the ES
//! message has no certificate hash): the [`SecuritySource`] behind
//! [`crate::analyzer::BoundSigning`], which trusts a report only once it is tied to the kernel's
//! identity (an audit token for a running process, the message's CDHash against
//! `kSecCodeInfoUnique` for an exec target). The exec decision's identity stays the kernel's
//! (`CS_VALID`, CDHash) — this never replaces it (docs/DESIGN.md 6). Every call passes
//! `kSecCSNoNetworkAccess | kSecCSDoNotValidateResources` and never `kSecCSCheckNestedCode`: the
//! helper must not wait on revocation fetches or walk a bundle for an exec decision.
#![expect(
    unsafe_code,
    reason = "Security framework calls (SecStaticCode, SecCode, SecCertificate) are FFI; each block has a SAFETY proof"
)]

use std::ptr::NonNull;

use std::time::Instant;

use model::{CdHash, Sha256};
use objc2_core_foundation::{CFArray, CFData, CFDictionary, CFRetained, CFString, CFType, CFURL};
use objc2_security::{
    SecCSFlags, SecCertificate, SecCode, SecRequirement, SecStaticCode,
    kSecCSDoNotValidateResources, kSecCSSigningInformation, kSecCodeInfoCertificates,
    kSecCodeInfoTeamIdentifier, kSecCodeInfoUnique, kSecGuestAttributeAudit,
};
use sha2::Digest;

use crate::analyzer::{AnalysisError, SecuritySource, SignatureReport, Validity};

/// Validity checks never touch the network nor validate resources or nested code.
const CHECK_FLAGS: SecCSFlags =
    SecCSFlags(SecCSFlags::NoNetworkAccess.bits() | kSecCSDoNotValidateResources);

/// `errSecSuccess`.
const ERR_SEC_SUCCESS: i32 = 0;
/// `errSecCSUnsigned`: no signature at all.
const ERR_SEC_CS_UNSIGNED: i32 = -67062;

/// Security-framework certificate reader (wrap it in `BoundSigning`).
#[derive(Debug, Clone, Default)]
pub struct SecurityFramework {
    /// A requirement the code must satisfy to count as `valid` (for example an anchor and team
    /// check); `None` checks the signature alone.
    pub requirement: Option<String>,
}

fn status(call: &'static str, path: &str, rc: i32) -> AnalysisError {
    if rc == ERR_SEC_CS_UNSIGNED {
        AnalysisError::BadRequest(format!("{path} is not signed: it has no certificate"))
    } else {
        AnalysisError::Internal(format!("{call}({path}) failed with OSStatus {rc}"))
    }
}

fn requirement(text: &str) -> Result<CFRetained<SecRequirement>, AnalysisError> {
    let cf = CFString::from_str(text);
    let mut out: *mut SecRequirement = std::ptr::null_mut();
    // SAFETY: valid CFString; `out` is a valid out-pointer for a +1 reference.
    let rc = unsafe {
        SecRequirement::create_with_string(&cf, SecCSFlags::DefaultFlags, NonNull::from(&mut out))
    };
    let nn = NonNull::new(out)
        .filter(|_| rc == ERR_SEC_SUCCESS)
        .ok_or_else(|| {
            AnalysisError::BadRequest(format!(
                "code-signing requirement {text:?} does not parse (OSStatus {rc})"
            ))
        })?;
    // SAFETY: a successful create returned a +1 reference that we now own.
    Ok(unsafe { CFRetained::from_raw(nn) })
}

fn deadline(deadline: Instant) -> Result<(), AnalysisError> {
    if Instant::now() >= deadline {
        Err(AnalysisError::DeadlineExceeded)
    } else {
        Ok(())
    }
}

fn validity(rc: i32) -> Validity {
    match rc {
        ERR_SEC_SUCCESS => Validity::Valid,
        ERR_SEC_CS_UNSIGNED => Validity::Unsigned,
        other => Validity::Invalid(other),
    }
}

impl SecurityFramework {
    /// The signing information of `code`: its CDHash, leaf certificate and team.
    fn report(
        &self,
        what: &str,
        code: &SecStaticCode,
        validity: Validity,
    ) -> Result<SignatureReport, AnalysisError> {
        if validity == Validity::Unsigned {
            return Ok(SignatureReport {
                unique: None,
                validity,
                leaf_sha256: None,
                team_id: None,
            });
        }
        let mut info: *const CFDictionary = std::ptr::null();
        // SAFETY: live static code; `info` is a valid out-pointer for a +1 dictionary.
        let rc = unsafe {
            SecCode::copy_signing_information(
                code,
                SecCSFlags(kSecCSSigningInformation),
                NonNull::from(&mut info),
            )
        };
        let info = NonNull::new(info.cast_mut())
            .filter(|_| rc == ERR_SEC_SUCCESS)
            .ok_or_else(|| status("SecCodeCopySigningInformation", what, rc))?;
        // SAFETY: +1 dictionary from a successful copy; its keys are the kSecCodeInfo* CFStrings
        // and every value is type-checked (`downcast`) before use.
        let info: CFRetained<CFDictionary<CFString, CFType>> =
            unsafe { CFRetained::cast_unchecked(CFRetained::<CFDictionary>::from_raw(info)) };
        // SAFETY: constant CFStrings exported by the Security framework.
        let (certs_key, team_key, unique_key) = unsafe {
            (
                kSecCodeInfoCertificates,
                kSecCodeInfoTeamIdentifier,
                kSecCodeInfoUnique,
            )
        };
        let unique = info
            .get(unique_key)
            .and_then(|d| d.downcast::<CFData>().ok())
            .and_then(|d| <[u8; 20]>::try_from(d.to_vec().as_slice()).ok())
            .map(CdHash);
        let leaf_sha256 = match info
            .get(certs_key)
            .and_then(|c| c.downcast::<CFArray>().ok())
        {
            None => None,
            Some(certs) => {
                // SAFETY: kSecCodeInfoCertificates is documented as an array of
                // SecCertificate, leaf first; the element is type-checked below.
                let certs: CFRetained<CFArray<CFType>> =
                    unsafe { CFRetained::cast_unchecked(certs) };
                let leaf = certs
                    .get(0)
                    .and_then(|c| c.downcast::<SecCertificate>().ok())
                    .ok_or_else(|| {
                        AnalysisError::Internal(format!("{what}: empty certificate chain"))
                    })?;
                // SAFETY: live certificate; returns its DER bytes (+1).
                let der: CFRetained<CFData> = unsafe { leaf.data() };
                Some(Sha256(sha2::Sha256::digest(der.to_vec()).into()))
            }
        };
        let team_id = info
            .get(team_key)
            .and_then(|t| t.downcast::<CFString>().ok())
            .map(|t| t.to_string());
        Ok(SignatureReport {
            unique,
            validity,
            leaf_sha256,
            team_id,
        })
    }
}

impl SecuritySource for SecurityFramework {
    fn on_disk(&self, path: &str, until: Instant) -> Result<SignatureReport, AnalysisError> {
        deadline(until)?;
        let url = CFURL::from_file_path(path)
            .ok_or_else(|| AnalysisError::BadRequest(format!("{path:?} is not a file path")))?;
        let mut code: *const SecStaticCode = std::ptr::null();
        // SAFETY: valid URL; `code` is a valid out-pointer for a +1 reference.
        let rc = unsafe {
            SecStaticCode::create_with_path(
                &url,
                SecCSFlags::DefaultFlags,
                NonNull::from(&mut code),
            )
        };
        let code = NonNull::new(code.cast_mut())
            .filter(|_| rc == ERR_SEC_SUCCESS)
            .ok_or_else(|| status("SecStaticCodeCreateWithPath", path, rc))?;
        // SAFETY: +1 reference from a successful create.
        let code: CFRetained<SecStaticCode> = unsafe { CFRetained::from_raw(code) };

        deadline(until)?;
        let req = self.requirement.as_deref().map(requirement).transpose()?;
        // SAFETY: live static code; the requirement (if any) is live for the call.
        let rc = unsafe { code.check_validity(CHECK_FLAGS, req.as_deref()) };
        deadline(until)?;
        self.report(path, &code, validity(rc))
    }

    fn running(
        &self,
        audit_token: &[u32; 8],
        until: Instant,
    ) -> Result<SignatureReport, AnalysisError> {
        deadline(until)?;
        let what = format!("audit token (pid {})", audit_token[5]);
        let bytes: Vec<u8> = audit_token.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let token = CFData::from_bytes(&bytes);
        // SAFETY: constant CFString exported by the Security framework.
        let key = unsafe { kSecGuestAttributeAudit };
        let attributes = CFDictionary::<CFString, CFData>::from_slices(&[key], &[&*token]);
        let mut guest: *mut SecCode = std::ptr::null_mut();
        // SAFETY: no host (the kernel is asked); the attributes dictionary maps the documented
        // key to a CFData of an audit_token_t (32 bytes); `guest` is a valid out-pointer for a
        // +1 reference.
        let rc = unsafe {
            SecCode::copy_guest_with_attributes(
                None,
                Some(attributes.as_opaque()),
                SecCSFlags::DefaultFlags,
                NonNull::from(&mut guest),
            )
        };
        let guest = NonNull::new(guest)
            .filter(|_| rc == ERR_SEC_SUCCESS)
            .ok_or_else(|| status("SecCodeCopyGuestWithAttributes", &what, rc))?;
        // SAFETY: +1 reference from a successful copy.
        let guest: CFRetained<SecCode> = unsafe { CFRetained::from_raw(guest) };

        deadline(until)?;
        let req = self.requirement.as_deref().map(requirement).transpose()?;
        // SAFETY: live code object; the requirement (if any) is live for the call. Dynamic
        // validation asks the kernel about the running image, not the file.
        let rc = unsafe { guest.check_validity(CHECK_FLAGS, req.as_deref()) };

        let mut code: *const SecStaticCode = std::ptr::null();
        // SAFETY: live code object; `code` is a valid out-pointer for a +1 reference.
        let copy =
            unsafe { guest.copy_static_code(SecCSFlags::DefaultFlags, NonNull::from(&mut code)) };
        let code = NonNull::new(code.cast_mut())
            .filter(|_| copy == ERR_SEC_SUCCESS)
            .ok_or_else(|| status("SecCodeCopyStaticCode", &what, copy))?;
        // SAFETY: +1 reference from a successful copy.
        let code: CFRetained<SecStaticCode> = unsafe { CFRetained::from_raw(code) };
        deadline(until)?;
        self.report(&what, &code, validity(rc))
    }
}

/// A file's signature for `gatehouse fileinfo`: validity (no requirement, no network, no
/// resources or nested code), the signing id, team, CDHash, code-directory flags, platform
/// identifier and the whole certificate chain. By path: informational only, for a person at a
/// terminal; no decision takes its identity from here.
pub fn file_signing(path: &str) -> Result<crate::file_signing::FileSigning, AnalysisError> {
    use crate::file_signing::{ChainCert, FileSigning};
    use objc2_core_foundation::CFNumber;
    use objc2_security::{
        kSecCodeInfoFlags, kSecCodeInfoIdentifier, kSecCodeInfoPlatformIdentifier,
    };

    let url = CFURL::from_file_path(path)
        .ok_or_else(|| AnalysisError::BadRequest(format!("{path:?} is not a file path")))?;
    let mut code: *const SecStaticCode = std::ptr::null();
    // SAFETY: valid URL; `code` is a valid out-pointer for a +1 reference.
    let rc = unsafe {
        SecStaticCode::create_with_path(&url, SecCSFlags::DefaultFlags, NonNull::from(&mut code))
    };
    let code = NonNull::new(code.cast_mut())
        .filter(|_| rc == ERR_SEC_SUCCESS)
        .ok_or_else(|| status("SecStaticCodeCreateWithPath", path, rc))?;
    // SAFETY: +1 reference from a successful create.
    let code: CFRetained<SecStaticCode> = unsafe { CFRetained::from_raw(code) };
    // SAFETY: live static code; no requirement.
    let validity = validity(unsafe { code.check_validity(CHECK_FLAGS, None) });
    let mut out = FileSigning {
        validity,
        identifier: None,
        team_id: None,
        cdhash: None,
        flags: 0,
        platform_identifier: 0,
        chain: Vec::new(),
    };
    if validity == Validity::Unsigned {
        return Ok(out);
    }
    let mut info: *const CFDictionary = std::ptr::null();
    // SAFETY: live static code; `info` is a valid out-pointer for a +1 dictionary.
    let rc = unsafe {
        SecCode::copy_signing_information(
            &code,
            SecCSFlags(kSecCSSigningInformation),
            NonNull::from(&mut info),
        )
    };
    let info = NonNull::new(info.cast_mut())
        .filter(|_| rc == ERR_SEC_SUCCESS)
        .ok_or_else(|| status("SecCodeCopySigningInformation", path, rc))?;
    // SAFETY: +1 dictionary from a successful copy; its keys are the kSecCodeInfo* CFStrings
    // and every value is type-checked (`downcast`) before use.
    let info: CFRetained<CFDictionary<CFString, CFType>> =
        unsafe { CFRetained::cast_unchecked(CFRetained::<CFDictionary>::from_raw(info)) };
    // SAFETY: constant CFStrings exported by the Security framework.
    let (certs_key, team_key, unique_key, id_key, flags_key, platform_key) = unsafe {
        (
            kSecCodeInfoCertificates,
            kSecCodeInfoTeamIdentifier,
            kSecCodeInfoUnique,
            kSecCodeInfoIdentifier,
            kSecCodeInfoFlags,
            kSecCodeInfoPlatformIdentifier,
        )
    };
    let string = |k: &CFString| {
        info.get(k)
            .and_then(|v| v.downcast::<CFString>().ok())
            .map(|v| v.to_string())
    };
    let number = |k: &CFString| {
        info.get(k)
            .and_then(|v| v.downcast::<CFNumber>().ok())
            .and_then(|n| n.as_i64())
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    out.identifier = string(id_key);
    out.team_id = string(team_key);
    out.flags = number(flags_key);
    out.platform_identifier = number(platform_key);
    out.cdhash = info
        .get(unique_key)
        .and_then(|d| d.downcast::<CFData>().ok())
        .and_then(|d| <[u8; 20]>::try_from(d.to_vec().as_slice()).ok())
        .map(CdHash);
    if let Some(certs) = info
        .get(certs_key)
        .and_then(|c| c.downcast::<CFArray>().ok())
    {
        // SAFETY: kSecCodeInfoCertificates is documented as an array of SecCertificate, leaf
        // first; each element is type-checked below.
        let certs: CFRetained<CFArray<CFType>> = unsafe { CFRetained::cast_unchecked(certs) };
        for i in 0..certs.len() {
            let Some(cert) = certs
                .get(i)
                .and_then(|c| c.downcast::<SecCertificate>().ok())
            else {
                continue;
            };
            // SAFETY: live certificate; both calls return +1 references (or none).
            let (der, summary) = unsafe { (cert.data(), cert.subject_summary()) };
            out.chain.push(ChainCert {
                sha256: Sha256(sha2::Sha256::digest(der.to_vec()).into()),
                summary: summary.map(|s| s.to_string()).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}
