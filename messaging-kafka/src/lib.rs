//! The kafka backend of `messaging` (in progress).
