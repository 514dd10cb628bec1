//! In-memory handshakes (no sockets) between stores of different signers: the per-signer rules
//! at the TLS layer, including the fixture per-signer trust lives or dies by, the same SPIFFE ID
//! issued by another signer.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use signet_certs::{DEFAULT_CA_VALIDITY, IdPattern, IssueOptions, Signer, SignerName, SpiffeId, TrustBundle};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::diagnose::{self, HandshakeError, Reason};
use super::*;
use crate::credentials::{Credentials, CredentialsError};

fn allow(pattern: &str) -> IdPattern {
    pattern.parse().unwrap()
}

struct Ca {
    foo: Signer,
    bar: Signer,
    bundle: TrustBundle,
}

fn ca() -> Ca {
    let mk = |n: &str| Signer::create(SignerName::with_default_domain(n).unwrap(), DEFAULT_CA_VALIDITY).unwrap();
    let (foo, bar) = (mk("foo"), mk("bar"));
    let bundle = TrustBundle::from_signers([(foo.name(), foo.roots()), (bar.name(), bar.roots())]).unwrap();
    Ca { foo, bar, bundle }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload("cluster.local", ns, sa).unwrap()
}

fn material(
    signer: &Signer,
    id: &SpiffeId,
    options: IssueOptions,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let issued = signer.issue_workload(id, &[], &options).unwrap();
    (issued.certificate.chain, issued.key.to_der())
}

/// A store for `own` signer holding a certificate for `who` issued by `issuer`.
fn store(
    ca: &Ca,
    own: &Signer,
    issuer: &Signer,
    who: &SpiffeId,
    settings: TlsSettings,
) -> Result<TlsStore, CredentialsError> {
    let store = TlsStore::new(settings);
    store.set_trust(ca.bundle.trust_for(own.name())?)?;
    let (chain, key) = material(issuer, who, IssueOptions::default());
    store.set_certificate(chain, key, None)?;
    Ok(store)
}

/// A client with foo's SPIFFE ID `curl` but a certificate from signer bar; it trusts both roots
/// (so it accepts the server), as an attacker holding another tenant's CA would.
fn impostor(ca: &Ca) -> TlsStore {
    let impostor = TlsStore::new(client_settings(None));
    let both = TrustBundle::new(
        ca.bundle
            .entries()
            .iter()
            .cloned()
            .map(|mut e| {
                e.signers = vec![ca.foo.name().clone()];
                e
            })
            .collect(),
    )
    .unwrap();
    impostor.set_trust(both.trust_for(ca.foo.name()).unwrap()).unwrap();
    let (chain, key) = material(&ca.bar, &id("foo", "curl"), IssueOptions::default());
    impostor.set_certificate(chain, key, None).unwrap();
    impostor
}

fn server_settings(allow: AllowList) -> TlsSettings {
    TlsSettings {
        inbound: vec![InboundTls {
            alpn: Vec::new(),
            allow,
        }],
        ..Default::default()
    }
}

fn client_settings(expected: Option<SpiffeId>) -> TlsSettings {
    TlsSettings {
        outbound: vec![(expected, ClientAlpn::None)],
        ..Default::default()
    }
}

/// Runs one handshake; returns what each side saw.
async fn handshake(
    server: &TlsStore,
    client: &TlsStore,
    expected: Option<SpiffeId>,
) -> (Result<Option<SpiffeId>, HandshakeError>, Result<(), HandshakeError>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_cfg = server.current().unwrap().server(0).unwrap();
    let client_cfg = client.current().unwrap().client(&expected, ClientAlpn::None).unwrap();
    let server_side = async {
        let (r, note) = diagnose::capture(TlsAcceptor::from(server_cfg).accept(s)).await;
        match r {
            Ok(mut tls) => {
                // TLS 1.3: the client learns of a refusal only when it reads; give it something.
                use tokio::io::AsyncWriteExt;
                let _ = tls.write_all(b"ok").await;
                let _ = tls.flush().await;
                let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                Ok(peer
                    .and_then(|p| signet_certs::CertInfo::parse(&p).ok())
                    .and_then(|i| i.spiffe_id().ok()))
            }
            Err(e) => Err(diagnose::classify(&e, note, "server")),
        }
    };
    let client_side = async {
        let name = ServerName::try_from("httpbin.foo").unwrap();
        let (r, note) = diagnose::capture(TlsConnector::from(client_cfg).connect(name, c)).await;
        match r {
            Ok(mut tls) => {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 2];
                match tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(diagnose::classify(&e, None, "client")),
                    Err(_) => Err(HandshakeError::new(Reason::Timeout, "no data")),
                }
            }
            Err(e) => Err(diagnose::classify(&e, note, "client")),
        }
    };
    tokio::join!(server_side, client_side)
}

