//! The `signet` CLI: signers, certificates, trust bundles, the sidecar, and the two-tenant demo.

pub mod bench;
pub mod cli;
mod commands;
pub mod demo;
pub mod httpbin;
