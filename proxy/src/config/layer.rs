//! One layer of configuration: the YAML file format, and what the CLI makes of its flags. Every
//! field is optional so that layers can be laid over each other; values are already typed
//! (durations, enums, SPIFFE IDs), so nothing is parsed twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use signet_certs::{HumanDuration, IdPattern, MinVersion, SpiffeId};

use super::{ConfigError, ConfigProblem, Protocol, Setting, XfccMode};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// `foo` or `clusterissuers.cert-manager.io/foo` (Istio's `ISTIO_META_CERT_SIGNER`).
    pub signer: Option<String>,
    /// Istio's `CERT_SIGNER_DOMAIN`.
    pub signer_domain: Option<String>,
    pub identity: Option<IdentityFile>,
    /// A `caCertificates` YAML file (see `signet bundle`).
    pub trust_bundle: Option<PathBuf>,
    /// Certificate revocation lists (PEM `X509 CRL` blocks) of this sidecar's signer, reloaded
    /// like the bundle; a peer whose chain one of them lists is refused.
    pub crl: Option<PathBuf>,
    #[serde(default)]
    pub inbound: Vec<InboundFile>,
    pub outbound: Option<OutboundFile>,
    /// Transparent capture: listeners for connections iptables redirected (`signet iptables`).
    pub capture: Option<CaptureFile>,
    /// `host:port` → where that service's sidecar listens and who it must be.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceFile>,
    pub admin: Option<String>,
    pub timeouts: Option<TimeoutsFile>,
    pub limits: Option<LimitsFile>,
    pub xfcc: Option<XfccMode>,
    pub tls: Option<TlsFile>,
    /// How often watched files (certificates in files mode, the trust bundle) are checked.
    pub watch_interval: Option<HumanDuration>,
    /// Trust domains peers may be in besides the sidecar's own (Istio's
    /// `meshConfig.trustDomainAliases`), where the bundle names none for the signer.
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFile {
    /// A directory with `tls.crt`, `tls.key` and `ca.crt` (what `signet cert issue` writes).
    pub cert_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The signer's roots when there is no trust bundle.
    pub ca: Option<PathBuf>,
    /// Provision by CSR from the authority instead of reading files.
    pub authority: Option<AuthorityFile>,
    /// The identity to request (provisioning).
    pub spiffe_id: Option<SpiffeId>,
    /// DNS SANs to request (the signing policy must allow them).
    #[serde(default)]
    pub dns: Vec<String>,
    /// Requested lifetime (Istio's `SECRET_TTL`); the signing policy's default when absent.
    pub ttl: Option<HumanDuration>,
    /// Renew at this fraction of the real lifetime (Istio's `SECRET_GRACE_PERIOD_RATIO`, 0.5).
    pub renew_at: Option<f64>,
}

impl IdentityFile {
    fn names_files(&self) -> bool {
        self.cert_dir.is_some() || self.cert.is_some() || self.key.is_some()
    }

    fn names_authority(&self) -> bool {
        self.authority.as_ref().is_some_and(|a| a.address.is_some())
    }
}

