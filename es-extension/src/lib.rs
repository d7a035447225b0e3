//! The extension's platform-neutral core and its kernel backends (`sys/`).
