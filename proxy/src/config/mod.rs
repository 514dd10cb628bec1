//! Sidecar configuration, one way from flags to a running sidecar: the CLI turns its flags into a
//! [`ConfigFile`] layer (the same type a YAML file deserializes into), [`ConfigFile::overlay`]
//! lays it over the file's layer in one step, and [`ConfigFile::resolve`] checks everything and
//! produces the typed [`Config`] the components receive. Every enum and duration is parsed once,
//! by its `FromStr`, whether it arrives as a flag or as YAML. Nothing here reads the environment.
//!
//! Errors name settings by their YAML path ([`Setting`]); the CLI renders them with its flag
//! names through [`ConfigError::describe`].

mod layer;
mod resolve;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use signet_certs::{CryptoPolicy, SignerName, SpiffeId, UnknownChoice, deserialize_from_str};

pub use layer::{
    AuthorityFile, CaptureFile, ConfigFile, IdentityFile, InboundFile, LimitsFile, OutboundFile, ServiceFile,
    TcpRouteFile, TimeoutsFile, TlsFile,
};

use crate::services::{ServiceError, ServiceTable};
use crate::tls::AllowList;

/// Files are hashed this often at most.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How often watched files are checked by default (SIGHUP: at once).
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Istio's `SECRET_GRACE_PERIOD_RATIO`: renew at half of the certificate's life.
pub const DEFAULT_RENEW_AT: f64 = 0.5;

/// L4 or L7 handling of an inbound listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes are copied both ways after the handshake.
    #[default]
    Tcp,
    /// HTTP/1.1 or h2 (by ALPN) is terminated, `x-forwarded-client-cert` added, and requests
    /// forwarded to the app over a pooled connection.
    Http,
    /// Per connection, by what the peer sidecar negotiated: HTTP when it offered an HTTP ALPN
    /// (its app spoke HTTP), bytes otherwise. What the captured inbound uses.
    Auto,
}

impl FromStr for Protocol {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.trim() {
            "tcp" => Ok(Protocol::Tcp),
            "http" => Ok(Protocol::Http),
            "auto" => Ok(Protocol::Auto),
            other => Err(UnknownChoice {
                what: "protocol",
                input: other.to_string(),
                choices: "tcp, http or auto",
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Auto => "auto",
        })
    }
}

deserialize_from_str!(Protocol);

/// Whether an inbound listener takes only mTLS (Istio's STRICT) or plaintext too (PERMISSIVE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InboundMode {
    /// Only peers with a certificate of this sidecar's signer (the default).
    #[default]
    Strict,
    /// mTLS and plaintext on one port, told apart by the first byte; plaintext reaches the app
    /// without an identity (no XFCC) and is counted apart. For migrations only.
    Permissive,
}

impl FromStr for InboundMode {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "strict" => Ok(InboundMode::Strict),
            "permissive" => Ok(InboundMode::Permissive),
            _ => Err(UnknownChoice {
                what: "inbound mode",
                input: s.to_string(),
                choices: "strict (the default) or permissive",
            }),
        }
    }
}

impl fmt::Display for InboundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InboundMode::Strict => "strict",
            InboundMode::Permissive => "permissive",
        })
    }
}

deserialize_from_str!(InboundMode);

/// What the captured outbound does with a destination that is not in the service table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownDestinations {
    /// Connect to it as the app asked, without mTLS (Istio's `ALLOW_ANY`).
    #[default]
    Passthrough,
    /// Close the connection (Istio's `REGISTRY_ONLY`).
    Block,
}

impl FromStr for UnknownDestinations {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.trim() {
            "passthrough" => Ok(UnknownDestinations::Passthrough),
            "block" => Ok(UnknownDestinations::Block),
            other => Err(UnknownChoice {
                what: "unknown destinations",
                input: other.to_string(),
                choices: "passthrough (the default) or block",
            }),
        }
    }
}

impl fmt::Display for UnknownDestinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnknownDestinations::Passthrough => "passthrough",
            UnknownDestinations::Block => "block",
        })
    }
}

deserialize_from_str!(UnknownDestinations);

/// How long the captured outbound waits for the app's first bytes by default.
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// How the inbound side sets `x-forwarded-client-cert` (Envoy's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XfccMode {
    /// Replace whatever the client sent with the verified peer's element (default: a client
    /// cannot smuggle in an identity).
    #[default]
    SanitizeSet,
    /// Keep the client's header and append the verified element (Envoy's sidecar default).
    AppendForward,
}