/// The authority to provision from. Each field is laid over the lower layer's on its own, so a
/// flag can refine one field of a file's authority.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorityFile {
    /// `host:port` of the authority (Istio: istiod's 15012).
    pub address: Option<String>,
    /// Root(s) of the authority's own certificate.
    pub ca: Option<PathBuf>,
    /// The DNS name in the authority's certificate.
    pub server_name: Option<String>,
    /// The workload's bearer token (re-read on every request).
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundFile {
    pub listen: String,
    pub app: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub allow: Vec<IdPattern>,
    /// `strict` (default): mTLS only; `permissive`: plaintext too (Istio's PeerAuthentication).
    #[serde(default)]
    pub mode: super::InboundMode,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundFile {
    /// HTTP proxy listener (apps set `http_proxy` to it).
    pub http: Option<String>,
    #[serde(default)]
    pub tcp: Vec<TcpRouteFile>,
}

/// Transparent capture, as Istio's sidecars have it: outbound connections redirected to
/// `outbound` (15001), inbound ones to `inbound` (15006).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureFile {
    /// Listener for the app's redirected outbound connections (Istio: 15001).
    pub outbound: Option<String>,
    /// Listener for redirected inbound connections; each goes to the app on the port it was
    /// sent to (Istio: 15006).
    pub inbound: Option<String>,
    /// Who may connect through the captured inbound (as `inbound[].allow`).
    #[serde(default)]
    pub inbound_allow: Vec<IdPattern>,
    /// `strict` (default) or `permissive`, as `inbound[].mode`.
    pub inbound_mode: Option<super::InboundMode>,
    /// Outbound destinations that are not in the service table: `passthrough` (Istio's
    /// ALLOW_ANY, the default) or `block` (REGISTRY_ONLY).
    pub unknown_destinations: Option<super::UnknownDestinations>,
    /// How long to wait for the app's first bytes before taking a connection for a server-first
    /// protocol (opaque TCP).
    pub sniff_timeout: Option<HumanDuration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteFile {
    pub listen: String,
    pub service: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceFile {
    pub address: String,
    pub identity: Option<SpiffeId>,
    /// Virtual `ip:port`s the app may dial for this service (a Kubernetes ClusterIP, say); with
    /// capture, a connection to one of them (or to `address`) is this service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// How the captured outbound carries it: `auto` (default: HTTP when the app's first bytes
    /// are HTTP), `http`, or `tcp` (always a byte tunnel, as an Istio port named `tcp-…`).
    pub protocol: Option<super::Protocol>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsFile {
    pub handshake: Option<HumanDuration>,
    pub connect: Option<HumanDuration>,
    pub drain: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
    pub header_read: Option<HumanDuration>,
    pub tcp_idle: Option<HumanDuration>,
    pub max_connection_age: Option<HumanDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsFile {
    /// Connections each data listener may hold.
    pub max_connections: Option<usize>,
    /// The largest request header block, in bytes.
    pub max_header_bytes: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFile {
    pub min_version: Option<MinVersion>,
    pub post_quantum: Option<bool>,
    /// TLS 1.3 session resumption between sidecars (default on; sessions never outlive the trust).
    pub resumption: Option<bool>,
    /// Remember verified peer chains per trust version (default on).
    pub verify_cache: Option<bool>,
}

impl ConfigFile {
    /// Reads a YAML file; relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let at = || Setting::File(path.to_path_buf());
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(at(), ConfigProblem::Read(e)))?;
        let mut file: ConfigFile =
            signet_certs::from_yaml(&text).map_err(|e| ConfigError::new(at(), ConfigProblem::Yaml(e)))?;
        if let Some(base) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            file.rebase(base);
        }
        Ok(file)
    }

    fn rebase(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = base.join(&*path);
            }
        };
        fix(&mut self.trust_bundle);
        fix(&mut self.crl);
        if let Some(id) = self.identity.as_mut() {
            for path in [&mut id.cert_dir, &mut id.cert, &mut id.key, &mut id.ca] {
                fix(path);
            }
            if let Some(a) = id.authority.as_mut() {
                fix(&mut a.ca);
                fix(&mut a.token_file);
            }
        }
    }

    /// Lays `over` (from flags and env) on top of `self` (from the file): values given in
    /// `over` win, lists given in `over` replace, services merge by name, authority fields merge
    /// one by one. The identity source given in `over` (files or an authority) replaces the
    /// other kind from `self`.
    pub fn overlay(self, over: ConfigFile) -> ConfigFile {
        let mut services = self.services;
        services.extend(over.services);
        ConfigFile {
            signer: pick(self.signer, over.signer),
            signer_domain: pick(self.signer_domain, over.signer_domain),
            identity: match (self.identity, over.identity) {
                (lower, None) => lower,
                (None, upper) => upper,
                (Some(lower), Some(upper)) => Some(overlay_identity(lower, upper)),
            },
            trust_bundle: pick(self.trust_bundle, over.trust_bundle),
            crl: pick(self.crl, over.crl),
            inbound: if over.inbound.is_empty() {
                self.inbound
            } else {
                over.inbound
            },
            outbound: match (self.outbound, over.outbound) {
                (lower, None) => lower,
                (None, upper) => upper,
                (Some(lower), Some(upper)) => Some(OutboundFile {
                    http: pick(lower.http, upper.http),
                    tcp: if upper.tcp.is_empty() { lower.tcp } else { upper.tcp },
                }),
            },
            capture: match (self.capture, over.capture) {
                (lower, None) => lower,
                (None, upper) => upper,
                (Some(lower), Some(upper)) => Some(CaptureFile {
                    outbound: pick(lower.outbound, upper.outbound),
                    inbound: pick(lower.inbound, upper.inbound),
                    inbound_allow: if upper.inbound_allow.is_empty() {
                        lower.inbound_allow
                    } else {
                        upper.inbound_allow
                    },
                    inbound_mode: pick(lower.inbound_mode, upper.inbound_mode),
                    unknown_destinations: pick(lower.unknown_destinations, upper.unknown_destinations),
                    sniff_timeout: pick(lower.sniff_timeout, upper.sniff_timeout),
                }),
            },
            services,
            admin: pick(self.admin, over.admin),
            timeouts: match (self.timeouts, over.timeouts) {
                (lower, None) => lower,
                (None, upper) => upper,
                (Some(lower), Some(upper)) => Some(TimeoutsFile {
                    handshake: pick(lower.handshake, upper.handshake),
                    connect: pick(lower.connect, upper.connect),
                    drain: pick(lower.drain, upper.drain),
                    idle: pick(lower.idle, upper.idle),
                    header_read: pick(lower.header_read, upper.header_read),
                    tcp_idle: pick(lower.tcp_idle, upper.tcp_idle),
                    max_connection_age: pick(lower.max_connection_age, upper.max_connection_age),
                }),
            },
            limits: match (self.limits, over.limits) {
                (lower, None) => lower,
                (None, upper) => upper,
                (Some(lower), Some(upper)) => Some(LimitsFile {
                    max_connections: pick(lower.max_connections, upper.max_connections),
                    max_header_bytes: pick(lower.max_header_bytes, upper.max_header_bytes),
                }),
            },
            xfcc: pick(self.xfcc, over.xfcc),
            tls: match (self.tls, over.tls) {
                (lower, None) => lower,
                (None, upper) => upper,
                (Some(lower), Some(upper)) => Some(TlsFile {
                    min_version: pick(lower.min_version, upper.min_version),
                    post_quantum: pick(lower.post_quantum, upper.post_quantum),
                    resumption: pick(lower.resumption, upper.resumption),
                    verify_cache: pick(lower.verify_cache, upper.verify_cache),
                }),
            },
            watch_interval: pick(self.watch_interval, over.watch_interval),
            trust_domain_aliases: if over.trust_domain_aliases.is_empty() {
                self.trust_domain_aliases
            } else {
                over.trust_domain_aliases
            },
        }
    }
}

