//! The `signet` CLI: signers, certificates, trust bundles, the sidecar, and the two-tenant demo.

// Not in test builds: the dev-dependencies serve the integration tests and benches.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod bench;
pub mod cli;
mod commands;
pub mod demo;
mod demo_pods;
pub mod httpbin;
mod iptables;
mod kubernetes;
pub mod pods;
