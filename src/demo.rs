//! `signet demo`: Istio's "Custom CA integration using Kubernetes CSR" task on 127.0.0.1.
//! Three signers, a trust bundle, two httpbins (foo, bar) with sidecars, a curl workload in foo
//! with its sidecar, and the task's two requests through foo's outbound proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use signet_certs::{DEFAULT_CA_VALIDITY, IssueOptions, Signer, SignerName, SpiffeId, TrustBundle, write_public};
use signet_proxy::admin::rfc3339;
use signet_proxy::config::{IdentityFile, InboundFile, OutboundFile, ServiceFile};
use signet_proxy::{ConfigFile, Protocol, Sidecar};

use crate::cli::DemoArgs;
use crate::commands::{issue, runtime, wait_for_signal, write_identity};
use crate::httpbin::Httpbin;

const TRUST_DOMAIN: &str = "cluster.local";

struct Workload {
    label: &'static str,
    namespace: &'static str,
    service_account: &'static str,
    dns: Option<&'static str>,
}

const HTTPBIN_FOO: Workload = Workload {
    label: "httpbin.foo",
    namespace: "foo",
    service_account: "httpbin",
    dns: Some("httpbin.foo"),
};
const HTTPBIN_BAR: Workload = Workload {
    label: "httpbin.bar",
    namespace: "bar",
    service_account: "httpbin",
    dns: Some("httpbin.bar"),
};
const CURL_FOO: Workload = Workload {
    label: "curl (foo)",
    namespace: "foo",
    service_account: "curl",
    dns: None,
};

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    let (_tmp, dir) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("signet-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    runtime(None)?.block_on(scenario(&dir, args.keep_running))
}

fn id_of(w: &Workload) -> Result<SpiffeId, String> {
    SpiffeId::workload(TRUST_DOMAIN, w.namespace, w.service_account).map_err(|e| e.to_string())
}