#[tokio::test]
async fn same_signer_connects_and_the_server_sees_the_clients_id() {
    let ca = ca();
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    let client = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "curl"),
        client_settings(Some(id("foo", "httpbin"))),
    )
    .unwrap();
    let (s, c) = handshake(&server, &client, Some(id("foo", "httpbin"))).await;
    assert_eq!(s.unwrap(), Some(id("foo", "curl")));
    c.unwrap();
}

#[tokio::test]
async fn the_client_refuses_a_server_of_another_signer_and_names_it() {
    let ca = ca();
    let server = store(
        &ca,
        &ca.bar,
        &ca.bar,
        &id("bar", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    let client = store(&ca, &ca.foo, &ca.foo, &id("foo", "curl"), client_settings(None)).unwrap();
    let (s, c) = handshake(&server, &client, None).await;
    let c = c.unwrap_err();
    assert_eq!(c.reason, Reason::UnknownSigner);
    assert!(
        c.detail.contains("from signer clusterissuers.cert-manager.io/bar"),
        "{}",
        c.detail
    );
    assert!(
        c.detail
            .contains("trusts only signer clusterissuers.cert-manager.io/foo"),
        "{}",
        c.detail
    );
    let s = s.unwrap_err();
    assert_eq!(s.reason, Reason::PeerRejected);
    assert!(s.detail.contains("unknown_ca"), "{}", s.detail);
}

#[tokio::test]
async fn the_same_spiffe_id_from_another_signer_is_refused_by_the_server() {
    let ca = ca();
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    // The impostor trusts foo (so it accepts the server) but its own certificate is bar's.
    let impostor = impostor(&ca);
    let (s, _) = handshake(&server, &impostor, None).await;
    let s = s.unwrap_err();
    assert_eq!(s.reason, Reason::UnknownSigner);
    assert!(
        s.detail.contains("peer spiffe://cluster.local/ns/foo/sa/curl presents a certificate from signer clusterissuers.cert-manager.io/bar"),
        "{}",
        s.detail
    );
}

#[tokio::test]
async fn wrong_identity_and_allow_list_refusals() {
    let ca = ca();
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::new(vec![allow(id("foo", "curl").as_str())])),
    )
    .unwrap();
    let wrong_expectation = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "curl"),
        client_settings(Some(id("foo", "db"))),
    )
    .unwrap();
    let (_, c) = handshake(&server, &wrong_expectation, Some(id("foo", "db"))).await;
    let c = c.unwrap_err();
    assert_eq!(c.reason, Reason::WrongIdentity);
    assert!(
        c.detail.contains("should be spiffe://cluster.local/ns/foo/sa/db"),
        "{}",
        c.detail
    );

    let sleeper = store(&ca, &ca.foo, &ca.foo, &id("foo", "sleep"), client_settings(None)).unwrap();
    let (s, c) = handshake(&server, &sleeper, None).await;
    assert_eq!(s.unwrap_err().reason, Reason::NotAllowed);
    assert_eq!(c.unwrap_err().reason, Reason::PeerRejected);
    assert!(AllowList::new(vec![allow("spiffe://cluster.local/ns/foo/*")]).allows(&id("foo", "x")));
    assert!(!AllowList::new(vec![allow("spiffe://cluster.local/ns/foo/*")]).allows(&id("bar", "x")));
}

