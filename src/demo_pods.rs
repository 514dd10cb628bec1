//! `signet demo --pods`: the task with each workload in a pod of its own, a network namespace
//! with its own IP on a bridge, the way a node runs pods. `signet iptables` captures each pod's
//! traffic (the init container's job), the sidecars run as the proxy's group (exempt from
//! capture), the authority has a pod of its own, and the task's commands run as written: `curl
//! http://httpbin.foo:8000/html` in the curl pod, with no proxy settings. Everything it creates
//! is removed on exit, on Ctrl-C and on error; a run after a killed one starts clean.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::cli::DemoArgs;
use crate::commands::{runtime, wait_for_signal};
use crate::demo::{CURL_FOO, HTTPBIN_BAR, HTTPBIN_FOO, Prepared, Workload, flatten_html, prepare};
use crate::pods::{PodNet, can_create};

/// Every namespace of the demo is named `signet-demo-…`.
const PREFIX: &str = "signet-demo";
/// The group the sidecars run as; `signet iptables` exempts it from capture.
const PROXY_GID: &str = "1337";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    can_create().map_err(|why| {
        format!("signet demo --pods puts each workload in a network namespace: {why}. Run it as root (sudo signet demo --pods), or run `signet demo` for the same scenario on 127.0.0.1 without root")
    })?;
    for (tool, package) in [
        ("curl", "curl"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if std::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!("signet demo --pods needs `{tool}` (apt-get install {package})"));
        }
    }
    let (_tmp, dir) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("signet-demo-pods-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let me = std::env::current_exe().map_err(|e| format!("cannot find the signet binary: {e}"))?;
    runtime(None)?.block_on(async {
        // Ctrl-C and SIGTERM end the scenario early; the pods are removed either way.
        tokio::select! {
            result = scenario(&dir, &me, args.keep_running, args.verbose) => result,
            _ = wait_for_signal() => {
                println!("\ninterrupted: removing the pods");
                Ok(ExitCode::from(130))
            }
        }
    })
}

/// A process in a pod; killed when dropped (before the pods are removed).
struct PodProc {
    name: String,
    child: Child,
}

impl PodProc {
    fn spawn(
        net: &PodNet,
        pod: &str,
        name: &str,
        program: &Path,
        args: &[String],
        as_proxy: bool,
        verbose: bool,
    ) -> Result<PodProc, String> {
        let netns = &net.pod(pod).ok_or_else(|| format!("no pod {pod}"))?.netns;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        if as_proxy {
            cmd.args(["setpriv", "--regid", PROXY_GID, "--clear-groups", "--"]);
        }
        cmd.arg(program)
            .args(args)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .stdin(Stdio::null())
            .stdout(if verbose { Stdio::inherit() } else { Stdio::null() })
            .stderr(if verbose { Stdio::inherit() } else { Stdio::null() })
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} in pod {pod}: {e}"))?;
        Ok(PodProc {
            name: name.to_string(),
            child,
        })
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("{} exited ({status}); run with -v to see its log", self.name)),
            _ => Ok(()),
        }
    }
}

