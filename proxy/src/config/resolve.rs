//! From a [`ConfigFile`] layer to the typed [`Config`]: one function per section, each checking
//! its own settings and the combinations that cannot work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use signet_certs::{AUTHORITY_SERVER_NAME, DEFAULT_SIGNER_DOMAIN, SignerName, SpiffeId, files};

use super::layer::{
    CaptureFile, ConfigFile, IdentityFile, InboundFile, LimitsFile, OutboundFile, ServiceFile, TimeoutsFile, TlsFile,
};
use super::{
    AppTarget, AuthorityEndpoint, CaptureConfig, Config, ConfigError, ConfigProblem as P, DEFAULT_RENEW_AT,
    DEFAULT_SNIFF_TIMEOUT, DEFAULT_WATCH_INTERVAL, IdentityFiles, IdentitySource, InboundConfig, Limits,
    MIN_WATCH_INTERVAL, Protocol, Provisioning, Setting as S, TcpRoute, Timeouts, TlsConfig,
};
use crate::services::{Service, ServiceTable};
use crate::tls::AllowList;

fn err(at: S, problem: P) -> ConfigError {
    ConfigError::new(at, problem)
}

impl ConfigFile {
    /// Checks everything and produces the typed configuration.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let signer_domain = self.signer_domain.unwrap_or_else(|| DEFAULT_SIGNER_DOMAIN.to_string());
        let signer = self
            .signer
            .map(|s| SignerName::parse(&s, &signer_domain))
            .transpose()
            .map_err(|e| err(S::Signer, P::Value(e)))?;
        let identity = identity(self.identity.unwrap_or_default(), self.trust_bundle.is_some())?;
        if signer.is_none() && self.trust_bundle.is_none() {
            return Err(err(S::Signer, P::NoSigner));
        }
        let services = services(self.services)?;
        let mut inbound = inbound(self.inbound)?;
        let (outbound_http, outbound_tcp) = outbound(self.outbound.unwrap_or_default(), &services)?;
        let capture = self.capture.map(|c| capture(c, &mut inbound)).transpose()?;
        let captures_outbound = capture.as_ref().is_some_and(|c| c.outbound.is_some());
        if inbound.is_empty() && outbound_http.is_none() && outbound_tcp.is_empty() && !captures_outbound {
            return Err(err(S::Inbound(0), P::NoListeners));
        }
        for (i, td) in self.trust_domain_aliases.iter().enumerate() {
            // A trust domain is what a SPIFFE ID may have between `spiffe://` and its path.
            SpiffeId::workload(td, "ns", "sa").map_err(|e| err(S::TrustDomainAlias(i), P::Value(e)))?;
        }
        let watch_interval = self.watch_interval.map_or(DEFAULT_WATCH_INTERVAL, |w| w.0);
        if watch_interval < MIN_WATCH_INTERVAL {
            return Err(err(S::WatchInterval, P::WatchIntervalTooShort));
        }
        Ok(Config {
            signer,
            signer_domain,
            identity,
            watch_interval,
            trust_bundle: self.trust_bundle,
            crl: self.crl,
            inbound,
            outbound_http,
            outbound_tcp,
            capture,
            services,
            admin: self.admin.as_deref().map(|a| address(a, S::Admin)).transpose()?,
            timeouts: timeouts(self.timeouts.unwrap_or_default())?,
            limits: limits(self.limits.unwrap_or_default())?,
            xfcc: self.xfcc.unwrap_or_default(),
            tls: tls(self.tls.unwrap_or_default()),
            trust_domain_aliases: self.trust_domain_aliases,
        })
    }
}

fn address(text: &str, at: S) -> Result<SocketAddr, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| err(at, P::NotAnAddress(text.to_string())))
}

