//! The strictness table: certificates made with rcgen (not with Signet's own signer code), each
//! with one defect a strict mesh refuses, presented by a peer in both directions. Each must be
//! refused with its own reason; a control certificate from the same root must pass, so no row
//! passes because the harness is broken. (`tests/strictness.rs` runs the same table with
//! `openssl`-made certificates against the release binary.)

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DnType,
    ExtendedKeyUsagePurpose as Eku, GeneralSubtree, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    NameConstraints, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use signet_certs::{CryptoPolicy, SignerName, SignerTrust, SpiffeId};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::diagnose::{self, Reason};
use super::*;
use crate::credentials::Credentials;

/// A CA made with rcgen: its certificate, and what signs under it.
struct Authority {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(constraints);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn authority(params: CertificateParams, parent: Option<&Authority>) -> Authority {
    let key = KeyPair::generate().unwrap();
    let cert = match parent {
        Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    Authority {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A workload leaf: `uris` as URI SANs, both usages unless `ekus` says otherwise.
fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "workload");
    p.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2045, 1, 1);
    p
}

struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn issue(params: CertificateParams, path: &[&Authority]) -> Material {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &path[0].issuer).unwrap();
    let mut chain = vec![cert.der().clone()];
    // Intermediates, leaf's issuer first; the root is not sent.
    chain.extend(path[..path.len() - 1].iter().map(|a| a.der.clone()));
    Material {
        chain,
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

const PEER: &str = "spiffe://cluster.local/ns/foo/sa/peer";

/// The PKI of signer foo, with the odd roots the table needs next to its good one.
struct Pki {
    good: Authority,
    expired: Authority,
    future: Authority,
    no_intermediates: Authority,
    dns_constrained: Authority,
    trust: SignerTrust,
    revoked_serial: u64,
}

fn pki() -> Pki {
    let good = authority(ca_params("foo root", BasicConstraints::Unconstrained), None);
    let mut p = ca_params("foo expired root", BasicConstraints::Unconstrained);
    p.not_before = date_time_ymd(2010, 1, 1);
    p.not_after = date_time_ymd(2020, 1, 1);
    let expired = authority(p, None);
    let mut p = ca_params("foo future root", BasicConstraints::Unconstrained);
    p.not_before = date_time_ymd(2090, 1, 1);
    p.not_after = date_time_ymd(2099, 1, 1);
    let future = authority(p, None);
    let no_intermediates = authority(ca_params("foo pathlen-0 root", BasicConstraints::Constrained(0)), None);
    let mut p = ca_params("foo constrained root", BasicConstraints::Unconstrained);
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("foo.svc.cluster.local".into())],
        excluded_subtrees: Vec::new(),
    });
    let dns_constrained = authority(p, None);

    let revoked_serial = 0x5167_4e74;
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2044, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(revoked_serial),
            revocation_time: date_time_ymd(2024, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&good.issuer)
    .unwrap();
    let roots = [&good, &expired, &future, &no_intermediates, &dns_constrained]
        .iter()
        .map(|a| a.der.clone())
        .collect();
    let trust = SignerTrust::from_roots(SignerName::with_default_domain("foo").unwrap(), roots)
        .with_crls(vec![crl.der().clone()]);
    Pki {
        good,
        expired,
        future,
        no_intermediates,
        dns_constrained,
        trust,
        revoked_serial,
    }
}

