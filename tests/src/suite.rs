//! Test bodies (filled in as the suite grows).
