//! Counters for the data plane, rendered as Prometheus text on the admin port. Plain atomics:
//! a handshake or request adds one relaxed increment, nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::UNIX_EPOCH;

use crate::credentials::Credentials;
use crate::prometheus::{Exposition, Kind};
use crate::serve::Closed;
use crate::tls::{Reason, TlsStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound = 0,
    Outbound = 1,
}

impl Direction {
    const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

const REASONS: usize = Reason::ALL.len();
const CLOSES: usize = Closed::ALL.len();

#[derive(Default)]
pub struct Metrics {
    handshakes_ok: [AtomicU64; 2],
    /// Of `handshakes_ok`, those that resumed a session.
    resumed: [AtomicU64; 2],
    handshake_failures: [[AtomicU64; REASONS]; 2],
    connections_total: [AtomicU64; 2],
    connections_active: [AtomicI64; 2],
    /// Closed by a limit: by direction and [`Closed`] kind.
    closed: [[AtomicU64; CLOSES]; 2],
    /// Refused at accept for a connection limit: inbound, outbound (app side), admin.
    refused: [AtomicU64; 3],
    /// By status class 1xx..5xx.
    responses: [[AtomicU64; 5]; 2],
    app_connect_failures: AtomicU64,
    /// Inbound connections by how they came: [mTLS, plaintext (permissive listeners)].
    inbound_modes: [AtomicU64; 2],
    /// Captured outbound connections by [`Captured`] route.
    captured: [AtomicU64; Captured::ALL.len()],
    /// CSR requests to the authority: [ok, failed].
    csr_requests: [AtomicU64; 2],
    renewals: AtomicU64,
    /// Reloads of files or the bundle: [ok, failed].
    reloads: [AtomicU64; 2],
}

/// Where the captured outbound sent a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Captured {
    /// To a service of the table, as HTTP through the mesh.
    Http = 0,
    /// To a service of the table, as a TCP tunnel through the mesh.
    Tcp = 1,
    /// Not in the table: connected as the app asked, without mTLS.
    Passthrough = 2,
    /// Not in the table, and `unknownDestinations: block`.
    Blocked = 3,
    /// Not redirected, or aimed at the capture listener itself: closed (no loops).
    Refused = 4,
}

impl Captured {
    const ALL: [Captured; 5] = [
        Captured::Http,
        Captured::Tcp,
        Captured::Passthrough,
        Captured::Blocked,
        Captured::Refused,
    ];
    fn label(self) -> &'static str {
        match self {
            Captured::Http => "http",
            Captured::Tcp => "tcp",
            Captured::Passthrough => "passthrough",
            Captured::Blocked => "blocked",
            Captured::Refused => "refused",
        }
    }
}

/// Decrements the active-connection gauge when dropped (it lives as long as the connection).
pub struct ActiveGuard(Arc<Metrics>, Direction);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active[self.1 as usize].fetch_sub(1, Relaxed);
    }
}

/// Where a connection was refused for a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Inbound = 0,
    /// The outbound listeners the app connects to (HTTP proxy and TCP tunnels).
    Outbound = 1,
    Admin = 2,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::Inbound, Listener::Outbound, Listener::Admin];
    fn label(self) -> &'static str {
        match self {
            Listener::Inbound => "inbound",
            Listener::Outbound => "outbound",
            Listener::Admin => "admin",
        }
    }
}

impl Metrics {
    /// Counts a connection accepted (inbound) or opened to a peer (outbound) and keeps it in the
    /// active gauge while the returned guard lives.
    pub fn connection(self: &Arc<Self>, d: Direction) -> ActiveGuard {
        self.connections_total[d as usize].fetch_add(1, Relaxed);
        self.connections_active[d as usize].fetch_add(1, Relaxed);
        ActiveGuard(self.clone(), d)
    }

    pub fn closed(&self, d: Direction, why: Closed) {
        if let Some(i) = Closed::ALL.iter().position(|c| *c == why) {
            self.closed[d as usize][i].fetch_add(1, Relaxed);
        }
    }

    pub fn refused(&self, at: Listener) {
        self.refused[at as usize].fetch_add(1, Relaxed);
    }

    pub fn handshake_ok(&self, d: Direction, resumed: bool) {
        self.handshakes_ok[d as usize].fetch_add(1, Relaxed);
        if resumed {
            self.resumed[d as usize].fetch_add(1, Relaxed);
        }
    }

    pub fn handshake_failed(&self, d: Direction, reason: Reason) {
        self.handshake_failures[d as usize][reason.index()].fetch_add(1, Relaxed);
    }

    pub fn response(&self, d: Direction, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[d as usize][class].fetch_add(1, Relaxed);
    }

    pub fn app_connect_failed(&self) {
        self.app_connect_failures.fetch_add(1, Relaxed);
    }

    /// An inbound connection accepted as mTLS (`true`) or as plaintext on a permissive listener.
    pub fn inbound_accepted(&self, mtls: bool) {
        self.inbound_modes[usize::from(!mtls)].fetch_add(1, Relaxed);
    }

    pub fn captured(&self, route: Captured) {
        self.captured[route as usize].fetch_add(1, Relaxed);
    }

