//! Starting and stopping a sidecar: load the identity (fail fast), bind every listener (fail
//! fast), then run the listeners until shutdown, and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, rfc3339};
use signet_certs::AuthorityClient;

use crate::config::{Config, Protocol, Timeouts};
use crate::identity::IdentityCtx;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::{HttpOutbound, TcpOutbound};
use crate::services::ServiceTable;
use crate::tls::{ClientAlpn, InboundTls, TlsSettings, TlsStore, WorkloadIdentity, policy};

/// What every listener and connection task shares.
pub(crate) struct Shared {
    pub store: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
    pub timeouts: Timeouts,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// Why a sidecar did not start; one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// The addresses actually bound (useful with port 0).
#[derive(Clone, Debug, Default)]
pub struct BoundAddrs {
    pub inbound: Vec<SocketAddr>,
    pub outbound_http: Option<SocketAddr>,
    pub outbound_tcp: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

pub struct Sidecar {
    pub addrs: BoundAddrs,
    store: Arc<TlsStore>,
    reload: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    drain: Duration,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("cannot listen on {addr} ({what}): {e}")))
}

impl Sidecar {
    /// Loads the identity (files) or starts provisioning it (`authority`), binds all listeners
    /// and starts serving on the current runtime. `authority` is required when the config asks
    /// for provisioning; the CLI builds it (this crate knows nothing of authorities).
    pub async fn start(config: Config, authority: Option<Arc<dyn AuthorityClient>>) -> Result<Sidecar, StartError> {
        let services = Arc::new(config.services.clone());
        let store = Arc::new(TlsStore::new(tls_settings(&config, &services)));
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared {
            store: store.clone(),
            metrics: metrics.clone(),
            timeouts: config.timeouts,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let reload = Arc::new(tokio::sync::Notify::new());
        let config = Arc::new(config);
        let identity_ctx = Arc::new(IdentityCtx {
            config: config.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            reload: reload.clone(),
            shutdown: shared.shutdown.clone(),
        });
        // Listeners are not bound yet, so a failure here leaves nothing behind.
        let identity = crate::identity::start(identity_ctx, authority, &shared.tracker).map_err(|e| {
            shared.shutdown.cancel();
            StartError(e)
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
            let service = services.get(&route.service).ok_or_else(|| {
                StartError(format!(
                    "outbound tcp {}: unknown service {}",
                    route.listen, route.service
                ))
            })?;
            let listener = bind(route.listen, "outbound tcp").await?;
            let local = listener.local_addr().unwrap_or(route.listen);
            addrs.outbound_tcp.push(local);
            tcp_outbound.push((Arc::new(TcpOutbound::new(local, service, shared.clone())), listener));
        }
        let admin = match config.admin {
            Some(addr) => {
                let listener = bind(addr, "admin").await?;
                addrs.admin = Some(listener.local_addr().unwrap_or(addr));
                Some(listener)
            }
            None => None,
        };

        for (ib, listener) in inbound {
            shared.tracker.spawn(ib.serve(listener));
        }
        if let Some((ob, listener)) = http_outbound {
            shared.tracker.spawn(ob.serve(listener));
        }
        for (ob, listener) in tcp_outbound {
            shared.tracker.spawn(ob.serve(listener));
        }
        if let Some(listener) = admin {
            let admin = Arc::new(Admin {
                store: store.clone(),
                metrics: metrics.clone(),
            });
            shared
                .tracker
                .spawn(admin.serve(listener, shared.shutdown.clone(), shared.tracker.clone()));
        }

        if let Some(identity) = &identity {
            tracing::info!(
                "ready: {} (signer {}, certificate valid until {}, trust bundle {})",
                identity.id,
                identity.signer,
                rfc3339(identity.not_after),
                identity.trust_version
            );
        }
        for (addr, ib) in addrs.inbound.iter().zip(&config.inbound) {
            let proto = if ib.protocol == Protocol::Http { "http" } else { "tcp" };
            tracing::info!("inbound {addr} ({proto}) → app {}", ib.app);
        }
        if let Some(addr) = addrs.outbound_http {
            tracing::info!("outbound http proxy {addr}, {} service(s)", services.iter().count());
        }
        for (addr, route) in addrs.outbound_tcp.iter().zip(&config.outbound_tcp) {
            tracing::info!("outbound tcp {addr} → {}", route.service);
        }
        if let Some(addr) = addrs.admin {
            tracing::info!("admin http://{addr}/ (ready, metrics, certs)");
        }

        Ok(Sidecar {
            addrs,
            store,
            reload,
            metrics,
            shutdown: shared.shutdown.clone(),
            tracker: shared.tracker.clone(),
            drain: config.timeouts.drain,
        })
    }

    pub fn store(&self) -> &Arc<TlsStore> {
        &self.store
    }

    /// The published identity, once there is one.
    pub fn identity(&self) -> Option<Arc<WorkloadIdentity>> {
        self.store.identity()
    }

    /// Waits until a certificate is published (authority mode), up to `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Option<Arc<WorkloadIdentity>> {
        let start = tokio::time::Instant::now();
        while start.elapsed() < timeout {
            if self.store.is_ready() {
                return self.store.identity();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Re-reads certificate files and the trust bundle now, or renews from the authority
    /// (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, lets open connections finish (HTTP connections are closed after their
    /// current request), and gives up on the rest after the drain timeout.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.drain, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                "shutdown: {} connection(s) still open after {:?}; closing them",
                self.tracker.len(),
                self.drain
            );
        }
    }
}

fn tls_settings(config: &Config, services: &ServiceTable) -> TlsSettings {
    let inbound = config
        .inbound
        .iter()
        .map(|ib| InboundTls {
            alpn: match ib.protocol {
                Protocol::Http => policy::ALPN_HTTP.iter().map(|p| p.to_vec()).collect(),
                Protocol::Tcp => Vec::new(),
            },
            allow: ib.allow.clone(),
        })
        .collect();
    let mut outbound = Vec::new();
    if config.outbound_http.is_some() {
        for s in services.iter() {
            outbound.push((s.identity.clone(), ClientAlpn::Http));
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
        policy: config.tls,
        resumption: config.resumption,
        verify_cache: config.verify_cache,
        inbound,
        outbound,
    }
}
