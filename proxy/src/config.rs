//! Sidecar configuration: the YAML file format ([`ConfigFile`], every field optional so that
//! flags can fill or override it) and the validated, typed [`Config`] the components receive.
//! Nothing here reads the environment; the CLI passes env values in like flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signet_certs::{DEFAULT_SIGNER_DOMAIN, SignerName, SpiffeId, files, parse_duration};

use crate::services::{Service, ServiceTable};
use crate::tls::{AllowList, CryptoPolicy, MinVersion};

/// Files are hashed this often at most.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// A configuration problem, reported in one line: where, what, and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct ConfigError {
    pub origin: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(origin: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            problem: problem.into(),
        }
    }
}

/// L4 or L7 handling of an inbound listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes are copied both ways after the handshake.
    #[default]
    Tcp,
    /// HTTP/1.1 or h2 (by ALPN) is terminated, `x-forwarded-client-cert` added, and requests
    /// forwarded to the app over a pooled connection.
    Http,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "http" => Ok(Protocol::Http),
            other => Err(format!("unknown protocol {other:?}; use tcp or http")),
        }
    }
}

/// How the inbound side sets `x-forwarded-client-cert` (Envoy's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum XfccMode {
    /// Replace whatever the client sent with the verified peer's element (default: a client
    /// cannot smuggle in an identity).
    #[default]
    SanitizeSet,
    /// Keep the client's header and append the verified element (Envoy's sidecar default).
    AppendForward,
}

