//! Shared helpers for the end-to-end tests in `tests/tests/`: locating the built binaries,
//! root and kernel-feature checks with clear skip reasons, and process cleanup by pid.
#![forbid(unsafe_code)]
