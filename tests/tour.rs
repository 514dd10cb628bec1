//! README's walk-throughs run as written: examples/tour.sh (signers, certificates, sidecars,
//! curl) and examples/provisioning.sh (authority, CSR provisioning, a refusal, a root
//! rotation), with the built `signet`, the real httpbin under gunicorn, and curl.

use std::net::TcpListener;
use std::process::Command;

/// A port base whose ports (BASE-7000 and BASE..BASE+200) are free right now. `salt` keeps the
/// two scripts of this binary, which run in parallel, on different ranges.
fn free_base(salt: u16) -> u16 {
    let start = 30_000 + (std::process::id() % 60) as u16 * 300 + salt * 150;
    (0..50)
        .map(|i| (start + i * 300 - 30_000) % 20_000 + 30_000)
        .find(|b| {
            [b - 7000, *b, b + 1, b + 6, b + 7, b + 12, b + 14, b + 100, b + 200]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .expect("no free port base")
}

fn run(script: &str, salt: u16) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let gunicorn = format!("{root}/target/venv/bin/gunicorn");
    assert!(
        std::path::Path::new(&gunicorn).exists(),
        "run ./test.sh (installs httpbin + gunicorn)"
    );
    let out = Command::new(format!("{root}/examples/{script}"))
        .env("SIGNET", env!("CARGO_BIN_EXE_signet"))
        .env("GUNICORN", &gunicorn)
        .env("PORT_BASE", free_base(salt).to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn the_readme_tour_runs_as_written() {
    let stdout = run("tour.sh", 0);
    assert!(stdout.contains("URI=spiffe://cluster.local/ns/foo/sa/curl"), "{stdout}");
    assert!(stdout.contains("foo client: HTTP 200"), "{stdout}");
    assert!(
        stdout.contains("unknown_signer: peer spiffe://cluster.local/ns/bar/sa/curl presents a certificate from signer clusterissuers.cert-manager.io/bar"),
        "{stdout}"
    );
    assert!(stdout.contains("tour done"), "{stdout}");
}

#[test]
fn the_readme_provisioning_walk_through_runs_as_written() {
    let stdout = run("provisioning.sh", 1);
    assert!(
        stdout.contains("spiffe://cluster.local/ns/foo/sa/httpbin from the authority at 127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("curl.foo → httpbin.foo: HTTP 200"), "{stdout}");
    assert!(
        stdout.contains("SignerNotAllowedForNamespace: namespace foo may not use signer"),
        "{stdout}"
    );
    assert!(stdout.contains("Denied SignerNotAllowedForNamespace"), "{stdout}");
    assert!(stdout.contains("step 1: roots trusted for foo: 2 / 2"), "{stdout}");
    assert!(stdout.contains("step 3: roots trusted for foo: 1 / 1"), "{stdout}");
    assert!(stdout.contains("after the rotation: HTTP 200"), "{stdout}");
    // Step 2 names the new root for both sidecars.
    let step2 = stdout.lines().find(|l| l.contains("step 2:")).unwrap_or_default();
    let fps: Vec<&str> = step2.split_whitespace().filter(|w| w.len() == 16).collect();
    assert!(fps.len() == 2 && fps[0] == fps[1], "{step2}");
    let before = stdout
        .lines()
        .find(|l| l.contains("before: both sidecars anchor to"))
        .unwrap_or_default();
    assert!(!before.contains(fps[0]), "the anchor changed: {before} / {step2}");
}