/// The table: a name, the peer's material for the direction (`server`: the peer is the
/// server), and the reason it must be refused with (`None`: the control, accepted).
fn table(pki: &Pki, server: bool) -> Vec<(&'static str, Material, Option<Reason>)> {
    let mut rows = vec![("control", issue(leaf_params(&[PEER]), &[&pki.good]), None)];
    rows.push((
        "expired root",
        issue(leaf_params(&[PEER]), &[&pki.expired]),
        Some(Reason::RootExpired),
    ));
    rows.push((
        "not-yet-valid root",
        issue(leaf_params(&[PEER]), &[&pki.future]),
        Some(Reason::RootNotYetValid),
    ));
    let mut p = leaf_params(&[PEER]);
    p.extended_key_usages = Vec::new();
    rows.push(("no EKU", issue(p, &[&pki.good]), Some(Reason::BadUsage)));
    let mut p = leaf_params(&[PEER]);
    p.extended_key_usages = vec![Eku::Any];
    rows.push(("anyExtendedKeyUsage", issue(p, &[&pki.good]), Some(Reason::BadUsage)));
    let mut p = leaf_params(&[PEER]);
    // The other direction's usage only: a client certificate used as a server, and back.
    p.extended_key_usages = vec![if server { Eku::ClientAuth } else { Eku::ServerAuth }];
    rows.push(("other direction's EKU", issue(p, &[&pki.good]), Some(Reason::BadUsage)));
    let mut p = leaf_params(&[PEER]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    rows.push(("CA certificate as leaf", issue(p, &[&pki.good]), Some(Reason::CaAsLeaf)));
    // A root allowing no intermediate, and one with pathLenConstraint 0 under the good root.
    let intermediate = authority(
        ca_params("foo intermediate", BasicConstraints::Unconstrained),
        Some(&pki.no_intermediates),
    );
    rows.push((
        "path length exceeded (root)",
        issue(leaf_params(&[PEER]), &[&intermediate, &pki.no_intermediates]),
        Some(Reason::PathTooLong),
    ));
    let last = authority(
        ca_params("foo last CA", BasicConstraints::Constrained(0)),
        Some(&pki.good),
    );
    let beyond = authority(ca_params("foo CA beyond", BasicConstraints::Unconstrained), Some(&last));
    rows.push((
        "path length exceeded (intermediate)",
        issue(leaf_params(&[PEER]), &[&beyond, &last, &pki.good]),
        Some(Reason::PathTooLong),
    ));
    // A chain through a well-formed intermediate without extended key usage is fine.
    let plain = authority(
        ca_params("foo plain CA", BasicConstraints::Unconstrained),
        Some(&pki.good),
    );
    rows.push((
        "control through an intermediate",
        issue(leaf_params(&[PEER]), &[&plain, &pki.good]),
        None,
    ));
    let mut p = leaf_params(&[PEER]);
    p.subject_alt_names
        .push(SanType::DnsName("evil.example.com".try_into().unwrap()));
    rows.push((
        "name-constraint violation",
        issue(p, &[&pki.dns_constrained]),
        Some(Reason::NameConstraint),
    ));
    let mut p = leaf_params(&[PEER]);
    p.serial_number = Some(SerialNumber::from(pki.revoked_serial));
    rows.push(("revoked leaf", issue(p, &[&pki.good]), Some(Reason::Revoked)));
    let mut p = leaf_params(&[PEER]);
    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
    ext.set_criticality(true);
    p.custom_extensions = vec![ext];
    rows.push((
        "unknown critical extension",
        issue(p, &[&pki.good]),
        Some(Reason::CriticalExtension),
    ));
    rows.push((
        "two URI SANs",
        issue(
            leaf_params(&[PEER, "spiffe://cluster.local/ns/foo/sa/other"]),
            &[&pki.good],
        ),
        Some(Reason::BadSpiffeId),
    ));
    rows.push((
        "non-SPIFFE URI",
        issue(leaf_params(&["https://peer.example.com/"]), &[&pki.good]),
        Some(Reason::BadSpiffeId),
    ));
    rows.push((
        "foreign trust domain",
        issue(leaf_params(&["spiffe://evil.example/ns/foo/sa/peer"]), &[&pki.good]),
        Some(Reason::ForeignTrustDomain),
    ));
    rows
}

/// Our sidecar: signer foo's trust above, a good certificate from the good root.
fn sidecar(pki: &Pki, settings: TlsSettings, who: &str) -> TlsStore {
    let store = TlsStore::new(settings);
    let own = issue(leaf_params(&[who]), &[&pki.good]);
    store
        .set_certificate(own.chain, own.key, Some(pki.trust.clone()))
        .unwrap();
    store
}

/// The attacker accepts whatever we present: every refusal in the table is ours.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        CryptoPolicy::default().signature_algorithms().supported_schemes()
    }
}

/// Presents `peer` as it is (rustls's own loaders would refuse some rows before we see them).
fn presenting(peer: Material) -> Arc<rustls::sign::SingleCertAndKey> {
    let provider = CryptoPolicy::default().provider();
    let key = provider.key_provider.load_private_key(peer.key).unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(peer.chain, key).into())
}