/// The upper layer's value if it has one.
fn pick<T>(lower: Option<T>, upper: Option<T>) -> Option<T> {
    upper.or(lower)
}

fn overlay_identity(lower: IdentityFile, upper: IdentityFile) -> IdentityFile {
    let authority = match (lower.authority.clone(), upper.authority.clone()) {
        (a, None) => a,
        (None, b) => b,
        (Some(a), Some(b)) => Some(AuthorityFile {
            address: b.address.or(a.address),
            ca: b.ca.or(a.ca),
            server_name: b.server_name.or(a.server_name),
            token_file: b.token_file.or(a.token_file),
        }),
    };
    // Certificate files from above replace the authority below (not authority settings given
    // with them: those are refused later, not dropped), and the other way round.
    let (files, authority) = if upper.names_files() {
        (upper.clone(), upper.authority.clone())
    } else if upper.names_authority() {
        (IdentityFile::default(), authority)
    } else {
        (lower.clone(), authority)
    };
    IdentityFile {
        cert_dir: files.cert_dir,
        cert: files.cert,
        key: files.key,
        ca: if upper.names_authority() {
            upper.ca
        } else {
            upper.ca.or(files.ca)
        },
        authority,
        spiffe_id: upper.spiffe_id.or(lower.spiffe_id),
        dns: if upper.dns.is_empty() { lower.dns } else { upper.dns },
        ttl: upper.ttl.or(lower.ttl),
        renew_at: upper.renew_at.or(lower.renew_at),
    }
}
