//! Pinning the slow path's own dependencies at start-up (Linux): Gatehouse's executables and the
//! ELF interpreter each names, identified by `fstat` of the file opened once and hashed once,
//! on the main thread before the fanotify group exists (so no event of ours can be raised by
//! it, and nothing here waits on the helper or any daemon: it is local I/O on our own files,
//! bounded by [`MAX_PIN_SIZE`]).
//!
//! The result feeds [`crate::core::trusted::TrustedSet`]; see there for how it is matched.
//! A file that cannot be pinned is reported and left out: its exec then goes through the
//! normal policy, as it did before pinning existed, and start-up goes on.

#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use model::{FileIdentity, Sha256};
use sha2::Digest;

use crate::core::trusted::{Dependency, Pin, Role, TrustedError, TrustedSet};

/// Largest file pinned (and hashed at start-up): far above any Gatehouse build or `ld.so`.
pub const MAX_PIN_SIZE: u64 = 512 * 1024 * 1024;
/// Program headers read to find `PT_INTERP` (real binaries have about a dozen).
const MAX_PHNUM: u64 = 128;
/// Longest interpreter path accepted (the kernel's own limit is PATH_MAX).
const MAX_INTERP: u64 = 4096;

const PT_INTERP: u32 = 3;

/// Why one file could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot pin {role} {path}: {source}")]
    Io {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pin {role} {path}: {why}")]
    Unsuitable {
        role: &'static str,
        path: PathBuf,
        why: String,
    },
}

/// Which executables to pin. Paths are only where to open them now: events are matched by the
/// identity of what was opened, never by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinSources {
    /// Open `/proc/self/exe` (the running extension's own image, whatever its path now).
    pub own_exe: bool,
    /// The helper executable; `None`: `gatehouse-helper` next to our own executable.
    pub helper: Option<PathBuf>,
    /// The CLI; `None`: `gatehouse` next to our own executable, else the first of
    /// `/usr/bin/gatehouse` (the packages) and `/usr/local/bin/gatehouse` (a manual install).
    pub cli: Option<PathBuf>,
}

impl Default for PinSources {
    fn default() -> Self {
        Self {
            own_exe: true,
            helper: None,
            cli: None,
        }
    }
}

/// One pinned file and the interpreter it names, if any.
#[derive(Debug)]
pub struct Pinned {
    pub dep: Dependency,
    pub interpreter: Option<PathBuf>,
}

/// Open, identify, parse and hash `path` as `role`. The identity is taken before and after
/// hashing and must not change in between, so the digest describes the pinned version.
pub fn pin_file(role: Role, path: &Path) -> Result<Pinned, PinError> {
    let io = |source| PinError::Io {
        role: role.as_str(),
        path: path.to_owned(),
        source,
    };
    let unsuitable = |why: String| PinError::Unsuitable {
        role: role.as_str(),
        path: path.to_owned(),
        why,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(unsuitable("not a regular file".into()));
    }
    if meta.len() > MAX_PIN_SIZE {
        return Err(unsuitable(format!(
            "{} bytes, more than the {MAX_PIN_SIZE}-byte pinning limit",
            meta.len()
        )));
    }
    let before = FileIdentity::from(&meta);
    let interpreter = elf_interpreter(&file, meta.len()).map_err(unsuitable)?;
    let sha256 = sha256_of(&file, meta.len()).map_err(io)?;
    let after = FileIdentity::from(&file.metadata().map_err(io)?);
    if after != before {
        return Err(unsuitable(
            "it changed while it was being hashed; restart the extension once it is stable".into(),
        ));
    }
    // The path the kernel resolved for what we opened (`/proc/self/exe` names the real file).
    let shown = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .unwrap_or_else(|_| path.to_owned());
    Ok(Pinned {
        dep: Dependency {
            role,
            path: shown.to_string_lossy().into_owned(),
            pin: Pin::File {
                identity: before,
                sha256,
            },
        },
        interpreter,
    })
}

/// SHA-256 of the first `len` bytes of `file`, read by offset through the descriptor.
fn sha256_of(file: &File, len: u64) -> std::io::Result<Sha256> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < len {
        let want = buf
            .len()
            .min(usize::try_from(len - off).unwrap_or(usize::MAX));
        match file.read_at(&mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Sha256(hasher.finalize().into()))
}

fn read_exact_at(file: &File, len: u64, off: u64, n: u64) -> Result<Vec<u8>, String> {
    if off.checked_add(n).is_none_or(|end| end > len) {
        return Err(format!(
            "ELF data at {off}+{n} lies past the end ({len} bytes)"
        ));
    }
    let mut buf = vec![0u8; n as usize];
    file.read_exact_at(&mut buf, off)
        .map_err(|e| format!("reading ELF data at {off}: {e}"))?;
    Ok(buf)
}

