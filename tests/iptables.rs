//! `signet iptables` driven as a user would: the `--dry-run` scripts pinned, the one-line errors,
//! and, as root with iptables, the rules installed into a network namespace of the test's own,
//! installed again (the same rules), changed, removed (the namespace exactly as before), and a
//! real connection redirected each way.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{PROXY_VARS, Proc, ready_path, signet, signet_cmd, signet_ok};

/// `signet iptables --dry-run`: Istio's REDIRECT-mode layout with Signet's defaults.
const DEFAULT_DRY_RUN: &str = r#"# IPv4: iptables-restore --noflush
*nat
:SIGNET_INBOUND - [0:0]
:SIGNET_IN_REDIRECT - [0:0]
:SIGNET_OUTPUT - [0:0]
:SIGNET_REDIRECT - [0:0]
# inbound: TCP arriving from outside the namespace is checked by SIGNET_INBOUND
-A PREROUTING -p tcp -j SIGNET_INBOUND
# not captured: --exclude-inbound-ports
-A SIGNET_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15012 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15014 -j RETURN
# every other port (--inbound-ports *) goes to the sidecar's inbound
-A SIGNET_INBOUND -p tcp -j SIGNET_IN_REDIRECT
# the sidecar's inbound listener (--inbound-port)
-A SIGNET_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
# outbound: TCP opened in the namespace is checked by SIGNET_OUTPUT
-A OUTPUT -p tcp -j SIGNET_OUTPUT
# the sidecar calling the pod's own address (an app reaching itself through its service) goes through the inbound like a peer; never loopback, where the inbound reaches the app
-A SIGNET_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND
-A SIGNET_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --gid-owner 1337 -j SIGNET_INBOUND
# the sidecar's own connections are never captured: this is what makes a redirect loop impossible
-A SIGNET_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SIGNET_OUTPUT -m owner --gid-owner 1337 -j RETURN
# the app's connections over lo (to localhost or its own address) are not captured
-A SIGNET_OUTPUT -o lo -j RETURN
# loopback is never captured (a guard: traffic over lo has returned above)
-A SIGNET_OUTPUT -d 127.0.0.0/8 -j RETURN
# everything else (--include-outbound-cidrs *) goes to the sidecar's outbound
-A SIGNET_OUTPUT -j SIGNET_REDIRECT
# the sidecar's outbound listener (--outbound-port)
-A SIGNET_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
# IPv6: ip6tables-restore --noflush (--ipv6 auto: where the kernel has IPv6 and ip6tables-restore is installed)
*nat
:SIGNET_INBOUND - [0:0]
:SIGNET_IN_REDIRECT - [0:0]
:SIGNET_OUTPUT - [0:0]
:SIGNET_REDIRECT - [0:0]
# inbound: TCP arriving from outside the namespace is checked by SIGNET_INBOUND
-A PREROUTING -p tcp -j SIGNET_INBOUND
# not captured: --exclude-inbound-ports
-A SIGNET_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15012 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15014 -j RETURN
# every other port (--inbound-ports *) goes to the sidecar's inbound
-A SIGNET_INBOUND -p tcp -j SIGNET_IN_REDIRECT
# the sidecar's inbound listener (--inbound-port)
-A SIGNET_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
# outbound: TCP opened in the namespace is checked by SIGNET_OUTPUT
-A OUTPUT -p tcp -j SIGNET_OUTPUT
# the sidecar calling the pod's own address (an app reaching itself through its service) goes through the inbound like a peer; never loopback, where the inbound reaches the app
-A SIGNET_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND
-A SIGNET_OUTPUT ! -d ::1/128 -o lo -m owner --gid-owner 1337 -j SIGNET_INBOUND
# the sidecar's own connections are never captured: this is what makes a redirect loop impossible
-A SIGNET_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SIGNET_OUTPUT -m owner --gid-owner 1337 -j RETURN
# the app's connections over lo (to localhost or its own address) are not captured
-A SIGNET_OUTPUT -o lo -j RETURN
# loopback is never captured (a guard: traffic over lo has returned above)
-A SIGNET_OUTPUT -d ::1/128 -j RETURN
# everything else (--include-outbound-cidrs *) goes to the sidecar's outbound
-A SIGNET_OUTPUT -j SIGNET_REDIRECT
# the sidecar's outbound listener (--outbound-port)
-A SIGNET_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"#;

