//! The extension's platform-neutral core and its kernel backends (`sys/`).
//!
//! `backend` is the written contract between the two; the core never knows which OS it runs on.
//! `test_backend` is a deterministic backend with no kernel, for tests and benchmarks.

pub mod backend;
pub mod core;
pub mod sys;
pub mod test_backend;
