//! An outside judge of the TLS configuration: sslyze (PyPI, installed by ./test.sh) scans an
//! inbound listener with a client certificate of the sidecar's signer (without one, the
//! handshake never gets far enough to be scanned) and checks it against Mozilla's TLS
//! configurations: the default must be "modern" (TLS 1.3 only), and `--tls-min-version 1.2`
//! must be "intermediate" (TLS 1.2 with ECDHE and AEAD suites only). The 1.2 listener must
//! also fail "modern", so the scan is known to discriminate.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

fn sslyze() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/sslyze")
}

/// Runs sslyze against `port` for `profile`; returns whether it judged the listener compliant,
/// and the JSON report.
fn scan(mesh: &Mesh, client: &str, port: u16, profile: &str) -> (bool, serde_json::Value) {
    let report = mesh.path(&format!("sslyze-{port}-{profile}.json"));
    let out = Command::new(sslyze())
        .args([
            &format!("--mozilla_config={profile}"),
            "--cert",
            &format!("{client}/tls.crt"),
            "--key",
            &format!("{client}/tls.key"),
            "--sni",
            "httpbin.foo",
            "--certinfo_ca_file",
            &format!("{}/ca.crt", mesh.signer_dir("foo")),
            "--json_out",
            report.to_str().unwrap(),
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("sslyze must be installed (./test.sh installs it into target/venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        json["server_scan_results"][0]["scan_status"], "COMPLETED",
        "sslyze could not scan:\n{stdout}"
    );
    let verdict: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("ompliant") || l.contains("should be"))
        .map(str::trim)
        .collect();
    eprintln!("sslyze {profile} on {port}: {}", verdict.join(" | "));
    (out.status.success(), json)
}

/// The cipher suites a scan found accepted for `version` (e.g. `tls_1_2`).
fn accepted(report: &serde_json::Value, version: &str) -> Vec<String> {
    report["server_scan_results"][0]["scan_result"][format!("{version}_cipher_suites")]["result"]["accepted_cipher_suites"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["cipher_suite"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sslyze_finds_the_inbound_modern_by_default_and_intermediate_with_tls_1_2() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let server = mesh.httpbin_certs();
    let client = mesh.curl_certs();
    let modern = Sidecar::start(
        "sidecar (default)",
        &mesh.inbound_args(&server, "foo", app.addr, "http"),
    );
    let mut args = mesh.inbound_args(&server, "foo", app.addr, "http");
    args.extend(s(&["--tls-min-version", "1.2"]));
    let with_12 = Sidecar::start("sidecar (TLS 1.2)", &args);

    let (compliant, report) = scan(&mesh, &client, modern.inbound[0].port(), "modern");
    assert!(compliant, "the default inbound is Mozilla modern: {report}");
    assert!(!accepted(&report, "tls_1_3").is_empty());
    for old in ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2"] {
        assert!(accepted(&report, old).is_empty(), "{old} is refused by default");
    }

    let (compliant, report) = scan(&mesh, &client, with_12.inbound[0].port(), "intermediate");
    assert!(compliant, "--tls-min-version 1.2 is Mozilla intermediate: {report}");
    let suites = accepted(&report, "tls_1_2");
    assert!(!suites.is_empty());
    for suite in &suites {
        assert!(
            suite.starts_with("TLS_ECDHE_") && (suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305")),
            "TLS 1.2 offers ECDHE with AEAD only: {suite}"
        );
    }
    for old in ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"] {
        assert!(accepted(&report, old).is_empty(), "{old} is refused");
    }
    let (compliant, _) = scan(&mesh, &client, with_12.inbound[0].port(), "modern");
    assert!(
        !compliant,
        "a listener with TLS 1.2 is not modern: the scan discriminates"
    );
}