async fn scenario(dir: &Path, keep_running: bool) -> Result<ExitCode, String> {
    println!("Signet demo: Istio's \"Custom CA integration using Kubernetes CSR\" task, on 127.0.0.1 (no Kubernetes)");
    println!("working directory: {}\n", dir.display());

    // 1. Signers, as three self-signed cert-manager ClusterIssuers would be.
    println!("[1/5] signers (one CA per tenant, like cert-manager ClusterIssuers)");
    let mut signers = BTreeMap::new();
    for short in ["istio-system", "foo", "bar"] {
        let name = SignerName::with_default_domain(short).map_err(|e| e.to_string())?;
        let signer = Signer::create(name, DEFAULT_CA_VALIDITY).map_err(|e| e.to_string())?;
        signer
            .write_dir(&dir.join("signers").join(short))
            .map_err(|e| e.to_string())?;
        let fp = signet_certs::sha256_hex(signer.certificate());
        println!(
            "      {:<46} ECDSA P-256 root sha256:{}",
            signer.name().as_str(),
            &fp[..16]
        );
        signers.insert(short, signer);
    }

    // 2. The bundle: meshConfig.caCertificates, one entry per signer.
    let bundle =
        TrustBundle::from_signers(signers.values().map(|s| (s.name(), s.roots()))).map_err(|e| e.to_string())?;
    let bundle_path = dir.join("bundle.yaml");
    write_public(&bundle_path, bundle.to_yaml().as_bytes()).map_err(|e| e.to_string())?;
    println!(
        "[2/5] trust bundle (meshConfig.caCertificates): {} entries, each root mapped to its signer → {}",
        bundle.entries().len(),
        bundle_path.display()
    );

    // 3. Workload certificates, each from its namespace's signer (ProxyConfig ISTIO_META_CERT_SIGNER).
    println!("[3/5] workload certificates (key + CSR made for the workload, signed by its namespace's signer)");
    let mut cert_dirs = BTreeMap::new();
    for w in [&HTTPBIN_FOO, &HTTPBIN_BAR, &CURL_FOO] {
        let signer = &signers[w.namespace];
        let id = id_of(w)?;
        let dns: Vec<String> = w.dns.iter().map(|d| d.to_string()).collect();
        let (issued, key) = issue(signer, &id, &dns, &IssueOptions::default())?;
        let out = dir
            .join("workloads")
            .join(format!("{}-{}", w.service_account, w.namespace));
        write_identity(&out, &issued, &key)?;
        println!(
            "      {:<12} {:<42} signer {:<4} expires {}",
            w.label,
            id.as_str(),
            w.namespace,
            rfc3339(issued.leaf.not_after)
        );
        cert_dirs.insert(w.label, out);
    }

    // 4. Apps and sidecars.
    println!("[4/5] workloads and sidecars");
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let app_foo = Httpbin::start(local, "httpbin.foo").await.map_err(|e| e.to_string())?;
    let app_bar = Httpbin::start(local, "httpbin.bar").await.map_err(|e| e.to_string())?;
    let side_foo = start_inbound(&cert_dirs[HTTPBIN_FOO.label], &bundle_path, "foo", app_foo.addr).await?;
    let side_bar = start_inbound(&cert_dirs[HTTPBIN_BAR.label], &bundle_path, "bar", app_bar.addr).await?;
    let mut services = BTreeMap::new();
    for (w, side) in [(&HTTPBIN_FOO, &side_foo), (&HTTPBIN_BAR, &side_bar)] {
        services.insert(
            format!("{}:8000", w.label),
            ServiceFile {
                address: side.addrs.inbound[0].to_string(),
                identity: Some(id_of(w)?.to_string()),
            },
        );
    }
    let curl_config = ConfigFile {
        signer: Some("foo".into()),
        identity: Some(IdentityFile {
            cert_dir: Some(cert_dirs[CURL_FOO.label].clone()),
            ..Default::default()
        }),
        trust_bundle: Some(bundle_path.clone()),
        outbound: Some(OutboundFile {
            http: Some("127.0.0.1:0".into()),
            tcp: Vec::new(),
        }),
        services,
        admin: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let side_curl = Sidecar::start(curl_config.resolve().map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let proxy = side_curl
        .addrs
        .outbound_http
        .ok_or("the curl sidecar has no outbound listener")?;
    for (label, app, side) in [
        ("httpbin.foo:8000", app_foo.addr, &side_foo),
        ("httpbin.bar:8000", app_bar.addr, &side_bar),
    ] {
        println!(
            "      {label:<17} app {app} ← sidecar inbound {} (http, trusts only {})",
            side.addrs.inbound[0], side.identity.signer
        );
    }
    println!(
        "      curl (foo)        sidecar outbound http proxy {proxy} (trusts only {})\n",
        side_curl.identity.signer
    );

    // 5. The task's two requests.
    println!("[5/5] the scenario");
    let (foo_status, foo_body) = get_via_proxy(proxy, "httpbin.foo:8000", "/html").await?;
    println!("$ kubectl exec \"$CURL_POD_FOO\" -n foo -c curl -- curl http://httpbin.foo:8000/html");
    println!("{}\n", flatten_html(&foo_body));
    let (bar_status, bar_body) = get_via_proxy(proxy, "httpbin.bar:8000", "/html").await?;
    println!("$ kubectl exec \"$CURL_POD_FOO\" -n foo -c curl -- curl http://httpbin.bar:8000/html");
    println!("{}\n", bar_body.trim_end());

    let foo_ok = foo_status == StatusCode::OK && foo_body.contains("Herman Melville - Moby-Dick");
    let bar_ok = bar_status == StatusCode::SERVICE_UNAVAILABLE && bar_body.contains("CERTIFICATE_VERIFY_FAILED");
    let mark = |ok: bool| if ok { "as expected" } else { "UNEXPECTED" };
    println!("result:");
    println!(
        "  curl (foo) → httpbin.foo: {foo_status} (Moby-Dick page) ... {}",
        mark(foo_ok)
    );
    println!(
        "  curl (foo) → httpbin.bar: {bar_status} (CERTIFICATE_VERIFY_FAILED) ... {}",
        mark(bar_ok)
    );

    if keep_running {
        print_try_it(dir, proxy, &side_foo, &side_curl);
        wait_for_signal().await;
    }
    for side in [side_curl, side_foo, side_bar] {
        side.shutdown().await;
    }
    app_foo.stop();
    app_bar.stop();
    Ok(if foo_ok && bar_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn start_inbound(cert_dir: &Path, bundle: &Path, signer: &str, app: SocketAddr) -> Result<Sidecar, String> {
    let config = ConfigFile {
        signer: Some(signer.into()),
        identity: Some(IdentityFile {
            cert_dir: Some(cert_dir.to_path_buf()),
            ..Default::default()
        }),
        trust_bundle: Some(bundle.to_path_buf()),
        inbound: vec![InboundFile {
            listen: "127.0.0.1:0".into(),
            app: app.to_string(),
            protocol: Protocol::Http,
            allow: Vec::new(),
        }],
        admin: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    Sidecar::start(config.resolve().map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())
}

/// What `http_proxy=http://PROXY curl http://AUTHORITY/PATH` does: one absolute-form request.
async fn get_via_proxy(proxy: SocketAddr, authority: &str, path: &str) -> Result<(StatusCode, String), String> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("cannot reach the curl sidecar at {proxy}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "curl/8 (signet demo)")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The page on one line, cut after its first words, as the task shows it.
fn flatten_html(html: &str) -> String {
    let flat = html.split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = "Availing himself of the mild";
    match flat.find(marker) {
        Some(i) => format!("{}... </p> </div> </body>", &flat[..i + marker.len()]),
        None => flat.chars().take(200).collect(),
    }
}

fn print_try_it(dir: &Path, proxy: SocketAddr, side_foo: &Sidecar, side_curl: &Sidecar) {
    let curl_dir: PathBuf = dir.join("workloads").join("curl-foo");
    let inbound = side_foo.addrs.inbound[0];
    println!("\neverything keeps running; try (Ctrl-C stops):");
    println!("  http_proxy=http://{proxy} curl http://httpbin.foo:8000/headers");
    println!("  http_proxy=http://{proxy} curl -i http://httpbin.bar:8000/html");
    println!(
        "  curl --cacert {d}/ca.crt --cert {d}/tls.crt --key {d}/tls.key --resolve httpbin.foo:{p}:127.0.0.1 https://httpbin.foo:{p}/headers",
        d = curl_dir.display(),
        p = inbound.port()
    );
    if let Some(admin) = side_curl.addrs.admin {
        println!("  curl http://{admin}/certs      # the curl sidecar's certificate and roots");
        println!("  curl http://{admin}/metrics");
    }
    if let Some(admin) = side_foo.addrs.admin {
        println!("  curl http://{admin}/metrics    # httpbin.foo's sidecar");
    }
}
