//! The CLI as a user drives it: signers, certificates, bundles, config files and env, the
//! flags-only sidecar from the README, admin endpoints, graceful shutdown, help, and the demo.

mod support;

use std::time::Duration;

use signet_certs::{SignerName, TrustBundle};
use support::*;

#[cfg(unix)]
fn mode(path: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn signers_certificates_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = signet_ok(&["signer", "new", "foo", "--dir", d]);
    assert!(
        out.contains("created signer clusterissuers.cert-manager.io/foo"),
        "{out}"
    );
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(dir.path().join("foo").join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    assert_eq!(mode(&format!("{d}/foo/tls.key")), 0o600);
    // An existing signer key is never overwritten by accident.
    let again = signet(&["signer", "new", "foo", "--dir", d]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    signet_ok(&["signer", "new", "bar", "--dir", d]);

    let id = spiffe("foo", "httpbin");
    let out = signet_ok(&[
        "cert",
        "issue",
        "--signer-dir",
        &format!("{d}/foo"),
        "--id",
        &id,
        "--dns",
        "httpbin.foo",
        "--ttl",
        "2h",
        "--out",
        &format!("{d}/w"),
    ]);
    assert!(
        out.contains(&format!("issued {id} by signer clusterissuers.cert-manager.io/foo")),
        "{out}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&format!("{d}/w/tls.key")), 0o600);
    let key = std::fs::read_to_string(format!("{d}/w/tls.key")).unwrap();
    assert!(!out.contains(key.lines().nth(1).unwrap()), "the key is never printed");

    let yaml = signet_ok(&["bundle", &format!("{d}/foo"), &format!("{d}/bar")]);
    let bundle = TrustBundle::from_yaml(&yaml, "", "stdout").unwrap();
    let foo = SignerName::with_default_domain("foo").unwrap();
    assert_eq!(bundle.signers().len(), 2);
    assert_eq!(bundle.roots_for(&foo).len(), 1);
    std::fs::write(format!("{d}/bundle.yaml"), &yaml).unwrap();

    let shown = signet_ok(&[
        "cert",
        "show",
        &format!("{d}/w"),
        "--bundle",
        &format!("{d}/bundle.yaml"),
    ]);
    assert!(shown.contains(&format!("uri:       {id}")), "{shown}");
    assert!(shown.contains("dns:       httpbin.foo"), "{shown}");
    assert!(
        shown.contains("signer:      clusterissuers.cert-manager.io/foo"),
        "{shown}"
    );

    // One rule for SPIFFE IDs everywhere: the Kubernetes workload form, checked when parsed.
    for (id, why) in [
        ("spiffe://x/ns//a", "empty path segment"),
        ("spiffe://cluster.local/httpbin", "/ns/<namespace>/sa/<service-account>"),
    ] {
        let bad = signet(&[
            "cert",
            "issue",
            "--signer-dir",
            &format!("{d}/foo"),
            "--id",
            id,
            "--out",
            &format!("{d}/x"),
        ]);
        assert_ne!(bad.code, 0);
        assert_eq!(bad.stderr.lines().count(), 1, "one line: {}", bad.stderr);
        assert!(
            bad.stderr.contains("--id <SPIFFE_ID>")
                && bad.stderr.contains("invalid SPIFFE ID")
                && bad.stderr.contains(why),
            "{}",
            bad.stderr
        );
    }

    // A certificate that is expired the moment it is made is issued (tests need them), with a warning.
    let expired = signet(&[
        "cert",
        "issue",
        "--signer-dir",
        &format!("{d}/foo"),
        "--id",
        &id,
        "--ttl",
        "1h",
        "--backdate",
        "2h",
        "--out",
        &format!("{d}/old"),
    ]);
    assert_eq!(expired.code, 0, "{}", expired.stderr);
    assert!(
        expired.stderr.contains("warning: the certificate is already expired"),
        "{}",
        expired.stderr
    );
    let fresh = signet(&[
        "cert",
        "issue",
        "--signer-dir",
        &format!("{d}/foo"),
        "--id",
        &id,
        "--out",
        &format!("{d}/new"),
    ]);
    assert!(!fresh.stderr.contains("warning"), "{}", fresh.stderr);

    // Flags that take a signer directory say what they expect; `bundle` checks like the authority.
    let wrong = signet(&[
        "cert",
        "issue",
        "--signer-dir",
        &format!("{d}/w"),
        "--id",
        &id,
        "--out",
        &format!("{d}/y"),
    ]);
    assert!(
        wrong.stderr.contains("--signer-dir")
            && wrong.stderr.contains("not a signer directory")
            && wrong.stderr.contains("signet signer new"),
        "{}",
        wrong.stderr
    );
    let not_a_ca = signet(&["bundle", &format!("{d}/foo"), &format!("{d}/w")]);
    assert_ne!(not_a_ca.code, 0);
    assert!(
        not_a_ca.stderr.contains("not a signer directory") && not_a_ca.stderr.contains("not a CA"),
        "{}",
        not_a_ca.stderr
    );
}

#[test]
fn every_command_has_useful_help() {
    for (cmd, needle) in [
        (vec!["--help"], "demo"),
        (vec!["signer", "new", "--help"], "--dir"),
        (vec!["cert", "issue", "--help"], "--id"),
        (vec!["cert", "show", "--help"], "--bundle"),
        (vec!["bundle", "--help"], "caCertificates"),
        (vec!["proxy", "--help"], "ISTIO_META_CERT_SIGNER"),
        (vec!["demo", "--help"], "--keep-running"),
        (vec!["httpbin", "--help"], "--listen"),
    ] {
        let out = signet(&cmd);
        assert_eq!(out.code, 0, "{cmd:?}");
        assert!(
            out.stdout.contains(needle),
            "{cmd:?} help lacks {needle}:\n{}",
            out.stdout
        );
    }
}

/// Every option of every command says what it does, defaults are shown, and the global
/// --log-level comes after the command's own options.
#[test]
fn every_option_is_described_and_log_level_comes_last() {
    let commands: &[&[&str]] = &[
        &[],
        &["demo"],
        &["signer", "new"],
        &["cert", "issue"],
        &["cert", "show"],
        &["bundle"],
        &["authority", "serve"],
        &["authority", "token"],
        &["proxy"],
        &["httpbin"],
        &["bench", "handshake"],
        &["bench", "server"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = signet(&args).stdout;
        let options = &help[help.find("Options:").unwrap_or_else(|| panic!("{cmd:?}: {help}"))..];
        let lines: Vec<&str> = options.lines().skip(1).collect();
        let mut names = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if !trimmed.starts_with('-') || indent > 6 {
                continue;
            }
            let name = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or(trimmed);
            names.push(name.to_string());
            let described_here = trimmed.contains("  ");
            let described_below = lines.get(i + 1).is_some_and(|next| {
                let t = next.trim_start();
                next.len() - t.len() > indent + 2 && !t.is_empty()
            });
            assert!(
                described_here || described_below,
                "{cmd:?}: {name} has no description:\n{help}"
            );
        }
        let own: Vec<&String> = names
            .iter()
            .filter(|n| !["--help", "--version", "-h"].contains(&n.as_str()))
            .collect();
        assert_eq!(
            own.last().map(|n| n.as_str()),
            Some("--log-level"),
            "{cmd:?}: {names:?}"
        );
    }
    // Help wraps lines; compare with whitespace collapsed.
    let flat = |text: String| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let proxy = flat(signet(&["proxy", "--help"]).stdout);
    for default in [
        "[default: 10s]",
        "[default: tcp]",
        "[default: 1.3]",
        "[default: SANITIZE_SET]",
        "[default: 0.5]",
    ] {
        assert!(proxy.contains(default), "proxy --help lacks {default}");
    }
    let issue = flat(signet(&["cert", "issue", "--help"]).stdout);
    assert!(
        issue.contains("[default: 24h]") && issue.contains("signet signer new"),
        "{issue}"
    );
}

/// The flags-only sidecar of the README (ports 0 so tests can run side by side).
#[test]
fn a_sidecar_from_flags_alone_serves_admin_endpoints_and_stops_on_sigterm() {
    let mesh = Mesh::new(&["foo", "bar"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let certs = mesh.issue("foo", "httpbin-foo", &spiffe("foo", "httpbin"), &[]);
    let mut side = Sidecar::start(
        "sidecar",
        &s(&[
            "--cert-dir",
            &certs,
            "--bundle",
            &mesh.bundle(),
            "--signer",
            "foo",
            "--inbound",
            &format!("127.0.0.1:0={}", app.addr),
            "--protocol",
            "http",
            "--outbound",
            "127.0.0.1:0",
            "--service",
            &format!("httpbin.bar:8000=127.0.0.1:9,{}", spiffe("bar", "httpbin")),
        ]),
    );
    assert!(side.outbound.is_some() && side.inbound.len() == 1);
    let ready = side.admin_get("/ready");
    assert_eq!((ready.status, ready.body.trim()), (200, "ready"));
    let certs_json: serde_json::Value = serde_json::from_str(&side.admin_get("/certs").body).unwrap();
    assert_eq!(certs_json["spiffe_id"], spiffe("foo", "httpbin"));
    assert_eq!(certs_json["signer"], "clusterissuers.cert-manager.io/foo");
    let chain = &certs_json["certificates"][0]["cert_chain"][0];
    assert_eq!(chain["subject_alt_names"][0]["uri"], spiffe("foo", "httpbin"));
    assert_eq!(
        chain["days_until_expiration"], "0",
        "24 h certificates have 0 whole days left"
    );
    let metrics = side.admin_get("/metrics").body;
    assert!(metrics.contains("signet_ready 1"), "{metrics}");
    assert!(
        metrics.contains("signet_cert_expiry_timestamp_seconds{signer=\"clusterissuers.cert-manager.io/foo\""),
        "{metrics}"
    );
    // An unknown host through the outbound proxy is a clear 502, not a hang.
    let r = curl_via(side.outbound.unwrap(), "http://nope.baz:8000/");
    assert_eq!(r.status, 502);
    assert!(r.body.contains("not in this sidecar's service table"), "{}", r.body);

    let status = side.proc.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(side.proc.log().contains("shutting down"), "{}", side.proc.log());
}

#[test]
fn config_file_env_and_the_seed_istio_yaml() {
    let mesh = Mesh::new(&["istio-system", "foo", "bar"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    // The reference scenario's istio.yaml, verbatim, as the trust bundle.
    let root = |s: &str| -> String {
        std::fs::read_to_string(format!("{}/ca.crt", mesh.signer_dir(s)))
            .unwrap()
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect()
    };
    let istio = format!(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  values:\n    pilot:\n      env:\n        EXTERNAL_CA: ISTIOD_RA_KUBERNETES_API\n  meshConfig:\n    defaultConfig:\n      proxyMetadata:\n        ISTIO_META_CERT_SIGNER: istio-system\n    caCertificates:\n    - pem: |\n{}      certSigners:\n      - clusterissuers.cert-manager.io/istio-system\n    - pem: |\n{}      certSigners:\n      - clusterissuers.cert-manager.io/foo\n    - pem: |\n{}      certSigners:\n      - clusterissuers.cert-manager.io/bar\n",
        root("istio-system"),
        root("foo"),
        root("bar")
    );
    std::fs::write(mesh.path("istio.yaml"), istio).unwrap();
    mesh.issue("foo", "httpbin-foo", &spiffe("foo", "httpbin"), &[]);
    // Relative paths are taken from the config file's directory; the signer comes from the env.
    let config = mesh.path("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  certDir: workloads/httpbin-foo\ntrustBundle: istio.yaml\ninbound:\n- listen: 127.0.0.1:0\n  app: {}\n  protocol: http\n",
            app.addr
        ),
    )
    .unwrap();
    let side = Sidecar::start_with_env(
        "sidecar",
        &s(&["--config", config.to_str().unwrap()]),
        &[("ISTIO_META_CERT_SIGNER", "foo")],
    );
    let certs: serde_json::Value = serde_json::from_str(&side.admin_get("/certs").body).unwrap();
    assert_eq!(certs["signer"], "clusterissuers.cert-manager.io/foo");
    // Flags override the file and the env.
    let out = signet_cmd()
        .args(["proxy", "--config", config.to_str().unwrap(), "--signer", "bar"])
        .env("ISTIO_META_CERT_SIGNER", "foo")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not clusterissuers.cert-manager.io/bar"),
        "{err}"
    );
    // CERT_SIGNER_DOMAIN expands a bare signer name.
    let out = signet_cmd()
        .args(["proxy", "--config", config.to_str().unwrap(), "--signer", "foo"])
        .env("CERT_SIGNER_DOMAIN", "example.com")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no roots for signer example.com/foo"), "{err}");
}

#[test]
fn the_demo_exits_zero_and_prints_both_results() {
    let out = signet(&["demo"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("<h1>Herman Melville - Moby-Dick</h1>"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: CERTIFICATE_VERIFY_FAILED"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("httpbin.foo: 200 OK"), "{}", out.stdout);
    assert!(
        out.stdout.contains("httpbin.bar: 503 Service Unavailable"),
        "{}",
        out.stdout
    );
}

#[test]
fn the_example_configs_are_valid() {
    for name in ["httpbin-foo.yaml", "curl-foo.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let file = signet_proxy::ConfigFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let config = file.resolve().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.signer.unwrap().as_str(), "clusterissuers.cert-manager.io/foo");
    }
}

/// An operator cannot mint a token whose namespace or service account splices another path
/// into the SPIFFE ID (`ns/bar/sa/httpbin/sa/x`): both must be Kubernetes names.
#[test]
fn tokens_are_minted_only_for_kubernetes_names() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let tokens = tokens.to_str().unwrap();
    for (ns, sa) in [("bar/sa/httpbin", "x"), ("bar", "httpbin/sa/x"), ("Bar", "x")] {
        let out = signet(&[
            "authority",
            "token",
            "--tokens",
            tokens,
            "--namespace",
            ns,
            "--service-account",
            sa,
        ]);
        assert_ne!(out.code, 0, "{ns}/{sa}: {}", out.stdout);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains("Kubernetes"), "{}", out.stderr);
    }
    assert!(!std::path::Path::new(tokens).exists(), "nothing was written");
    let ok = signet(&[
        "authority",
        "token",
        "--tokens",
        tokens,
        "--namespace",
        "bar",
        "--service-account",
        "httpbin",
    ]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}

/// An admin port bound beyond loopback is said out loud at start (it shows certificates and
/// identities to whoever can connect); one on loopback is not.
#[test]
fn an_admin_port_beyond_loopback_is_reported() {
    let mesh = Mesh::new(&["foo"]);
    let certs = mesh.issue("foo", "httpbin-foo", &spiffe("foo", "httpbin"), &[]);
    let start = |admin: &str| {
        let ready = ready_path("admin");
        let mut cmd = signet_cmd();
        cmd.args(["proxy", "--cert-dir", &certs, "--signer", "foo", "--ca"])
            .arg(format!("{}/ca.crt", mesh.signer_dir("foo")))
            .args(["--inbound", "127.0.0.1:0=127.0.0.1:9", "--admin", admin, "--ready-file"])
            .arg(&ready);
        let mut proc = Proc::spawn("sidecar", cmd);
        proc.wait_ready_file(&ready, Duration::from_secs(20));
        proc
    };
    let open = start("0.0.0.0:0");
    assert!(
        open.logged_within("is reachable beyond this host", Duration::from_secs(2)),
        "{}",
        open.log()
    );
    let local = start("127.0.0.1:0");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!local.log().contains("reachable beyond"), "{}", local.log());
}
