//! Compile-time behaviour of the macros: every form of DESIGN §2 compiles (`ui/pass`), every
//! misuse fails with a spanned error that says how to fix it (`ui/fail`, checked-in `.stderr`).
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p messaging-core --test ui`
//! and read the diff.

// Compiler messages change between toolchains; the `.stderr` files are for stable.
#[rustversion::stable]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