/// Our inbound's verdict on a client presenting `peer`.
async fn inbound_verdict(server: &TlsStore, peer: Material) -> Result<(), diagnose::HandshakeError> {
    let client = CryptoPolicy::default()
        .client_builder()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(presenting(peer));
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_cfg = server.current().unwrap().server(0).unwrap();
    let ((result, note), _) = tokio::join!(diagnose::capture(TlsAcceptor::from(server_cfg).accept(s)), async {
        let _ = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("httpbin.foo").unwrap(), c)
            .await;
    });
    result.map(|_| ()).map_err(|e| diagnose::classify(&e, note, "foo"))
}

/// Our outbound's verdict on a server presenting `peer`.
async fn outbound_verdict(client: &TlsStore, peer: Material) -> Result<(), diagnose::HandshakeError> {
    let server = CryptoPolicy::default()
        .server_builder()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(presenting(peer));
    let (c, s) = tokio::io::duplex(64 * 1024);
    let client_cfg = client.current().unwrap().client(&None, ClientAlpn::None).unwrap();
    let (_, (result, note)) = tokio::join!(
        async {
            let _ = TlsAcceptor::from(Arc::new(server)).accept(s).await;
        },
        diagnose::capture(TlsConnector::from(client_cfg).connect(ServerName::try_from("httpbin.foo").unwrap(), c))
    );
    result.map(|_| ()).map_err(|e| diagnose::classify(&e, note, "foo"))
}

fn check(direction: &str, name: &str, verdict: Result<(), diagnose::HandshakeError>, want: Option<Reason>) {
    match (verdict, want) {
        (Ok(()), None) => {}
        (Err(e), Some(reason)) => {
            assert_eq!(e.reason, reason, "{direction}, {name}: refused for another reason: {e}");
            assert!(!e.detail.is_empty(), "{direction}, {name}: no explanation");
        }
        (Ok(()), Some(reason)) => panic!("{direction}, {name}: accepted; it must be refused ({})", reason.label()),
        (Err(e), None) => panic!("{direction}, {name}: the control was refused: {e}"),
    }
}

#[tokio::test]
async fn the_inbound_refuses_each_defect_with_its_own_reason() {
    let pki = pki();
    let server = sidecar(
        &pki,
        TlsSettings {
            inbound: vec![InboundTls {
                alpn: Vec::new(),
                allow: AllowList::default(),
            }],
            ..Default::default()
        },
        "spiffe://cluster.local/ns/foo/sa/httpbin",
    );
    for (name, peer, want) in table(&pki, false) {
        check("inbound", name, inbound_verdict(&server, peer).await, want);
    }
}

#[tokio::test]
async fn the_outbound_refuses_each_defect_with_its_own_reason() {
    let pki = pki();
    let client = sidecar(
        &pki,
        TlsSettings {
            outbound: vec![(None, ClientAlpn::None)],
            ..Default::default()
        },
        "spiffe://cluster.local/ns/foo/sa/curl",
    );
    for (name, peer, want) in table(&pki, true) {
        check("outbound", name, outbound_verdict(&client, peer).await, want);
    }
}

/// A root that expired is refused when it is the only one, and reported next to a current one.
#[test]
fn an_expired_root_is_no_trust_anchor_at_load_time() {
    let pki = pki();
    let only_expired = SignerTrust::from_roots(pki.trust.signer.clone(), vec![pki.expired.der.clone()]);
    let e = Trust::new(only_expired).unwrap_err().to_string();
    assert!(
        e.contains("no root of signer") && e.contains("expired at 2020-01-01"),
        "{e}"
    );
    // Our own certificate from the expired root is refused too.
    let store = TlsStore::new(TlsSettings::default());
    let own = issue(leaf_params(&["spiffe://cluster.local/ns/foo/sa/a"]), &[&pki.expired]);
    let e = store
        .set_certificate(own.chain, own.key, Some(pki.trust.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid now") && e.contains("foo expired root"), "{e}");
    // And a revoked one.
    let mut p = leaf_params(&["spiffe://cluster.local/ns/foo/sa/a"]);
    p.serial_number = Some(SerialNumber::from(pki.revoked_serial));
    let own = issue(p, &[&pki.good]);
    let e = store
        .set_certificate(own.chain, own.key, Some(pki.trust.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("revocation list"), "{e}");
    let _: SpiffeId = PEER.parse().unwrap();
}
