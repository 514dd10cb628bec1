//! Connecting to the API server, and Kubernetes errors as one line a person can act on.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why the cluster could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{path}: not a usable kubeconfig: {detail}")]
    Kubeconfig { path: String, detail: String },
    #[error(
        "no Kubernetes configuration: not in a pod (KUBERNETES_SERVICE_HOST unset) and no kubeconfig ($KUBECONFIG or ~/.kube/config): {detail}; give --kubeconfig"
    )]
    Infer { detail: String },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
    #[error("cannot use the Kubernetes API at {server}: {detail}")]
    Unreachable { server: String, detail: String },
}

/// A client from `kubeconfig`, or as kubectl finds one: `$KUBECONFIG`, `~/.kube/config`, then
/// the pod's service account (in-cluster). Also returns the API server's URL, for logs.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<(kube::Client, String), ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |detail: String| ConnectError::Kubeconfig {
                path: path.display().to_string(),
                detail,
            };
            let file = Kubeconfig::read_from(path).map_err(|e| bad(chain(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(chain(&e)))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ConnectError::Infer { detail: chain(&e) })?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| ConnectError::Client(chain(&e)))?;
    // One request now, so a wrong address, CA or token stops the start with its reason rather
    // than failing every workload's request later.
    client
        .apiserver_version()
        .await
        .map_err(|e| ConnectError::Unreachable {
            server: server.clone(),
            detail: describe(&e),
        })?;
    Ok((client, server))
}

/// An error and its causes on one line ("a: b: c"), without repeating a cause a message
/// already quotes.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A Kubernetes client error as one line: the API's own status (code, reason, message) when
/// it answered, else what went wrong on the way.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            };
            format!("the API server answered {}{reason}: {}", status.code, status.message)
        }
        // The transport's own words, innermost cause first ("Connection refused (os error
        // 111)", "invalid peer certificate: UnknownIssuer"), not kube's wrappers.
        other => match std::error::Error::source(other) {
            None => other.to_string(),
            Some(mut innermost) => {
                while let Some(next) = innermost.source() {
                    innermost = next;
                }
                format!("the API server could not be reached: {innermost}")
            }
        },
    }
}

/// The API server's answer to a request for one object, with what to check for the usual codes.
pub fn describe_access(e: &kube::Error, what: &str) -> String {
    match code(e) {
        Some(404) => format!("{what} does not exist"),
        Some(401) => format!(
            "{} (is the token in the kubeconfig or the pod's service account valid?)",
            describe(e)
        ),
        Some(403) => format!("{} (RBAC: may this service account read {what}?)", describe(e)),
        _ => describe(e),
    }
}

/// The HTTP status code of an API answer, if the error is one.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
