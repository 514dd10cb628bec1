//! Issue 8's flood, run together against one inbound: 2,000 wrong-signer handshakes, 500 idle
//! connections that never send a ClientHello, 300 slow-header connections of a same-signer
//! peer, and 500 handshakes whose chains carry a fresh junk certificate each. Meanwhile a
//! well-behaved client (the real curl) calls httpbin through the inbound every 250 ms: every
//! call must succeed; the sidecar's memory stays under a stated bound; the log stays short
//! (one line per kind of rejection per interval) while the metrics count every rejection.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// The bound this test holds the sidecar to, in MiB of resident memory, flood included.
const RSS_BOUND_MIB: u64 = 100;

fn read_pem_dir(
    dir: &str,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let chain = signet_certs::read_certs(std::path::Path::new(&format!("{dir}/tls.crt"))).unwrap();
    let key = signet_certs::read_key(std::path::Path::new(&format!("{dir}/tls.key"))).unwrap();
    (chain, key)
}

/// A client presenting `chain`; it trusts whatever the server presents (the refusals counted
/// here are the sidecar's).
fn client(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let provider = signet_certs::CryptoPolicy::default().provider();
    let key = provider.key_provider.load_private_key(key).unwrap();
    let resolver = rustls::sign::SingleCertAndKey::from(rustls::sign::CertifiedKey::new(chain, key));
    let mut config = signet_certs::CryptoPolicy::default()
        .client_builder()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signet_certs::CryptoPolicy::default()
            .signature_algorithms()
            .supported_schemes()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and runs the handshake as far as it goes; the stream if it completed.
fn handshake(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Option<Tls> {
    let tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let name = rustls::pki_types::ServerName::try_from("httpbin.foo").unwrap();
    let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(config.clone(), name).ok()?, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).ok()?;
    }
    Some(tls)
}

/// A self-signed certificate of about `size` bytes, different every time.
fn junk_certificate(size: usize) -> rustls::pki_types::CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(vec!["junk.example".to_string()]).unwrap();
    let filler: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ rand_byte()).collect();
    let mut content = vec![0x04, 0x82, (filler.len() >> 8) as u8, filler.len() as u8];
    content.extend(filler);
    params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 7],
        content,
    ));
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

fn rand_byte() -> u8 {
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    (x.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 56) as u8
}

