//! README's 5-minute tour (examples/tour.sh) runs as written, with the built `signet`, the real
//! httpbin under gunicorn, and curl.

use std::net::TcpListener;
use std::process::Command;

/// A port base whose ports (BASE-7000, BASE, +1, +6, +100) are free right now.
fn free_base() -> u16 {
    let start = 30_000 + (std::process::id() % 200) as u16 * 100;
    (0..50)
        .map(|i| start.wrapping_add(i * 137) % 20_000 + 30_000)
        .find(|b| {
            [b - 7000, *b, b + 1, b + 6, b + 100]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .expect("no free port base")
}

#[test]
fn the_readme_tour_runs_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let gunicorn = format!("{root}/target/venv/bin/gunicorn");
    assert!(
        std::path::Path::new(&gunicorn).exists(),
        "run ./test.sh (installs httpbin + gunicorn)"
    );
    let out = Command::new(format!("{root}/examples/tour.sh"))
        .env("SIGNET", env!("CARGO_BIN_EXE_signet"))
        .env("GUNICORN", &gunicorn)
        .env("PORT_BASE", free_base().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tour failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("URI=spiffe://cluster.local/ns/foo/sa/curl"), "{stdout}");
    assert!(stdout.contains("foo client: HTTP 200"), "{stdout}");
    assert!(
        stdout.contains("unknown_signer: peer spiffe://cluster.local/ns/bar/sa/curl presents a certificate from signer clusterissuers.cert-manager.io/bar"),
        "{stdout}"
    );
    assert!(stdout.contains("tour done"), "{stdout}");
}
