//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text) and `/certs` (JSON in the
//! spirit of Envoy's admin `/certs`). Plain HTTP on loopback, like Envoy's 15000.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use signet_certs::CertInfo;
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
            "trust_bundle_version": id.trust_version,
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

/// `2026-11-28T15:04:05Z` without a date crate (civil-from-days, H. Hinnant).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_876_245)),
            "2026-11-28T14:30:45Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
