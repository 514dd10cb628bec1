//! Signet's data plane: a sidecar that terminates inbound mTLS in front of a local app and
//! originates outbound mTLS for the app's calls, trusting only its own signer's roots.
//!
//! It knows nothing of where certificates come from: issuance talks to TLS through
//! [`credentials::Credentials`] only.

// Checked in normal builds; test builds also get the dev-dependencies of integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod admin;
pub mod body;
pub mod capture;
pub mod config;
pub mod credentials;
mod headers;
pub mod identity;
mod inbound;
pub mod metrics;
pub mod outbound;
pub mod prometheus;
mod relay;
pub mod serve;
pub mod services;
mod sidecar;
pub mod splice;
pub mod throttle;
pub mod tls;
pub mod xfcc;

/// For the fuzz targets only.
#[doc(hidden)]
pub use relay::fuzzing;

pub use config::{Config, ConfigError, ConfigFile, Protocol, Setting, XfccMode};
pub use sidecar::{BoundAddrs, Sidecar, StartError};
