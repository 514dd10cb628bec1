//! The HTTP/1.1 relay (both sidecars' request path) with the real curl and the real httpbin:
//! bodies of every framing arrive byte for byte, heads follow the method and status, and
//! kept-alive requests share pooled mTLS connections.

mod support;

use std::io::{Read, Write};
use std::process::Command;

use support::*;

/// The real curl, bytes out: (HTTP status, body, response headers).
fn fetch(proxy: Option<&str>, args: &[&str]) -> (u16, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (body, head) = (dir.path().join("body"), dir.path().join("head"));
    let mut cmd = Command::new("curl");
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    if let Some(proxy) = proxy {
        cmd.env("http_proxy", proxy);
    }
    let out = cmd
        .args(["-s", "--max-time", "30", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let body = std::fs::read(&body).unwrap_or_default();
    (status, body, std::fs::read_to_string(&head).unwrap_or_default())
}

/// The pair, and the client sidecar's proxy URL.
fn pair(mesh: &Mesh, app: &Httpbin) -> (Sidecar, Sidecar, String) {
    let (server, client) = mesh.http_pair(app.addr);
    let proxy = format!("http://{}", client.outbound.unwrap());
    (server, client, proxy)
}

#[test]
fn bodies_of_every_framing_pass_the_pair_byte_for_byte() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let (_server, client, proxy) = pair(&mesh, &app);
    let direct = format!("http://{}", app.addr);
    let via = "http://httpbin.foo:8000";

    // Content-Length (64 KiB, more than one read), chunked (streamed in 1,000-byte chunks), gzip.
    for path in [
        "/bytes/65536?seed=7",
        "/stream-bytes/200000?seed=7&chunk_size=1000",
        "/html",
        "/range/3000",
    ] {
        let (want_status, want, want_head) = fetch(None, &[&format!("{direct}{path}")]);
        let (status, got, head) = fetch(Some(&proxy), &[&format!("{via}{path}")]);
        assert_eq!((status, want_status), (200, 200), "{path}: {head}");
        assert_eq!(got.len(), want.len(), "{path}");
        assert!(got == want, "{path}: the bytes differ");
        let chunked = |h: &str| h.to_ascii_lowercase().contains("transfer-encoding: chunked");
        assert_eq!(
            chunked(&head),
            chunked(&want_head),
            "{path}: the framing is kept\n{head}"
        );
    }
    let (status, got, _) = fetch(Some(&proxy), &["--compressed", &format!("{via}/gzip")]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&got).contains("\"gzipped\": true"));

    // Request bodies: a length, and chunked (curl streams a file it cannot size up front).
    let data: String = (0..40_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let file = mesh.path("upload.txt");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let mut args = vec!["--data-binary", upload.as_str(), "-H", "Content-Type: text/plain"];
        args.extend_from_slice(extra);
        let url = format!("{via}/post");
        args.push(&url);
        let (status, got, _) = fetch(Some(&proxy), &args);
        assert_eq!(status, 200, "{extra:?}");
        let json: serde_json::Value = serde_json::from_slice(&got).expect("httpbin JSON");
        assert_eq!(json["data"].as_str().map(str::len), Some(data.len()), "{extra:?}");
        assert!(json["data"] == data.as_str(), "{extra:?}: the body differs");
    }

    // Heads without bodies (HEAD, 204, 304), pipelined on one connection: each response ends
    // where it should, or the next one would be garbled.
    let mut app_conn = std::net::TcpStream::connect(client.outbound.unwrap()).unwrap();
    app_conn
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let host = "Host: httpbin.foo:8000\r\n";
    write!(
        app_conn,
        "HEAD /bytes/1000 HTTP/1.1\r\n{host}\r\nGET /status/204 HTTP/1.1\r\n{host}\r\n\
         GET /etag/x HTTP/1.1\r\n{host}If-None-Match: \"x\"\r\n\r\nGET /bytes/10 HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    app_conn.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    let heads: Vec<&str> = text.split("\r\n\r\n").collect();
    let statuses: Vec<&str> = heads.iter().filter_map(|h| h.lines().next()).collect();
    assert_eq!(
        statuses[..4],
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 NO CONTENT",
            "HTTP/1.1 304 NOT MODIFIED",
            "HTTP/1.1 200 OK"
        ],
        "{text}"
    );
    assert!(heads[0].to_ascii_lowercase().contains("content-length: 1000"), "{text}");
    assert_eq!(heads.len(), 5, "{text}");
    assert_eq!(
        all.len() - text.rfind("\r\n\r\n").unwrap() - 4,
        10,
        "the last body only: {text}"
    );
}

#[test]
fn kept_alive_requests_share_pooled_mtls_connections() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let (server, client, proxy) = pair(&mesh, &app);
    let url = "http://httpbin.foo:8000/get";

    // One curl, three requests on its one connection to the proxy: one mTLS connection.
    let r = curl(&[url, url, url], &[("http_proxy", proxy.as_str())]);
    assert_eq!((r.code, r.body.matches("\"url\"").count()), (0, 3), "{r:?}");
    let opened = || client.metric("signet_connections_total{direction=\"outbound\"}");
    assert_eq!(opened(), 1, "kept-alive requests share the mTLS connection");
    // Two more app connections, one after the other: the idle mTLS connection is reused.
    for _ in 0..2 {
        assert_eq!(curl_via(client.outbound.unwrap(), url).status, 200);
    }
    assert_eq!(opened(), 1, "the pooled mTLS connection is reused");
    assert_eq!(server.metric("signet_connections_total{direction=\"inbound\"}"), 1);
    assert_eq!(
        client.metric("signet_http_responses_total{direction=\"outbound\",class=\"2xx\"}"),
        5
    );
    assert_eq!(
        server.metric("signet_http_responses_total{direction=\"inbound\",class=\"2xx\"}"),
        5
    );
}