// === the file format ===

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
    #[serde(default)]
    pub inbound: Vec<InboundFile>,
    pub outbound: Option<OutboundFile>,
    /// `host:port` → where that service's sidecar listens and who it must be.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceFile>,
    pub admin: Option<String>,
    pub timeouts: Option<TimeoutsFile>,
    pub xfcc: Option<XfccMode>,
    pub tls: Option<TlsFile>,
    /// How often watched files (certificates in files mode, the trust bundle) are checked.
    pub watch_interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFile {
    /// A directory with `tls.crt`, `tls.key` and `ca.crt` (what `signet cert issue` writes).
    pub cert_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// Provision by CSR from an authority instead of reading files.
    pub authority: Option<AuthorityFile>,
    /// The identity to request (authority mode).
    pub spiffe_id: Option<String>,
    /// DNS SANs to request (the signer's policy must allow them).
    #[serde(default)]
    pub dns: Vec<String>,
    /// Requested lifetime (Istio's `SECRET_TTL`); the signer's default when absent.
    pub ttl: Option<String>,
    /// Renew at this fraction of the real lifetime (Istio's `SECRET_GRACE_PERIOD_RATIO`, 0.5).
    pub renew_at: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorityFile {
    /// `host:port` of the authority (Istio: istiod's 15012).
    pub address: String,
    /// Root(s) of the service's own certificate.
    pub ca_root: PathBuf,
    /// The DNS name in the service's certificate.
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
    pub allow: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundFile {
    /// HTTP proxy listener (apps set `http_proxy` to it).
    pub http: Option<String>,
    #[serde(default)]
    pub tcp: Vec<TcpRouteFile>,
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
    pub identity: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsFile {
    pub handshake: Option<String>,
    pub connect: Option<String>,
    pub drain: Option<String>,
    pub idle: Option<String>,
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
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&origin, format!("cannot read the config file: {e}")))?;
        let mut file: ConfigFile =
            serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::new(&origin, format!("invalid config: {e}")))?;
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
        if let Some(id) = self.identity.as_mut() {
            fix(&mut id.cert_dir);
            fix(&mut id.cert);
            fix(&mut id.key);
            fix(&mut id.ca);
            if let Some(a) = id.authority.as_mut() {
                let mut root = Some(a.ca_root.clone());
                fix(&mut root);
                a.ca_root = root.unwrap_or_default();
                fix(&mut a.token_file);
            }
        }
    }

    /// Lays `over` (from flags and env) on top of `self` (from the file): scalars given in
    /// `over` win, lists given in `over` replace, services merge by name.
    pub fn overlay(mut self, over: ConfigFile) -> ConfigFile {
        self.signer = over.signer.or(self.signer);
        self.signer_domain = over.signer_domain.or(self.signer_domain);
        self.trust_bundle = over.trust_bundle.or(self.trust_bundle);
        self.admin = over.admin.or(self.admin);
        self.xfcc = over.xfcc.or(self.xfcc);
        if let Some(id) = over.identity {
            let mine = self.identity.take().unwrap_or_default();
            // Files given by flags replace files from the file; authority settings likewise.
            let files = id.cert_dir.is_some() || id.cert.is_some() || id.key.is_some();
            let (cert_dir, cert, key) = if files || id.authority.is_some() {
                (id.cert_dir, id.cert, id.key)
            } else {
                (mine.cert_dir, mine.cert, mine.key)
            };
            self.identity = Some(IdentityFile {
                cert_dir,
                cert,
                key,
                ca: id.ca.or(mine.ca),
                authority: if files { None } else { id.authority.or(mine.authority) },
                spiffe_id: id.spiffe_id.or(mine.spiffe_id),
                dns: if id.dns.is_empty() { mine.dns } else { id.dns },
                ttl: id.ttl.or(mine.ttl),
                renew_at: id.renew_at.or(mine.renew_at),
            });
        }
        self.watch_interval = over.watch_interval.or(self.watch_interval);
        if !over.inbound.is_empty() {
            self.inbound = over.inbound;
        }
        if let Some(o) = over.outbound {
            let mut mine = self.outbound.take().unwrap_or_default();
            mine.http = o.http.or(mine.http);
            if !o.tcp.is_empty() {
                mine.tcp = o.tcp;
            }
            self.outbound = Some(mine);
        }
        self.services.extend(over.services);
        if let Some(t) = over.timeouts {
            let mut mine = self.timeouts.take().unwrap_or_default();
            mine.handshake = t.handshake.or(mine.handshake);
            mine.connect = t.connect.or(mine.connect);
            mine.drain = t.drain.or(mine.drain);
            mine.idle = t.idle.or(mine.idle);
            self.timeouts = Some(mine);
        }
        if let Some(t) = over.tls {
            let mut mine = self.tls.take().unwrap_or_default();
            mine.min_version = t.min_version.or(mine.min_version);
            mine.post_quantum = t.post_quantum.or(mine.post_quantum);
            mine.resumption = t.resumption.or(mine.resumption);
            mine.verify_cache = t.verify_cache.or(mine.verify_cache);
            self.tls = Some(mine);
        }
        self
    }

    /// Validates everything and produces the typed configuration.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let domain = self.signer_domain.unwrap_or_else(|| DEFAULT_SIGNER_DOMAIN.to_string());
        let signer = self
            .signer
            .map(|s| SignerName::parse(&s, &domain))
            .transpose()
            .map_err(|e| ConfigError::new("signer", e.to_string()))?;
        let id = self.identity.unwrap_or_default();
        let identity = if let Some(a) = id.authority {
            if id.cert_dir.is_some() || id.cert.is_some() || id.key.is_some() {
                return Err(ConfigError::new(
                    "identity",
                    "give either an authority (--authority) or certificate files (--cert-dir/--cert/--key), not both",
                ));
            }
            let spiffe_id = id
                .spiffe_id
                .ok_or_else(|| {
                    ConfigError::new(
                        "identity",
                        "provisioning needs the identity to request: --id spiffe://...",
                    )
                })?
                .parse::<SpiffeId>()
                .map_err(|e| ConfigError::new("identity.spiffeId", e.to_string()))?;
            let renew_at = id.renew_at.unwrap_or(0.5);
            if !(renew_at > 0.0 && renew_at < 1.0) {
                return Err(ConfigError::new(
                    "identity.renewAt",
                    "must be between 0 and 1 (e.g. 0.5: renew at half-life)",
                ));
            }
            if a.address.trim().is_empty() {
                return Err(ConfigError::new(
                    "identity.authority.address",
                    "empty; give the authority's host:port",
                ));
            }
            IdentitySource::Authority(AuthorityIdentity {
                authority: AuthorityConfig {
                    address: a.address,
                    ca_root: a.ca_root,
                    server_name: a.server_name,
                    token_file: a.token_file,
                },
                id: spiffe_id,
                dns: id.dns,
                ttl: id
                    .ttl
                    .map(|t| parse_duration(&t).map_err(|e| ConfigError::new("identity.ttl", e.to_string())))
                    .transpose()?,
                renew_at,
            })
        } else {
            if id.spiffe_id.is_some() || !id.dns.is_empty() || id.ttl.is_some() || id.renew_at.is_some() {
                return Err(ConfigError::new(
                    "identity",
                    "--id, --dns, --ttl and --renew-at apply to provisioning (--authority); with certificate files the identity is the certificate's",
                ));
            }
            let dir = id.cert_dir.clone();
            let pick = |explicit: Option<PathBuf>, file: &str| explicit.or_else(|| dir.as_ref().map(|d| d.join(file)));
            let files = IdentityFiles {
                cert: pick(id.cert, files::CERT).ok_or_else(|| {
                    ConfigError::new(
                        "identity",
                        "no certificate given; set --cert-dir DIR (tls.crt, tls.key, ca.crt), --cert/--key, or --authority to provision one",
                    )
                })?,
                key: pick(id.key, files::KEY)
                    .ok_or_else(|| ConfigError::new("identity", "no private key given; set --cert-dir DIR or --key FILE"))?,
                ca: pick(id.ca, files::CA),
            };
            if self.trust_bundle.is_none() && files.ca.is_none() {
                return Err(ConfigError::new(
                    "trust",
                    "no roots to trust; set --bundle FILE (caCertificates YAML) or --ca FILE",
                ));
            }
            IdentitySource::Files(files)
        };
        if signer.is_none() && self.trust_bundle.is_none() {
            return Err(ConfigError::new(
                "signer",
                "no signer given; set --signer NAME (or ISTIO_META_CERT_SIGNER, or `signer:` in the config file), or give --bundle so it can be read off the certificate",
            ));
        }
        let mut services = ServiceTable::default();
        for (name, s) in self.services {
            let origin = format!("services[{name}]");
            let identity = s
                .identity
                .map(|i| i.parse::<SpiffeId>())
                .transpose()
                .map_err(|e| ConfigError::new(&origin, e.to_string()))?;
            let service = Service::new(&name, s.address, identity).map_err(|e| ConfigError::new(&origin, e))?;
            services.insert(service);
        }

        let mut inbound = Vec::new();
        for (i, ib) in self.inbound.into_iter().enumerate() {
            let origin = format!("inbound[{i}]");
            let allow = ib
                .allow
                .iter()
                .map(|a| {
                    if a.ends_with('*') && !a.ends_with("/*") {
                        return Err(signet_certs::Error::SpiffeId {
                            input: a.clone(),
                            reason:
                                "a wildcard must be a whole last path segment, e.g. spiffe://cluster.local/ns/foo/*"
                                    .into(),
                        });
                    }
                    let id = a
                        .strip_suffix('*')
                        .map(|p| format!("{p}x"))
                        .unwrap_or_else(|| a.clone());
                    id.parse::<SpiffeId>().map(|_| a.clone())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::new(&origin, format!("allow: {e}")))?;
            if ib.app.trim().is_empty() {
                return Err(ConfigError::new(
                    &origin,
                    "app is empty; give the local app's host:port",
                ));
            }
            inbound.push(InboundConfig {
                listen: parse_addr(&ib.listen, &origin)?,
                app: ib.app,
                protocol: ib.protocol,
                allow: AllowList::new(allow),
            });
        }

        let outbound_file = self.outbound.unwrap_or_default();
        let outbound_http = outbound_file
            .http
            .as_deref()
            .map(|a| parse_addr(a, "outbound.http"))
            .transpose()?;
        let mut outbound_tcp = Vec::new();
        for (i, route) in outbound_file.tcp.into_iter().enumerate() {
            let origin = format!("outbound.tcp[{i}]");
            let service = services.get(&route.service).ok_or_else(|| {
                ConfigError::new(
                    &origin,
                    format!(
                        "service {} is not in the service table; add --service {}=ADDRESS,SPIFFE_ID",
                        route.service, route.service
                    ),
                )
            })?;
            outbound_tcp.push(TcpRoute {
                listen: parse_addr(&route.listen, &origin)?,
                service: service.name.clone(),
            });
        }
        if inbound.is_empty() && outbound_http.is_none() && outbound_tcp.is_empty() {
            return Err(ConfigError::new(
                "listeners",
                "nothing to do: give at least one --inbound LISTEN=APP, --outbound LISTEN or --tcp LISTEN=SERVICE",
            ));
        }

        let t = self.timeouts.unwrap_or_default();
        let dur = |v: Option<String>, name: &str, default: Duration| -> Result<Duration, ConfigError> {
            v.map(|s| parse_duration(&s).map_err(|e| ConfigError::new(format!("timeouts.{name}"), e.to_string())))
                .transpose()
                .map(|d| d.unwrap_or(default))
        };
        let timeouts = Timeouts {
            handshake: dur(t.handshake, "handshake", Timeouts::default().handshake)?,
            connect: dur(t.connect, "connect", Timeouts::default().connect)?,
            drain: dur(t.drain, "drain", Timeouts::default().drain)?,
            idle: dur(t.idle, "idle", Timeouts::default().idle)?,
        };
        let tls = self.tls.unwrap_or_default();
        let watch_interval = self
            .watch_interval
            .map(|w| parse_duration(&w).map_err(|e| ConfigError::new("watchInterval", e.to_string())))
            .transpose()?
            .unwrap_or(Duration::from_secs(1));
        if watch_interval < MIN_WATCH_INTERVAL {
            return Err(ConfigError::new("watchInterval", "must be at least 50ms"));
        }
        Ok(Config {
            signer,
            signer_domain: domain,
            identity,
            watch_interval,
            trust_bundle: self.trust_bundle,
            inbound,
            outbound_http,
            outbound_tcp,
            services,
            admin: self.admin.as_deref().map(|a| parse_addr(a, "admin")).transpose()?,
            timeouts,
            xfcc: self.xfcc.unwrap_or_default(),
            tls: CryptoPolicy {
                min_version: tls.min_version.unwrap_or_default(),
                post_quantum: tls.post_quantum.unwrap_or(false),
            },
            resumption: tls.resumption.unwrap_or(true),
            verify_cache: tls.verify_cache.unwrap_or(true),
        })
    }
}

