//! The redis backend of `messaging` (in progress).
