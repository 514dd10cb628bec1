//! The `signet` command; everything lives in the library so tests and the demo share it.

// The binary is `main` calling the library: every dependency is the library's (checked there).
#![allow(unused_crate_dependencies)]

fn main() -> std::process::ExitCode {
    signet::cli::main()
}