/// Runs a command in `pod` to completion: (exit code, stdout, stderr).
async fn run_in(net: &PodNet, pod: &str, program: &str, args: &[&str]) -> Result<(i32, String, String), String> {
    let netns = &net.pod(pod).ok_or_else(|| format!("no pod {pod}"))?.netns;
    let out = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {program} in pod {pod}: {e}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Waits until `url` (inside `pod`) answers `status`.
async fn wait_for(net: &PodNet, pod: &str, url: &str, status: &str, proc: &mut PodProc) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    loop {
        let (_, out, _) = run_in(net, pod, "curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", url]).await?;
        if out.trim() == status {
            return Ok(());
        }
        proc.check_running()?;
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "{} in pod {pod} was not ready within {}; run with -v to see its log",
                proc.name,
                signet_certs::format_duration(READY_TIMEOUT)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_of(w: &Workload) -> String {
    w.label.replace(" (foo)", "-foo").replace('.', "-")
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

async fn scenario(dir: &Path, me: &Path, keep_running: bool, verbose: bool) -> Result<ExitCode, String> {
    println!(
        "Signet demo --pods: Istio's \"Custom CA integration using Kubernetes CSR\" task, each workload a pod (network namespace)"
    );
    println!("working directory: {}\n", dir.display());
    let Prepared {
        signers,
        bundle_path,
        policy_path,
        tokens_path,
        token_files,
    } = prepare(dir)?;
    let workloads = [&HTTPBIN_FOO, &HTTPBIN_BAR, &CURL_FOO];
    let names: Vec<String> = workloads.iter().map(|w| pod_of(w)).collect();
    let mut pods: Vec<&str> = vec!["authority"];
    pods.extend(names.iter().map(String::as_str));
    let net = PodNet::create(
        PREFIX,
        &pods,
        &[
            ("httpbin.foo", "httpbin-foo"),
            ("httpbin.bar", "httpbin-bar"),
            ("signet-authority.istio-system.svc", "authority"),
        ],
    )?;
    println!("[3/6] pods on one bridge (removed at exit):");
    for p in &net.pods {
        println!("      {:<12} {:<15} network namespace {}", p.name, p.ip, p.netns);
    }
    // Processes are dropped (killed) before `net` (declared first, dropped last).
    let mut procs: Vec<PodProc> = Vec::new();

    let authority_ip = net.pod("authority").map(|p| p.ip).ok_or("no authority pod")?;
    let signers_dir = dir.join("signers");
    let path = |p: &PathBuf| p.display().to_string();
    let mut authority = PodProc::spawn(
        &net,
        "authority",
        "the authority",
        me,
        &s(&[
            "authority",
            "serve",
            "--signers-dir",
            &path(&signers_dir),
            "--bundle",
            &path(&bundle_path),
            "--signing-policy",
            &path(&policy_path),
            "--tokens",
            &path(&tokens_path),
            "--listen",
            "0.0.0.0:15012",
            "--admin",
            "127.0.0.1:15014",
        ]),
        false,
        verbose,
    )?;
    wait_for(&net, "authority", "http://127.0.0.1:15014/ready", "200", &mut authority).await?;
    procs.push(authority);
    println!("[4/6] authority in pod authority: signet-authority.istio-system.svc:15012 ({authority_ip})");

    let mut services = Vec::new();
    for w in [&HTTPBIN_FOO, &HTTPBIN_BAR] {
        let ip = net.pod(&pod_of(w)).map(|p| p.ip).ok_or("no pod")?;
        let id = signet_certs::SpiffeId::workload("cluster.local", w.namespace, w.service_account)
            .map_err(|e| e.to_string())?;
        services.push(format!("{}:8000={ip}:8000,{id}", w.label));
    }
    println!("[5/6] in each pod: `signet iptables` (init), the app, and its sidecar capturing both ways");
    for w in workloads {
        let pod = pod_of(w);
        let (code, _, err) = run_in(
            &net,
            &pod,
            &me.display().to_string(),
            &["iptables", "--proxy-gid", PROXY_GID],
        )
        .await?;
        if code != 0 {
            return Err(format!("signet iptables in pod {pod}: {}", err.trim()));
        }
        if w.dns.is_some() {
            let mut app = PodProc::spawn(
                &net,
                &pod,
                w.label,
                me,
                &s(&["httpbin", "--listen", "0.0.0.0:8000"]),
                false,
                verbose,
            )?;
            wait_for(&net, &pod, "http://127.0.0.1:8000/status/204", "204", &mut app).await?;
            procs.push(app);
        }
        let mut args = s(&[
            "proxy",
            "--authority",
            "signet-authority.istio-system.svc:15012",
            "--authority-ca",
            &path(&signers_dir.join("istio-system/ca.crt")),
            "--token-file",
            &path(&token_files[w.label]),
            "--bundle",
            &path(&bundle_path),
            "--capture-outbound",
            "0.0.0.0:15001",
            "--capture-inbound",
            "0.0.0.0:15006",
            "--admin",
            "127.0.0.1:15000",
            "--pod-namespace",
            w.namespace,
            "--service-account",
            w.service_account,
        ]);
        if let Some(dns) = w.dns {
            args.extend(s(&["--dns", dns]));
        }
        for svc in &services {
            args.extend(s(&["--service", svc]));
        }
        let mut side = PodProc::spawn(
            &net,
            &pod,
            &format!("the sidecar of {}", w.label),
            me,
            &args,
            true,
            verbose,
        )?;
        wait_for(&net, &pod, "http://127.0.0.1:15000/ready", "200", &mut side).await?;
        procs.push(side);
        let ip = net.pod(&pod).map(|p| p.ip).ok_or("no pod")?;
        println!(
            "      {:<12} {ip:<12} {}sidecar: spiffe://cluster.local/ns/{}/sa/{} (signer {})",
            w.label,
            if w.dns.is_some() { "httpbin on :8000, " } else { "" },
            w.namespace,
            w.service_account,
            signers[w.namespace].name().short()
        );
    }

    println!("\n[6/6] the scenario, as the task writes it (no http_proxy)");
    let curl_pod = pod_of(&CURL_FOO);
    let netns = net.pod(&curl_pod).map(|p| p.netns.clone()).unwrap_or_default();
    let mut results = Vec::new();
    for (target, want) in [("httpbin.foo", "200"), ("httpbin.bar", "503")] {
        let url = format!("http://{target}:8000/html");
        let (_, out, err) = run_in(
            &net,
            &curl_pod,
            "curl",
            &["-sS", "--max-time", "15", "-w", "\n@@%{http_code}", &url],
        )
        .await?;
        let (body, status) = out.rsplit_once("\n@@").unwrap_or((out.as_str(), ""));
        println!("$ ip netns exec {netns} curl {url}");
        if status == "200" {
            println!("{}\n", flatten_html(body));
        } else {
            println!("{}{}\n", body.trim_end(), err.trim_end());
        }
        let ok = status == want
            && if want == "200" {
                body.contains("Herman Melville - Moby-Dick")
            } else {
                body.contains("CERTIFICATE_VERIFY_FAILED")
            };
        results.push((target, status.to_string(), ok));
    }
    println!("result:");
    for (target, status, ok) in &results {
        println!(
            "  curl (foo) → {target}: {status} ... {}",
            if *ok { "as expected" } else { "UNEXPECTED" }
        );
    }
    if keep_running {
        println!("\neverything keeps running; try (as root; Ctrl-C stops and removes the pods):");
        println!("  ip netns exec {netns} curl http://httpbin.foo:8000/headers");
        println!("  ip netns exec {netns} curl -i http://httpbin.bar:8000/html");
        println!("  ip netns exec {netns} curl http://127.0.0.1:15000/metrics    # the curl pod's sidecar");
        println!("  ip netns exec {netns} iptables-save -t nat                    # its capture rules");
        wait_for_signal().await;
        println!("\nstopping: removing the pods");
    }
    drop(procs);
    drop(net);
    Ok(if results.iter().all(|(_, _, ok)| *ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