fn parse_addr(text: &str, origin: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            origin,
            format!("{text:?} is not an IP:port address (e.g. 127.0.0.1:15006)"),
        )
    })
}

// === the typed configuration ===

/// Where the workload certificate comes from.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// Files, reloaded when they change and on SIGHUP.
    Files(IdentityFiles),
    /// A key and CSR made here, signed by an authority; renewed before expiry.
    Authority(AuthorityIdentity),
}

#[derive(Clone, Debug)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct AuthorityIdentity {
    pub authority: AuthorityConfig,
    pub id: SpiffeId,
    pub dns: Vec<String>,
    pub ttl: Option<Duration>,
    /// Fraction of the lifetime after which to renew.
    pub renew_at: f64,
}

/// How to reach the authority; the CLI turns it into a client.
#[derive(Clone, Debug)]
pub struct AuthorityConfig {
    pub address: String,
    pub ca_root: PathBuf,
    pub server_name: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// The local app, `host:port`.
    pub app: String,
    pub protocol: Protocol,
    pub allow: AllowList,
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
    /// Pooled upstream connections idle longer than this are closed.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            idle: Duration::from_secs(90),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// This workload's signer; `None` means: read it off the certificate via the bundle.
    pub signer: Option<SignerName>,
    pub signer_domain: String,
    pub identity: IdentitySource,
    pub watch_interval: Duration,
    pub trust_bundle: Option<PathBuf>,
    pub inbound: Vec<InboundConfig>,
    pub outbound_http: Option<SocketAddr>,
    pub outbound_tcp: Vec<TcpRoute>,
    pub services: ServiceTable,
    pub admin: Option<SocketAddr>,
    pub timeouts: Timeouts,
    pub xfcc: XfccMode,
    pub tls: CryptoPolicy,
    pub resumption: bool,
    pub verify_cache: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConfigFile {
        serde_yaml_ng::from_str(
            r#"
signer: foo
identity: {certDir: w/httpbin-foo}
trustBundle: bundle.yaml
inbound:
- {listen: "127.0.0.1:15006", app: "127.0.0.1:8000", protocol: http}
outbound:
  http: "127.0.0.1:15001"
  tcp: [{listen: "127.0.0.1:15101", service: "httpbin.bar:8000"}]
services:
  "httpbin.bar:8000": {address: "127.0.0.1:15206", identity: "spiffe://cluster.local/ns/bar/sa/httpbin"}
admin: "127.0.0.1:15000"
timeouts: {handshake: 3s}
"#,
        )
        .unwrap()
    }

