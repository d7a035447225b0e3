//! The extension's platform-neutral core and its kernel backends (`sys/`).
//!
//! `backend` is the written contract between the two; the core never knows which OS it runs on.

pub mod backend;
pub mod sys;
