//! Where the workload identity comes from. Today: files (`tls.crt`, `tls.key`, and the roots
//! from the trust bundle or `ca.crt`). The store only ever sees chains and keys.

use std::sync::Arc;

use signet_certs::{TrustBundle, read_certs, read_key};

use crate::config::Config;
use crate::tls::{Credentials, IdentityInfo, Trust};

/// Loads the trust and the certificate named by `config` into `creds`. Errors are one line
/// naming the file and the problem.
pub fn load_files(config: &Config, creds: &dyn Credentials) -> Result<Arc<IdentityInfo>, String> {
    let trust = match (&config.trust_bundle, &config.identity.ca) {
        (Some(path), _) => {
            let bundle = TrustBundle::load(path, &config.signer_domain).map_err(|e| e.to_string())?;
            Trust::from_bundle(&bundle, &config.signer).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, Some(ca)) => {
            let roots = read_certs(ca).map_err(|e| e.to_string())?;
            Trust::from_roots(config.signer.clone(), roots).map_err(|e| format!("{}: {e}", ca.display()))?
        }
        (None, None) => return Err("no roots to trust; set --bundle FILE or --ca FILE".into()),
    };
    creds.set_trust(trust).map_err(|e| e.to_string())?;
    let chain = read_certs(&config.identity.cert).map_err(|e| e.to_string())?;
    let key = read_key(&config.identity.key).map_err(|e| e.to_string())?;
    creds
        .set_certificate(chain, key)
        .map_err(|e| format!("{}: {e}", config.identity.cert.display()))
}
