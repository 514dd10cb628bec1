//! Criterion micro-benchmarks of the handshake path, in memory (no sockets): a full TLS 1.3 mTLS
//! handshake, client and server in one thread, ECDSA P-256 and X25519 (with every chain verified
//! in full, and with verified chains remembered), a resumed one, the per-signer peer verifier
//! alone, loading and publishing configs through arc-swap, and signing a CSR.
//!
//! Run: `cargo bench --bench handshake` (add `-- --quick` for a shorter run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use signet_certs::{
    CryptoPolicy, DEFAULT_CA_VALIDITY, IssueOptions, Signer, SignerName, SpiffeId, TrustBundle, WorkloadKey,
};
use signet_proxy::credentials::Credentials;
use signet_proxy::tls::verify::PeerClientVerifier;
use signet_proxy::tls::{AllowList, ClientAlpn, InboundTls, TlsSettings, TlsStore, Trust};

struct Fixture {
    foo: Signer,
    bundle: TrustBundle,
}

fn fixture() -> Fixture {
    let mk = |n: &str| Signer::create(SignerName::with_default_domain(n).unwrap(), DEFAULT_CA_VALIDITY).unwrap();
    let (tenant, other) = (mk("foo"), mk("bar"));
    let bundle = TrustBundle::from_signers([(tenant.name(), tenant.roots()), (other.name(), other.roots())]).unwrap();
    Fixture { foo: tenant, bundle }
}

fn identity(f: &Fixture, sa: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let id = SpiffeId::workload("cluster.local", "foo", sa).unwrap();
    let issued = f.foo.issue_workload(&id, &[], &IssueOptions::default()).unwrap();
    (issued.certificate.chain, issued.key.to_der())
}

fn store(f: &Fixture, sa: &str, resumption: bool, verify_cache: bool) -> TlsStore {
    let store = TlsStore::new(TlsSettings {
        policy: CryptoPolicy::default(),
        resumption,
        verify_cache,
        inbound: vec![InboundTls {
            alpn: Vec::new(),
            allow: AllowList::default(),
        }],
        outbound: vec![(None, ClientAlpn::None)],
        trust_domain_aliases: Vec::new(),
    });
    let (chain, key) = identity(f, sa);
    store
        .set_certificate(chain, key, Some(f.bundle.trust_for(f.foo.name()).unwrap()))
        .unwrap();
    store
}

