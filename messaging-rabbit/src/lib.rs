//! The rabbit backend of `messaging` (in progress).
