//! A small built-in httpbin: `/html` (the Moby-Dick page), `/get`, `/headers`, `/ip`,
//! `/status/{code}`, `/bytes/{n}` (up to 100 KiB, the same bytes each time). The demo and the benchmarks use it so they need nothing installed; the
//! tests use the real httpbin from PyPI.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::{Map, Value, json};
use signet_proxy::body::{self, Body};
use signet_proxy::serve::{ConnLimit, HttpLimits, HttpServing, Lifecycle, accept_loop, serve_http_auto};

/// Connections the built-in httpbin holds at most.
const MAX_CONNECTIONS: usize = 1024;
use tokio::net::TcpListener;

/// httpbin's `/html`: the opening of Moby-Dick, chapter 112 (public domain).
pub const MOBY_DICK_HTML: &str = r#"<!DOCTYPE html>
<html>
  <head>
  </head>
  <body>
      <h1>Herman Melville - Moby-Dick</h1>

      <div>
        <p>
          Availing himself of the mild, summer-cool weather that now reigned in these latitudes, and in preparation for the peculiarly active pursuits shortly to be anticipated, Perth, the begrimed, blistered old blacksmith, had not removed his portable forge to the hold again, after concluding his contributory work for Ahab's leg, but still retained it on deck, fast lashed to ringbolts by the foremast; being now almost incessantly invoked by the headsmen, and harpooneers, and bowsmen to do some little job for them; altering, or repairing, or new shaping their various weapons and boat furniture.
        </p>
      </div>
  </body>
</html>"#;

pub struct Httpbin {
    pub addr: SocketAddr,
    life: Lifecycle,
}

impl Httpbin {
    /// Binds `addr` and serves until [`Httpbin::stop`] or the runtime ends.
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<Httpbin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let life = Lifecycle::default();
        let serving = Arc::new(HttpServing::new(HttpLimits::default(), life.shutdown.clone()));
        let handle = move |stream, peer| {
            let serving = serving.clone();
            async move {
                let svc = service_fn(move |req| async move { Ok::<_, Infallible>(route(&req, peer)) });
                serve_http_auto(stream, svc, &serving).await;
            }
        };
        let limit = ConnLimit::new(MAX_CONNECTIONS);
        let refuse = |_stream, peer, why| tracing::debug!("httpbin: refused {peer}: {why}");
        life.spawn(accept_loop(
            listener,
            name.to_string(),
            life.clone(),
            limit,
            handle,
            refuse,
        ));
        tracing::debug!("{name}: httpbin on {addr}");
        Ok(Httpbin { addr, life })
    }

    pub fn stop(&self) {
        self.life.shutdown.cancel();
    }
}

fn route(req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path();
    match path {
        "/html" => respond(StatusCode::OK, "text/html; charset=utf-8", MOBY_DICK_HTML.to_string()),
        "/headers" => json_response(json!({ "headers": headers_json(req.headers()) })),
        "/ip" => json_response(json!({ "origin": peer.ip().to_string() })),
        "/get" => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let args: Map<String, Value> = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))).filter(|(k, _)| !k.is_empty()))
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/get");
            json_response(json!({
                "args": args,
                "headers": headers_json(req.headers()),
                "origin": peer.ip().to_string(),
                "url": format!("http://{host}{pq}"),
            }))
        }
        "/" => respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "signet httpbin: /html /get /headers /ip /status/{code} /bytes/{n}\n".into(),
        ),
        _ if path.starts_with("/bytes/") => match path["/bytes/".len()..].parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => {
                let mut resp = Response::new(body::full(bytes::Bytes::from_static(&pattern()[..n])));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/octet-stream"),
                );
                resp
            }
            _ => respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("/bytes/N: N is a number of bytes up to {MAX_BYTES}\n"),
            ),
        },
        _ => match path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
            Some(code) => match StatusCode::from_u16(code) {
                Ok(status) => respond(status, "text/plain; charset=utf-8", String::new()),
                Err(_) => respond(StatusCode::BAD_REQUEST, "text/plain", "invalid status code\n".into()),
            },
            None => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        },
    }
}

/// Header names in httpbin's Title-Case (`X-Forwarded-Client-Cert`).
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for (name, value) in headers {
        let title: Vec<String> = name
            .as_str()
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        out.insert(
            title.join("-"),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    Value::Object(out)
}

/// The most `/bytes/N` serves (httpbin's own limit: 100 KiB).
const MAX_BYTES: usize = 100 * 1024;

/// `/bytes/N`'s body: the first N bytes of one fixed pseudo-random block, made once (httpbin
/// sends random bytes; the same ones each time keep the app's cost out of benchmarks).
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..MAX_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

fn json_response(v: Value) -> Response<Body> {
    respond(StatusCode::OK, "application/json", format!("{v:#}\n"))
}

fn respond(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
