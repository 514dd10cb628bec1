//! Starting and stopping a sidecar: load the identity (fail fast), bind every listener (fail
//! fast), then run the listeners until shutdown, and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use signet_certs::{AuthorityClient, crypto};
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::config::{Config, Limits, Protocol, Setting, Timeouts};
use crate::credentials::{Credentials, WorkloadIdentity};
use crate::identity::{IdentityCtx, IdentityError};
use crate::inbound::Inbound;
use crate::metrics::{Direction, Metrics};
use crate::outbound::{CaptureOutbound, HttpOutbound, TcpOutbound};
use crate::serve::{ConnLimit, HttpLimits, HttpServing, Lifecycle};
use crate::services::ServiceTable;
use crate::tls::{ClientAlpn, InboundTls, TlsSettings, TlsStore};

/// How often [`Sidecar::ready`] looks for the first certificate.
const READY_POLL: Duration = Duration::from_millis(10);

/// Connections the admin listener may hold (outside the data plane's share).
const ADMIN_CONNECTIONS: usize = 64;

/// What every listener and connection task shares.
pub(crate) struct Shared {
    pub store: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub life: Lifecycle,
    /// Places for data-plane connections, shared by every data listener: sized from the
    /// file-descriptor limit, so the admin port and reloads always keep descriptors.
    pool: Arc<crate::serve::Places>,
    pool_size: usize,
}

impl Shared {
    /// A data listener's connection limit: its own cap, within the shared pool.
    pub fn conn_limit(&self) -> ConnLimit {
        ConnLimit::new(self.limits.max_connections.unwrap_or(self.pool_size)).sharing(&self.pool)
    }

    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_read: self.timeouts.header_read,
            idle: self.timeouts.idle,
            max_age: self.timeouts.max_connection_age,
            max_header_bytes: self.limits.max_header_bytes,
            grace: self.timeouts.drain,
            ..HttpLimits::default()
        }
    }

    /// How a data listener of `direction` serves HTTP: every response it gives is counted.
    pub fn serving(&self, direction: Direction) -> HttpServing {
        let metrics = self.metrics.clone();
        HttpServing::new(self.http_limits(), self.life.shutdown.clone())
            .counting(Arc::new(move |status| metrics.response(direction, status)))
    }

    /// Pooled connections to apps and peers are dropped well before the other side's idle
    /// timeout would close them, so no request is sent on a connection being closed.
    pub fn pool_idle(&self) -> Duration {
        self.timeouts.idle / 2
    }
}

/// Why a sidecar did not start; one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl StartError {
    /// The message with settings named by `name` (the CLI adds flag names this way).
    pub fn describe(&self, name: &dyn Fn(&Setting) -> String) -> String {
        match self {
            StartError::Identity(e) => e.describe(name),
            other => other.to_string(),
        }
    }
}

/// The addresses actually bound (useful with port 0); `/listeners` and `--ready-file` show them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BoundAddrs {
    pub inbound: Vec<SocketAddr>,
    pub outbound_http: Option<SocketAddr>,
    pub outbound_tcp: Vec<SocketAddr>,
    /// The captured outbound (the captured inbound is the last of `inbound`).
    pub capture_outbound: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

