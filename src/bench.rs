//! `signet bench handshake`: a load generator for mTLS handshake throughput. Each connection is
//! TCP connect, a full (or resumed) TLS handshake, an optional GET, and close; it reports
//! handshakes per second, latency percentiles and failures by kind.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind};
use serde_json::json;
use signet_certs::{
    CryptoPolicy, DEFAULT_SIGNER_DOMAIN, HumanDuration, IssueOptions, MinVersion, SignerName, SignerTrust, SpiffeId,
    crypto, read_certs, read_key,
};
use signet_proxy::tls::diagnose::{self, HandshakeError};
use signet_proxy::tls::{PeerServerVerifier, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Args, Debug)]
pub struct HandshakeArgs {
    /// The TLS server to load, host:port.
    #[arg(long, value_name = "ADDRESS")]
    pub target: String,
    /// Server name to send (SNI) and, for plain TLS peers, the name in their certificate.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub sni: String,
    /// Client certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Roots the server's chain must anchor to (default: the --signer-dir's ca.crt).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Mint a client identity from this signer directory instead of --cert/--key.
    #[arg(long, value_name = "DIR", conflicts_with = "cert")]
    pub signer_dir: Option<PathBuf>,
    /// SPIFFE ID of the minted client identity.
    #[arg(
        long,
        value_name = "SPIFFE_ID",
        default_value = "spiffe://cluster.local/ns/bench/sa/client"
    )]
    pub id: SpiffeId,
    /// Require the server to present this SPIFFE ID (a mismatch is reported as expected vs. got).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub expect_id: Option<SpiffeId>,
    /// Connections in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// How long to measure.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub duration: HumanDuration,
    /// Load before measuring, not counted.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub warmup: HumanDuration,
    /// Resume TLS 1.3 sessions (tickets) instead of full handshakes.
    #[arg(long)]
    pub resume: bool,
    /// After the handshake, send one GET for PATH (HTTP/1.1, Connection: close).
    #[arg(long, value_name = "PATH")]
    pub http_get: Option<String>,
    /// Print one JSON object instead of text (no progress line).
    #[arg(long)]
    pub json: bool,
    /// Client threads (1 keeps the load generator on one core).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub workers: usize,
}

/// Connect, handshake and the request each get this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The first address `target` (host:port) resolves to.
/// The bench server holds at most this many connections (far above any bench concurrency).
const BENCH_SERVER_CONNECTIONS: usize = 100_000;