#[test]
fn the_store_refuses_bad_certificates_and_keeps_the_old_one() {
    let ca = ca();
    let store = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    let before = store.current().unwrap().generation;

    let (chain, key) = material(&ca.bar, &id("foo", "httpbin"), IssueOptions::default());
    let e = store.set_certificate(chain, key, None).unwrap_err().to_string();
    assert!(
        e.contains("issued by signer clusterissuers.cert-manager.io/bar, not clusterissuers.cert-manager.io/foo"),
        "{e}"
    );

    let expired = IssueOptions {
        ttl: Duration::from_secs(3600),
        backdate: Duration::from_secs(7200),
    };
    let (chain, key) = material(&ca.foo, &id("foo", "httpbin"), expired);
    assert!(
        store
            .set_certificate(chain, key, None)
            .unwrap_err()
            .to_string()
            .contains("expired")
    );

    let (chain, _) = material(&ca.foo, &id("foo", "httpbin"), IssueOptions::default());
    let (_, other_key) = material(&ca.foo, &id("foo", "httpbin"), IssueOptions::default());
    assert!(
        store
            .set_certificate(chain, other_key, None)
            .unwrap_err()
            .to_string()
            .contains("does not belong")
    );

    assert_eq!(
        store.current().unwrap().generation,
        before,
        "the old configs stay published"
    );
}

#[test]
fn before_the_first_certificate_there_is_nothing_to_serve() {
    let ca = ca();
    let store = TlsStore::new(server_settings(AllowList::default()));
    assert!(store.current().is_none());
    store.set_trust(ca.bundle.trust_for(ca.foo.name()).unwrap()).unwrap();
    assert!(store.current().is_none() && !store.is_ready());
}

#[test]
fn a_trust_update_reports_whether_the_certificate_still_chains() {
    let ca = ca();
    let store = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    // Root rotation, step 1: foo's new root joins the old one.
    let new_foo = Signer::create(SignerName::with_default_domain("foo").unwrap(), DEFAULT_CA_VALIDITY).unwrap();
    let both = TrustBundle::from_signers([(ca.foo.name(), ca.foo.roots()), (ca.foo.name(), new_foo.roots())]).unwrap();
    let update = store.set_trust(both.trust_for(ca.foo.name()).unwrap()).unwrap();
    assert!(update.certificate_chains);
    assert_eq!(store.identity().unwrap().roots.len(), 2);
    // Step 3 before the leaf was renewed: only the new root remains; the old leaf is stale.
    let only_new = TrustBundle::from_signers([(new_foo.name(), new_foo.roots())]).unwrap();
    let update = store.set_trust(only_new.trust_for(ca.foo.name()).unwrap()).unwrap();
    assert!(!update.certificate_chains, "the caller must renew");
    // A leaf from the new CA, installed together with the trust, anchors to the new root.
    let (chain, key) = material(&new_foo, &id("foo", "httpbin"), IssueOptions::default());
    let identity = store
        .set_certificate(chain, key, Some(only_new.trust_for(ca.foo.name()).unwrap()))
        .unwrap();
    assert_eq!(identity.anchor_sha256, signet_certs::sha256_hex(&new_foo.roots()[0]));
}

/// One handshake plus a read (so the client receives the server's tickets); the server's view
/// of whether it resumed.
async fn handshake_kind(server: &TlsStore, client: &TlsStore) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_cfg = server.current().unwrap().server(0).unwrap();
    let client_cfg = client.current().unwrap().client(&None, ClientAlpn::None).unwrap();
    let server_side = async {
        let mut tls = TlsAcceptor::from(server_cfg).accept(s).await.unwrap();
        tls.write_all(b"ok").await.unwrap();
        tls.flush().await.unwrap();
        let kind = tls.get_ref().1.handshake_kind().unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        kind
    };
    let client_side = async {
        let name = ServerName::try_from("httpbin.foo").unwrap();
        let mut tls = TlsConnector::from(client_cfg).connect(name, c).await.unwrap();
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.unwrap();
        tls.shutdown().await.unwrap();
    };
    tokio::join!(server_side, client_side).0
}

