//! Leaf certificates and team ids from the Security framework, for certificate rules (the ES
//! message has no certificate hash). Used for rule matching only; the exec decision's identity
//! is still the kernel's (`CS_VALID`, CDHash) — this never replaces it (docs/DESIGN.md 6).
#![expect(
    unsafe_code,
    reason = "Security framework calls (SecStaticCode, SecCode, SecCertificate) are FFI; each block has a SAFETY proof"
)]

use std::ptr::NonNull;

use model::{CertificateInfo, Sha256};
use objc2_core_foundation::{CFArray, CFData, CFDictionary, CFRetained, CFString, CFType, CFURL};
use objc2_security::{
    SecCSFlags, SecCertificate, SecCode, SecRequirement, SecStaticCode, kSecCSSigningInformation,
    kSecCodeInfoCertificates, kSecCodeInfoTeamIdentifier,
};
use sha2::Digest;

use crate::analyzer::{AnalysisError, CodeSigning, Input};

/// `errSecSuccess`.
const ERR_SEC_SUCCESS: i32 = 0;
/// `errSecCSUnsigned`: no signature at all.
const ERR_SEC_CS_UNSIGNED: i32 = -67062;

/// Security-framework certificate reader.
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

impl CodeSigning for SecurityFramework {
    fn certificate(&self, input: &Input<'_>) -> Result<CertificateInfo, AnalysisError> {
        input.check_deadline()?;
        let path = input.file.path.as_str();
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

        input.check_deadline()?;
        let req = self.requirement.as_deref().map(requirement).transpose()?;
        // SAFETY: live static code; the requirement (if any) is live for the call.
        let validity = unsafe { code.check_validity(SecCSFlags::DefaultFlags, req.as_deref()) };
        if validity == ERR_SEC_CS_UNSIGNED {
            return Err(status("SecStaticCodeCheckValidity", path, validity));
        }

        input.check_deadline()?;
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
        let (certs_key, team_key) =
            unsafe { (kSecCodeInfoCertificates, kSecCodeInfoTeamIdentifier) };
        let certs = info
            .get(certs_key)
            .and_then(|c| c.downcast::<CFArray>().ok())
            .ok_or_else(|| {
                AnalysisError::BadRequest(format!("{path} is ad-hoc signed: it has no certificate"))
            })?;
        // SAFETY: kSecCodeInfoCertificates is documented as an array of SecCertificate, leaf
        // first; the element is type-checked below.
        let certs: CFRetained<CFArray<CFType>> = unsafe { CFRetained::cast_unchecked(certs) };
        let leaf = certs
            .get(0)
            .and_then(|c| c.downcast::<SecCertificate>().ok())
            .ok_or_else(|| AnalysisError::Internal(format!("{path}: empty certificate chain")))?;
        // SAFETY: live certificate; returns its DER bytes (+1).
        let der: CFRetained<CFData> = unsafe { leaf.data() };
        let leaf_sha256 = Sha256(sha2::Sha256::digest(der.to_vec()).into());
        let team_id = info
            .get(team_key)
            .and_then(|t| t.downcast::<CFString>().ok())
            .map(|t| t.to_string());
        Ok(CertificateInfo {
            leaf_sha256,
            team_id,
            valid: validity == ERR_SEC_SUCCESS,
        })
    }
}