#[test]
fn a_flood_against_one_inbound_leaves_a_well_behaved_client_served() {
    let mesh = Mesh::new(&["foo", "bar"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let certs = mesh.httpbin_certs();
    let side = Sidecar::start(
        "sidecar httpbin.foo",
        &mesh.inbound_args(&certs, "foo", app.addr, "http"),
    );
    let addr = side.inbound[0];
    let pid = side.proc.pid();
    let good = mesh.curl_certs();
    let wrong = mesh.issue("bar", "curl-bar", &spiffe("bar", "curl"), &[]);
    let log_before = side.proc.log().len();
    let rss_idle = rss_mib(pid);

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // The well-behaved client, throughout.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let caller = {
        let (done, calls, mesh_dir) = (done.clone(), calls.clone(), good.clone());
        let ca = format!("{}/ca.crt", mesh.signer_dir("foo"));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let resolve = format!("httpbin.foo:{}:127.0.0.1", addr.port());
                let url = format!("https://httpbin.foo:{}/get", addr.port());
                let (cert, key) = (format!("{mesh_dir}/tls.crt"), format!("{mesh_dir}/tls.key"));
                let r = curl(
                    &[
                        "--cacert",
                        &ca,
                        "--resolve",
                        &resolve,
                        "--cert",
                        &cert,
                        "--key",
                        &key,
                        &url,
                    ],
                    &[],
                );
                calls.lock().unwrap().push((r.code, r.status, r.stderr));
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let start = Instant::now();
    // 500 connections that never send a ClientHello.
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // 300 same-signer peers sending their headers one byte a second.
    let (chain, key) = read_pem_dir(&good);
    let same = client(chain.clone(), key.clone_key());
    let slow = std::thread::spawn(move || {
        let mut conns: Vec<Tls> = (0..300).filter_map(|_| handshake(&same, addr)).collect();
        let opened = conns.len();
        for c in &mut conns {
            let _ = c.write_all(b"GET /get HTTP/1.1\r\nHost: httpbin.foo\r\nX-Slow: ");
        }
        let mut open = opened;
        let until = Instant::now() + Duration::from_secs(25);
        while open > 0 && Instant::now() < until {
            open = 0;
            for c in &mut conns {
                if c.write_all(b"a").and_then(|_| c.flush()).is_ok() {
                    open += 1;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        (opened, open)
    });
    // 2,000 wrong-signer handshakes, from four threads.
    let (wchain, wkey) = read_pem_dir(&wrong);
    let wrong_signer: Vec<_> = (0..4)
        .map(|_| {
            let config = client(wchain.clone(), wkey.clone_key());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if let Some(mut tls) = handshake(&config, addr) {
                        let mut buf = [0u8; 64];
                        let _ = tls.read(&mut buf);
                    }
                }
            })
        })
        .collect();
    // 500 same-signer handshakes, each chain with a fresh 12 KiB junk certificate appended.
    let junk = std::thread::spawn(move || {
        let mut accepted = 0;
        for _ in 0..500 {
            let mut chain = chain.clone();
            chain.push(junk_certificate(12 * 1024));
            if handshake(&client(chain, key.clone_key()), addr).is_some() {
                accepted += 1;
            }
        }
        accepted
    });
    for t in wrong_signer {
        t.join().unwrap();
    }
    let junk_accepted = junk.join().unwrap();
    let (slow_opened, slow_left) = slow.join().unwrap();
    let flood = start.elapsed();
    done.store(true, Ordering::Relaxed);
    caller.join().unwrap();
    sampler.join().unwrap();
    drop(idle);

    let peak = peak.load(Ordering::Relaxed);
    let calls = calls.lock().unwrap();
    let failed: Vec<_> = calls
        .iter()
        .filter(|(code, status, _)| (*code, *status) != (0, 200))
        .collect();
    let metric = |r: &str| {
        side.metric(&format!(
            "signet_tls_handshakes_total{{direction=\"inbound\",result=\"{r}\"}}"
        ))
    };
    let log = &side.proc.log()[log_before..];
    eprintln!(
        "flood of {flood:?}: {} well-behaved calls, {} failed; RSS {rss_idle} MiB idle, peak {peak} MiB (bound {RSS_BOUND_MIB}); unknown_signer {}, timeout {}, slow-header connections {slow_opened} opened, {slow_left} left open after 25 s, closed for headers {}; junk chains accepted {junk_accepted}; log {} bytes, {} lines",
        calls.len(),
        failed.len(),
        metric("unknown_signer"),
        metric("timeout"),
        side.metric("signet_connections_closed_total{direction=\"inbound\",reason=\"header_timeout\"}"),
        log.len(),
        log.lines().count(),
    );
    assert!(calls.len() >= 10, "the well-behaved client ran throughout");
    assert!(failed.is_empty(), "every well-behaved call succeeds: {failed:?}");
    assert!(peak < RSS_BOUND_MIB, "peak RSS {peak} MiB");
    assert_eq!(
        metric("unknown_signer"),
        2000,
        "every wrong-signer handshake is counted"
    );
    assert_eq!(slow_opened, 300);
    assert_eq!(slow_left, 0, "every slow-header connection was closed");
    assert_eq!(
        junk_accepted, 500,
        "junk appended to a good chain is ignored, not fatal"
    );
    // One line per kind per interval: a few lines, where one per rejection was 2,000.
    assert!(log.lines().filter(|l| l.contains("unknown_signer")).count() <= 1 + flood.as_secs() as usize / 10 + 1);
    assert!(log.len() < 20_000, "the log stays short: {} bytes", log.len());
}

/// The junk-certificate attack of hole 2 on its own: 3,000 handshakes of a same-signer peer, each
/// chain carrying a fresh 12 KiB junk certificate (the verified-chain cache used to key on the
/// whole chain, so each made a new entry). The sidecar's memory must not grow with them.
#[test]
fn junk_chains_do_not_grow_the_sidecars_memory() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let certs = mesh.httpbin_certs();
    let side = Sidecar::start(
        "sidecar httpbin.foo",
        &mesh.inbound_args(&certs, "foo", app.addr, "tcp"),
    );
    let pid = side.proc.pid();
    let good = mesh.curl_certs();
    let (chain, key) = read_pem_dir(&good);
    // Warm up with the plain chain, so the baseline includes what one peer costs.
    for _ in 0..50 {
        handshake(&client(chain.clone(), key.clone_key()), side.inbound[0]);
    }
    let before = rss_mib(pid);
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (chain, key, addr) = (chain.clone(), key.clone_key(), side.inbound[0]);
            std::thread::spawn(move || {
                let mut accepted = 0;
                for _ in 0..1500 {
                    let mut chain = chain.clone();
                    chain.push(junk_certificate(12 * 1024));
                    accepted += usize::from(handshake(&client(chain, key.clone_key()), addr).is_some());
                }
                accepted
            })
        })
        .collect();
    let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let after = rss_mib(pid);
    eprintln!(
        "3,000 junk-chain handshakes in {:?} ({accepted} accepted): sidecar RSS {before} MiB before, {after} MiB after",
        start.elapsed()
    );
    assert_eq!(accepted, 3000);
    assert!(after < before + 24, "RSS grew from {before} to {after} MiB");
}