#[tokio::test]
async fn sessions_resume_until_the_trust_changes_on_either_side() {
    use rustls::HandshakeKind::{Full, Resumed};
    let ca = ca();
    let with = |mut t: TlsSettings| {
        t.resumption = true;
        t
    };
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        with(server_settings(AllowList::default())),
    )
    .unwrap();
    let client = store(&ca, &ca.foo, &ca.foo, &id("foo", "curl"), with(client_settings(None))).unwrap();
    assert_eq!(handshake_kind(&server, &client).await, Full);
    assert_eq!(handshake_kind(&server, &client).await, Resumed);
    // A renewed leaf under the same trust keeps sessions resumable.
    let (chain, key) = material(&ca.foo, &id("foo", "httpbin"), IssueOptions::default());
    server.set_certificate(chain, key, None).unwrap();
    assert_eq!(handshake_kind(&server, &client).await, Resumed);

    // Root change on the server: tickets sealed under the old trust are not accepted.
    let new_foo = Signer::create(SignerName::with_default_domain("foo").unwrap(), DEFAULT_CA_VALIDITY).unwrap();
    let both = TrustBundle::from_signers([
        (ca.foo.name(), ca.foo.roots()),
        (ca.foo.name(), new_foo.roots()),
        (ca.bar.name(), ca.bar.roots()),
    ])
    .unwrap();
    server.set_trust(both.trust_for(ca.foo.name()).unwrap()).unwrap();
    assert_eq!(
        handshake_kind(&server, &client).await,
        Full,
        "a session from before the root change"
    );
    assert_eq!(handshake_kind(&server, &client).await, Resumed);

    // Root change on the client: it offers no session from before.
    client.set_trust(both.trust_for(ca.foo.name()).unwrap()).unwrap();
    assert_eq!(
        handshake_kind(&server, &client).await,
        Full,
        "the client's cache was emptied"
    );
    assert_eq!(handshake_kind(&server, &client).await, Resumed);

    // With resumption off, every handshake is full.
    let plain = store(&ca, &ca.foo, &ca.foo, &id("foo", "curl"), client_settings(None)).unwrap();
    assert_eq!(handshake_kind(&server, &plain).await, Full);
    assert_eq!(handshake_kind(&server, &plain).await, Full);
}

#[tokio::test]
async fn a_session_from_one_listener_is_not_resumed_on_another() {
    use rustls::HandshakeKind::Full;
    let ca = ca();
    let settings = TlsSettings {
        resumption: true,
        inbound: vec![
            InboundTls {
                alpn: Vec::new(),
                allow: AllowList::default(),
            },
            InboundTls {
                alpn: Vec::new(),
                allow: AllowList::new(vec![allow(id("foo", "curl").as_str())]),
            },
        ],
        ..Default::default()
    };
    let server = store(&ca, &ca.foo, &ca.foo, &id("foo", "httpbin"), settings).unwrap();
    let mut client_settings = client_settings(None);
    client_settings.resumption = true;
    let sleeper = store(&ca, &ca.foo, &ca.foo, &id("foo", "sleep"), client_settings).unwrap();
    // A session on the open listener 0 ...
    assert_eq!(handshake_kind(&server, &sleeper).await, Full);
    // ... is no ticket into listener 1, whose allow-list refuses this identity.
    let (c, s) = tokio::io::duplex(64 * 1024);
    let cfg = server.current().unwrap().server(1).unwrap();
    let client_cfg = sleeper.current().unwrap().client(&None, ClientAlpn::None).unwrap();
    let (server_side, _) = tokio::join!(
        async { diagnose::capture(TlsAcceptor::from(cfg).accept(s)).await },
        async {
            let name = ServerName::try_from("httpbin.foo").unwrap();
            let _ = TlsConnector::from(client_cfg).connect(name, c).await;
        }
    );
    let (result, note) = server_side;
    assert!(
        result.is_err(),
        "the allow-list applies: no resumption across listeners"
    );
    assert_eq!(note.unwrap().reason, Reason::NotAllowed);
}

#[test]
fn trust_domains_in_the_bundle_are_enforced() {
    let ca = ca();
    let mut entries = ca.bundle.entries().to_vec();
    for e in &mut entries {
        e.trust_domains = vec!["foo.tenants".into()];
    }
    let bundle = TrustBundle::new(entries).unwrap();
    let signer_trust = bundle.trust_for(ca.foo.name()).unwrap();
    let trust = Trust::new(signer_trust.clone()).unwrap();
    assert!(
        trust
            .check_trust_domain(&"spiffe://foo.tenants/ns/a/sa/b".parse().unwrap())
            .is_ok()
    );
    let e = trust.check_trust_domain(&id("foo", "curl")).unwrap_err();
    assert!(e.detail.contains("trusted only for foo.tenants"), "{}", e.detail);
    // Our own certificate must fit too.
    let store = TlsStore::new(server_settings(AllowList::default()));
    let (chain, key) = material(&ca.foo, &id("foo", "httpbin"), IssueOptions::default());
    let e = store
        .set_certificate(chain, key, Some(signer_trust))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.local"), "{e}");
}