/// Exclusions of every kind, two uids and no gid, other listener ports, IPv6 required.
const EXCLUSIONS_ARGS: &[&str] = &[
    "--exclude-inbound-ports",
    "15000,15020,15090",
    "--exclude-outbound-ports",
    "22, 5432",
    "--exclude-outbound-cidrs",
    "10.96.0.0/12,169.254.169.254,fd00:10:96::/112",
    "--proxy-uid",
    "1337,1338",
    "--proxy-gid",
    "",
    "--inbound-port",
    "16006",
    "--outbound-port",
    "16001",
    "--ipv6",
    "on",
];

const EXCLUSIONS_DRY_RUN: &str = r#"# IPv4: iptables-restore --noflush
*nat
:SIGNET_INBOUND - [0:0]
:SIGNET_IN_REDIRECT - [0:0]
:SIGNET_OUTPUT - [0:0]
:SIGNET_REDIRECT - [0:0]
# inbound: TCP arriving from outside the namespace is checked by SIGNET_INBOUND
-A PREROUTING -p tcp -j SIGNET_INBOUND
# not captured: --exclude-inbound-ports
-A SIGNET_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
# every other port (--inbound-ports *) goes to the sidecar's inbound
-A SIGNET_INBOUND -p tcp -j SIGNET_IN_REDIRECT
# the sidecar's inbound listener (--inbound-port)
-A SIGNET_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006
# outbound: TCP opened in the namespace is checked by SIGNET_OUTPUT
-A OUTPUT -p tcp -j SIGNET_OUTPUT
# the sidecar calling the pod's own address (an app reaching itself through its service) goes through the inbound like a peer; never loopback, where the inbound reaches the app
-A SIGNET_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND
-A SIGNET_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1338 -j SIGNET_INBOUND
# the sidecar's own connections are never captured: this is what makes a redirect loop impossible
-A SIGNET_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SIGNET_OUTPUT -m owner --uid-owner 1338 -j RETURN
# the app's connections over lo (to localhost or its own address) are not captured
-A SIGNET_OUTPUT -o lo -j RETURN
# loopback is never captured (a guard: traffic over lo has returned above)
-A SIGNET_OUTPUT -d 127.0.0.0/8 -j RETURN
# not captured: --exclude-outbound-ports
-A SIGNET_OUTPUT -p tcp -m tcp --dport 22 -j RETURN
-A SIGNET_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
# not captured: --exclude-outbound-cidrs
-A SIGNET_OUTPUT -d 10.96.0.0/12 -j RETURN
-A SIGNET_OUTPUT -d 169.254.169.254/32 -j RETURN
# everything else (--include-outbound-cidrs *) goes to the sidecar's outbound
-A SIGNET_OUTPUT -j SIGNET_REDIRECT
# the sidecar's outbound listener (--outbound-port)
-A SIGNET_REDIRECT -p tcp -j REDIRECT --to-ports 16001
COMMIT
# IPv6: ip6tables-restore --noflush
*nat
:SIGNET_INBOUND - [0:0]
:SIGNET_IN_REDIRECT - [0:0]
:SIGNET_OUTPUT - [0:0]
:SIGNET_REDIRECT - [0:0]
# inbound: TCP arriving from outside the namespace is checked by SIGNET_INBOUND
-A PREROUTING -p tcp -j SIGNET_INBOUND
# not captured: --exclude-inbound-ports
-A SIGNET_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A SIGNET_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
# every other port (--inbound-ports *) goes to the sidecar's inbound
-A SIGNET_INBOUND -p tcp -j SIGNET_IN_REDIRECT
# the sidecar's inbound listener (--inbound-port)
-A SIGNET_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006
# outbound: TCP opened in the namespace is checked by SIGNET_OUTPUT
-A OUTPUT -p tcp -j SIGNET_OUTPUT
# the sidecar calling the pod's own address (an app reaching itself through its service) goes through the inbound like a peer; never loopback, where the inbound reaches the app
-A SIGNET_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND
-A SIGNET_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1338 -j SIGNET_INBOUND
# the sidecar's own connections are never captured: this is what makes a redirect loop impossible
-A SIGNET_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SIGNET_OUTPUT -m owner --uid-owner 1338 -j RETURN
# the app's connections over lo (to localhost or its own address) are not captured
-A SIGNET_OUTPUT -o lo -j RETURN
# loopback is never captured (a guard: traffic over lo has returned above)
-A SIGNET_OUTPUT -d ::1/128 -j RETURN
# not captured: --exclude-outbound-ports
-A SIGNET_OUTPUT -p tcp -m tcp --dport 22 -j RETURN
-A SIGNET_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
# not captured: --exclude-outbound-cidrs
-A SIGNET_OUTPUT -d fd00:10:96::/112 -j RETURN
# everything else (--include-outbound-cidrs *) goes to the sidecar's outbound
-A SIGNET_OUTPUT -j SIGNET_REDIRECT
# the sidecar's outbound listener (--outbound-port)
-A SIGNET_REDIRECT -p tcp -j REDIRECT --to-ports 16001
COMMIT
"#;

