//! README's walk-throughs run as written: examples/tour.sh (signers, certificates, sidecars,
//! curl) and examples/provisioning.sh (authority, CSR provisioning, a refusal, a root
//! rotation), with the built `signet`, the real httpbin under gunicorn, and curl.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Sidecar, s};

/// A port base whose ports (BASE-7000 and BASE..BASE+200) are free right now. `salt` (0..3)
/// keeps the scripts of this binary, which run in parallel, in different ranges.
fn free_base(salt: u16) -> u16 {
    let start = 30_000 + (std::process::id() % 20) as u16 * 1000 + salt * 300;
    (0..20)
        .map(|i| (start + i * 1000 - 30_000) % 20_000 + 30_000)
        .find(|b| {
            [b - 7000, *b, b + 1, b + 6, b + 7, b + 12, b + 14, b + 100, b + 200]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .expect("no free port base")
}

fn run(script: &str, salt: u16, env: &[(&str, &Path)]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let gunicorn = format!("{root}/target/venv/bin/gunicorn");
    assert!(
        std::path::Path::new(&gunicorn).exists(),
        "run ./test.sh (installs httpbin + gunicorn)"
    );
    let mut cmd = Command::new(format!("{root}/examples/{script}"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
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
    // The README's layout: the tour's files in signet-tour/, next to examples/.
    let top = tempfile::tempdir().unwrap();
    let stdout = run("tour.sh", 0, &[("TOUR_DIR", &top.path().join("signet-tour"))]);
    assert!(stdout.contains("URI=spiffe://cluster.local/ns/foo/sa/curl"), "{stdout}");
    assert!(stdout.contains("foo client: HTTP 200"), "{stdout}");
    // curl's exit code for a refused client certificate depends on timing (55 or 56).
    assert!(
        stdout.contains("bar client: refused (curl exit 55)") || stdout.contains("bar client: refused (curl exit 56)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unknown_signer: peer spiffe://cluster.local/ns/bar/sa/curl presents a certificate from signer clusterissuers.cert-manager.io/bar"),
        "{stdout}"
    );
    assert!(stdout.contains("tour done"), "{stdout}");
}

/// The example configs find the tour's files as their comments say, and start sidecars that
/// hold the tour's identities (listeners moved to free ports by flags).
#[test]
fn the_example_configs_work_with_the_tours_files() {
    let top = tempfile::tempdir().unwrap();
    run("tour.sh", 2, &[("TOUR_DIR", &top.path().join("signet-tour"))]);
    let examples = top.path().join("examples");
    std::fs::create_dir(&examples).unwrap();
    for (name, flags, sa) in [
        (
            "httpbin-foo.yaml",
            s(&["--inbound", "127.0.0.1:0=127.0.0.1:9"]),
            "httpbin",
        ),
        (
            "curl-foo.yaml",
            s(&["--outbound", "127.0.0.1:0", "--tcp", "127.0.0.1:0=httpbin.foo:8000"]),
            "curl",
        ),
    ] {
        let config = examples.join(name);
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name),
            &config,
        )
        .unwrap();
        let mut args = s(&["--config", config.to_str().unwrap()]);
        args.extend(flags);
        let side = Sidecar::start(name, &args);
        side.wait_ready(Duration::from_secs(10));
        assert_eq!(side.certs()["spiffe_id"], support::spiffe("foo", sa), "{name}");
    }
}

#[test]
fn the_readme_provisioning_walk_through_runs_as_written() {
    let stdout = run("provisioning.sh", 1, &[]);
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