impl FromStr for XfccMode {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "SANITIZE_SET" => Ok(XfccMode::SanitizeSet),
            "APPEND_FORWARD" => Ok(XfccMode::AppendForward),
            _ => Err(UnknownChoice {
                what: "x-forwarded-client-cert mode",
                input: s.to_string(),
                choices: "SANITIZE_SET (the default) or APPEND_FORWARD",
            }),
        }
    }
}

deserialize_from_str!(XfccMode);

// === settings and errors ===

/// A setting that a library error can name, by its YAML path; the CLI adds its flag names.
/// (Values that do not parse at all are reported where they are read, with the YAML path or the
/// flag in the message.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setting {
    /// A config file as a whole (its path).
    File(PathBuf),
    Signer,
    CertDir,
    Cert,
    Key,
    Ca,
    TrustBundle,
    Crl,
    AuthorityAddress,
    AuthorityCa,
    AuthorityServerName,
    TokenFile,
    SpiffeId,
    Dns,
    Ttl,
    RenewAt,
    Inbound(usize),
    InboundListen(usize),
    InboundApp(usize),
    OutboundHttp,
    OutboundTcp(usize),
    CaptureOutbound,
    CaptureInbound,
    SniffTimeout,
    Service(String),
    Admin,
    WatchInterval,
    TrustDomainAlias(usize),
    /// `timeouts.<name>` (camelCase).
    Timeout(&'static str),
    /// `limits.<name>` (camelCase).
    Limit(&'static str),
}

impl Setting {
    /// The YAML path, e.g. `identity.authority.tokenFile` or `inbound[0].listen`.
    pub fn yaml(&self) -> String {
        match self {
            Setting::File(path) => path.display().to_string(),
            Setting::Signer => "signer".into(),
            Setting::CertDir => "identity.certDir".into(),
            Setting::Cert => "identity.cert".into(),
            Setting::Key => "identity.key".into(),
            Setting::Ca => "identity.ca".into(),
            Setting::TrustBundle => "trustBundle".into(),
            Setting::Crl => "crl".into(),
            Setting::AuthorityAddress => "identity.authority.address".into(),
            Setting::AuthorityCa => "identity.authority.ca".into(),
            Setting::AuthorityServerName => "identity.authority.serverName".into(),
            Setting::TokenFile => "identity.authority.tokenFile".into(),
            Setting::SpiffeId => "identity.spiffeId".into(),
            Setting::Dns => "identity.dns".into(),
            Setting::Ttl => "identity.ttl".into(),
            Setting::RenewAt => "identity.renewAt".into(),
            Setting::Inbound(i) => format!("inbound[{i}]"),
            Setting::InboundListen(i) => format!("inbound[{i}].listen"),
            Setting::InboundApp(i) => format!("inbound[{i}].app"),
            Setting::OutboundHttp => "outbound.http".into(),
            Setting::OutboundTcp(i) => format!("outbound.tcp[{i}]"),
            Setting::CaptureOutbound => "capture.outbound".into(),
            Setting::CaptureInbound => "capture.inbound".into(),
            Setting::SniffTimeout => "capture.sniffTimeout".into(),
            Setting::Service(name) => format!("services[{name}]"),
            Setting::Admin => "admin".into(),
            Setting::WatchInterval => "watchInterval".into(),
            Setting::TrustDomainAlias(i) => format!("trustDomainAliases[{i}]"),
            Setting::Timeout(name) => format!("timeouts.{name}"),
            Setting::Limit(name) => format!("limits.{name}"),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.yaml())
    }
}

/// A configuration problem, reported in one line: which setting, what is wrong, how to fix it.
#[derive(Debug)]
pub struct ConfigError {
    pub at: Setting,
    pub problem: ConfigProblem,
}

/// What is wrong with a setting. Hints that name other settings hold them as [`Setting`]s.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigProblem {
    Read(std::io::Error),
    Yaml(signet_certs::YamlError),
    Value(signet_certs::Error),
    NotAnAddress(String),
    NotHostPort(String),
    Service(ServiceError),
    RenewAtRange(f64),
    WatchIntervalTooShort,
    /// A number or duration outside what the setting allows (the text says the range).
    OutOfRange(String),
    Empty {
        expected: &'static str,
    },
    BothIdentitySources,
    ProvisioningOnly,
    FilesOnly,
    NeedsAuthorityAddress,
    NoSpiffeId,
    NoAuthorityCa,
    NoCertificate,
    NoKey,
    NoRoots,
    NoSigner,
    NoListeners,
    UnknownService(String),
}