    pub fn csr_request(&self, ok: bool) {
        self.csr_requests[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    pub fn renewed(&self) {
        self.renewals.fetch_add(1, Relaxed);
    }

    pub fn renewals(&self) -> u64 {
        self.renewals.load(Relaxed)
    }

    pub fn identity_reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    pub fn handshake_failures(&self, d: Direction, reason: Reason) -> u64 {
        self.handshake_failures[d as usize][reason.index()].load(Relaxed)
    }

    pub fn handshakes_ok(&self, d: Direction) -> u64 {
        self.handshakes_ok[d as usize].load(Relaxed)
    }

    pub fn render(&self, store: &TlsStore) -> String {
        let mut e = Exposition::new();
        e.family(
            "signet_tls_handshakes_total",
            Kind::Counter,
            "TLS handshakes by direction and result.",
        );
        for d in Direction::ALL {
            e.sample(
                "signet_tls_handshakes_total",
                &[("direction", d.label()), ("result", "ok")],
                self.handshakes_ok(d),
            );
            for r in Reason::ALL {
                e.sample(
                    "signet_tls_handshakes_total",
                    &[("direction", d.label()), ("result", r.label())],
                    self.handshake_failures(d, r),
                );
            }
        }
        e.family(
            "signet_tls_sessions_resumed_total",
            Kind::Counter,
            "Successful handshakes that resumed a session.",
        );
        for d in Direction::ALL {
            let n = self.resumed[d as usize].load(Relaxed);
            e.sample("signet_tls_sessions_resumed_total", &[("direction", d.label())], n);
        }
        e.family(
            "signet_connections_total",
            Kind::Counter,
            "Connections accepted from peers (inbound) or opened to peers (outbound).",
        );
        for d in Direction::ALL {
            let n = self.connections_total[d as usize].load(Relaxed);
            e.sample("signet_connections_total", &[("direction", d.label())], n);
        }
        e.family("signet_connections_active", Kind::Gauge, "Connections open now.");
        for d in Direction::ALL {
            let n = self.connections_active[d as usize].load(Relaxed);
            e.sample("signet_connections_active", &[("direction", d.label())], n);
        }
        e.family(
            "signet_connections_closed_total",
            Kind::Counter,
            "Connections Signet closed for a limit: header_timeout (headers or first request too slow), idle, max_age, body_timeout (a request body slower than the minimum rate, a response body stalled).",
        );
        for d in Direction::ALL {
            for (i, c) in Closed::ALL.iter().enumerate() {
                let n = self.closed[d as usize][i].load(Relaxed);
                e.sample(
                    "signet_connections_closed_total",
                    &[("direction", d.label()), ("reason", c.label())],
                    n,
                );
            }
        }
        e.family(
            "signet_connections_refused_total",
            Kind::Counter,
            "Connections refused at accept because a connection limit was reached.",
        );
        for l in Listener::ALL {
            let n = self.refused[l as usize].load(Relaxed);
            e.sample("signet_connections_refused_total", &[("listener", l.label())], n);
        }
        e.family(
            "signet_http_responses_total",
            Kind::Counter,
            "HTTP responses by direction and status class, Signet's own (400, 405, 431, 502, 503) included.",
        );
        for d in Direction::ALL {
            for (i, n) in self.responses[d as usize].iter().enumerate() {
                let class = format!("{}xx", i + 1);
                e.sample(
                    "signet_http_responses_total",
                    &[("direction", d.label()), ("class", &class)],
                    n.load(Relaxed),
                );
            }
        }
        e.family(
            "signet_app_connect_failures_total",
            Kind::Counter,
            "Failed connections to the local app.",
        )
        .sample(
            "signet_app_connect_failures_total",
            &[],
            self.app_connect_failures.load(Relaxed),
        );
        e.family(
            "signet_inbound_connections_total",
            Kind::Counter,
            "Inbound connections accepted, by mode: mtls, or plaintext (permissive listeners only).",
        );
        for (i, mode) in ["mtls", "plaintext"].into_iter().enumerate() {
            e.sample(
                "signet_inbound_connections_total",
                &[("mode", mode)],
                self.inbound_modes[i].load(Relaxed),
            );
        }
        e.family(
            "signet_captured_connections_total",
            Kind::Counter,
            "Connections the captured outbound received, by where they went (http, tcp: through the mesh; passthrough; blocked; refused).",
        );
        for c in Captured::ALL {
            e.sample(
                "signet_captured_connections_total",
                &[("route", c.label())],
                self.captured[c as usize].load(Relaxed),
            );
        }
        e.family(
            "signet_identity_csr_requests_total",
            Kind::Counter,
            "Certificate requests to the authority.",
        );
        for (i, result) in ["ok", "failed"].iter().enumerate() {
            let n = self.csr_requests[i].load(Relaxed);
            e.sample("signet_identity_csr_requests_total", &[("result", result)], n);
        }
        e.family(
            "signet_identity_renewals_total",
            Kind::Counter,
            "Certificates replaced by a renewal.",
        )
        .sample("signet_identity_renewals_total", &[], self.renewals());
        e.family(
            "signet_identity_reloads_total",
            Kind::Counter,
            "Reloads of certificate files or the trust bundle.",
        );
        for (i, result) in ["ok", "failed"].iter().enumerate() {
            let n = self.reloads[i].load(Relaxed);
            e.sample("signet_identity_reloads_total", &[("result", result)], n);
        }
        e.family(
            "signet_ready",
            Kind::Gauge,
            "1 when a valid workload certificate is published.",
        )
        .sample("signet_ready", &[], u8::from(store.is_ready()));
        if let Some(id) = store.identity() {
            let expiry = id
                .not_after
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            e.family(
                "signet_cert_expiry_timestamp_seconds",
                Kind::Gauge,
                "When the workload certificate expires.",
            )
            .sample(
                "signet_cert_expiry_timestamp_seconds",
                &[("signer", id.signer.as_str()), ("spiffe_id", id.id.as_str())],
                expiry,
            );
        }
        e.finish()
    }
}
