//! Platform-neutral conversions the macOS backend relies on, kept out of cfg(macos) so they are
//! unit-tested on Linux. PLACEHOLDER: issue 7 fills it.
#![forbid(unsafe_code)]