impl ConfigError {
    pub fn new(at: Setting, problem: ConfigProblem) -> Self {
        ConfigError { at, problem }
    }

    /// The message with every setting named by `name` (the CLI adds flag names this way).
    pub fn describe(&self, name: &dyn Fn(&Setting) -> String) -> String {
        format!("{}: {}", name(&self.at), self.problem.describe(name))
    }
}

impl ConfigProblem {
    pub fn describe(&self, name: &dyn Fn(&Setting) -> String) -> String {
        use ConfigProblem as P;
        use Setting as S;
        match self {
            P::Read(e) => format!("cannot read the config file: {e}"),
            P::Yaml(e) => format!("invalid config: {e}"),
            P::Value(e) => e.to_string(),
            P::NotAnAddress(text) => format!("{text:?} is not an IP:port address (e.g. 127.0.0.1:15006)"),
            P::NotHostPort(text) => format!("{text:?} is not a host:port (e.g. 127.0.0.1:8000 or localhost:8000)"),
            P::Service(e) => e.to_string(),
            P::RenewAtRange(v) => format!("{v} must be between 0 and 1 (e.g. 0.5: renew at half-life)"),
            P::WatchIntervalTooShort => {
                format!("must be at least {}", signet_certs::format_duration(MIN_WATCH_INTERVAL))
            }
            P::OutOfRange(range) => format!("must be {range}"),
            P::Empty { expected } => format!("is empty; give {expected}"),
            P::BothIdentitySources => format!(
                "give either an authority ({}) or certificate files ({}, or {} and {}), not both",
                name(&S::AuthorityAddress),
                name(&S::CertDir),
                name(&S::Cert),
                name(&S::Key)
            ),
            P::ProvisioningOnly => format!(
                "{}, {}, {} and {} apply to provisioning by an authority ({}); with certificate files the identity is the certificate's",
                name(&S::SpiffeId),
                name(&S::Dns),
                name(&S::Ttl),
                name(&S::RenewAt),
                name(&S::AuthorityAddress)
            ),
            P::FilesOnly => format!(
                "applies to certificate files; a certificate provisioned by the authority ({}) comes with its signer's roots",
                name(&S::AuthorityAddress)
            ),
            P::NeedsAuthorityAddress => format!(
                "goes with an authority to provision from; give its address too ({})",
                name(&S::AuthorityAddress)
            ),
            P::NoSpiffeId => {
                "provisioning needs the identity to request, e.g. spiffe://cluster.local/ns/foo/sa/httpbin (in a pod: set POD_NAMESPACE and SERVICE_ACCOUNT instead, from the downward API)".into()
            }
            P::NoAuthorityCa => {
                "provisioning needs the root(s) of the authority's certificate, e.g. signers/istio-system/ca.crt".into()
            }
            P::NoCertificate => format!(
                "no certificate given; set {} (a directory with tls.crt, tls.key, ca.crt), {} and {}, or {} to provision one",
                name(&S::CertDir),
                name(&S::Cert),
                name(&S::Key),
                name(&S::AuthorityAddress)
            ),
            P::NoKey => format!("no private key given; set {} or {}", name(&S::CertDir), name(&S::Key)),
            P::NoRoots => format!(
                "no roots to trust; set {} (caCertificates YAML, as `signet bundle` writes it) or {}",
                name(&S::TrustBundle),
                name(&S::Ca)
            ),
            P::NoSigner => format!(
                "no signer given; set {} (or ISTIO_META_CERT_SIGNER), or give {} so it can be read off the certificate",
                name(&S::Signer),
                name(&S::TrustBundle)
            ),
            P::NoListeners => format!(
                "nothing to do: give at least one inbound listener ({}), an outbound HTTP proxy ({}) or an outbound TCP tunnel ({})",
                name(&S::Inbound(0)),
                name(&S::OutboundHttp),
                name(&S::OutboundTcp(0))
            ),
            P::UnknownService(service) => format!(
                "service {service} is not in the service table; add it ({}) with its address and identity",
                name(&S::Service(service.clone()))
            ),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&|s| s.yaml()))
    }
}

impl std::error::Error for ConfigError {}

// === the typed configuration ===

/// Where the workload certificate comes from.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// Files, reloaded when they change and on SIGHUP.
    Files(IdentityFiles),
    /// A key and CSR made here, signed by the authority; renewed before expiry.
    Provisioned(Provisioning),
}