/// The `PT_INTERP` path of an ELF file, `None` for a static binary or a file that is not ELF
/// (a script's interpreter comes from its `#!` line, which the kernel opens as its own exec).
/// Only the header, the program headers and the interpreter string are read, each bounded.
pub fn elf_interpreter(file: &File, len: u64) -> Result<Option<PathBuf>, String> {
    let mut ident = [0u8; 16];
    if len < 16 || file.read_exact_at(&mut ident, 0).is_err() || &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let (wide, little) = match (ident[4], ident[5]) {
        (c @ (1 | 2), d @ (1 | 2)) => (c == 2, d == 1),
        (c, d) => return Err(format!("unknown ELF class {c} / data encoding {d}")),
    };
    let header = read_exact_at(file, len, 0, if wide { 64 } else { 52 })?;
    let u16_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1]];
        u64::from(if little {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        })
    };
    let u32_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        if little {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    };
    // (e_phoff, e_phentsize, e_phnum) and, per entry, (p_type, p_offset, p_filesz).
    let (phoff, phentsize, phnum) = if wide {
        (
            u64_at(&header, 32),
            u16_at(&header, 54),
            u16_at(&header, 56),
        )
    } else {
        (
            u64::from(u32_at(&header, 28)),
            u16_at(&header, 42),
            u16_at(&header, 44),
        )
    };
    let min_entry = if wide { 56 } else { 32 };
    if phnum == 0 {
        return Ok(None);
    }
    if phnum > MAX_PHNUM || phentsize < min_entry {
        return Err(format!(
            "implausible program header table ({phnum} entries of {phentsize} bytes)"
        ));
    }
    let table = read_exact_at(file, len, phoff, phnum * phentsize)?;
    for i in 0..phnum {
        let e = &table[(i * phentsize) as usize..];
        if u32_at(e, 0) != PT_INTERP {
            continue;
        }
        let (off, size) = if wide {
            (u64_at(e, 8), u64_at(e, 32))
        } else {
            (u64::from(u32_at(e, 4)), u64::from(u32_at(e, 16)))
        };
        if size == 0 || size > MAX_INTERP {
            return Err(format!("PT_INTERP of {size} bytes"));
        }
        let raw = read_exact_at(file, len, off, size)?;
        let s = raw.split(|b| *b == 0).next().unwrap_or_default();
        if s.first() != Some(&b'/') {
            return Err("PT_INTERP is not an absolute path".into());
        }
        return Ok(Some(PathBuf::from(String::from_utf8_lossy(s).into_owned())));
    }
    Ok(None)
}

/// Our own executable's path, for finding its siblings.
fn own_path() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/exe").ok()
}

