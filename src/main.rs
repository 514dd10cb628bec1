//! The `signet` command; everything lives in the library so tests and the demo share it.

fn main() -> std::process::ExitCode {
    signet::cli::main()
}