#[derive(Clone, Debug)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Provisioning {
    pub authority: AuthorityEndpoint,
    pub id: SpiffeId,
    pub dns: Vec<String>,
    pub ttl: Option<Duration>,
    /// Fraction of the lifetime after which to renew.
    pub renew_at: f64,
}

/// How to reach the authority: the one model of it, from flags and files alike.
#[derive(Clone, Debug)]
pub struct AuthorityEndpoint {
    /// `host:port` (Istio: istiod's 15012).
    pub address: String,
    /// Root(s) of the authority's own certificate.
    pub ca: PathBuf,
    /// The DNS name in the authority's certificate.
    pub server_name: String,
    /// The workload's bearer token, re-read on every request.
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    pub app: AppTarget,
    pub protocol: Protocol,
    pub allow: AllowList,
    pub mode: InboundMode,
}

/// Where an inbound listener's connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppTarget {
    /// The local app at `host:port`.
    Fixed(String),
    /// The captured inbound: 127.0.0.1 at the port the peer connected to.
    OriginalPort,
}

impl fmt::Display for AppTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppTarget::Fixed(a) => f.write_str(a),
            AppTarget::OriginalPort => f.write_str("127.0.0.1:<the port each connection was sent to>"),
        }
    }
}

/// Transparent capture, resolved.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The listener for redirected outbound connections.
    pub outbound: Option<SocketAddr>,
    pub unknown: UnknownDestinations,
    pub sniff_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct TcpRoute {
    pub listen: SocketAddr,
    /// A service table key.
    pub service: String,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A TLS handshake must finish within this (inbound and outbound).
    pub handshake: Duration,
    /// TCP connect to a peer sidecar or the local app.
    pub connect: Duration,
    /// How long shutdown waits for open connections.
    pub drain: Duration,
    /// An HTTP connection with no request in flight for this long is closed; pooled upstream
    /// connections are dropped after half of it, so a peer's close never races a reuse.
    pub idle: Duration,
    /// A request's headers must arrive within this of its first byte, and a connection's first
    /// request within this of the handshake.
    pub header_read: Duration,
    /// A TCP tunnel with no byte either way for this long is closed.
    pub tcp_idle: Duration,
    /// Connections older than this finish what is in flight and are closed (HTTP), or are
    /// closed (TCP): a peer whose trust was withdrawn keeps no connection beyond it.
    pub max_connection_age: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            idle: Duration::from_secs(90),
            header_read: Duration::from_secs(10),
            tcp_idle: Duration::from_secs(3600),
            max_connection_age: Duration::from_secs(3600),
        }
    }
}

/// How much a peer may make a sidecar hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections each data listener may hold; `None`: as many as the file-descriptor limit
    /// allows for all of them together (always enforced too).
    pub max_connections: Option<usize>,
    /// The largest request header block (h1 and h2, every listener), in bytes; 431 above it.
    pub max_header_bytes: usize,
}

impl Limits {
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const HEADER_BYTES_RANGE: (usize, usize) = (8 * 1024, 1024 * 1024);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_header_bytes: Limits::DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// TLS settings beyond the certificate: the crypto policy and the two handshake shortcuts.
#[derive(Clone, Copy, Debug)]
pub struct TlsConfig {
    pub policy: CryptoPolicy,
    /// TLS 1.3 session resumption, bound to the trust version.
    pub resumption: bool,
    /// Remember verified peer chains per trust version.
    pub verify_cache: bool,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// This workload's signer; `None` means: read it off the certificate via the bundle.
    pub signer: Option<SignerName>,
    pub signer_domain: String,
    pub identity: IdentitySource,
    pub watch_interval: Duration,
    pub trust_bundle: Option<PathBuf>,
    /// Revocation lists of this sidecar's signer.
    pub crl: Option<PathBuf>,
    pub inbound: Vec<InboundConfig>,
    pub outbound_http: Option<SocketAddr>,
    pub outbound_tcp: Vec<TcpRoute>,
    /// The captured inbound is among `inbound` (with [`AppTarget::OriginalPort`]).
    pub capture: Option<CaptureConfig>,
    pub services: ServiceTable,
    pub admin: Option<SocketAddr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub xfcc: XfccMode,
    pub tls: TlsConfig,
    /// Trust domains accepted besides the own one (where the bundle names none).
    pub trust_domain_aliases: Vec<String>,
}

#[cfg(test)]
mod tests;