fn resolve(target: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("--target {target:?} is not a host:port that resolves"))
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Handshake latencies, microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Stats {
    fn fail(&self, kind: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// The client's chain and key, and the trust the server is checked against.
fn client_identity(
    args: &HandshakeArgs,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, SignerTrust), String> {
    // Named after its directory (signers/foo/ca.crt: signer foo), for the messages.
    let ca_signer = |ca: &std::path::Path| {
        ca.parent()
            .and_then(|d| d.file_name())
            .and_then(|n| SignerName::with_default_domain(&n.to_string_lossy()).ok())
            .or_else(|| SignerName::with_default_domain("ca-file").ok())
            .ok_or_else(|| "cannot name the --ca roots".to_string())
    };
    if let Some(dir) = &args.signer_dir {
        let signer = crate::commands::load_signer_dir("--signer-dir", dir, None, DEFAULT_SIGNER_DOMAIN)?;
        let issued = signer
            .issue_workload(&args.id, &[], &IssueOptions::default())
            .map_err(|e| e.to_string())?;
        let trust = match &args.ca {
            Some(ca) => SignerTrust::from_roots(ca_signer(ca)?, read_certs(ca).map_err(|e| e.to_string())?),
            None => SignerTrust::from_roots(signer.name().clone(), issued.certificate.roots.clone()),
        };
        return Ok((issued.certificate.chain, issued.key.to_der(), trust));
    }
    let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
        return Err("give --cert and --key, or --signer-dir DIR to mint a client identity".into());
    };
    let ca = args.ca.as_ref().ok_or("--ca FILE is needed to verify the server")?;
    Ok((
        read_certs(cert).map_err(|e| e.to_string())?,
        read_key(key).map_err(|e| e.to_string())?,
        SignerTrust::from_roots(ca_signer(ca)?, read_certs(ca).map_err(|e| e.to_string())?),
    ))
}

fn client_config(args: &HandshakeArgs) -> Result<Arc<ClientConfig>, String> {
    let (chain, key, trust) = client_identity(args)?;
    // TLS 1.2 too: the load generator also measures peers (nginx, haproxy) that may prefer it.
    let policy = CryptoPolicy {
        min_version: MinVersion::Tls12,
        post_quantum: false,
    };
    let trust = Trust::new(trust).map_err(|e| format!("--ca: {e}"))?;
    // The load generator verifies every server chain in full, like any client would.
    let verifier = PeerServerVerifier::new(
        Arc::new(trust),
        args.expect_id.clone(),
        policy.signature_algorithms(),
        false,
    );
    let mut config = policy
        .client_builder()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
    config.resumption = if args.resume {
        rustls::client::Resumption::in_memory_sessions(4096)
    } else {
        rustls::client::Resumption::disabled()
    };
    if args.http_get.is_some() {
        config.alpn_protocols = crypto::alpn(&[b"http/1.1"]);
    }
    Ok(Arc::new(config))
}

/// Why a handshake failed, as the sidecar would explain it (the verifier's note when there is
/// one: a wrong --expect-id says which identity the server presented).
fn failure_kind(e: &std::io::Error, note: Option<HandshakeError>) -> String {
    format!("handshake: {}", diagnose::classify(e, note, "the client's"))
}

async fn one(
    target: &str,
    sni: &ServerName<'static>,
    tls: &TlsConnector,
    get: Option<&str>,
    stats: &Stats,
    record: bool,
) {
    let start = Instant::now();
    let tcp = match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return stats.fail(format!("connect: {}", e.kind())),
        Err(_) => return stats.fail("connect: timeout".into()),
    };
    let _ = tcp.set_nodelay(true);
    let connect = diagnose::capture(tls.connect(sni.clone(), tcp));
    let mut conn = match tokio::time::timeout(IO_TIMEOUT, connect).await {
        Ok((Ok(c), _)) => c,
        Ok((Err(e), note)) => return stats.fail(failure_kind(&e, note)),
        Err(_) => return stats.fail("handshake: timeout".into()),
    };
    let handshake = start.elapsed();
    let resumed = conn.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    // TLS 1.3: a server refusing our certificate says so only after our Finished; reading tells.
    let outcome = async {
        if let Some(path) = get {
            let host = match sni {
                ServerName::DnsName(d) => d.as_ref().to_string(),
                other => other.to_str().into_owned(),
            };
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await?;
            let mut reply = Vec::new();
            conn.read_to_end(&mut reply).await?;
            Ok::<Option<u16>, std::io::Error>(Some(
                std::str::from_utf8(reply.get(9..12).unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            ))
        } else {
            conn.shutdown().await?;
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await?;
            Ok(None)
        }
    };
    match tokio::time::timeout(IO_TIMEOUT, outcome).await {
        Ok(Ok(status)) => {
            if !record {
                return;
            }
            if let Some(code) = status {
                *stats
                    .statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(code)
                    .or_default() += 1;
                if !(200..300).contains(&code) {
                    return stats.fail(format!("http: status {code}"));
                }
            }
            stats.ok.fetch_add(1, Ordering::Relaxed);
            if resumed {
                stats.resumed.fetch_add(1, Ordering::Relaxed);
            }
            stats
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handshake.as_micros().min(u32::MAX as u128) as u32);
        }
        Ok(Err(e)) if e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).is_some() => stats.fail(format!(
            "after handshake: {}",
            failure_kind(&e, None).trim_start_matches("handshake: ")
        )),
        // Peers that reset instead of closing cleanly (common after close_notify) still count.
        Ok(Err(e))
            if get.is_none()
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) =>
        {
            if record {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                if resumed {
                    stats.resumed.fetch_add(1, Ordering::Relaxed);
                }
                stats
                    .latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(handshake.as_micros() as u32);
            }
        }
        Ok(Err(e)) => stats.fail(format!("io: {}", e.kind())),
        Err(_) => stats.fail("io: timeout".into()),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

