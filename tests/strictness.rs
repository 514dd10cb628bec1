//! The strictness table against the real binary, with certificates made by the `openssl` CLI
//! (not by Signet's signer code, nor by rcgen as in the unit table): a sidecar of signer foo
//! whose roots include an expired one, a not-yet-valid one, one with pathlen 0 and one with a
//! name constraint, plus a revocation list (`--crl`). Each defective peer certificate is
//! presented by curl to the inbound, and by `openssl s_server` to the outbound; each must be
//! refused, counted under its own reason in `signet_tls_handshakes_total`, and nothing may reach
//! the app. A control certificate passes both ways.

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Runs `openssl ARGS` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const CA_CNF: &str = r#"
[ca]
default_ca = signet_test
[signet_test]
dir = .
database = index.txt
serial = serial
new_certs_dir = issued
default_md = sha256
default_crl_days = 30
policy = any
copy_extensions = copy
unique_subject = no
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
[any]
commonName = supplied
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[pathlen0]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[constrained]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
nameConstraints = critical, permitted;DNS:foo.svc.cluster.local
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"#;

/// A leaf's extensions: `san` and `eku` as openssl writes them (`eku` empty: none).
fn leaf_ext(san: &str, eku: &str, extra: &str) -> String {
    let mut ext = format!(
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nsubjectAltName = {san}\nauthorityKeyIdentifier = keyid\n"
    );
    if !eku.is_empty() {
        ext.push_str(&format!("extendedKeyUsage = {eku}\n"));
    }
    ext.push_str(extra);
    ext
}

struct Pki {
    dir: tempfile::TempDir,
}

