//! `signet demo`: Istio's "Custom CA integration using Kubernetes CSR" task on 127.0.0.1.
//! Three signers, a trust bundle, the authority with the task's per-namespace policy, two
//! httpbins (foo, bar) and a curl workload in foo whose sidecars get their certificates by CSR,
//! and the task's two requests through foo's outbound proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use signet_authority::{AuthorityServer, ServerSettings, Sources, TokensFile};
use signet_certs::{
    AUTHORITY_SERVER_NAME, DEFAULT_CA_VALIDITY, Signer, SignerName, SpiffeId, TrustBundle, rfc3339, write_private,
    write_public,
};
use signet_proxy::config::{AuthorityFile, IdentityFile, InboundFile, OutboundFile, ServiceFile};
use signet_proxy::{ConfigFile, Protocol, Sidecar};

use crate::cli::DemoArgs;
use crate::commands::{authority_client, runtime, wait_for_signal};
use crate::httpbin::Httpbin;

const TRUST_DOMAIN: &str = "cluster.local";
/// Each sidecar must hold its first certificate within this.
const FIRST_CERTIFICATE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Workload {
    pub label: &'static str,
    pub namespace: &'static str,
    pub service_account: &'static str,
    pub dns: Option<&'static str>,
}

pub(crate) const HTTPBIN_FOO: Workload = Workload {
    label: "httpbin.foo",
    namespace: "foo",
    service_account: "httpbin",
    dns: Some("httpbin.foo"),
};
pub(crate) const HTTPBIN_BAR: Workload = Workload {
    label: "httpbin.bar",
    namespace: "bar",
    service_account: "httpbin",
    dns: Some("httpbin.bar"),
};
pub(crate) const CURL_FOO: Workload = Workload {
    label: "curl (foo)",
    namespace: "foo",
    service_account: "curl",
    dns: None,
};

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    if args.pods {
        return crate::demo_pods::run(args);
    }
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

/// What both demos start from: signers, the trust bundle, the signing policy and a token per
/// workload, written into the working directory.
pub(crate) struct Prepared {
    pub signers: BTreeMap<&'static str, Signer>,
    pub bundle_path: PathBuf,
    pub policy_path: PathBuf,
    pub tokens_path: PathBuf,
    pub token_files: BTreeMap<&'static str, PathBuf>,
}

/// Steps 1 and 2 of either demo, and the authority's files.
pub(crate) fn prepare(dir: &Path) -> Result<Prepared, String> {
    // 1. Signers, as three self-signed cert-manager ClusterIssuers would be.
    println!("[1/6] signers (one CA per tenant, like cert-manager ClusterIssuers)");
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
        "[2/6] trust bundle (meshConfig.caCertificates): {} entries, each root mapped to its signer → {}",
        bundle.entries().len(),
        bundle_path.display()
    );

    // 3. The authority with the task's policy: foo → foo, bar → bar, default istio-system.
    let policy_path = dir.join("policy.yaml");
    write_public(&policy_path, POLICY.as_bytes()).map_err(|e| e.to_string())?;
    let tokens_path = dir.join("tokens.yaml");
    let mut token_files = BTreeMap::new();
    let mut tokens = TokensFile::default();
    for w in [&HTTPBIN_FOO, &HTTPBIN_BAR, &CURL_FOO] {
        let token = tokens.mint(w.namespace, w.service_account).map_err(|e| e.to_string())?;
        let file = dir
            .join("tokens")
            .join(format!("{}-{}", w.service_account, w.namespace));
        write_private(&file, token.as_bytes()).map_err(|e| e.to_string())?;
        token_files.insert(w.label, file);
    }
    tokens.write(&tokens_path).map_err(|e| e.to_string())?;
    Ok(Prepared {
        signers,
        bundle_path,
        policy_path,
        tokens_path,
        token_files,
    })
}