pub fn run(args: HandshakeArgs) -> Result<ExitCode, String> {
    let (duration, warmup) = (args.duration.0, args.warmup.0);
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    // Minutes of "connection refused" measure nothing: say so at once.
    if let Err(e) = std::net::TcpStream::connect_timeout(&resolve(&args.target)?, IO_TIMEOUT) {
        return Err(format!(
            "nothing answers at --target {}: {e}; start the server first (e.g. signet proxy --inbound ... or signet bench server)",
            args.target
        ));
    }
    let sni =
        ServerName::try_from(args.sni.clone()).map_err(|_| format!("--sni {:?}: not a DNS name or IP", args.sni))?;
    let connector = TlsConnector::from(client_config(&args)?);
    let rt = crate::commands::runtime(Some(args.workers.max(1)))?;
    let stats = Arc::new(Stats::default());
    let progress = !args.json && std::io::stderr().is_terminal();
    let target: Arc<str> = Arc::from(args.target.as_str());
    let get: Option<Arc<str>> = args.http_get.as_deref().map(Arc::from);
    let elapsed = rt.block_on(async {
        let recording = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (target, sni, tls, get) = (target.clone(), sni.clone(), connector.clone(), get.clone());
            let (stats, recording, stop) = (stats.clone(), recording.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    one(
                        &target,
                        &sni,
                        &tls,
                        get.as_deref(),
                        &stats,
                        recording.load(Ordering::Relaxed),
                    )
                    .await;
                }
            }));
        }
        tokio::time::sleep(warmup).await;
        // Failures during warmup are not part of the result.
        stats.failed.store(0, Ordering::Relaxed);
        stats.failures.lock().unwrap_or_else(|p| p.into_inner()).clear();
        stats.statuses.lock().unwrap_or_else(|p| p.into_inner()).clear();
        recording.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while start.elapsed() < duration {
            tokio::time::sleep(PROGRESS_EVERY.min(duration.saturating_sub(start.elapsed()))).await;
            if progress {
                let secs = start.elapsed().as_secs_f64();
                eprint!(
                    "\r\x1b[2K  {secs:5.1}s  {:>9.1} handshakes/s  {} failed",
                    stats.ok.load(Ordering::Relaxed) as f64 / secs.max(0.001),
                    stats.failed.load(Ordering::Relaxed)
                );
            }
        }
        recording.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        if progress {
            eprint!("\r\x1b[2K");
        }
        elapsed
    });

    let mut lat = std::mem::take(&mut *stats.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let ok = stats.ok.load(Ordering::Relaxed);
    let rate = ok as f64 / elapsed.as_secs_f64();
    let failures = stats.failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let statuses = stats.statuses.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (p50, p90, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    if args.json {
        println!(
            "{}",
            json!({
                "target": args.target,
                "concurrency": args.concurrency,
                "duration_s": elapsed.as_secs_f64(),
                "resume": args.resume,
                "http_get": args.http_get,
                "handshakes": ok,
                "handshakes_per_s": rate,
                "resumed": stats.resumed.load(Ordering::Relaxed),
                "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "max": max },
                "failed": stats.failed.load(Ordering::Relaxed),
                "failures": failures,
                "http_status": statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            })
        );
    } else {
        let mode = if args.resume { "resumed" } else { "full" };
        println!(
            "target {}  concurrency {}  {:.1} s  ({mode} handshakes{})",
            args.target,
            args.concurrency,
            elapsed.as_secs_f64(),
            args.http_get
                .as_deref()
                .map(|p| format!(" + GET {p}"))
                .unwrap_or_default()
        );
        println!(
            "handshakes   {ok} ok, {rate:.1}/s, {} resumed",
            stats.resumed.load(Ordering::Relaxed)
        );
        println!("latency      p50 {p50:.2} ms   p90 {p90:.2} ms   p99 {p99:.2} ms   max {max:.2} ms");
        if failures.is_empty() {
            println!("failures     none");
        } else {
            for (kind, n) in &failures {
                println!("failures     {n} × {kind}");
            }
        }
    }
    Ok(if ok == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where to listen.
    #[arg(long, value_name = "LISTEN", default_value = "127.0.0.1:16443")]
    pub listen: std::net::SocketAddr,
    /// Server certificate directory (tls.crt, tls.key).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: PathBuf,
    /// Roots client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Answer one HTTP/1.1 request per connection with a tiny 200 (else: handshake, then close).
    #[arg(long)]
    pub http: bool,
}

/// `signet bench server`: the in-language ceiling for comparisons. A bare tokio-rustls mTLS
/// server on one thread with Signet's crypto policy and rustls's stock client verifier: no
/// SPIFFE parsing, no metrics, no upstream.
pub fn serve(args: ServerArgs) -> Result<ExitCode, String> {
    let policy = CryptoPolicy::default();
    let mut roots = rustls::RootCertStore::empty();
    for r in read_certs(&args.ca).map_err(|e| e.to_string())? {
        roots.add(r).map_err(|e| format!("--ca: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), policy.provider())
        .build()
        .map_err(|e| format!("--ca: {e}"))?;
    let chain = read_certs(&args.cert_dir.join(signet_certs::files::CERT)).map_err(|e| e.to_string())?;
    let key = read_key(&args.cert_dir.join(signet_certs::files::KEY)).map_err(|e| e.to_string())?;
    let mut config = policy
        .server_builder()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.send_tls13_tickets = 0;
    if args.http {
        config.alpn_protocols = crypto::alpn(&[b"http/1.1"]);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        eprintln!("bench server on {} (tokio-rustls, one thread)", args.listen);
        let http = args.http;
        let life = signet_proxy::serve::Lifecycle::default();
        let limit = signet_proxy::serve::ConnLimit::new(BENCH_SERVER_CONNECTIONS);
        let refuse = |_tcp, _peer, _why| {};
        signet_proxy::serve::accept_loop(
            listener,
            "bench server".into(),
            life,
            limit,
            move |tcp, _| {
                let acceptor = acceptor.clone();
                async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if http {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = tls.shutdown().await;
                    } else {
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                        let _ = tls.shutdown().await;
                    }
                }
            },
            refuse,
        )
        .await;
        Ok::<_, String>(ExitCode::SUCCESS)
    })
}