fn args_with<'a>(first: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    first.iter().chain(rest).copied().collect()
}

#[test]
fn dry_run_of_the_defaults_is_pinned() {
    let out = signet(&["iptables", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, DEFAULT_DRY_RUN);
    assert_eq!(out.stderr, "");
}

#[test]
fn dry_run_with_exclusions_is_pinned() {
    let out = signet(&args_with(&["iptables", "--dry-run"], EXCLUSIONS_ARGS));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, EXCLUSIONS_DRY_RUN);
}

#[test]
fn dry_run_selections_and_ipv6_off() {
    let out = signet(&[
        "iptables",
        "--dry-run",
        "--inbound-ports",
        "8000,9090",
        "--include-outbound-cidrs",
        "10.0.0.0/8",
        "--ipv6",
        "off",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("IPv6"), "{}", out.stdout);
    for rule in [
        "-A SIGNET_INBOUND -p tcp -m tcp --dport 8000 -j SIGNET_IN_REDIRECT\n",
        "-A SIGNET_INBOUND -p tcp -m tcp --dport 9090 -j SIGNET_IN_REDIRECT\n",
        "-A SIGNET_OUTPUT -d 10.0.0.0/8 -j SIGNET_REDIRECT\n",
    ] {
        assert!(out.stdout.contains(rule), "{rule} not in:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("--dport 15000"), "{}", out.stdout);
    // No inbound capture: neither inbound chain, nor the jump into them.
    let out = signet(&["iptables", "--dry-run", "--inbound-ports", ""]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("INBOUND"), "{}", out.stdout);
}

/// Runs signet as an unprivileged user (nobody, when the test runs as root) with `path` as PATH.
fn signet_unprivileged(args: &[&str], path: impl AsRef<std::ffi::OsStr>) -> Output {
    let bin = signet_cmd().get_program().to_owned();
    let mut cmd = if is_root() {
        let setpriv = on_path("setpriv").expect("setpriv (util-linux) to drop root");
        let mut c = Command::new(setpriv);
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).env("PATH", path).stdin(Stdio::null());
    cmd.output().expect("run signet")
}

#[test]
fn dry_run_needs_neither_root_nor_iptables() {
    let out = signet_unprivileged(&["iptables", "--dry-run"], "/nonexistent");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), DEFAULT_DRY_RUN);
}

/// One line, `signet: error: ...`, no Rust debug form.
fn assert_one_line_error(args: &[&str], code: i32, want: &str) {
    let out = signet(args);
    assert_eq!(out.code, code, "{args:?}: {}{}", out.stdout, out.stderr);
    let err = out.stderr.trim_end();
    assert!(err.starts_with("signet: error: "), "{args:?}: {err}");
    assert!(!err.contains('\n'), "{args:?}: more than one line:\n{err}");
    assert!(err.contains(want), "{args:?}: {err}\nwanted: {want}");
    for debug in ["Err(", "Os {", "kind:", "Some(", "\\\""] {
        assert!(!err.contains(debug), "{args:?}: a debug form in: {err}");
    }
}

#[test]
fn bad_settings_are_one_line_errors_naming_the_flag() {
    fn dry<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        args_with(&["iptables", "--dry-run"], extra)
    }
    assert_one_line_error(
        &dry(&["--exclude-inbound-ports", "15000,http"]),
        2,
        "'--exclude-inbound-ports <PORTS>': `http` is not a port (give a number 1-65535)",
    );
    assert_one_line_error(
        &dry(&["--inbound-port", "0"]),
        2,
        "'--inbound-port <PORT>': `0` is not a port",
    );
    assert_one_line_error(
        &dry(&["--exclude-outbound-cidrs", "10.0.0.0/40"]),
        2,
        "'--exclude-outbound-cidrs <CIDRS>': `10.0.0.0/40` is not a CIDR",
    );
    assert_one_line_error(
        &dry(&["--include-outbound-cidrs", "10.1.0.0/8"]),
        2,
        "`10.1.0.0/8` has host bits set; did you mean 10.0.0.0/8?",
    );
    assert_one_line_error(
        &dry(&["--proxy-uid", "istio-proxy"]),
        2,
        "'--proxy-uid <UIDS>': `istio-proxy` is not a numeric id",
    );
    assert_one_line_error(
        &dry(&["--inbound-port", "15001"]),
        1,
        "--inbound-port and --outbound-port are both 15001",
    );
    assert_one_line_error(
        &dry(&["--proxy-uid", "", "--proxy-gid", ""]),
        1,
        "--proxy-uid and --proxy-gid are both empty",
    );
    assert_one_line_error(
        &dry(&["--inbound-ports", "", "--include-outbound-cidrs", ""]),
        1,
        "nothing to capture",
    );
}

