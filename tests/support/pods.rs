//! Pods for the capture tests: network namespaces on a bridge (`signet::pods::PodNet`), with
//! `signet iptables` in them and sidecars that run as the proxy's group, as an init container
//! and a sidecar container would. Needs root; CI runs as root. With SIGNET_SKIP_ROOT_TESTS=1 the
//! tests say why and return.

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use signet::pods::PodNet;

use super::*;

/// The group the sidecars run as: `signet iptables` exempts its traffic from capture.
pub const PROXY_GID: &str = "1337";

/// Whether pods can be made here; fails the test (rather than passing silently) unless
/// SIGNET_SKIP_ROOT_TESTS is set.
pub fn root_or_skip() -> bool {
    if let Err(why) = signet::pods::can_create() {
        if std::env::var_os("SIGNET_SKIP_ROOT_TESTS").is_some() {
            eprintln!("skipped: {why} (SIGNET_SKIP_ROOT_TESTS is set)");
            return false;
        }
        panic!("{why}; run the tests as root (CI does), or set SIGNET_SKIP_ROOT_TESTS=1 to skip them");
    }
    assert!(
        Command::new("iptables-restore").arg("--version").output().is_ok(),
        "iptables is not installed (apt-get install iptables; .ci/run does)"
    );
    true
}

/// Namespaces of one test: `sg<pid><tag>-<pod>`.
fn prefix(tag: &str) -> String {
    format!("sg{}{tag}", std::process::id() % 100_000)
}

pub struct Pods {
    pub net: PodNet,
    pub mesh: Mesh,
}

impl Pods {
    /// `pods` on one bridge, `hosts` (name → pod) in every pod's hosts file, and a mesh of
    /// `signers`; `None` where pods cannot be made and the test is to be skipped.
    pub fn new(tag: &str, pods: &[&str], hosts: &[(&str, &str)], signers: &[&str]) -> Option<Pods> {
        if !root_or_skip() {
            return None;
        }
        let net = PodNet::create(&prefix(tag), pods, hosts).unwrap();
        Some(Pods {
            net,
            mesh: Mesh::new(signers),
        })
    }

    pub fn ip(&self, pod: &str) -> std::net::Ipv4Addr {
        self.net.pod(pod).unwrap_or_else(|| panic!("no pod {pod}")).ip
    }

    pub fn ip6(&self, pod: &str) -> Option<std::net::Ipv6Addr> {
        self.net.pod(pod).unwrap_or_else(|| panic!("no pod {pod}")).ip6
    }

    /// `program` inside `pod`, as group `gid` when given (the proxy's group is not captured: a
    /// connection from outside the mesh), with no proxy settings.
    pub fn command(&self, pod: &str, gid: Option<&str>, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match gid {
            Some(g) => {
                let mut c = self.net.command(pod, "setpriv");
                c.args(["--regid", g, "--clear-groups", "--"]).arg(program);
                c
            }
            None => self.net.command(pod, program.as_ref().to_str().unwrap()),
        };
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.env_remove("ISTIO_META_CERT_SIGNER").env_remove("RUST_LOG");
        cmd
    }

    /// `signet iptables` in the pod: what an init container does.
    pub fn capture(&self, pod: &str) {
        let out = self
            .command(pod, None, signet_cmd().get_program())
            .args(["iptables", "--proxy-gid", PROXY_GID])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "signet iptables in {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The sidecar of `pod` for ns/sa (a certificate of signer `ns`), as the proxy's group,
    /// capturing both ways, admin on 127.0.0.1:15000; `args` adds services and the rest.
    pub fn sidecar(&self, pod: &str, ns: &str, sa: &str, args: &[String]) -> Proc {
        let certs = self.mesh.issue(ns, &format!("{pod}-certs"), &spiffe(ns, sa), &[]);
        let ready = ready_path(pod);
        let mut cmd = self.command(pod, Some(PROXY_GID), signet_cmd().get_program());
        cmd.args([
            "proxy",
            "--cert-dir",
            &certs,
            "--bundle",
            &self.mesh.bundle(),
            "--signer",
            ns,
            // Dual-stack: IPv4 connections arrive as ::ffff:a.b.c.d, IPv6 ones as they are.
            "--capture-outbound",
            "[::]:15001",
            "--capture-inbound",
            "[::]:15006",
            "--admin",
            "127.0.0.1:15000",
            "--ready-file",
        ])
        .arg(&ready)
        .args(args);
        let mut proc = Proc::spawn(&format!("sidecar {pod}"), cmd);
        proc.wait_ready_file(&ready, Duration::from_secs(20));
        proc
    }

    /// The real curl inside `pod` (as `gid` when given).
    pub fn curl(&self, pod: &str, gid: Option<&str>, args: &[&str]) -> Curl {
        let out = self
            .command(pod, gid, "curl")
            .args(["-sS", "--max-time", "15", "-w", "\n@@status:%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = match stdout.rsplit_once("\n@@status:") {
            Some((b, s)) => (b.to_string(), s.trim().parse().unwrap_or(0)),
            None => (stdout, 0),
        };
        Curl {
            code: out.status.code().unwrap_or(-1),
            status,
            body,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// One sample of the metrics of the sidecar in `pod`.
    pub fn metric(&self, pod: &str, sample: &str) -> u64 {
        let body = self.curl(pod, None, &["http://127.0.0.1:15000/metrics"]).body;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
    }
}
