//! The Linux fanotify backend. PLACEHOLDER: issue 6 fills it.
