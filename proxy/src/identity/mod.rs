//! Keeping the workload identity fresh, on the issuance side of the [`Credentials`] seam: from
//! files (reloaded on change and SIGHUP; a broken file keeps the old certificate) or from the
//! authority (key + CSR at start, renewal at a fraction of the lifetime with jitter, exponential
//! backoff on failure, a still-valid certificate kept, an expired one never served). The trust
//! bundle is watched in both modes. Nothing here touches rustls: certificates, keys and trust go
//! to TLS as plain data through [`Credentials`].

mod files;
mod provision;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;

use signet_certs::{AuthorityClient, AuthorityError, CertificateDer, SignerName, SignerTrust, SpiffeId, TrustBundle};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, IdentitySource, Setting};
use crate::credentials::{Credentials, CredentialsError, WorkloadIdentity};
use crate::metrics::Metrics;

pub use provision::REQUEST_TIMEOUT;

/// What the identity tasks share.
pub(crate) struct IdentityCtx {
    pub config: Arc<Config>,
    pub credentials: Arc<dyn Credentials>,
    pub metrics: Arc<Metrics>,
    /// Pulsed by `Sidecar::reload` (SIGHUP).
    pub reload: Arc<Notify>,
    pub shutdown: CancellationToken,
}

/// Why no identity could be loaded or obtained. Messages name settings by their YAML path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file named by a setting is missing or unusable.
    #[error("{setting}: {source}")]
    File {
        setting: Setting,
        source: signet_certs::Error,
    },
    #[error("{setting}: {} is empty", path.display())]
    EmptyFile { setting: Setting, path: PathBuf },
    #[error("{}: {source}", path.display())]
    Bundle { path: PathBuf, source: signet_certs::Error },
    #[error("the certificate's chain anchors to no signer of the trust bundle; set signer (or ISTIO_META_CERT_SIGNER)")]
    NoSignerOfChain,
    #[error(
        "the certificate's chain anchors to several signers of the trust bundle ({0}); set signer (or ISTIO_META_CERT_SIGNER)"
    )]
    AmbiguousSigner(String),
    /// Our own certificate was refused by the TLS side (`path`: the file it came from).
    #[error("{}{source}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Certificate {
        path: Option<PathBuf>,
        source: CredentialsError,
    },
    #[error("cannot make a key and CSR: {0}")]
    Key(signet_certs::Error),
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error("the authority returned an unusable certificate: {0}")]
    Unusable(CredentialsError),
    #[error("the authority issued {got} instead of {wanted}")]
    WrongIdentity { wanted: SpiffeId, got: String },
    #[error("provisioning is configured but no authority client was given")]
    NoClient,
}

impl IdentityError {
    /// The message with settings named by `name` (the CLI adds flag names this way).
    pub fn describe(&self, name: &dyn Fn(&Setting) -> String) -> String {
        match self {
            IdentityError::File { setting, source } => format!("{}: {source}", name(setting)),
            IdentityError::EmptyFile { setting, path } => format!("{}: {} is empty", name(setting), path.display()),
            other => other.to_string(),
        }
    }
}

/// Starts keeping the identity fresh. Files mode loads synchronously (a bad file stops the
/// start); provisioning returns at once and runs in the background (not ready until the first
/// certificate arrives).
pub(crate) fn start(
    ctx: Arc<IdentityCtx>,
    client: Option<Arc<dyn AuthorityClient>>,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Option<Arc<WorkloadIdentity>>, IdentityError> {
    match &ctx.config.identity {
        IdentitySource::Files(paths) => {
            let identity = files::load(&ctx.config, paths, ctx.credentials.as_ref())?;
            tracker.spawn(files::watch(ctx.clone()));
            Ok(Some(identity))
        }
        IdentitySource::Provisioned(settings) => {
            let client = client.ok_or(IdentityError::NoClient)?;
            // Missing or broken local files are configuration errors: report them now, in one
            // line, not as endless retries in the background.
            load_bundle(&ctx.config)?;
            signet_certs::read_certs(&settings.authority.ca).map_err(|source| IdentityError::File {
                setting: Setting::AuthorityCa,
                source,
            })?;
            if let Some(token) = &settings.authority.token_file {
                let text = std::fs::read_to_string(token).map_err(|e| IdentityError::File {
                    setting: Setting::TokenFile,
                    source: signet_certs::Error::Io {
                        path: token.clone(),
                        source: e,
                    },
                })?;
                if text.trim().is_empty() {
                    return Err(IdentityError::EmptyFile {
                        setting: Setting::TokenFile,
                        path: token.clone(),
                    });
                }
            }
            tracker.spawn(provision::run(ctx.clone(), settings.clone(), client));
            Ok(None)
        }
    }
}

/// The bundle, if configured.
fn load_bundle(config: &Config) -> Result<Option<TrustBundle>, IdentityError> {
    config
        .trust_bundle
        .as_ref()
        .map(|p| TrustBundle::load(p, &config.signer_domain))
        .transpose()
        .map_err(|source| IdentityError::File {
            setting: Setting::TrustBundle,
            source,
        })
}

/// This workload's signer: configured, or read off `chain` through the bundle (by signature,
/// at a moment the leaf was valid, so an expired certificate is reported as expired).
fn signer_for(
    config: &Config,
    bundle: Option<&TrustBundle>,
    chain: &[CertificateDer<'_>],
) -> Result<SignerName, IdentityError> {
    if let Some(s) = &config.signer {
        return Ok(s.clone());
    }
    let bundle = bundle.ok_or(IdentityError::NoSignerOfChain)?;
    match bundle.signers_of(chain).as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(IdentityError::NoSignerOfChain),
        many => Err(IdentityError::AmbiguousSigner(
            many.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        )),
    }
}

/// The trust for `signer`: the bundle's roots when there is a bundle, else `roots`.
fn trust_for(
    config: &Config,
    bundle: Option<&TrustBundle>,
    signer: &SignerName,
    roots: impl FnOnce() -> Result<Vec<CertificateDer<'static>>, IdentityError>,
) -> Result<SignerTrust, IdentityError> {
    match (bundle, &config.trust_bundle) {
        (Some(b), Some(path)) => b.trust_for(signer).map_err(|source| IdentityError::Bundle {
            path: path.clone(),
            source,
        }),
        _ => Ok(SignerTrust::from_roots(signer.clone(), roots()?)),
    }
    .and_then(|trust| match &config.crl {
        Some(path) => signet_certs::read_crls(path)
            .map(|crls| trust.with_crls(crls))
            .map_err(|source| IdentityError::File {
                setting: Setting::Crl,
                source,
            }),
        None => Ok(trust),
    })
}
