//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text), `/certs` (JSON in the spirit
//! of Envoy's admin `/certs`) and `/listeners` (every bound address, for scripts and tests).
//! Plain HTTP on loopback, like Envoy's 15000.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::{Value, json};
use signet_certs::{CertInfo, rfc3339};
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::credentials::Credentials;
use crate::metrics::{Listener, Metrics};
use crate::serve::{ConnLimit, HttpServing, Lifecycle, accept_loop, serve_http1};
use crate::sidecar::BoundAddrs;
use crate::throttle::{Throttle, more};
use crate::tls::TlsStore;

pub struct Admin {
    pub store: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
    /// Every listener's bound address (what `/listeners` answers).
    pub listeners: BoundAddrs,
}

impl Admin {
    /// Serves the admin endpoints with a connection cap of its own: a full data plane does not
    /// keep `/ready` from answering.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        life: Lifecycle,
        limit: ConnLimit,
        serving: HttpServing,
    ) {
        let serving = Arc::new(serving);
        let (metrics, logs) = (self.metrics.clone(), Throttle::default());
        let handle = move |stream, _| {
            let (admin, serving) = (self.clone(), serving.clone());
            async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                serve_http1(stream, svc, &serving).await;
            }
        };
        let refuse = move |_stream, peer, why| {
            metrics.refused(Listener::Admin);
            if let Some(skipped) = logs.allow("limit") {
                tracing::warn!("admin: refused {peer}: {why}{}", more(skipped));
            }
        };
        accept_loop(listener, "admin".into(), life, limit, handle, refuse).await
    }

    fn route(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return body::text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints are read-only (GET)");
        }
        match req.uri().path() {
            "/ready" | "/healthz/ready" => match self.store.identity() {
                None => body::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no workload certificate yet",
                ),
                Some(id) => match id.unready_reason(SystemTime::now()) {
                    None => body::text(StatusCode::OK, "ready"),
                    Some(why) => body::text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                },
            },
            "/live" => body::text(StatusCode::OK, "live"),
            "/metrics" | "/stats/prometheus" => {
                let mut resp = body::text(StatusCode::OK, self.metrics.render(&self.store));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            "/certs" => json_response(self.certs_json()),
            "/listeners" => json_response(serde_json::to_value(&self.listeners).unwrap_or_default()),
            "/" => body::text(StatusCode::OK, "signet admin: /ready /live /metrics /certs /listeners"),
            other => body::text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {other}; try /ready /live /metrics /certs /listeners"),
            ),
        }
    }

    fn certs_json(&self) -> Value {
        let Some(id) = self.store.identity() else {
            return json!({ "certificates": [] });
        };
        json!({
            "spiffe_id": id.id.as_str(),
            "signer": id.signer.as_str(),
            "ready": self.store.is_ready(),
            "trust_version": id.trust_version,
            "anchor_sha256": id.anchor_sha256,
            "certificates": [{
                "ca_cert": id.roots.iter().map(cert_json).collect::<Vec<_>>(),
                "cert_chain": id.chain.iter().map(cert_json).collect::<Vec<_>>(),
            }],
        })
    }
}

fn json_response(v: Value) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("{v:#}\n")));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn cert_json(c: &CertInfo) -> Value {
    let mut sans: Vec<Value> = c.uris.iter().map(|u| json!({ "uri": u })).collect();
    sans.extend(c.dns.iter().map(|d| json!({ "dns": d })));
    sans.extend(c.ips.iter().map(|ip| json!({ "ip_address": ip.to_string() })));
    let days = c.remaining(SystemTime::now()).as_secs() / 86_400;
    json!({
        "serial_number": c.serial,
        "subject": c.subject,
        "issuer": c.issuer,
        "sha256": c.sha256,
        "subject_alt_names": sans,
        "days_until_expiration": days.to_string(),
        "valid_from": rfc3339(c.not_before),
        "expiration_time": rfc3339(c.not_after),
    })
}