async fn scenario(dir: &Path, keep_running: bool) -> Result<ExitCode, String> {
    println!("Signet demo: Istio's \"Custom CA integration using Kubernetes CSR\" task, on 127.0.0.1 (no Kubernetes)");
    println!("working directory: {}\n", dir.display());
    let Prepared {
        signers,
        bundle_path,
        policy_path,
        tokens_path,
        token_files,
    } = prepare(dir)?;
    let authority = AuthorityServer::start(ServerSettings {
        sources: Sources {
            signers: signers
                .iter()
                .map(|(short, s)| (s.name().clone(), dir.join("signers").join(short)))
                .collect(),
            bundle: Some(bundle_path.clone()),
            signing_policy: Some(policy_path.clone()),
            tokens: Some(tokens_path),
            signer_domain: signet_certs::DEFAULT_SIGNER_DOMAIN.into(),
            cluster: None,
        },
        listen: ([127, 0, 0, 1], 0).into(),
        admin: Some(([127, 0, 0, 1], 0).into()),
        server_name: AUTHORITY_SERVER_NAME.into(),
        serving_signer: signers["istio-system"].name().clone(),
        watch_interval: signet_proxy::config::DEFAULT_WATCH_INTERVAL,
        request_timeout: signet_authority::server::REQUEST_TIMEOUT,
    })
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "[3/6] authority {} (Istio's CA API over TLS; signing policy: foo → foo, bar → bar, default istio-system) → {}",
        authority.addr,
        policy_path.display()
    );

    // 4. Apps and sidecars; each sidecar makes a key and CSR and asks the authority.
    println!(
        "[4/6] workloads and sidecars (each makes a key + CSR; the chain it gets is checked against its signer's roots)"
    );
    let provisioned = |w: &Workload| -> Result<IdentityFile, String> {
        Ok(IdentityFile {
            authority: Some(AuthorityFile {
                address: Some(authority.addr.to_string()),
                ca: Some(dir.join("signers/istio-system/ca.crt")),
                server_name: None,
                token_file: Some(token_files[w.label].clone()),
            }),
            spiffe_id: Some(id_of(w)?),
            dns: w.dns.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        })
    };
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let app_foo = Httpbin::start(local, "httpbin.foo").await.map_err(|e| e.to_string())?;
    let app_bar = Httpbin::start(local, "httpbin.bar").await.map_err(|e| e.to_string())?;
    let side_foo = start_inbound(provisioned(&HTTPBIN_FOO)?, &bundle_path, app_foo.addr).await?;
    let side_bar = start_inbound(provisioned(&HTTPBIN_BAR)?, &bundle_path, app_bar.addr).await?;
    let mut services = BTreeMap::new();
    for (w, side) in [(&HTTPBIN_FOO, &side_foo), (&HTTPBIN_BAR, &side_bar)] {
        services.insert(
            format!("{}:8000", w.label),
            ServiceFile {
                addresses: Vec::new(),
                protocol: None,
                address: side.addrs.inbound[0].to_string(),
                identity: Some(id_of(w)?),
            },
        );
    }
    let side_curl = start(ConfigFile {
        identity: Some(provisioned(&CURL_FOO)?),
        trust_bundle: Some(bundle_path.clone()),
        outbound: Some(OutboundFile {
            http: Some("127.0.0.1:0".into()),
            tcp: Vec::new(),
        }),
        services,
        admin: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await?;
    let proxy = side_curl
        .addrs
        .outbound_http
        .ok_or("the curl sidecar has no outbound listener")?;
    for (w, side) in [
        (&HTTPBIN_FOO, &side_foo),
        (&HTTPBIN_BAR, &side_bar),
        (&CURL_FOO, &side_curl),
    ] {
        let id = side.identity().ok_or("a sidecar has no identity")?;
        println!(
            "      {:<12} {:<42} signer {:<4} expires {}",
            w.label,
            id.id.as_str(),
            id.signer.short(),
            rfc3339(id.not_after)
        );
    }
    let signer_of = |side: &Sidecar| side.identity().map(|i| i.signer.to_string()).unwrap_or_default();
    for (label, app, side) in [
        ("httpbin.foo:8000", app_foo.addr, &side_foo),
        ("httpbin.bar:8000", app_bar.addr, &side_bar),
    ] {
        println!(
            "      {label:<17} app {app} ← sidecar inbound {} (http, trusts only {})",
            side.addrs.inbound[0],
            signer_of(side)
        );
    }
    println!(
        "      curl (foo)        sidecar outbound http proxy {proxy} (trusts only {})",
        signer_of(&side_curl)
    );
    let requests = authority.authority().requests_json();
    let items = requests["items"].as_array().cloned().unwrap_or_default();
    let approved = items
        .iter()
        .filter(|r| r["status"]["conditions"][0]["type"] == "Approved")
        .count();
    println!(
        "[5/6] the authority recorded {} CertificateSigningRequests, {approved} Approved (http://{}/requests)\n",
        items.len(),
        authority.admin.map(|a| a.to_string()).unwrap_or_default()
    );

    // 6. The task's two requests.
    println!("[6/6] the scenario");
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
        print_try_it(dir, proxy, &side_foo, &side_curl, &authority);
        wait_for_signal().await;
    }
    for side in [side_curl, side_foo, side_bar] {
        side.shutdown().await;
    }
    authority.shutdown().await;
    app_foo.stop();
    app_bar.stop();
    Ok(if foo_ok && bar_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The task's setup as a signing policy: the ProxyConfigs and the istiod ClusterRole.
const POLICY: &str = "# Per-namespace signers (Istio's ProxyConfig ISTIO_META_CERT_SIGNER) and the signers this
# service may approve (the istiod ClusterRole's approve resourceNames).
defaultSigner: istio-system
approvableSigners: [istio-system, foo, bar]
namespaces:
  foo: {signer: foo}
  bar: {signer: bar}
dnsSans:
  spiffe://cluster.local/ns/foo/sa/httpbin: [httpbin.foo]
  spiffe://cluster.local/ns/bar/sa/httpbin: [httpbin.bar]
";

/// Starts a sidecar and waits for its first certificate.
async fn start(config: ConfigFile) -> Result<Sidecar, String> {
    let config = config.resolve().map_err(|e| e.to_string())?;
    let client = authority_client(&config);
    let side = Sidecar::start(config, client).await.map_err(|e| e.to_string())?;
    side.ready(FIRST_CERTIFICATE_TIMEOUT).await.ok_or_else(|| {
        format!(
            "a sidecar got no certificate from the authority within {}",
            signet_certs::format_duration(FIRST_CERTIFICATE_TIMEOUT)
        )
    })?;
    Ok(side)
}

async fn start_inbound(identity: IdentityFile, bundle: &Path, app: SocketAddr) -> Result<Sidecar, String> {
    start(ConfigFile {
        identity: Some(identity),
        trust_bundle: Some(bundle.to_path_buf()),
        inbound: vec![InboundFile {
            listen: "127.0.0.1:0".into(),
            app: app.to_string(),
            protocol: Protocol::Http,
            allow: Vec::new(),
            mode: Default::default(),
        }],
        admin: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await
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
pub(crate) fn flatten_html(html: &str) -> String {
    let flat = html.split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = "Availing himself of the mild";
    match flat.find(marker) {
        Some(i) => format!("{}... </p> </div> </body>", &flat[..i + marker.len()]),
        None => flat.chars().take(200).collect(),
    }
}

fn print_try_it(dir: &Path, proxy: SocketAddr, side_foo: &Sidecar, side_curl: &Sidecar, authority: &AuthorityServer) {
    let inbound = side_foo.addrs.inbound[0];
    let d = dir.display();
    println!("\neverything keeps running; try (Ctrl-C stops):");
    println!("  http_proxy=http://{proxy} curl http://httpbin.foo:8000/headers");
    println!("  http_proxy=http://{proxy} curl -i http://httpbin.bar:8000/html");
    println!("  signet cert issue --signer-dir {d}/signers/foo --id spiffe://cluster.local/ns/foo/sa/me --out {d}/me");
    println!(
        "  curl --cacert {d}/signers/foo/ca.crt --cert {d}/me/tls.crt --key {d}/me/tls.key --resolve httpbin.foo:{p}:127.0.0.1 https://httpbin.foo:{p}/headers",
        p = inbound.port()
    );
    if let Some(admin) = authority.admin {
        println!("  curl http://{admin}/requests     # the authority's CertificateSigningRequests");
    }
    if let Some(admin) = side_curl.addrs.admin {
        println!("  curl http://{admin}/certs        # the curl sidecar's certificate and roots");
        println!("  curl http://{admin}/metrics");
    }
    if let Some(admin) = side_foo.addrs.admin {
        println!("  curl http://{admin}/metrics      # httpbin.foo's sidecar");
    }
}