/// One complete in-memory handshake; returns the server's view of it and the time spent in the
/// server's own calls (its share of the work: what a server core pays per handshake).
fn timed_handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    buf: &mut Vec<u8>,
) -> (HandshakeKind, Duration) {
    let mut c = ClientConnection::new(client.clone(), name.clone()).unwrap();
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut server_time = t.elapsed();
    loop {
        let mut moved = false;
        if c.wants_write() {
            buf.clear();
            while c.wants_write() {
                c.write_tls(buf).unwrap();
            }
            let t = Instant::now();
            let mut rest = &buf[..];
            while !rest.is_empty() {
                s.read_tls(&mut rest).unwrap();
            }
            s.process_new_packets().unwrap();
            server_time += t.elapsed();
            moved = true;
        }
        if s.wants_write() {
            let t = Instant::now();
            buf.clear();
            while s.wants_write() {
                s.write_tls(buf).unwrap();
            }
            server_time += t.elapsed();
            let mut rest = &buf[..];
            while !rest.is_empty() {
                c.read_tls(&mut rest).unwrap();
            }
            c.process_new_packets().unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (s.handshake_kind().unwrap(), server_time)
}

/// One complete in-memory handshake; returns the server's view of it.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    buf: &mut Vec<u8>,
) -> HandshakeKind {
    timed_handshake(server, client, name, buf).0
}

fn benches(crit: &mut Criterion) {
    let f = fixture();
    let name = ServerName::try_from("httpbin.foo").unwrap();
    let mut buf = Vec::with_capacity(16 * 1024);

    let plain_server = store(&f, "httpbin", false, false);
    let plain_client = store(&f, "curl", false, false);
    let (ps, pc) = (
        plain_server.current().unwrap().server(0).unwrap(),
        plain_client.current().unwrap().client(&None, ClientAlpn::None).unwrap(),
    );
    crit.bench_function("mtls13_full_handshake, every chain verified in full", |b| {
        b.iter(|| black_box(handshake(&ps, &pc, &name, &mut buf)))
    });

    let server = store(&f, "httpbin", false, true);
    let client = store(&f, "curl", false, true);
    let (s_cfg, c_cfg) = (
        server.current().unwrap().server(0).unwrap(),
        client.current().unwrap().client(&None, ClientAlpn::None).unwrap(),
    );
    assert_eq!(handshake(&s_cfg, &c_cfg, &name, &mut buf), HandshakeKind::Full);
    crit.bench_function("mtls13_full_handshake, chains remembered (Signet's default)", |b| {
        b.iter(|| black_box(handshake(&s_cfg, &c_cfg, &name, &mut buf)))
    });

    crit.bench_function("mtls13_full_handshake, server's share only (chains remembered)", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_handshake(&s_cfg, &c_cfg, &name, &mut buf).1)
                .sum()
        })
    });
    crit.bench_function(
        "mtls13_full_handshake, server's share only (every chain verified)",
        |b| b.iter_custom(|iters| (0..iters).map(|_| timed_handshake(&ps, &pc, &name, &mut buf).1).sum()),
    );

    let server_r = store(&f, "httpbin", true, true);
    let client_r = store(&f, "curl", true, true);
    let (sr, cr) = (
        server_r.current().unwrap().server(0).unwrap(),
        client_r.current().unwrap().client(&None, ClientAlpn::None).unwrap(),
    );
    handshake(&sr, &cr, &name, &mut buf);
    assert_eq!(handshake(&sr, &cr, &name, &mut buf), HandshakeKind::Resumed);
    crit.bench_function("mtls13_resumed_handshake (client+server)", |b| {
        b.iter(|| black_box(handshake(&sr, &cr, &name, &mut buf)))
    });

    let trust = Arc::new(Trust::new(f.bundle.trust_for(f.foo.name()).unwrap()).unwrap());
    let provider = CryptoPolicy::default().provider();
    let verifier = PeerClientVerifier::new(trust.clone(), AllowList::default(), &provider, false);
    let cached = PeerClientVerifier::new(trust, AllowList::default(), &provider, true);
    let (chain, _) = identity(&f, "curl");
    crit.bench_function("peer_verifier (client chain against foo's roots + SPIFFE ID)", |b| {
        b.iter(|| {
            black_box(
                verifier
                    .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
                    .unwrap(),
            )
        })
    });

    crit.bench_function("peer_verifier, chain remembered (reconnecting workload)", |b| {
        b.iter(|| {
            black_box(
                cached
                    .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
                    .unwrap(),
            )
        })
    });

    crit.bench_function("tls_state_load (arc-swap, per accept)", |b| {
        b.iter(|| black_box(server.current().unwrap().server(0)))
    });
    let (chain, key) = identity(&f, "httpbin");
    crit.bench_function(
        "publish_configs (check chain, build server+client configs, swap)",
        |b| b.iter(|| black_box(server.set_certificate(chain.clone(), key.clone_key(), None).unwrap())),
    );

    let csr = WorkloadKey::generate()
        .unwrap()
        .request(&SpiffeId::workload("cluster.local", "foo", "x").unwrap(), &[])
        .unwrap();
    crit.bench_function("sign_csr (parse, verify, sign with the signer's policy)", |b| {
        b.iter(|| black_box(f.foo.sign(&csr.pem, &IssueOptions::default()).unwrap()))
    });
}

criterion_group! {
    name = handshake_benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(handshake_benches);
