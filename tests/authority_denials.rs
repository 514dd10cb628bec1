//! The authority refuses what Istio's RA refuses, each with a distinct reason the caller
//! sees, and records every request as a CertificateSigningRequest with its condition.

mod support;

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use signet_authority::GrpcClient;
use signet_certs::{AuthorityClient, AuthorityError, CsrOrder, Refusal, RefusalKind, WorkloadKey};
use signet_proxy::config::AuthorityEndpoint;
use support::*;

const POLICY: &str = "
defaultSigner: istio-system
approvableSigners: [istio-system, foo, bar]
namespaces:
  foo: {signer: foo}
  bar: {signer: bar}
  legacy: {signer: legacy}
maxWorkloadCertTtl: 48h
dnsSans:
  spiffe://cluster.local/ns/foo/sa/web: [web.foo]
";

struct Setup {
    mesh: Mesh,
    authority: Authority,
}

fn setup() -> Setup {
    let mesh = Mesh::new(&["istio-system", "foo", "bar", "legacy"]);
    std::fs::write(mesh.path("tokens.yaml"), "tokens: []\n").unwrap();
    for (ns, sa) in [("foo", "httpbin"), ("foo", "web"), ("legacy", "app")] {
        mesh.token(ns, sa);
    }
    let authority = Authority::start(&mesh, POLICY, "127.0.0.1:0");
    Setup { mesh, authority }
}

impl Setup {
    fn client(&self, token: Option<&str>) -> GrpcClient {
        GrpcClient::new(AuthorityEndpoint {
            address: self.authority.addr.to_string(),
            server_name: signet_certs::AUTHORITY_SERVER_NAME.into(),
            ca: format!("{}/ca.crt", self.mesh.signer_dir("istio-system")).into(),
            token_file: token.map(|t| t.into()),
        })
    }

    fn token_file(&self, ns: &str, sa: &str) -> String {
        self.mesh.path(&format!("tokens/{ns}-{sa}")).display().to_string()
    }