pub struct Sidecar {
    pub addrs: BoundAddrs,
    store: Arc<TlsStore>,
    reload: Arc<tokio::sync::Notify>,
    life: Lifecycle,
    drain: Duration,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

impl Sidecar {
    /// Loads the identity (files) or starts provisioning it (`client`), binds all listeners
    /// and starts serving on the current runtime. `client` is required when the config asks
    /// for provisioning; the CLI builds it (this crate knows nothing of the authority's API).
    pub async fn start(config: Config, client: Option<Arc<dyn AuthorityClient>>) -> Result<Sidecar, StartError> {
        let services = Arc::new(config.services.clone());
        let store = Arc::new(TlsStore::new(tls_settings(&config, &services)));
        let metrics = Arc::new(Metrics::default());
        let life = Lifecycle::default();
        let fd_limit = crate::serve::raise_fd_limit();
        let pool_size = crate::serve::data_plane_budget(fd_limit);
        let shared = Arc::new(Shared {
            store: store.clone(),
            metrics: metrics.clone(),
            timeouts: config.timeouts,
            limits: config.limits,
            life: life.clone(),
            pool: ConnLimit::pool(pool_size),
            pool_size,
        });
        let reload = Arc::new(tokio::sync::Notify::new());
        let config = Arc::new(config);
        let identity_ctx = Arc::new(IdentityCtx {
            config: config.clone(),
            credentials: store.clone(),
            metrics: metrics.clone(),
            reload: reload.clone(),
            shutdown: life.shutdown.clone(),
        });
        // Listeners are not bound yet, so a failure here leaves nothing behind.
        let identity = crate::identity::start(identity_ctx, client, &life.tracker).inspect_err(|_| {
            life.shutdown.cancel();
        })?;

        // Bind everything before serving anything: a port clash fails the start, not half of it.
        let mut addrs = BoundAddrs::default();
        let mut inbound = Vec::new();
        for (i, ib) in config.inbound.iter().enumerate() {
            let listener = bind(ib.listen, "inbound").await?;
            let local = listener.local_addr().unwrap_or(ib.listen);
            addrs.inbound.push(local);
            inbound.push((
                Arc::new(Inbound::new(i, local, ib, config.xfcc, shared.clone())),
                listener,
            ));
        }
        let http_outbound = match config.outbound_http {
            Some(addr) => {
                let listener = bind(addr, "outbound http").await?;
                let local = listener.local_addr().unwrap_or(addr);
                addrs.outbound_http = Some(local);
                Some((
                    Arc::new(HttpOutbound::new(local, shared.clone(), services.clone())),
                    listener,
                ))
            }
            None => None,
        };
        let mut tcp_outbound = Vec::new();
        for route in &config.outbound_tcp {
            // resolve() checked that every route names a service of the table.
            let Some(service) = services.get(&route.service) else {
                continue;
            };
            let listener = bind(route.listen, "outbound tcp").await?;
            let local = listener.local_addr().unwrap_or(route.listen);
            addrs.outbound_tcp.push(local);
            tcp_outbound.push((Arc::new(TcpOutbound::new(local, service, shared.clone())), listener));
        }
        let capture_outbound = match config.capture.as_ref().and_then(|c| c.outbound.map(|a| (a, c))) {
            Some((addr, capture)) => {
                let listener = bind(addr, "captured outbound").await?;
                let local = listener.local_addr().unwrap_or(addr);
                addrs.capture_outbound = Some(local);
                let ob = CaptureOutbound::new(local, shared.clone(), services.clone(), capture.clone());
                Some((Arc::new(ob), listener))
            }
            None => None,
        };
        let admin = match config.admin {
            Some(addr) => {
                let listener = bind(addr, "admin").await?;
                addrs.admin = Some(listener.local_addr().unwrap_or(addr));
                Some(listener)
            }
            None => None,
        };

        for (ib, listener) in inbound {
            life.spawn(ib.serve(listener));
        }
        life.spawn(crate::serve::return_memory(shared.pool.clone(), life.shutdown.clone()));
        if let Some((ob, listener)) = http_outbound {
            life.spawn(ob.serve(listener));
        }
        for (ob, listener) in tcp_outbound {
            life.spawn(ob.serve(listener));
        }
        if let Some((ob, listener)) = capture_outbound {
            life.spawn(ob.serve(listener));
        }
        if let Some(listener) = admin {
            let admin = Arc::new(Admin {
                store: store.clone(),
                metrics: metrics.clone(),
                listeners: addrs.clone(),
            });
            let serving = HttpServing::new(shared.http_limits(), life.shutdown.clone());
            life.spawn(admin.serve(listener, life.clone(), ConnLimit::new(ADMIN_CONNECTIONS), serving));
        }

        if let Some(identity) = &identity {
            tracing::info!(
                "ready: {} (signer {}, certificate valid until {}, trust version {})",
                identity.id,
                identity.signer,
                signet_certs::rfc3339(identity.not_after),
                identity.trust_version
            );
        }
        for (addr, ib) in addrs.inbound.iter().zip(&config.inbound) {
            tracing::info!("inbound {addr} ({}) → app {}", ib.protocol, ib.app);
        }
        if let Some(addr) = addrs.outbound_http {
            tracing::info!("outbound http proxy {addr}, {} service(s)", services.iter().count());
        }
        for (addr, route) in addrs.outbound_tcp.iter().zip(&config.outbound_tcp) {
            tracing::info!("outbound tcp {addr} → {}", route.service);
        }
        if let (Some(addr), Some(capture)) = (addrs.capture_outbound, &config.capture) {
            tracing::info!(
                "captured outbound {addr}: {} service(s) by address, other destinations: {}",
                services.iter().count(),
                capture.unknown
            );
        }
        if let Some(addr) = addrs.admin {
            tracing::info!("admin http://{addr}/ (ready, metrics, certs, listeners)");
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "the admin port {addr} is reachable beyond this host: it shows certificates, identities and metrics to anyone who can connect; bind it to 127.0.0.1 unless that is intended"
                );
            }
        }
        tracing::info!(
            "limits: {} connection(s) per data listener, {pool_size} in all (file-descriptor limit {fd_limit}); headers {} bytes, within {}; idle {}; tcp idle {}; connection age {}",
            config.limits.max_connections.unwrap_or(pool_size).min(pool_size),
            config.limits.max_header_bytes,
            signet_certs::format_duration(config.timeouts.header_read),
            signet_certs::format_duration(config.timeouts.idle),
            signet_certs::format_duration(config.timeouts.tcp_idle),
            signet_certs::format_duration(config.timeouts.max_connection_age),
        );

