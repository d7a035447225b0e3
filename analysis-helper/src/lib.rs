//! The analysis helper: listener, bounded worker pool, and analyzers behind small traits.