#[tokio::test]
async fn remembered_chains_never_admit_what_a_full_check_refuses() {
    let ca = ca();
    let mut settings = server_settings(AllowList::new(vec![allow("spiffe://cluster.local/ns/foo/*")]));
    settings.verify_cache = true;
    let server = store(&ca, &ca.foo, &ca.foo, &id("foo", "httpbin"), settings).unwrap();
    let client = store(&ca, &ca.foo, &ca.foo, &id("foo", "curl"), client_settings(None)).unwrap();
    for _ in 0..2 {
        let (s, c) = handshake(&server, &client, None).await;
        assert_eq!(s.unwrap(), Some(id("foo", "curl")));
        c.unwrap();
    }
    // The same SPIFFE ID from another signer is another chain: verified in full, refused.
    let impostor = impostor(&ca);
    assert_eq!(
        handshake(&server, &impostor, None).await.0.unwrap_err().reason,
        Reason::UnknownSigner
    );
    // A remembered chain stops being accepted when it expires.
    let short = IssueOptions {
        ttl: Duration::from_secs(2),
        backdate: Duration::ZERO,
    };
    let brief = TlsStore::new(client_settings(None));
    brief.set_trust(ca.bundle.trust_for(ca.foo.name()).unwrap()).unwrap();
    let (chain, key) = material(&ca.foo, &id("foo", "brief"), short);
    brief.set_certificate(chain, key, None).unwrap();
    let client_cfg = brief.current().unwrap().client(&None, ClientAlpn::None).unwrap();
    assert!(handshake(&server, &brief, None).await.0.is_ok());
    // Certificate times have one-second resolution: wait until the expiry is unambiguous.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The client's store would refuse to publish it now, but its configs still hold it.
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_cfg = server.current().unwrap().server(0).unwrap();
    let (result, note) = tokio::join!(
        diagnose::capture(TlsAcceptor::from(server_cfg).accept(s)),
        TlsConnector::from(client_cfg).connect(ServerName::try_from("httpbin.foo").unwrap(), c)
    )
    .0;
    assert!(result.is_err(), "an expired, remembered chain is refused");
    assert_eq!(
        diagnose::classify(&result.err().unwrap(), note, "foo").reason,
        Reason::Expired
    );
}

#[tokio::test]
async fn a_peer_from_a_retired_root_of_our_signer_is_named_as_such() {
    let ca = ca();
    // Signer foo rotated: same name (and so the same subject), a new key; the old root is gone.
    let new_foo = Signer::create(SignerName::with_default_domain("foo").unwrap(), DEFAULT_CA_VALIDITY).unwrap();
    let rotated =
        TrustBundle::from_signers([(new_foo.name(), new_foo.roots()), (ca.bar.name(), ca.bar.roots())]).unwrap();
    let server = TlsStore::new(server_settings(AllowList::default()));
    let (chain, key) = material(&new_foo, &id("foo", "httpbin"), IssueOptions::default());
    server
        .set_certificate(chain, key, Some(rotated.trust_for(new_foo.name()).unwrap()))
        .unwrap();
    // A client still holding a leaf from the retired root (it trusts both, so it accepts us).
    let both = TrustBundle::from_signers([(ca.foo.name(), ca.foo.roots()), (ca.foo.name(), new_foo.roots())]).unwrap();
    let client = TlsStore::new(client_settings(None));
    let (chain, key) = material(&ca.foo, &id("foo", "curl"), IssueOptions::default());
    client
        .set_certificate(chain, key, Some(both.trust_for(ca.foo.name()).unwrap()))
        .unwrap();
    let (s, _) = handshake(&server, &client, None).await;
    let s = s.unwrap_err();
    assert_eq!(s.reason, Reason::RetiredRoot, "{}", s.detail);
    assert!(s.detail.contains("a root retired by a rotation"), "{}", s.detail);
    assert!(!s.detail.contains("Signature"), "no library names: {}", s.detail);
    // Our own certificate from the retired root is refused with the same explanation.
    let (chain, key) = material(&ca.foo, &id("foo", "httpbin"), IssueOptions::default());
    let e = server.set_certificate(chain, key, None).unwrap_err();
    assert!(matches!(e, CredentialsError::RetiredRoot { .. }), "{e}");
}

