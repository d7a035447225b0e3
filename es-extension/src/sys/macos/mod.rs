//! The macOS Endpoint Security backend. PLACEHOLDER: issue 7 fills it.
