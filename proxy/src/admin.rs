//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text) and `/certs` (JSON in the
//! spirit of Envoy's admin `/certs`). Plain HTTP on loopback, like Envoy's 15000.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use signet_certs::CertInfo;
pub use signet_certs::rfc3339;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::tls::TlsStore;

pub struct Admin {
    pub store: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken, tracker: TaskTracker) {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("admin: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return body::text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints are read-only (GET)");
        }
        match req.uri().path() {
            "/ready" | "/healthz/ready" => match (self.store.is_ready(), self.store.identity()) {
                (true, _) => body::text(StatusCode::OK, "ready"),
                (false, Some(id)) => body::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not ready: the certificate for {} expired at {}",
                        id.id,
                        rfc3339(id.not_after)
                    ),
                ),
                (false, None) => body::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no workload certificate yet",
                ),
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
            "/certs" => {
                let mut resp = Response::new(body::full(format!("{:#}\n", self.certs_json())));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
            "/" => body::text(StatusCode::OK, "signet admin: /ready /live /metrics /certs"),
            other => body::text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {other}; try /ready /live /metrics /certs"),
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