    /// Sends `csr` as ns/sa; returns the refusal's reason, or None if signed.
    fn send(&self, who: (&str, &str), csr: String, signer: Option<&str>, ttl: Option<Duration>) -> Option<Refusal> {
        let token = self.token_file(who.0, who.1);
        let order = CsrOrder {
            csr_pem: csr,
            signer: signer.map(str::to_string),
            ttl,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match rt.block_on(self.client(Some(&token)).sign(&order)) {
            Ok(_) => None,
            Err(e) => Some(
                e.refusal()
                    .unwrap_or_else(|| panic!("a refusal with a reason, not {e}")),
            ),
        }
    }

    /// The condition the service recorded for its newest request.
    fn last_condition(&self) -> (String, String) {
        let reqs = self.authority.requests();
        let last = reqs["items"].as_array().unwrap().last().unwrap().clone();
        let c = &last["status"]["conditions"][0];
        (c["type"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
    }
}

fn csr_for(id: &str) -> String {
    WorkloadKey::generate()
        .unwrap()
        .request(&id.parse().unwrap(), &[])
        .unwrap()
        .pem
}

/// A CSR built by hand, for the shapes a well-behaved workload never sends.
fn raw_csr(uris: &[&str], dns: &[&str], ca: bool) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for u in uris {
        params.subject_alt_names.push(SanType::URI((*u).try_into().unwrap()));
    }
    for d in dns {
        params
            .subject_alt_names
            .push(SanType::DnsName((*d).try_into().unwrap()));
    }
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn assert_denied(got: Option<Refusal>, reason: Refusal) {
    let r = got.unwrap_or_else(|| panic!("expected a refusal with reason {reason}, the CSR was signed"));
    assert_eq!(r, reason);
    assert_eq!(r.kind(), RefusalKind::Denied, "{r} is a policy decision");
}

#[test]
fn a_well_formed_request_is_signed_by_the_namespaces_signer() {
    let t = setup();
    assert!(
        t.send(("foo", "httpbin"), csr_for(&spiffe("foo", "httpbin")), None, None)
            .is_none()
    );
    let reqs = t.authority.requests();
    let r = &reqs["items"][0];
    assert_eq!(r["spec"]["signerName"], "clusterissuers.cert-manager.io/foo");
    assert_eq!(r["spec"]["username"], "system:serviceaccount:foo:httpbin");
    assert_eq!(r["spec"]["expirationSeconds"], 86_400, "the policy's default lifetime");
    assert_eq!(
        r["spec"]["usages"],
        serde_json::json!(["digital signature", "key encipherment", "server auth", "client auth"])
    );
    assert_eq!(r["status"]["conditions"][0]["type"], "Approved");
    assert!(
        r["status"]["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // The mesh default applies to namespaces without a signer of their own; DNS SANs the policy allows pass.
    let web = raw_csr(&[&spiffe("foo", "web")], &["web.foo"], false);
    assert!(
        t.send(("foo", "web"), web, Some("foo"), Some(Duration::from_secs(3600)))
            .is_none()
    );
}

#[test]
fn unknown_token() {
    let t = setup();
    let bogus = t.mesh.path("bogus-token");
    std::fs::write(&bogus, "0123456789abcdef0123456789abcdef").unwrap();
    let order = CsrOrder {
        csr_pem: csr_for(&spiffe("foo", "httpbin")),
        signer: None,
        ttl: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(t.client(Some(bogus.to_str().unwrap())).sign(&order))
        .unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::UnknownToken), "{e}");
    assert_eq!(Refusal::UnknownToken.kind(), RefusalKind::Unauthenticated);
    let e = rt.block_on(t.client(None).sign(&order)).unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::NoToken), "{e}");
    assert!(
        matches!(&e, AuthorityError::Refused { message, .. } if message.contains("authorization: Bearer")),
        "the message is the authority's own, without the label: {e}"
    );
    assert!(
        t.authority
            .proc
            .logged_within("Unauthenticated: UnknownToken", Duration::from_secs(2))
    );
}

#[test]
fn a_san_of_another_identity() {
    let t = setup();
    let got = t.send(("foo", "httpbin"), csr_for(&spiffe("bar", "httpbin")), None, None);
    assert_denied(got, Refusal::IdentityMismatch);
    assert_eq!(t.last_condition(), ("Denied".into(), "IdentityMismatch".into()));
}

#[test]
fn two_uri_sans() {
    let t = setup();
    let csr = raw_csr(&[&spiffe("foo", "httpbin"), &spiffe("foo", "admin")], &[], false);
    assert_denied(t.send(("foo", "httpbin"), csr, None, None), Refusal::MultipleUriSans);
    assert_eq!(t.last_condition(), ("Denied".into(), "MultipleURISANs".into()));
}

#[test]
fn a_dns_san() {
    let t = setup();
    let csr = raw_csr(&[&spiffe("foo", "httpbin")], &["httpbin.foo"], false);
    assert_denied(t.send(("foo", "httpbin"), csr, None, None), Refusal::DnsSanNotAllowed);
    assert_eq!(t.last_condition(), ("Denied".into(), "DNSSANNotAllowed".into()));
}

#[test]
fn ca_true() {
    let t = setup();
    let csr = raw_csr(&[&spiffe("foo", "httpbin")], &[], true);
    assert_denied(t.send(("foo", "httpbin"), csr, None, None), Refusal::CaRequested);
    assert_eq!(t.last_condition(), ("Denied".into(), "CARequested".into()));
}

#[test]
fn a_lifetime_above_the_maximum() {
    let t = setup();
    let ttl = Some(Duration::from_secs(49 * 3600));
    let got = t.send(("foo", "httpbin"), csr_for(&spiffe("foo", "httpbin")), None, ttl);
    assert_denied(got, Refusal::TtlTooLong);
    assert_eq!(t.last_condition(), ("Denied".into(), "TTLTooLong".into()));
}

#[test]
fn a_signer_the_namespace_may_not_use() {
    let t = setup();
    let got = t.send(
        ("foo", "httpbin"),
        csr_for(&spiffe("foo", "httpbin")),
        Some("bar"),
        None,
    );
    assert_denied(got, Refusal::SignerNotAllowedForNamespace);
    let reqs = t.authority.requests();
    let last = reqs["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["spec"]["signerName"], "clusterissuers.cert-manager.io/bar");
}

#[test]
fn a_signer_the_service_may_not_approve() {
    let t = setup();
    // Namespace legacy uses signer legacy, which the service holds but may not approve.
    let got = t.send(("legacy", "app"), csr_for(&spiffe("legacy", "app")), None, None);
    assert_denied(got, Refusal::SignerNotApprovable);
    assert_eq!(t.last_condition(), ("Denied".into(), "SignerNotApprovable".into()));
    let metrics = curl(&[&format!("http://{}/metrics", t.authority.admin)], &[]).body;
    assert!(
        metrics.contains("signet_authority_requests_total{outcome=\"SignerNotApprovable\"} 1"),
        "{metrics}"
    );
}