#[test]
fn a_certificate_without_client_auth_is_refused_in_words() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "server-only CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .subject_alt_names
        .push(SanType::URI(id("foo", "httpbin").as_str().try_into().unwrap()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let signer = SignerName::with_default_domain("foo").unwrap();
    let trust = signet_certs::SignerTrust::from_roots(signer, vec![ca_cert.der().clone()]);
    let store = TlsStore::new(server_settings(AllowList::default()));
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let e = store
        .set_certificate(vec![leaf.der().clone()], der, Some(trust))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lacks the clientAuth extended key usage"), "{e}");
    assert!(e.contains("needs both") && !e.contains("Context"), "{e}");
}

fn resuming(settings: TlsSettings) -> TlsSettings {
    TlsSettings {
        resumption: true,
        ..settings
    }
}

/// The attack: a sidecar's own certificate moves to another signer (its namespace's signer
/// changed) while the bundle stays the same. A peer of the old signer that holds a ticket must
/// not resume, in either direction.
#[tokio::test]
async fn a_signer_switch_under_the_same_bundle_ends_every_session() {
    use rustls::HandshakeKind::Resumed;
    let ca = ca();
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        resuming(server_settings(AllowList::default())),
    )
    .unwrap();
    let client = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "curl"),
        resuming(client_settings(None)),
    )
    .unwrap();
    handshake_kind(&server, &client).await;
    assert_eq!(handshake_kind(&server, &client).await, Resumed, "a ticket is held");
    let before = server.identity().unwrap().trust_version.clone();

    // The server now belongs to signer bar; the bundle is unchanged.
    let (chain, key) = material(&ca.bar, &id("foo", "httpbin"), IssueOptions::default());
    server
        .set_certificate(chain, key, Some(ca.bundle.trust_for(ca.bar.name()).unwrap()))
        .unwrap();
    assert_ne!(server.identity().unwrap().trust_version, before);
    // No resumption: a full handshake, in which each side refuses the other's signer.
    let (s, c) = handshake(&server, &client, None).await;
    assert!(s.is_err(), "the foo client's ticket no longer opens the door");
    assert_eq!(c.unwrap_err().reason, Reason::UnknownSigner);

    // The other direction: the client moves to bar and must not offer its foo sessions.
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        resuming(server_settings(AllowList::default())),
    )
    .unwrap();
    let client = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "curl"),
        resuming(client_settings(None)),
    )
    .unwrap();
    handshake_kind(&server, &client).await;
    assert_eq!(handshake_kind(&server, &client).await, Resumed);
    let (chain, key) = material(&ca.bar, &id("foo", "curl"), IssueOptions::default());
    client
        .set_certificate(chain, key, Some(ca.bundle.trust_for(ca.bar.name()).unwrap()))
        .unwrap();
    let (s, c) = handshake(&server, &client, None).await;
    assert!(
        s.is_err() && c.is_err(),
        "a full handshake across signers fails: {s:?} {c:?}"
    );
}

/// A client whose ticket outlives the server's certificate (the server renewed since) finds out
/// on the re-check, drops its tickets, and the next handshake is a full one.
#[tokio::test]
async fn a_ticket_whose_server_certificate_expired_is_dropped() {
    use rustls::HandshakeKind::{Full, Resumed};
    let ca = ca();
    let server = TlsStore::new(resuming(server_settings(AllowList::default())));
    let short = IssueOptions {
        ttl: Duration::from_secs(2),
        backdate: Duration::ZERO,
    };
    let (chain, key) = material(&ca.foo, &id("foo", "httpbin"), short);
    server
        .set_certificate(chain, key, Some(ca.bundle.trust_for(ca.foo.name()).unwrap()))
        .unwrap();
    let client = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "curl"),
        resuming(client_settings(None)),
    )
    .unwrap();
    assert_eq!(handshake_kind(&server, &client).await, Full);
    // The server renews; its old certificate then expires. The client's ticket still resumes.
    let (chain, key) = material(&ca.foo, &id("foo", "httpbin"), IssueOptions::default());
    server.set_certificate(chain, key, None).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_cfg = server.current().unwrap().server(0).unwrap();
    let state = client.current().unwrap();
    let client_cfg = state.client(&None, ClientAlpn::None).unwrap();
    let (_, tls) = tokio::join!(TlsAcceptor::from(server_cfg).accept(s), async {
        TlsConnector::from(client_cfg)
            .connect(ServerName::try_from("httpbin.foo").unwrap(), c)
            .await
            .unwrap()
    });
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(Resumed));
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let e = state.recheck_outbound(&None, ClientAlpn::None, &chain).unwrap_err();
    assert_eq!(e.reason, Reason::Expired, "{e}");
    state.forget_sessions(&ServerName::try_from("httpbin.foo").unwrap());
    assert_eq!(
        handshake_kind(&server, &client).await,
        Full,
        "no ticket is offered any more"
    );
}