        Ok(Sidecar {
            addrs,
            store,
            reload,
            life,
            drain: config.timeouts.drain,
        })
    }

    /// The published identity, once there is one.
    pub fn identity(&self) -> Option<Arc<WorkloadIdentity>> {
        self.store.identity()
    }

    /// Waits until a certificate is published (provisioning), up to `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Option<Arc<WorkloadIdentity>> {
        let start = tokio::time::Instant::now();
        while start.elapsed() < timeout {
            if self.store.is_ready() {
                return self.store.identity();
            }
            tokio::time::sleep(READY_POLL).await;
        }
        None
    }

    /// Re-reads certificate files and the trust bundle now, or renews from the authority
    /// (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Stops accepting, lets open connections finish (HTTP connections are closed after their
    /// current request), and gives up on the rest after the drain timeout.
    pub async fn shutdown(self) {
        let left = self.life.stop(self.drain).await;
        if left > 0 {
            tracing::warn!(
                "shutdown: {left} connection(s) still open after {}; closing them",
                signet_certs::format_duration(self.drain)
            );
        }
    }
}

fn tls_settings(config: &Config, services: &ServiceTable) -> TlsSettings {
    let inbound = config
        .inbound
        .iter()
        .map(|ib| InboundTls {
            // HTTP/1.1 preferred (see ALPN_HTTP); `auto` offers HTTP as well, and a peer that
            // asks for no ALPN gets bytes.
            alpn: match ib.protocol {
                Protocol::Http | Protocol::Auto => crypto::alpn(crypto::ALPN_HTTP),
                Protocol::Tcp => Vec::new(),
            },
            allow: ib.allow.clone(),
        })
        .collect();
    let mut outbound = Vec::new();
    let captures = config.capture.as_ref().is_some_and(|c| c.outbound.is_some());
    // The HTTP proxy and the captured outbound carry HTTP/1.x, h2 and tunnels (CONNECT, opaque).
    if config.outbound_http.is_some() || captures {
        for s in services.iter() {
            for alpn in [ClientAlpn::Http1, ClientAlpn::H2, ClientAlpn::None] {
                outbound.push((s.identity.clone(), alpn));
            }
        }
    }
    for route in &config.outbound_tcp {
        if let Some(s) = services.get(&route.service) {
            outbound.push((s.identity.clone(), ClientAlpn::None));
        }
    }
    outbound.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    outbound.dedup();
    TlsSettings {
        policy: config.tls.policy,
        resumption: config.tls.resumption,
        verify_cache: config.tls.verify_cache,
        inbound,
        outbound,
        trust_domain_aliases: config.trust_domain_aliases.clone(),
    }
}