const PEER: &str = "URI:spiffe://cluster.local/ns/foo/sa/peer";
const BOTH: &str = "serverAuth, clientAuth";

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) {
        openssl(self.dir.path(), args);
    }

    fn key(&self, name: &str) {
        self.run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]);
    }

    /// A self-signed root with extensions `section`, valid from `start` to `end`
    /// (YYYYMMDDHHMMSSZ) through `openssl ca -selfsign`, which takes explicit dates.
    fn root(&self, name: &str, section: &str, start: &str, end: &str) {
        self.key(name);
        self.run(&[
            "req",
            "-new",
            "-config",
            "ca.cnf",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.run(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            &format!("{name}.key"),
            "-in",
            &format!("{name}.csr"),
            "-extensions",
            section,
            "-startdate",
            start,
            "-enddate",
            end,
            "-notext",
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    /// A certificate for `name` signed by `issuer`, with the extensions in `ext`.
    fn issue(&self, name: &str, issuer: &str, ext: &str) {
        self.key(name);
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.run(&[
            "req",
            "-new",
            "-config",
            "ca.cnf",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}.crt"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-set_serial",
            &format!("0x{}", serial_of(name)),
            "-days",
            "365",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    /// `name.pem`: its certificate followed by `intermediates`' (what the peer sends).
    fn chain(&self, name: &str, intermediates: &[&str]) -> PathBuf {
        let mut pem = std::fs::read(self.path(&format!("{name}.crt"))).unwrap();
        for i in intermediates {
            pem.extend(std::fs::read(self.path(&format!("{i}.crt"))).unwrap());
        }
        let path = self.path(&format!("{name}.pem"));
        std::fs::write(&path, pem).unwrap();
        path
    }
}

/// A distinct serial per name (so the revocation list names exactly one certificate).
fn serial_of(name: &str) -> String {
    let mut h: u64 = 1469598103934665603;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(1099511628211);
    }
    format!("{:016x}", h & 0x7fff_ffff_ffff_ffff)
}

/// One row: the peer's certificate name, intermediates it sends, and the reason label Signet
/// must refuse it with (`None`: the control).
struct Row {
    name: &'static str,
    intermediates: Vec<&'static str>,
    reason: Option<&'static str>,
}

fn row(name: &'static str, intermediates: &[&'static str], reason: Option<&'static str>) -> Row {
    Row {
        name,
        intermediates: intermediates.to_vec(),
        reason,
    }
}

/// Builds the PKI; `server` peers get the other direction's EKU row as clientAuth only.
fn build() -> (Pki, Vec<Row>, Vec<Row>) {
    let pki = Pki {
        dir: tempfile::Builder::new().prefix("signet-openssl-").tempdir().unwrap(),
    };
    std::fs::write(pki.path("ca.cnf"), CA_CNF).unwrap();
    std::fs::write(pki.path("index.txt"), "").unwrap();
    std::fs::write(pki.path("serial"), "1000\n").unwrap();
    std::fs::create_dir(pki.path("issued")).unwrap();
    let (long_ago, far) = ("20200101000000Z", "20450101000000Z");
    pki.root("root", "root", long_ago, far);
    pki.root("expired-root", "root", "20100101000000Z", "20200101000000Z");
    pki.root("future-root", "root", "20900101000000Z", "20990101000000Z");
    pki.root("pathlen0-root", "pathlen0", long_ago, far);
    pki.root("constrained-root", "constrained", long_ago, far);
    let roots: Vec<u8> = [
        "root",
        "expired-root",
        "future-root",
        "pathlen0-root",
        "constrained-root",
    ]
    .iter()
    .flat_map(|r| std::fs::read(pki.path(&format!("{r}.crt"))).unwrap())
    .collect();
    std::fs::write(pki.path("roots.pem"), roots).unwrap();

    // The sidecars' own certificates.
    let own = |name: &str, id: &str| {
        pki.issue(name, "root", &leaf_ext(&format!("URI:{id}, DNS:httpbin.foo"), BOTH, ""));
    };
    own("server", &spiffe("foo", "httpbin"));
    own("client", &spiffe("foo", "curl"));

    let ca_ext = "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";
    pki.issue("control", "root", &leaf_ext(PEER, BOTH, ""));
    pki.issue("plain-ca", "root", ca_ext);
    pki.issue("via-intermediate", "plain-ca", &leaf_ext(PEER, BOTH, ""));
    pki.issue("expired-root-leaf", "expired-root", &leaf_ext(PEER, BOTH, ""));
    pki.issue("future-root-leaf", "future-root", &leaf_ext(PEER, BOTH, ""));
    pki.issue("no-eku", "root", &leaf_ext(PEER, "", ""));
    pki.issue("any-eku", "root", &leaf_ext(PEER, "anyExtendedKeyUsage", ""));
    pki.issue("client-only", "root", &leaf_ext(PEER, "clientAuth", ""));
    pki.issue("server-only", "root", &leaf_ext(PEER, "serverAuth", ""));
    pki.issue(
        "ca-leaf",
        "root",
        &format!("{ca_ext}subjectAltName = {PEER}\nextendedKeyUsage = {BOTH}\n"),
    );
    pki.issue("pathlen-intermediate", "pathlen0-root", ca_ext);
    pki.issue("beyond-pathlen", "pathlen-intermediate", &leaf_ext(PEER, BOTH, ""));
    pki.issue(
        "constraint-violation",
        "constrained-root",
        &leaf_ext(&format!("{PEER}, DNS:evil.example.com"), BOTH, ""),
    );
    pki.issue("revoked", "root", &leaf_ext(PEER, BOTH, ""));
    pki.issue(
        "critical-ext",
        "root",
        &leaf_ext(PEER, BOTH, "1.3.6.1.4.1.99999.1 = critical, ASN1:NULL\n"),
    );
    pki.issue(
        "two-uris",
        "root",
        &leaf_ext(&format!("{PEER}, URI:spiffe://cluster.local/ns/foo/sa/other"), BOTH, ""),
    );
    pki.issue(
        "not-spiffe",
        "root",
        &leaf_ext("URI:https://peer.example.com/", BOTH, ""),
    );
    pki.issue(
        "foreign-domain",
        "root",
        &leaf_ext("URI:spiffe://evil.example/ns/foo/sa/peer", BOTH, ""),
    );
    // The revocation list of the root, naming one certificate.
    pki.run(&[
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-cert",
        "root.crt",
        "-keyfile",
        "root.key",
        "-revoke",
        "revoked.crt",
    ]);
    pki.run(&[
        "ca", "-batch", "-config", "ca.cnf", "-cert", "root.crt", "-keyfile", "root.key", "-gencrl", "-out", "crl.pem",
    ]);

    let common = |other_direction: &'static str| {
        vec![
            row("control", &[], None),
            row("via-intermediate", &["plain-ca"], None),
            row("expired-root-leaf", &[], Some("root_expired")),
            row("future-root-leaf", &[], Some("root_not_yet_valid")),
            row("no-eku", &[], Some("bad_usage")),
            row("any-eku", &[], Some("bad_usage")),
            row(other_direction, &[], Some("bad_usage")),
            row("ca-leaf", &[], Some("ca_as_leaf")),
            row("beyond-pathlen", &["pathlen-intermediate"], Some("path_too_long")),
            row("constraint-violation", &[], Some("name_constraint")),
            row("revoked", &[], Some("revoked")),
            row("critical-ext", &[], Some("critical_extension")),
            row("two-uris", &[], Some("bad_spiffe_id")),
            row("not-spiffe", &[], Some("bad_spiffe_id")),
            row("foreign-domain", &[], Some("foreign_trust_domain")),
        ]
    };
    // A client with only serverAuth (inbound), a server with only clientAuth (outbound).
    (pki, common("server-only"), common("client-only"))
}

/// Flags for a files-mode sidecar of foo with all the roots above and the revocation list.
fn sidecar_args(pki: &Pki, own: &str) -> Vec<String> {
    let p = |n: &str| pki.path(n).display().to_string();
    s(&[
        "--cert",
        &p(&format!("{own}.crt")),
        "--key",
        &p(&format!("{own}.key")),
        "--ca",
        &p("roots.pem"),
        "--crl",
        &p("crl.pem"),
        "--signer",
        "foo",
    ])
}

fn handshakes(side: &Sidecar, direction: &str, result: &str) -> u64 {
    side.metric(&format!(
        "signet_tls_handshakes_total{{direction=\"{direction}\",result=\"{result}\"}}"
    ))
}

#[test]
fn the_inbound_refuses_each_openssl_made_defect_with_its_own_reason() {
    let (pki, inbound_rows, _) = build();
    let mesh_dir = tempfile::tempdir().unwrap();
    let app = Httpbin::start(mesh_dir.path(), "httpbin");
    let mut args = sidecar_args(&pki, "server");
    args.extend(s(&[
        "--inbound",
        &format!("127.0.0.1:0={}", app.addr),
        "--protocol",
        "http",
    ]));
    let side = Sidecar::start("sidecar httpbin.foo", &args);
    assert!(
        side.proc.logged_within("expired-root", Duration::from_secs(2))
            && side.proc.logged_within("future-root", Duration::from_secs(1)),
        "out-of-date roots are reported at load time:\n{}",
        side.proc.log()
    );
    let port = side.inbound[0].port();
    let mut passed = 0;
    for r in &inbound_rows {
        let chain = pki.chain(r.name, &r.intermediates).display().to_string();
        let key = pki.path(&format!("{}.key", r.name)).display().to_string();
        let before = r.reason.map(|reason| handshakes(&side, "inbound", reason));
        let resolve = format!("httpbin.foo:{port}:127.0.0.1");
        let url = format!("https://httpbin.foo:{port}/get");
        let ca = pki.path("root.crt").display().to_string();
        let out = curl(
            &[
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                "--cert",
                &chain,
                "--key",
                &key,
                &url,
            ],
            &[],
        );
        match (r.reason, before) {
            (Some(reason), Some(before)) => {
                assert_ne!(out.status, 200, "{}: must be refused: {out:?}", r.name);
                assert_eq!(
                    handshakes(&side, "inbound", reason),
                    before + 1,
                    "{}: counted as {reason}:\n{}",
                    r.name,
                    side.proc.log()
                );
            }
            _ => {
                assert_eq!(
                    (out.code, out.status),
                    (0, 200),
                    "{}: the control passes: {out:?}",
                    r.name
                );
                passed += 1;
            }
        }
    }
    // The readiness probe, and the controls: nothing else reached httpbin.
    assert_eq!(app.wait_requests(1 + passed), 1 + passed, "{}", app.access_log());
}

/// `openssl s_server -www` presenting `name`'s chain on a free port.
fn s_server(pki: &Pki, r: &Row) -> (support::Proc, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new("openssl");
    cmd.current_dir(pki.dir.path()).args([
        "s_server",
        "-www",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-cert",
        &format!("{}.crt", r.name),
        "-key",
        &format!("{}.key", r.name),
    ]);
    if !r.intermediates.is_empty() {
        cmd.args([
            "-cert_chain",
            &pki.chain(r.name, &r.intermediates).display().to_string(),
        ]);
    }
    let proc = support::Proc::spawn(&format!("s_server {}", r.name), cmd);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, port)
}

#[test]
fn the_outbound_refuses_each_openssl_made_defect_with_its_own_reason() {
    let (pki, _, outbound_rows) = build();
    let servers: Vec<_> = outbound_rows.iter().map(|r| s_server(&pki, r)).collect();
    let mut args = sidecar_args(&pki, "client");
    for (i, (_, port)) in servers.iter().enumerate() {
        args.extend(s(&[
            "--tcp",
            &format!("127.0.0.1:0=row{i}.foo:9000"),
            "--service",
            &format!("row{i}.foo:9000=127.0.0.1:{port}"),
        ]));
    }
    let side = Sidecar::start("sidecar curl.foo", &args);
    for (i, r) in outbound_rows.iter().enumerate() {
        let before = handshakes(&side, "outbound", r.reason.unwrap_or("ok"));
        let out = curl(&[&format!("http://{}/", side.tcp[i])], &[]);
        match r.reason {
            Some(reason) => {
                assert_ne!(out.status, 200, "{}: must be refused: {out:?}", r.name);
                assert!(out.body.is_empty(), "{}: no byte of the server reaches the app", r.name);
                assert_eq!(
                    handshakes(&side, "outbound", reason),
                    before + 1,
                    "{}: counted as {reason}:\n{}",
                    r.name,
                    side.proc.log()
                );
            }
            None => {
                assert_eq!(
                    (out.code, out.status),
                    (0, 200),
                    "{}: the control passes: {out:?}",
                    r.name
                );
                assert!(out.body.contains("s_server"), "{}: {out:?}", r.name);
                assert_eq!(handshakes(&side, "outbound", "ok"), before + 1);
            }
        }
    }
    drop(servers);
}