/// A client resuming after its certificate expired is refused by the re-check, not let in by the
/// ticket (resumption skips the verifier).
#[tokio::test]
async fn a_resumed_client_is_verified_again() {
    use rustls::HandshakeKind::Resumed;
    let ca = ca();
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        resuming(server_settings(AllowList::default())),
    )
    .unwrap();
    let client = TlsStore::new(resuming(client_settings(None)));
    let short = IssueOptions {
        ttl: Duration::from_secs(2),
        backdate: Duration::ZERO,
    };
    let (chain, key) = material(&ca.foo, &id("foo", "curl"), short);
    client
        .set_certificate(chain, key, Some(ca.bundle.trust_for(ca.foo.name()).unwrap()))
        .unwrap();
    let client_cfg = client.current().unwrap().client(&None, ClientAlpn::None).unwrap();
    handshake_kind(&server, &client).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (c, s) = tokio::io::duplex(64 * 1024);
    let state = server.current().unwrap();
    let (tls, client_side) = tokio::join!(TlsAcceptor::from(state.server(0).unwrap()).accept(s), async {
        TlsConnector::from(client_cfg)
            .connect(ServerName::try_from("httpbin.foo").unwrap(), c)
            .await
    });
    let tls = tls.unwrap_or_else(|e| panic!("server: {e}; client: {:?}", client_side.err()));
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(Resumed),
        "the ticket resumed the session"
    );
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let e = state.recheck_inbound(0, &chain).unwrap_err();
    assert_eq!(e.reason, Reason::Expired, "{e}");
    assert!(e.detail.starts_with("resumed session: "), "{e}");
}

/// The attack: a client certificate from the right signer, with a SPIFFE ID in a trust domain
/// that is not ours, while the bundle names no trust domains. Refused by default; accepted only
/// when that trust domain is configured as an alias.
#[tokio::test]
async fn a_peer_of_another_trust_domain_is_refused_unless_aliased() {
    let ca = ca();
    let foreign: SpiffeId = "spiffe://evil.example/ns/foo/sa/curl".parse().unwrap();
    // The attacker's sidecar accepts our trust domain, so only our side decides.
    let mut attacker_settings = client_settings(None);
    attacker_settings.trust_domain_aliases = vec!["cluster.local".into()];
    let attacker = store(&ca, &ca.foo, &ca.foo, &foreign, attacker_settings).unwrap();

    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    let (s, _) = handshake(&server, &attacker, None).await;
    let s = s.unwrap_err();
    assert_eq!(s.reason, Reason::ForeignTrustDomain, "{}", s.detail);
    assert!(
        s.detail.contains("evil.example") && s.detail.contains("only its own trust domain"),
        "{}",
        s.detail
    );

    let mut aliased = server_settings(AllowList::default());
    aliased.trust_domain_aliases = vec!["evil.example".into()];
    let server = store(&ca, &ca.foo, &ca.foo, &id("foo", "httpbin"), aliased).unwrap();
    let (s, c) = handshake(&server, &attacker, None).await;
    assert_eq!(s.unwrap(), Some(foreign), "an alias is explicit configuration");
    c.unwrap();

    // Outbound too: a server of the right signer in another trust domain is refused.
    let foreign_server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &"spiffe://evil.example/ns/foo/sa/httpbin".parse().unwrap(),
        {
            let mut s = server_settings(AllowList::default());
            s.trust_domain_aliases = vec!["cluster.local".into()];
            s
        },
    )
    .unwrap();
    let client = store(&ca, &ca.foo, &ca.foo, &id("foo", "curl"), client_settings(None)).unwrap();
    let (_, c) = handshake(&foreign_server, &client, None).await;
    assert_eq!(c.unwrap_err().reason, Reason::ForeignTrustDomain);
}