#[test]
fn without_iptables_or_root_the_error_says_what_to_do() {
    for args in [&["iptables"][..], &["iptables", "--cleanup"]] {
        let out = signet_unprivileged(args, "/nonexistent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(
            err,
            "signet: error: iptables-restore is not installed (not found on PATH): install iptables (Debian/Ubuntu: \
             apt-get install iptables); --dry-run prints the rules without it\n"
        );
        if on_path("iptables-restore").is_none() || on_path("iptables-save").is_none() {
            continue;
        }
        // iptables there, root not.
        let out = signet_unprivileged(args, with_sbin());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("signet: error: "), "{err}");
        assert!(err.contains("iptables needs root (CAP_NET_ADMIN"), "{err}");
        assert!(
            err.contains("init container with capabilities NET_ADMIN and NET_RAW"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

// ---- as root, in network namespaces of the test's own ---------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&with_sbin())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// PATH with the sbin directories, where iptables lives, even for a user whose PATH lacks them.
fn with_sbin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(sbin.into());
        }
    }
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

/// Whether the root tests can run here. Without root and the tools they fail, saying so, unless
/// SIGNET_SKIP_ROOT_TESTS=1 (then they say why and pass).
fn root_tests_can_run(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| on_path(t).is_none()).collect();
    let why = if !is_root() {
        "it is not running as root".to_string()
    } else if !missing.is_empty() {
        format!("{} not found on PATH", missing.join(", "))
    } else {
        return true;
    };
    if std::env::var("SIGNET_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "{test}: SKIPPED (SIGNET_SKIP_ROOT_TESTS=1): it needs root and {}: {why}",
            tools.join(", ")
        );
        return false;
    }
    panic!(
        "{test} needs root and {} (it makes network namespaces of its own and installs rules there), but {why}; \
         CI runs it as root after .ci/run installs iptables; set SIGNET_SKIP_ROOT_TESTS=1 to skip it",
        tools.join(", ")
    );
}

/// A network namespace held open by a `sleep` started with `unshare --net`; commands enter it
/// with `nsenter`. Dropping it (also on panic) kills the holder, and the namespace goes with it:
/// nothing is left behind on the machine, not even a name under /run/netns.
struct Netns {
    holder: std::process::Child,
    /// PATH for every command in the namespace (chooses the iptables backend).
    path: std::ffi::OsString,
}

