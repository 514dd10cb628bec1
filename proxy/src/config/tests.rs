use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn base() -> ConfigFile {
    serde_yaml_ng::from_str(
        r#"
signer: foo
identity: {certDir: w/httpbin-foo}
trustBundle: bundle.yaml
inbound:
- {listen: "127.0.0.1:15006", app: "127.0.0.1:8000", protocol: http}
outbound:
  http: "127.0.0.1:15001"
  tcp: [{listen: "127.0.0.1:15101", service: "httpbin.bar:8000"}]
services:
  "httpbin.bar:8000": {address: "127.0.0.1:15206", identity: "spiffe://cluster.local/ns/bar/sa/httpbin"}
admin: "127.0.0.1:15000"
timeouts: {handshake: 3s}
"#,
    )
    .unwrap()
}

fn yaml(text: &str) -> ConfigFile {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn resolves_a_full_file() {
    let c = base().resolve().unwrap();
    assert_eq!(
        c.signer.as_ref().unwrap().as_str(),
        "clusterissuers.cert-manager.io/foo"
    );
    let IdentitySource::Files(files) = &c.identity else {
        panic!("files mode")
    };
    assert_eq!(files.cert, PathBuf::from("w/httpbin-foo/tls.crt"));
    assert_eq!(files.ca, Some(PathBuf::from("w/httpbin-foo/ca.crt")));
    assert_eq!(c.inbound[0].protocol, Protocol::Http);
    assert_eq!(c.outbound_tcp[0].service, "httpbin.bar:8000");
    assert_eq!(c.timeouts.handshake, Duration::from_secs(3));
    assert_eq!(c.timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.xfcc, XfccMode::SanitizeSet);
    assert!(c.tls.resumption && c.tls.verify_cache);
    assert!(c.services.get("httpbin.bar:8000").is_some());
}

#[test]
fn flags_override_the_file() {
    let over = ConfigFile {
        signer: Some("bar".into()),
        signer_domain: Some("example.com".into()),
        admin: Some("127.0.0.1:16000".into()),
        ..Default::default()
    };
    let c = base().overlay(over).resolve().unwrap();
    assert_eq!(c.signer.unwrap().as_str(), "example.com/bar");
    assert_eq!(c.admin, Some("127.0.0.1:16000".parse().unwrap()));
    assert_eq!(c.inbound.len(), 1, "lists not given by flags are kept");
}

/// One model of the authority: a flag refines one field of the file's authority, and an
/// identity source given above replaces the other kind below.
#[test]
fn the_authority_is_laid_over_field_by_field() {
    let file = yaml(
        r#"
signer: foo
trustBundle: b.yaml
identity:
  spiffeId: spiffe://cluster.local/ns/foo/sa/a
  authority: {address: "10.0.0.1:15012", ca: ca.crt, tokenFile: t}
inbound: [{listen: "127.0.0.1:0", app: "127.0.0.1:9"}]
"#,
    );
    let flags = ConfigFile {
        identity: Some(IdentityFile {
            authority: Some(AuthorityFile {
                token_file: Some("other-token".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = file.clone().overlay(flags).resolve().unwrap();
    let IdentitySource::Provisioned(p) = c.identity else {
        panic!("provisioned")
    };
    assert_eq!(p.authority.address, "10.0.0.1:15012");
    assert_eq!(p.authority.ca, PathBuf::from("ca.crt"));
    assert_eq!(p.authority.token_file, Some(PathBuf::from("other-token")));
    assert_eq!(p.authority.server_name, signet_certs::AUTHORITY_SERVER_NAME);
    assert_eq!(p.renew_at, 0.5);

    // Certificate files given above replace the file's authority.
    let files = ConfigFile {
        identity: Some(IdentityFile {
            cert_dir: Some("w".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = file.overlay(files).resolve().unwrap_err();
    assert_eq!(e.at, Setting::SpiffeId, "{e}");
    assert!(e.to_string().contains("apply to provisioning"), "{e}");
}

#[test]
fn enums_and_durations_parse_once_from_yaml_and_text() {
    let c = yaml(
        r#"
signer: foo
trustBundle: b.yaml
identity: {certDir: w}
inbound: [{listen: "127.0.0.1:0", app: "127.0.0.1:9", protocol: tcp}]
xfcc: APPEND_FORWARD
tls: {minVersion: "1.2"}
watchInterval: 250ms
"#,
    )
    .resolve()
    .unwrap();
    assert_eq!(c.xfcc, "append-forward".parse().unwrap());
    assert_eq!(c.tls.policy.min_version, "1.2".parse().unwrap());
    assert_eq!(c.watch_interval, Duration::from_millis(250));
    assert_eq!(c.inbound[0].protocol, "tcp".parse().unwrap());
    for bad in [
        "xfcc: KEEP",
        "tls: {minVersion: '1.1'}",
        "watchInterval: soon",
        "inbound: [{listen: a, app: b, protocol: udp}]",
    ] {
        let e = serde_yaml_ng::from_str::<ConfigFile>(bad).unwrap_err().to_string();
        assert!(e.contains("use ") || e.contains("invalid duration"), "{bad}: {e}");
    }
    assert!(
        "udp"
            .parse::<Protocol>()
            .unwrap_err()
            .to_string()
            .contains("tcp, http or auto")
    );
}

#[test]
fn mistakes_are_named_by_their_yaml_path() {
    let mut f = base();
    f.signer = None;
    f.trust_bundle = None;
    let e = f.resolve().unwrap_err();
    assert_eq!(e.at, Setting::Signer);
    assert!(e.to_string().starts_with("signer: no signer given"), "{e}");
    // The CLI names flags through `describe`.
    let named = e.describe(&|s| match s {
        Setting::Signer => "--signer".into(),
        other => other.yaml(),
    });
    assert!(
        named.starts_with("--signer: ") && named.contains("give trustBundle"),
        "{named}"
    );

    let mut f = base();
    f.identity.as_mut().unwrap().authority = Some(AuthorityFile {
        address: Some("127.0.0.1:15012".into()),
        ..Default::default()
    });
    assert!(f.resolve().unwrap_err().to_string().contains("not both"));
    let mut f = base();
    f.inbound[0].listen = "localhost".into();
    assert!(f.resolve().unwrap_err().to_string().starts_with("inbound[0].listen: "));
    let mut f = base();
    f.outbound.as_mut().unwrap().tcp[0].service = "nope:1".into();
    let e = f.resolve().unwrap_err().to_string();
    assert!(
        e.contains("not in the service table") && e.contains("services[nope:1]"),
        "{e}"
    );
    let e = serde_yaml_ng::from_str::<ConfigFile>("signr: foo")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `signr`"), "{e}");
    let mut f = base();
    f.watch_interval = Some("10ms".parse().unwrap());
    assert!(
        f.resolve()
            .unwrap_err()
            .to_string()
            .starts_with("watchInterval: must be at least 50ms")
    );
    let mut f = base();
    f.identity = Some(IdentityFile {
        authority: Some(AuthorityFile {
            token_file: Some("t".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = f.resolve().unwrap_err();
    assert_eq!(e.at, Setting::TokenFile, "{e}");
}