/// Pin everything `sources` names, and the interpreters they name. Returns the set and what
/// could not be pinned (each a message for stderr; none of them stops start-up).
pub fn pin_all(sources: &PinSources) -> Result<(TrustedSet, Vec<PinError>), TrustedError> {
    let own = own_path();
    let sibling = |name: &str| own.as_ref().map(|p| p.with_file_name(name));
    let mut wanted: Vec<(Role, PathBuf, bool)> = Vec::new();
    if sources.own_exe {
        wanted.push((Role::Extension, PathBuf::from("/proc/self/exe"), true));
    }
    match (&sources.helper, sibling("gatehouse-helper")) {
        (Some(p), _) => wanted.push((Role::Helper, p.clone(), true)),
        (None, Some(p)) => wanted.push((Role::Helper, p, false)),
        (None, None) => {}
    }
    match &sources.cli {
        Some(p) => wanted.push((Role::Cli, p.clone(), true)),
        None => {
            let found = sibling("gatehouse")
                .into_iter()
                .chain(["/usr/bin/gatehouse", "/usr/local/bin/gatehouse"].map(PathBuf::from))
                .find(|p| p.is_file());
            if let Some(p) = found {
                wanted.push((Role::Cli, p, false));
            }
        }
    }
    let mut deps = Vec::new();
    let mut errors = Vec::new();
    let mut interpreters: Vec<PathBuf> = Vec::new();
    for (role, path, explicit) in wanted {
        match pin_file(role, &path) {
            Ok(p) => {
                if let Some(i) = p.interpreter
                    && !interpreters.contains(&i)
                {
                    interpreters.push(i);
                }
                deps.push(p.dep);
            }
            // A default location that holds nothing is not worth a warning.
            Err(PinError::Io { ref source, .. })
                if !explicit && source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(e),
        }
    }
    for path in interpreters {
        match pin_file(Role::Interpreter, &path) {
            Ok(p) => deps.push(p.dep),
            Err(e) => errors.push(e),
        }
    }
    Ok((TrustedSet::new(deps)?, errors))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A minimal little-endian ELF64 image: header, `phnum` program headers, and the
    /// interpreter string after them, named by a PT_INTERP entry at index `interp_at`.
    fn elf64(phnum: u16, interp_at: Option<u16>, interp: &[u8]) -> Vec<u8> {
        let at = 64 + usize::from(phnum) * 56 + 16;
        let mut b = vec![0u8; at + interp.len() + 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little-endian
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&phnum.to_le_bytes()); // e_phnum
        for i in 0..phnum {
            let e = 64 + usize::from(i) * 56;
            let ty: u32 = if Some(i) == interp_at { PT_INTERP } else { 1 };
            b[e..e + 4].copy_from_slice(&ty.to_le_bytes());
            b[e + 8..e + 16].copy_from_slice(&(at as u64).to_le_bytes());
            b[e + 32..e + 40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        }
        b[at..at + interp.len()].copy_from_slice(interp);
        b
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn interpreter_table() {
        let ld = b"/lib64/ld-linux-x86-64.so.2\0";
        let mut truncated = elf64(2, Some(1), ld);
        truncated.truncate(100);
        let mut bad_class = elf64(1, Some(0), ld);
        bad_class[4] = 9;
        // Err(()): the file is refused; Ok(None): no interpreter.
        type Want = Result<Option<&'static str>, ()>;
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            (
                "dynamic",
                elf64(3, Some(2), ld),
                Ok(Some("/lib64/ld-linux-x86-64.so.2")),
            ),
            ("static", elf64(3, None, ld), Ok(None)),
            ("no program headers", elf64(0, None, ld), Ok(None)),
            ("a script", b"#!/bin/sh\necho hi\n".to_vec(), Ok(None)),
            ("empty", Vec::new(), Ok(None)),
            ("table past the end", truncated, Err(())),
            (
                "relative interpreter",
                elf64(1, Some(0), b"ld.so\0"),
                Err(()),
            ),
            ("empty interpreter", elf64(1, Some(0), b""), Err(())),
            (
                "too many headers",
                elf64(u16::try_from(MAX_PHNUM).unwrap() + 1, None, ld),
                Err(()),
            ),
            ("unknown class", bad_class, Err(())),
        ];
        for (name, bytes, want) in cases {
            let (_t, f) = file_with(&bytes);
            let got = elf_interpreter(&f, bytes.len() as u64);
            let got = got.map(|o| o.map(|p| p.to_string_lossy().into_owned()));
            assert_eq!(
                got.as_ref().map(|o| o.as_deref()).map_err(|_| ()),
                want,
                "{name}: {got:?}"
            );
        }
    }

    #[test]
    fn our_own_executable_names_its_interpreter() {
        // The test binary is a dynamically linked ELF, as the installed binaries are.
        let exe = File::open("/proc/self/exe").unwrap();
        let len = exe.metadata().unwrap().len();
        let interp = elf_interpreter(&exe, len).unwrap().expect("a PT_INTERP");
        assert!(interp.is_absolute() && interp.exists(), "{interp:?}");
    }

    #[test]
    fn pin_records_identity_and_digest() {
        let (t, _f) = file_with(b"abc");
        let p = pin_file(Role::Helper, t.path()).unwrap();
        let Pin::File { identity, sha256 } = p.dep.pin else {
            panic!("a file pin");
        };
        assert_eq!(identity.size, 3);
        assert_eq!(
            sha256.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(p.interpreter.is_none());
        assert!(matches!(
            pin_file(Role::Helper, Path::new("/nonexistent/gatehouse-helper")),
            Err(PinError::Io { .. })
        ));
        assert!(matches!(
            pin_file(Role::Helper, Path::new("/")),
            Err(PinError::Unsuitable { .. })
        ));
    }

    #[test]
    fn pin_all_reports_an_explicit_missing_helper() {
        let sources = PinSources {
            own_exe: true,
            helper: Some(PathBuf::from("/nonexistent/gatehouse-helper")),
            cli: None,
        };
        let (set, errors) = pin_all(&sources).unwrap();
        let roles: Vec<Role> = set.entries().map(|(d, _)| d.role).collect();
        assert!(roles.contains(&Role::Extension), "{roles:?}");
        assert!(roles.contains(&Role::Interpreter), "{roles:?}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .contains("/nonexistent/gatehouse-helper")
        );
    }
}
