//! A consumer binary with a broker linked and no handler, as a service whose handlers live in
//! a library crate the binary never refers to: `consumer` must refuse to run and say why.

fn main() -> std::process::ExitCode {
    use messaging_redis as _;
    messaging_core::cli::main()
}