fn identity(id: IdentityFile, has_bundle: bool) -> Result<IdentitySource, ConfigError> {
    match id.authority {
        Some(authority) => {
            let Some(address) = authority.address.filter(|a| !a.trim().is_empty()) else {
                let at = if authority.ca.is_some() {
                    S::AuthorityCa
                } else if authority.token_file.is_some() {
                    S::TokenFile
                } else {
                    S::AuthorityServerName
                };
                return Err(err(at, P::NeedsAuthorityAddress));
            };
            if id.cert_dir.is_some() || id.cert.is_some() || id.key.is_some() {
                return Err(err(S::AuthorityAddress, P::BothIdentitySources));
            }
            if id.ca.is_some() {
                return Err(err(S::Ca, P::FilesOnly));
            }
            let ca = authority.ca.ok_or_else(|| err(S::AuthorityCa, P::NoAuthorityCa))?;
            let spiffe_id = id.spiffe_id.ok_or_else(|| err(S::SpiffeId, P::NoSpiffeId))?;
            let renew_at = id.renew_at.unwrap_or(DEFAULT_RENEW_AT);
            if !(renew_at > 0.0 && renew_at < 1.0) {
                return Err(err(S::RenewAt, P::RenewAtRange(renew_at)));
            }
            Ok(IdentitySource::Provisioned(Provisioning {
                authority: AuthorityEndpoint {
                    address,
                    ca,
                    server_name: authority
                        .server_name
                        .unwrap_or_else(|| AUTHORITY_SERVER_NAME.to_string()),
                    token_file: authority.token_file,
                },
                id: spiffe_id,
                dns: id.dns,
                ttl: id.ttl.map(|t| t.0),
                renew_at,
            }))
        }
        None => {
            let provisioning_only = [
                (id.spiffe_id.is_some(), S::SpiffeId),
                (!id.dns.is_empty(), S::Dns),
                (id.ttl.is_some(), S::Ttl),
                (id.renew_at.is_some(), S::RenewAt),
            ];
            if let Some((_, at)) = provisioning_only.into_iter().find(|(given, _)| *given) {
                return Err(err(at, P::ProvisioningOnly));
            }
            let dir = id.cert_dir;
            let pick = |explicit: Option<PathBuf>, file: &str| explicit.or_else(|| dir.as_ref().map(|d| d.join(file)));
            let files = IdentityFiles {
                cert: pick(id.cert, files::CERT).ok_or_else(|| err(S::CertDir, P::NoCertificate))?,
                key: pick(id.key, files::KEY).ok_or_else(|| err(S::Key, P::NoKey))?,
                ca: pick(id.ca, files::CA),
            };
            if !has_bundle && files.ca.is_none() {
                return Err(err(S::TrustBundle, P::NoRoots));
            }
            Ok(IdentitySource::Files(files))
        }
    }
}

fn services(entries: BTreeMap<String, ServiceFile>) -> Result<ServiceTable, ConfigError> {
    let mut services = ServiceTable::default();
    for (name, s) in entries {
        let bad = |e| err(S::Service(name.clone()), P::Service(e));
        let mut service = Service::new(&name, s.address, s.identity).map_err(bad)?;
        for a in &s.addresses {
            service = service.with_address(a).map_err(bad)?;
        }
        if let Some(protocol) = s.protocol {
            service = service.with_protocol(protocol);
        }
        services.insert(service);
    }
    Ok(services)
}

fn inbound(entries: Vec<InboundFile>) -> Result<Vec<InboundConfig>, ConfigError> {
    entries
        .into_iter()
        .enumerate()
        .map(|(i, ib)| {
            if ib.app.trim().is_empty() {
                return Err(err(
                    S::InboundApp(i),
                    P::Empty {
                        expected: "the local app's host:port",
                    },
                ));
            }
            // Requests to the app are addressed to it: it must be a URI authority.
            let is_host_port = ib
                .app
                .parse::<http::uri::Authority>()
                .is_ok_and(|a| a.port_u16().is_some() && a.as_str() == ib.app);
            if !is_host_port {
                return Err(err(S::InboundApp(i), P::NotHostPort(ib.app)));
            }
            Ok(InboundConfig {
                listen: address(&ib.listen, S::InboundListen(i))?,
                app: AppTarget::Fixed(ib.app),
                protocol: ib.protocol,
                allow: AllowList::new(ib.allow),
                mode: ib.mode,
            })
        })
        .collect()
}