impl Netns {
    fn new(path: &std::ffi::OsString) -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "3600"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut ns = Netns {
            holder,
            path: path.clone(),
        };
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
        let start = Instant::now();
        while std::fs::read_link(ns.ns_path())
            .ok()
            .is_none_or(|theirs| theirs == ours)
        {
            if let Ok(Some(status)) = ns.holder.try_wait() {
                let mut why = String::new();
                if let Some(mut stderr) = ns.holder.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut why);
                }
                panic!("unshare --net failed ({status}): {why} (this test needs CAP_SYS_ADMIN)");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "unshare --net did not make a network namespace within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ns
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn ns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    /// `program args…` inside the namespace.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns_path()))
            .arg("--")
            .arg(program)
            .args(args)
            .env("PATH", &self.path)
            .stdin(Stdio::null());
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs a command in the namespace; panics unless it succeeds. Returns stdout.
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program, args).output().expect("run nsenter (util-linux)");
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn signet(&self, args: &[&str]) -> support::Output {
        let out = self
            .cmd(signet_cmd().get_program(), args)
            .output()
            .expect("run signet in the namespace");
        support::Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn signet_ok(&self, args: &[&str]) -> String {
        let out = self.signet(args);
        assert_eq!(
            out.code, 0,
            "signet {args:?} in the namespace:\n{}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// `iptables-save` and `ip6tables-save`, comments and counters left out.
    fn saved(&self) -> [String; 2] {
        ["iptables-save", "ip6tables-save"].map(|tool| normalize(&self.ok(tool, &[])))
    }

    fn restore(&self, tool: &str, script: &str) {
        let mut child = self
            .cmd(tool, &["--noflush"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run iptables-restore");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "{tool} refused:\n{script}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// iptables-save output without comments and with every counter zero.
fn normalize(saved: &str) -> String {
    let mut out = String::new();
    for line in saved.lines().filter(|l| !l.starts_with('#')) {
        match line.rsplit_once(" [") {
            Some((decl, counters)) if line.starts_with(':') && counters.ends_with(']') => {
                out.push_str(decl);
                out.push_str(" [0:0]");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Signet's part of a saved dump: its chain declarations and every rule naming a SIGNET_ chain,
/// each chain's rules in order; the rest of the dump is returned apart.
fn split_signet(saved: &str) -> (Vec<String>, String) {
    let mut signet = Vec::new();
    let mut rest = String::new();
    for line in saved.lines() {
        if line.contains("SIGNET_") {
            signet.push(line.to_string());
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    (signet, rest)
}

/// The declarations and rules of one family's `--dry-run` script in iptables-save's order:
/// declarations, then the rules of the built-in chains, then of each user chain, chains by name.
fn expected_signet_lines(dry_run: &str, family: &str) -> Vec<String> {
    let header = format!("# {family}: ");
    let script: Vec<&str> = dry_run
        .lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1)
        .take_while(|l| *l != "COMMIT")
        .filter(|l| !l.starts_with('#') && l.contains("SIGNET_"))
        .collect();
    assert!(!script.is_empty(), "no {family} part in:\n{dry_run}");
    let mut decls: Vec<&str> = script.iter().copied().filter(|l| l.starts_with(':')).collect();
    decls.sort();
    let chain_of = |l: &str| l.split_whitespace().nth(1).unwrap_or_default().to_string();
    let mut chains: Vec<String> = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
        .map(String::from)
        .to_vec();
    chains.extend(
        decls
            .iter()
            .map(|d| d[1..].split_whitespace().next().unwrap_or_default().to_string()),
    );
    let mut lines: Vec<String> = decls.iter().map(|d| d.to_string()).collect();
    for chain in &chains {
        let rules = script.iter().filter(|l| l.starts_with("-A ") && chain_of(l) == *chain);
        lines.extend(rules.map(|l| l.to_string()));
    }
    lines
}

/// Rules of someone else's in the namespace, which Signet must leave exactly as they are.
const FOREIGN_V4: &str = "*nat
:APP_OUTPUT - [0:0]
-A PREROUTING -p udp -j RETURN
-A OUTPUT -p tcp -m tcp --dport 9 -j APP_OUTPUT
-A APP_OUTPUT -j RETURN
COMMIT
*filter
-A INPUT -p tcp -m tcp --dport 7 -j ACCEPT
COMMIT
";
const FOREIGN_V6: &str = "*nat
:APP_OUTPUT - [0:0]
-A OUTPUT -p tcp -m tcp --dport 9 -j APP_OUTPUT
COMMIT
";

/// The iptables backends to test: the one `iptables` is, and the other one where this kernel
/// supports it (PATH then leads to shims named like the plain tools).
fn backends(shims: &Path) -> Vec<(String, std::ffi::OsString)> {
    let mut found = vec![("default".to_string(), with_sbin())];
    let version = Command::new("iptables-restore")
        .arg("--version")
        .env("PATH", with_sbin())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let other = if version.contains("legacy") { "nft" } else { "legacy" };
    let tools = [
        "iptables-restore",
        "iptables-save",
        "ip6tables-restore",
        "ip6tables-save",
    ];
    let targets: Vec<Option<PathBuf>> = tools
        .iter()
        .map(|t| on_path(&t.replacen("tables-", &format!("tables-{other}-"), 1)))
        .collect();
    if targets.iter().any(Option::is_none) {
        eprintln!("iptables-{other} is not installed: testing the default backend only");
        return found;
    }
    let dir = shims.join(other);
    std::fs::create_dir_all(&dir).unwrap();
    for (tool, target) in tools.iter().zip(targets.into_iter().flatten()) {
        std::os::unix::fs::symlink(target, dir.join(tool)).unwrap();
    }
    let mut path = dir.into_os_string();
    path.push(":");
    path.push(with_sbin());
    // The other backend may lack kernel support (no ip_tables for legacy): then it is not tested.
    let probe = Netns::new(&path);
    let works = probe
        .cmd("iptables-restore", &["--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"*nat\n:SIGNET_PROBE - [0:0]\nCOMMIT\n")?;
            c.wait()
        });
    if works.is_ok_and(|s| s.success()) {
        found.push((other.to_string(), path));
    } else {
        eprintln!("iptables-{other} does not work on this kernel: testing the default backend only");
    }
    found
}

#[test]
fn install_is_idempotent_converges_and_cleanup_restores_the_namespace_exactly() {
    let tools = [
        "iptables-restore",
        "iptables-save",
        "ip6tables-restore",
        "ip6tables-save",
        "unshare",
        "nsenter",
    ];
    if !root_tests_can_run(
        "install_is_idempotent_converges_and_cleanup_restores_the_namespace_exactly",
        &tools,
    ) {
        return;
    }
    let shims = tempfile::tempdir().unwrap();
    for (backend, path) in backends(shims.path()) {
        eprintln!("backend: {backend}");
        let ns = Netns::new(&path);
        ns.restore("iptables-restore", FOREIGN_V4);
        ns.restore("ip6tables-restore", FOREIGN_V6);
        let before = ns.saved();

        // Nothing installed: cleanup is a success that changes nothing.
        let out = ns.signet_ok(&["iptables", "--cleanup"]);
        assert!(out.contains("IPv4: nothing of Signet's is installed"), "{out}");
        assert_eq!(ns.saved(), before, "{backend}");

        let out = ns.signet_ok(&["iptables"]);
        assert!(
            out.contains("IPv4: installed SIGNET_INBOUND, SIGNET_IN_REDIRECT, SIGNET_OUTPUT, SIGNET_REDIRECT"),
            "{out}"
        );
        assert!(out.contains("IPv6: installed"), "{out}");
        let installed = ns.saved();
        for (i, family) in ["IPv4", "IPv6"].into_iter().enumerate() {
            let (signet, rest) = split_signet(&installed[i]);
            assert_eq!(rest, before[i], "{backend} {family}: rules not Signet's changed");
            assert_eq!(
                signet,
                expected_signet_lines(DEFAULT_DRY_RUN, family),
                "{backend} {family}: the installed rules are not the --dry-run's"
            );
        }

        // Again: the same rules, the jumps not doubled.
        ns.signet_ok(&["iptables"]);
        assert_eq!(ns.saved(), installed, "{backend}: a second install changed the rules");
        // A rule someone appended after Signet's jump stays after it: the jump in place is kept.
        let late = "*nat\n-A OUTPUT -p tcp -m tcp --dport 10 -j APP_OUTPUT\nCOMMIT\n";
        ns.restore("iptables-restore", late);
        let with_late = ns.saved();
        ns.signet_ok(&["iptables"]);
        assert_eq!(ns.saved(), with_late, "{backend}: an install moved its jump");
        ns.restore("iptables-restore", &late.replace("-A ", "-D "));
        assert_eq!(ns.saved(), installed, "{backend}");

        // Other settings: Signet's part becomes theirs exactly (the inbound chains and their
        // jump go), the rest is untouched; then back to the defaults, as after the first install.
        ns.signet_ok(&args_with(&["iptables"], EXCLUSIONS_ARGS));
        ns.signet_ok(&["iptables", "--inbound-ports", "", "--exclude-outbound-ports", "22"]);
        let dry_run = signet_ok(&[
            "iptables",
            "--dry-run",
            "--inbound-ports",
            "",
            "--exclude-outbound-ports",
            "22",
        ]);
        let changed = ns.saved();
        for (i, family) in ["IPv4", "IPv6"].into_iter().enumerate() {
            let (signet, rest) = split_signet(&changed[i]);
            assert_eq!(rest, before[i], "{backend} {family}");
            assert_eq!(signet, expected_signet_lines(&dry_run, family), "{backend} {family}");
        }
        ns.signet_ok(&["iptables"]);
        assert_eq!(ns.saved(), installed, "{backend}: reinstalling the defaults");

        // What --cleanup would remove, without removing it.
        let plan = ns.signet_ok(&["iptables", "--cleanup", "--dry-run"]);
        assert!(plan.contains("-D PREROUTING -p tcp -j SIGNET_INBOUND\n"), "{plan}");
        assert!(plan.contains("-X SIGNET_REDIRECT\n"), "{plan}");
        assert!(!plan.contains("APP_OUTPUT"), "{plan}");
        assert_eq!(
            ns.saved(),
            installed,
            "{backend}: --cleanup --dry-run changed something"
        );

        let out = ns.signet_ok(&["iptables", "--cleanup"]);
        assert!(
            out.contains("IPv4: removed nat/SIGNET_INBOUND, nat/SIGNET_IN_REDIRECT"),
            "{out}"
        );
        assert!(out.contains("IPv6: removed"), "{out}");
        assert_eq!(ns.saved(), before, "{backend}: --cleanup did not restore the namespace");
        let out = ns.signet_ok(&["iptables", "--cleanup"]);
        assert!(out.contains("IPv6: nothing of Signet's is installed"), "{out}");
        assert_eq!(ns.saved(), before, "{backend}");
    }
}

/// Real connections in a pod-like namespace wired to a peer namespace by a veth pair, over IPv4
/// and IPv6: a peer's call to any port is redirected to the inbound, an excluded port is not; the
/// app's call out is redirected to the outbound, the sidecar's is not; the sidecar's call to the
/// pod's own address goes through the inbound; the app's calls to itself are left alone.
#[test]
fn captured_connections_reach_the_sidecar_and_its_own_do_not() {
    let tools = [
        "iptables-restore",
        "iptables-save",
        "ip6tables-restore",
        "ip6tables-save",
        "unshare",
        "nsenter",
        "setpriv",
        "ip",
        "curl",
    ];
    if !root_tests_can_run("captured_connections_reach_the_sidecar_and_its_own_do_not", &tools) {
        return;
    }
    let (pod, peer) = (Netns::new(&with_sbin()), Netns::new(&with_sbin()));
    let peer_pid = peer.pid().to_string();
    let veth = [
        "link", "add", "sg0", "type", "veth", "peer", "name", "sg1", "netns", &peer_pid,
    ];
    pod.ok("ip", &veth);
    for (ns, dev, v4, v6) in [
        (&pod, "sg0", "10.250.0.1/24", "fd00:250::1/64"),
        (&peer, "sg1", "10.250.0.2/24", "fd00:250::2/64"),
    ] {
        ns.ok("ip", &["addr", "add", v4, "dev", dev]);
        // nodad: the address is usable at once, not after duplicate address detection.
        ns.ok("ip", &["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.ok("ip", &["link", "set", dev, "up"]);
        ns.ok("ip", &["link", "set", "lo", "up"]);
    }
    pod.signet_ok(&["iptables", "--ipv6", "on"]);

    // httpbins as the sidecar's listeners and as the peer's service; /ip tells who called.
    let httpbin = |ns: &Netns, name: &str, listen: &str| {
        let ready = ready_path(name);
        let mut cmd = ns.cmd(
            signet_cmd().get_program(),
            &["httpbin", "--listen", listen, "--ready-file"],
        );
        cmd.arg(&ready);
        let mut proc = Proc::spawn(name, cmd);
        proc.wait_ready_file(&ready, Duration::from_secs(20));
        proc
    };
    // A redirect from PREROUTING goes to the address the connection arrived on, one from OUTPUT
    // (the outbound, and the sidecar calling its own pod) to loopback: the inbound listens on
    // both (0.0.0.0 covers them in IPv4; in IPv6 a listener each here, [::] in a real sidecar).
    let _listeners = [
        httpbin(&pod, "inbound", "0.0.0.0:15006"),
        httpbin(&pod, "inbound-v6", "[fd00:250::1]:15006"),
        httpbin(&pod, "inbound-v6-lo", "[::1]:15006"),
        httpbin(&pod, "outbound", "127.0.0.1:15001"),
        httpbin(&pod, "outbound-v6", "[::1]:15001"),
        httpbin(&peer, "service", "10.250.0.2:80"),
        httpbin(&peer, "service-v6", "[fd00:250::2]:80"),
    ];

    // `curl URL/ip` in a namespace, as root (the app) or as uid/gid 1337 (the sidecar): the
    // origin the answering httpbin saw, or curl's exit code.
    let call = |ns: &Netns, sidecar: bool, url: &str| -> Result<String, i32> {
        let url = format!("{url}/ip");
        let curl = ["curl", "-sS", "-g", "--max-time", "5", url.as_str()];
        let out = if sidecar {
            let setpriv = ["--reuid", "1337", "--regid", "1337", "--clear-groups", "--"];
            ns.cmd("setpriv", &[&setpriv[..], &curl[..]].concat()).output()
        } else {
            ns.cmd(curl[0], &curl[1..]).output()
        }
        .expect("run curl");
        if !out.status.success() {
            return Err(out.status.code().unwrap_or(-1));
        }
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("httpbin's JSON");
        Ok(body["origin"].as_str().unwrap_or_default().to_string())
    };
    const REFUSED: Result<String, i32> = Err(7);
    let origin = |ip: &str| Ok::<String, i32>(ip.to_string());

    for (pod_ip, peer_ip, lo) in [
        ("10.250.0.1", "10.250.0.2", "127.0.0.1"),
        ("[fd00:250::1]", "[fd00:250::2]", "[::1]"),
    ] {
        let peer_origin = peer_ip.trim_matches(['[', ']']);
        let pod_origin = pod_ip.trim_matches(['[', ']']);
        // Inbound: port 8000 has no listener in the pod; the inbound answers, seeing the peer.
        assert_eq!(
            call(&peer, false, &format!("http://{pod_ip}:8000")),
            origin(peer_origin)
        );
        // An excluded port (the admin's) is not captured: nothing listens there.
        assert_eq!(call(&peer, false, &format!("http://{pod_ip}:15000")), REFUSED);
        // Outbound: the app's call to a port where the peer has no listener lands on the
        // outbound listener; the sidecar's own calls go out to the peer as they are: no loop.
        assert_eq!(call(&pod, false, &format!("http://{peer_ip}:8080")), origin(pod_origin));
        assert_eq!(call(&pod, true, &format!("http://{peer_ip}:8080")), REFUSED);
        assert_eq!(call(&pod, true, &format!("http://{peer_ip}")), origin(pod_origin));
        // The sidecar calling the pod's own address enters the inbound; the app calling itself,
        // on its address or on loopback, is left alone (nothing listens on 8000).
        assert!(call(&pod, true, &format!("http://{pod_ip}:8000")).is_ok(), "{pod_ip}");
        assert_eq!(call(&pod, false, &format!("http://{pod_ip}:8000")), REFUSED);
        assert_eq!(call(&pod, false, &format!("http://{lo}:8000")), REFUSED);
        assert_eq!(call(&pod, true, &format!("http://{lo}:8000")), REFUSED);
    }

    pod.signet_ok(&["iptables", "--cleanup", "--ipv6", "on"]);
    for (pod_ip, peer_ip) in [("10.250.0.1", "10.250.0.2"), ("[fd00:250::1]", "[fd00:250::2]")] {
        assert_eq!(call(&peer, false, &format!("http://{pod_ip}:8000")), REFUSED);
        assert_eq!(call(&pod, false, &format!("http://{peer_ip}:8080")), REFUSED);
    }
}