    #[test]
    fn resolves_a_full_file() {
        let c = base().resolve().unwrap();
        assert_eq!(
            c.signer.as_ref().unwrap().as_str(),
            "clusterissuers.cert-manager.io/foo"
        );
        let IdentitySource::Files(files) = &c.identity else {
            panic!("files mode")
        };
        assert_eq!(files.cert, PathBuf::from("w/httpbin-foo/tls.crt"));
        assert_eq!(files.ca, Some(PathBuf::from("w/httpbin-foo/ca.crt")));
        assert_eq!(c.inbound[0].protocol, Protocol::Http);
        assert_eq!(c.outbound_tcp[0].service, "httpbin.bar:8000");
        assert_eq!(c.timeouts.handshake, Duration::from_secs(3));
        assert_eq!(c.timeouts.connect, Duration::from_secs(5));
        assert_eq!(c.xfcc, XfccMode::SanitizeSet);
        assert!(c.services.get("httpbin.bar:8000").is_some());
    }

    #[test]
    fn flags_override_the_file() {
        let over = ConfigFile {
            signer: Some("bar".into()),
            signer_domain: Some("example.com".into()),
            admin: Some("127.0.0.1:16000".into()),
            ..Default::default()
        };
        let c = base().overlay(over).resolve().unwrap();
        assert_eq!(c.signer.unwrap().as_str(), "example.com/bar");
        assert_eq!(c.admin, Some("127.0.0.1:16000".parse().unwrap()));
        assert_eq!(c.inbound.len(), 1, "lists not given by flags are kept");
    }

    #[test]
    fn mistakes_are_named() {
        let mut f = base();
        f.signer = None;
        f.trust_bundle = None;
        assert!(f.resolve().unwrap_err().to_string().contains("--signer"));
        let mut f = base();
        f.identity.as_mut().unwrap().authority = Some(AuthorityFile {
            address: "127.0.0.1:15012".into(),
            ..Default::default()
        });
        assert!(f.resolve().unwrap_err().to_string().contains("not both"));
        let mut f = base();
        f.inbound[0].listen = "localhost".into();
        assert!(f.resolve().unwrap_err().to_string().starts_with("inbound[0]: "));
        let mut f = base();
        f.outbound.as_mut().unwrap().tcp[0].service = "nope:1".into();
        assert!(
            f.resolve()
                .unwrap_err()
                .to_string()
                .contains("not in the service table")
        );
        let e = serde_yaml_ng::from_str::<ConfigFile>("signr: foo")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `signr`"), "{e}");
        let mut f = base();
        f.timeouts = Some(TimeoutsFile {
            handshake: Some("soon".into()),
            ..Default::default()
        });
        assert!(f.resolve().unwrap_err().to_string().starts_with("timeouts.handshake: "));
    }
}