/// The capture listeners; the inbound one joins `inbound`, going to the app on each
/// connection's original port, HTTP or bytes by what the peer sidecar negotiated.
fn capture(file: CaptureFile, inbound: &mut Vec<InboundConfig>) -> Result<CaptureConfig, ConfigError> {
    let outbound = file
        .outbound
        .as_deref()
        .map(|a| address(a, S::CaptureOutbound))
        .transpose()?;
    if let Some(listen) = file
        .inbound
        .as_deref()
        .map(|a| address(a, S::CaptureInbound))
        .transpose()?
    {
        inbound.push(InboundConfig {
            listen,
            app: AppTarget::OriginalPort,
            protocol: Protocol::Auto,
            allow: AllowList::new(file.inbound_allow),
            mode: file.inbound_mode.unwrap_or_default(),
        });
    }
    let sniff_timeout = file.sniff_timeout.map_or(DEFAULT_SNIFF_TIMEOUT, |d| d.0);
    if sniff_timeout.is_zero() || sniff_timeout > Duration::from_secs(10) {
        return Err(err(
            S::SniffTimeout,
            P::OutOfRange("above zero and at most 10s (a server-first client waits this long)".into()),
        ));
    }
    Ok(CaptureConfig {
        outbound,
        unknown: file.unknown_destinations.unwrap_or_default(),
        sniff_timeout,
    })
}

fn outbound(file: OutboundFile, services: &ServiceTable) -> Result<(Option<SocketAddr>, Vec<TcpRoute>), ConfigError> {
    let http = file.http.as_deref().map(|a| address(a, S::OutboundHttp)).transpose()?;
    let mut tcp = Vec::new();
    for (i, route) in file.tcp.into_iter().enumerate() {
        let service = services
            .get(&route.service)
            .ok_or_else(|| err(S::OutboundTcp(i), P::UnknownService(route.service.clone())))?;
        tcp.push(TcpRoute {
            listen: address(&route.listen, S::OutboundTcp(i))?,
            service: service.name.clone(),
        });
    }
    Ok((http, tcp))
}

/// Every timeout must be positive: a limit cannot be turned off, only raised.
fn timeouts(t: TimeoutsFile) -> Result<Timeouts, ConfigError> {
    let default = Timeouts::default();
    let get = |value: Option<signet_certs::HumanDuration>, fallback: Duration, name: &'static str| match value {
        Some(d) if d.0.is_zero() => Err(err(
            S::Timeout(name),
            P::OutOfRange("above zero (every limit stays on; raise it instead)".into()),
        )),
        Some(d) => Ok(d.0),
        None => Ok(fallback),
    };
    Ok(Timeouts {
        handshake: get(t.handshake, default.handshake, "handshake")?,
        connect: get(t.connect, default.connect, "connect")?,
        drain: get(t.drain, default.drain, "drain")?,
        idle: get(t.idle, default.idle, "idle")?,
        header_read: get(t.header_read, default.header_read, "headerRead")?,
        tcp_idle: get(t.tcp_idle, default.tcp_idle, "tcpIdle")?,
        max_connection_age: get(t.max_connection_age, default.max_connection_age, "maxConnectionAge")?,
    })
}

fn limits(l: LimitsFile) -> Result<Limits, ConfigError> {
    if l.max_connections == Some(0) {
        return Err(err(S::Limit("maxConnections"), P::OutOfRange("at least 1".into())));
    }
    let (min, max) = Limits::HEADER_BYTES_RANGE;
    let max_header_bytes = l.max_header_bytes.unwrap_or(Limits::DEFAULT_MAX_HEADER_BYTES);
    if !(min..=max).contains(&max_header_bytes) {
        return Err(err(
            S::Limit("maxHeaderBytes"),
            P::OutOfRange(format!("between {min} and {max} bytes")),
        ));
    }
    Ok(Limits {
        max_connections: l.max_connections,
        max_header_bytes,
    })
}

fn tls(t: TlsFile) -> TlsConfig {
    TlsConfig {
        policy: signet_certs::CryptoPolicy {
            min_version: t.min_version.unwrap_or_default(),
            post_quantum: t.post_quantum.unwrap_or(false),
        },
        resumption: t.resumption.unwrap_or(true),
        verify_cache: t.verify_cache.unwrap_or(true),
    }
}