/// The attack: an unauthenticated client presents a self-signed certificate whose issuer name
/// and URI SAN carry a line break and a whole fake log line. The explanation escapes both and
/// labels them unverified.
#[tokio::test]
async fn a_forged_log_line_in_a_certificate_is_escaped() {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    let ca = ca();
    let server = store(
        &ca,
        &ca.foo,
        &ca.foo,
        &id("foo", "httpbin"),
        server_settings(AllowList::default()),
    )
    .unwrap();
    let forged = "x\n2026-11-30T00:00:00.000000Z  INFO inbound: accepted spiffe://cluster.local/ns/foo/sa/admin";
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, forged);
    params.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/foo/sa/x\nINFO forged".try_into().unwrap(),
    ));
    let cert = params.self_signed(&key).unwrap();
    // The attacker trusts our server, so the refusal is ours to explain.
    let verifier = PeerServerVerifier::new(
        Arc::new(Trust::new(ca.bundle.trust_for(ca.foo.name()).unwrap()).unwrap()),
        None,
        signet_certs::CryptoPolicy::default().signature_algorithms(),
        false,
    );
    let client_cfg = signet_certs::CryptoPolicy::default()
        .client_builder()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_cfg = server.current().unwrap().server(0).unwrap();
    let ((result, note), _) = tokio::join!(diagnose::capture(TlsAcceptor::from(server_cfg).accept(s)), async {
        let _ = TlsConnector::from(Arc::new(client_cfg))
            .connect(ServerName::try_from("httpbin.foo").unwrap(), c)
            .await;
    });
    let e = diagnose::classify(&result.err().unwrap(), note, "foo");
    assert_eq!(e.reason, Reason::UnknownSigner);
    let line = e.to_string();
    assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
    assert!(
        line.contains("x\\u{a}2026-11-30T00:00:00.000000Z") && line.contains("(unverified)"),
        "{line}"
    );
}

/// The attack: a holder of a valid certificate of our signer makes every chain unique by
/// appending a large junk certificate, and a refused peer tries the same. The cache holds one
/// entry for the valid leaf, none for the refused one, and stays within its byte bound when many
/// distinct (long) identities connect.
#[test]
fn junk_chains_do_not_grow_the_verified_chain_cache() {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let ca = ca();
    let trust = Arc::new(Trust::new(ca.bundle.trust_for(ca.foo.name()).unwrap()).unwrap());
    let provider = signet_certs::CryptoPolicy::default().provider();
    let only_curl = AllowList::new(vec![allow(id("foo", "curl").as_str())]);
    let verifier = PeerClientVerifier::new(trust.clone(), only_curl, &provider, true);
    let junk = |i: usize| {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("junk {i} {}", "x".repeat(3000)));
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone()
    };
    let (curl, _) = material(&ca.foo, &id("foo", "curl"), IssueOptions::default());
    let (sleep, _) = material(&ca.foo, &id("foo", "sleep"), IssueOptions::default());
    for i in 0..50 {
        let extra = [junk(i)];
        assert!(verifier.verify_client_cert(&curl[0], &extra, UnixTime::now()).is_ok());
        assert!(
            verifier.verify_client_cert(&sleep[0], &extra, UnixTime::now()).is_err(),
            "not on the allow-list"
        );
    }
    let (entries, bytes) = verifier.cache_footprint();
    assert_eq!(entries, 1, "one peer, one entry, whatever it sends along");
    assert!(bytes < 1024, "{bytes} bytes");

    // Many distinct identities with the longest SPIFFE IDs: the byte bound holds.
    let open = PeerClientVerifier::new(trust, AllowList::default(), &provider, true);
    let mut most = 0;
    for i in 0..700 {
        let long: SpiffeId = format!("spiffe://cluster.local/ns/foo/sa/{i}-{}", "a".repeat(1900))
            .parse()
            .unwrap();
        let (chain, _) = material(&ca.foo, &long, IssueOptions::default());
        assert!(open.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).is_ok());
        most = most.max(open.cache_footprint().1);
    }
    assert!(most <= 1 << 20, "the cache held {most} bytes");
}
