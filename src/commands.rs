//! What each subcommand does. This is the CLI edge: library errors become one line for
//! `signet: error: ...`, with settings named by their flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use signet_authority::{AuthorityServer, GrpcClient, ServerSettings, Sources, TokensFile};
use signet_certs::{
    AuthorityClient, CertInfo, IssueOptions, Signer, SignerName, TrustBundle, files, format_duration, read_certs,
    rfc3339, write_private, write_public,
};
use signet_proxy::config::IdentitySource;
use signet_proxy::{Config, ConfigFile, Sidecar};

use crate::cli::{
    AuthorityCommand, AuthorityServeArgs, AuthorityTokenArgs, BenchCommand, BundleArgs, CertCommand, CertIssueArgs,
    CertShowArgs, Command, HttpbinArgs, ProxyArgs, SignerCommand, SignerDirArgs, SignerNewArgs, setting_name,
};

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Demo(args) => crate::demo::run(args),
        Command::Signer(SignerCommand::New(args)) => signer_new(args),
        Command::Signer(SignerCommand::Controller(args)) => crate::kubernetes::signer_controller(args),
        Command::Cert(CertCommand::Issue(args)) => cert_issue(args),
        Command::Cert(CertCommand::Show(args)) => cert_show(args),
        Command::Bundle(args) => bundle(args),
        Command::Authority(AuthorityCommand::Serve(args)) => authority_serve(*args),
        Command::Authority(AuthorityCommand::Token(args)) => authority_token(args),
        Command::Proxy(args) => proxy(*args),
        Command::Httpbin(args) => httpbin(args),
        Command::Iptables(args) => crate::iptables::run(args),
        Command::Bench(BenchCommand::Handshake(args)) => crate::bench::run(*args),
        Command::Bench(BenchCommand::Server(args)) => crate::bench::serve(args),
    }
}

fn signer_new(args: SignerNewArgs) -> Result<ExitCode, String> {
    let name = SignerName::parse(&args.name, &args.domain.signer_domain).map_err(|e| e.to_string())?;
    let dir = args.dir.join(name.short());
    if dir.join(files::KEY).exists() && !args.force {
        return Err(format!(
            "{} already holds a signer key; use another --dir or --force to replace it (the old key is lost)",
            dir.display()
        ));
    }
    let signer = Signer::create(name, args.validity.0).map_err(|e| e.to_string())?;
    signer.write_dir(&dir).map_err(|e| e.to_string())?;
    let info = CertInfo::parse(signer.certificate()).map_err(|e| e.to_string())?;
    println!(
        "created signer {} in {}/{{tls.crt,tls.key,ca.crt}} (ECDSA P-256, valid until {}, root sha256:{})",
        signer.name(),
        dir.display(),
        rfc3339(info.not_after),
        &info.sha256[..16]
    );
    Ok(ExitCode::SUCCESS)
}

/// What a flag that takes a signer directory expects, for errors.
const SIGNER_DIR_EXPECTED: &str =
    "a directory made by `signet signer new`, or a cert-manager secret with tls.crt, tls.key, ca.crt";

/// Loads the signer directory `dir` given as `flag`; its name is `explicit` or the directory's.
pub(crate) fn load_signer_dir(flag: &str, dir: &Path, explicit: Option<&str>, domain: &str) -> Result<Signer, String> {
    let not_a_signer = |why: String| {
        format!(
            "{flag} {}: not a signer directory ({why}); give {SIGNER_DIR_EXPECTED}",
            dir.display()
        )
    };
    if !dir.is_dir() {
        return Err(not_a_signer("no such directory".into()));
    }
    let name = signer_name_of(dir, explicit, domain)?;
    Signer::load_dir(dir, name).map_err(|e| not_a_signer(e.to_string()))
}

/// The signer name of a signer directory: `explicit`, else the directory's name.
fn signer_name_of(dir: &Path, explicit: Option<&str>, domain: &str) -> Result<SignerName, String> {
    let base = match explicit {
        Some(n) => n.to_string(),
        None => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{}: cannot tell the signer's name; pass --signer NAME", dir.display()))?,
    };
    SignerName::parse(&base, domain).map_err(|e| format!("{}: {e}", dir.display()))
}

fn cert_issue(args: CertIssueArgs) -> Result<ExitCode, String> {
    let signer = load_signer_dir(
        "--signer-dir",
        &args.signer_dir,
        args.signer.as_deref(),
        &args.domain.signer_domain,
    )?;
    let options = IssueOptions {
        ttl: args.ttl.0,
        backdate: args.backdate.0,
    };
    let issued = signer
        .issue_workload(&args.id, &args.dns, &options)
        .map_err(|e| e.to_string())?;
    issued.write_dir(&args.out).map_err(|e| e.to_string())?;
    let leaf = &issued.certificate.leaf;
    println!(
        "issued {} by signer {} (valid until {}, serial {}) into {}/{{tls.crt,tls.key,ca.crt}}",
        args.id,
        signer.name(),
        rfc3339(leaf.not_after),
        leaf.serial,
        args.out.display()
    );
    if leaf.not_after < SystemTime::now() {
        eprintln!(
            "signet: warning: the certificate is already expired (--backdate {} is more than --ttl {}); a sidecar will refuse it",
            args.backdate, args.ttl
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cert_show(args: CertShowArgs) -> Result<ExitCode, String> {
    let path = if args.path.is_dir() {
        args.path.join(files::CERT)
    } else {
        args.path.clone()
    };
    let chain = read_certs(&path).map_err(|e| e.to_string())?;
    let bundle = args
        .bundle
        .as_deref()
        .map(|b| TrustBundle::load(b, &args.domain.signer_domain))
        .transpose()
        .map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    for (i, der) in chain.iter().enumerate() {
        let info = CertInfo::parse(der).map_err(|e| format!("{}: certificate #{}: {e}", path.display(), i + 1))?;
        let state = if now > info.not_after {
            "EXPIRED".to_string()
        } else if now < info.not_before {
            "NOT YET VALID".to_string()
        } else {
            format!("valid, {} left", format_duration(info.remaining(now)))
        };
        println!("certificate #{} ({})", i + 1, if i == 0 { "leaf" } else { "chain" });
        for uri in &info.uris {
            println!("  uri:       {uri}");
        }
        for dns in &info.dns {
            println!("  dns:       {dns}");
        }
        println!("  subject:   {}", info.subject);
        println!("  issuer:    {}", info.issuer);
        println!("  serial:    {}", info.serial);
        println!(
            "  validity:  {} .. {} ({state})",
            rfc3339(info.not_before),
            rfc3339(info.not_after)
        );
        println!("  sha256:    {}", info.sha256);
        if info.is_ca {
            println!("  CA:        yes");
        }
    }
    if let Some(bundle) = bundle {
        // Decided by signature against each signer's roots, as a sidecar decides it.
        let signers: Vec<String> = bundle.signers_of(&chain).iter().map(|s| s.to_string()).collect();
        match signers.as_slice() {
            [] => println!("signer:      none in the bundle (no signer's root signed this chain)"),
            names => println!("signer:      {}", names.join(", ")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bundle(args: BundleArgs) -> Result<ExitCode, String> {
    let domain = &args.domain.signer_domain;
    let mut signers = Vec::new();
    for dir in &args.signers {
        // The same check `signet authority serve` makes: a CA certificate with its key.
        let signer = load_signer_dir("SIGNER_DIR", dir, None, domain)?;
        signers.push(signer);
    }
    let bundle = TrustBundle::from_signers(signers.iter().map(|s| (s.name(), s.roots()))).map_err(|e| e.to_string())?;
    let yaml = bundle.to_yaml();
    match args.out {
        Some(path) => {
            write_public(&path, yaml.as_bytes()).map_err(|e| e.to_string())?;
            eprintln!("wrote {} ({} signer(s))", path.display(), signers.len());
        }
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The data-plane runtime: one multi-threaded runtime, or with `--workers 1` a current-thread
/// one (no work stealing or cross-thread wake-ups: measurably cheaper per connection).
pub(crate) fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = match workers {
        Some(0) => return Err("--workers must be at least 1".into()),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().thread_name("signet");
    builder.build().map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Writes `value` as JSON to `path` (atomically: readers see all of it or nothing).
pub(crate) fn write_ready_file(path: Option<&Path>, value: &serde_json::Value) -> Result<(), String> {
    match path {
        Some(p) => write_public(p, format!("{value:#}\n").as_bytes()).map_err(|e| format!("--ready-file: {e}")),
        None => Ok(()),
    }
}

/// Flags laid over the config file, resolved once.
fn proxy_config(args: &ProxyArgs) -> Result<Config, String> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path).map_err(|e| e.describe(&setting_name))?,
        None => ConfigFile::default(),
    };
    let mut merged = file.overlay(args.layer()?);
    args.pod_identity(&mut merged)?;
    merged.resolve().map_err(|e| e.describe(&setting_name))
}

fn proxy(args: ProxyArgs) -> Result<ExitCode, String> {
    let config = proxy_config(&args)?;
    let client = authority_client(&config);
    runtime(args.workers)?.block_on(async move {
        let sidecar = Sidecar::start(config, client)
            .await
            .map_err(|e| e.describe(&setting_name))?;
        let listeners = serde_json::to_value(&sidecar.addrs).unwrap_or_default();
        write_ready_file(args.ready_file.as_deref(), &listeners)?;
        serve_until_signal(|| sidecar.reload()).await;
        tracing::info!("shutting down: no new connections, draining open ones");
        sidecar.shutdown().await;
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The authority client for a config that provisions its identity.
pub(crate) fn authority_client(config: &Config) -> Option<Arc<dyn AuthorityClient>> {
    match &config.identity {
        IdentitySource::Provisioned(p) => Some(Arc::new(GrpcClient::new(p.authority.clone()))),
        IdentitySource::Files(_) => None,
    }
}

/// Runs until SIGTERM or Ctrl-C; SIGHUP calls `on_hup` (reload).
pub(crate) async fn serve_until_signal(on_hup: impl Fn()) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            let stop = wait_for_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading");
                        on_hup();
                    }
                }
            }
        }
    }
    let _ = &on_hup;
    wait_for_signal().await;
}

/// The signer directories named by `--signers-dir` and `--signer-dir`; `required`: at least one.
pub(crate) fn signer_dirs(
    args: &SignerDirArgs,
    domain: &str,
    required: bool,
) -> Result<Vec<(SignerName, PathBuf)>, String> {
    let mut out = Vec::new();
    if let Some(parent) = &args.signers_dir {
        let entries = std::fs::read_dir(parent).map_err(|e| {
            format!(
                "--signers-dir {}: {e}; give a directory whose subdirectories are signer directories",
                parent.display()
            )
        })?;
        let mut dirs: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join(files::KEY).exists())
            .collect();
        dirs.sort();
        for dir in dirs {
            out.push((signer_name_of(&dir, None, domain)?, dir));
        }
    }
    for spec in &args.signer_dir {
        let (name, dir) = match spec.split_once('=') {
            Some((n, d)) => (Some(n), PathBuf::from(d)),
            None => (None, PathBuf::from(spec)),
        };
        if !dir.join(files::KEY).exists() {
            return Err(format!(
                "--signer-dir {}: not a signer directory (no {}); give {SIGNER_DIR_EXPECTED}",
                dir.display(),
                files::KEY
            ));
        }
        out.push((signer_name_of(&dir, name, domain)?, dir));
    }
    if out.is_empty() && required {
        return Err(
            "no signers: give --signers-dir DIR (each subdirectory a signer directory) or --signer-dir DIR".into(),
        );
    }
    Ok(out)
}

pub(crate) fn parse_listen(flag: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{flag} {v:?} is not an IP:port address (e.g. 127.0.0.1:15012)"))
}

fn authority_serve(args: AuthorityServeArgs) -> Result<ExitCode, String> {
    let domain = args.domain.signer_domain.clone();
    if args.watch_interval.0 < signet_proxy::config::MIN_WATCH_INTERVAL {
        return Err(format!(
            "--watch-interval: must be at least {}",
            format_duration(signet_proxy::config::MIN_WATCH_INTERVAL)
        ));
    }
    let kube_flags = [
        (!args.kube.signer_secret.is_empty(), "--signer-secret"),
        (args.kube.kubeconfig.is_some(), "--kubeconfig"),
        (!args.token_audience.is_empty(), "--token-audience"),
        (args.cluster_trust_bundles, "--cluster-trust-bundles"),
        (args.manual_approval, "--manual-approval"),
    ];
    if !args.kubernetes
        && let Some((_, flag)) = kube_flags.iter().find(|(set, _)| *set)
    {
        return Err(format!("{flag} needs --kubernetes"));
    }
    if args.kubernetes && args.bundle.is_none() && !args.cluster_trust_bundles {
        return Err(
            "--kubernetes needs the signers' roots to verify the chains the cluster returns: give --bundle (the mesh config with caCertificates) and/or --cluster-trust-bundles".into(),
        );
    }
    let mut settings = ServerSettings {
        sources: Sources {
            // In Kubernetes mode the serving signer may come from a Secret instead.
            signers: signer_dirs(&args.dirs, &domain, !args.kubernetes)?,
            bundle: args.bundle.clone(),
            signing_policy: args.signing_policy.clone(),
            tokens: args.tokens.clone(),
            signer_domain: domain.clone(),
            cluster: None,
        },
        listen: parse_listen("--listen", &args.listen)?,
        admin: args.admin.as_deref().map(|a| parse_listen("--admin", a)).transpose()?,
        server_name: args.server_name.clone(),
        serving_signer: SignerName::parse(&args.serving_signer, &domain)
            .map_err(|e| format!("--serving-signer: {e}"))?,
        watch_interval: args.watch_interval.0,
        // In Kubernetes mode the CSR may wait up to --csr-timeout for its certificate.
        request_timeout: if args.kubernetes {
            signet_authority::server::REQUEST_TIMEOUT.max(args.csr_timeout.0 + std::time::Duration::from_secs(5))
        } else {
            signet_authority::server::REQUEST_TIMEOUT
        },
    };
    let stop = tokio_util::sync::CancellationToken::new();
    runtime(None)?.block_on(async move {
        if args.kubernetes {
            settings.sources.cluster = Some(crate::kubernetes::authority_cluster(&args, stop.clone()).await?);
        }
        let _stop_watches = stop.drop_guard();
        let server = AuthorityServer::start(settings).await.map_err(|e| e.to_string())?;
        let listeners = serde_json::json!({ "authority": server.addr, "admin": server.admin });
        write_ready_file(args.ready_file.as_deref(), &listeners)?;
        serve_until_signal(|| {
            if let Err(e) = server.reload() {
                tracing::error!("reload failed, keeping the previous signers, bundle, signing policy and tokens: {e}");
            }
        })
        .await;
        tracing::info!("authority shutting down");
        server.shutdown().await;
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn authority_token(args: AuthorityTokenArgs) -> Result<ExitCode, String> {
    let mut file = TokensFile::read_or_empty(&args.tokens).map_err(|e| e.to_string())?;
    let token = file
        .mint(&args.namespace, &args.service_account)
        .map_err(|e| e.to_string())?;
    file.write(&args.tokens).map_err(|e| e.to_string())?;
    match &args.out {
        Some(out) => {
            write_private(out, format!("{token}\n").as_bytes()).map_err(|e| e.to_string())?;
            eprintln!(
                "token for system:serviceaccount:{}:{} written to {} (and added to {})",
                args.namespace,
                args.service_account,
                out.display(),
                args.tokens.display()
            );
        }
        None => println!("{token}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn httpbin(args: HttpbinArgs) -> Result<ExitCode, String> {
    runtime(None)?.block_on(async {
        let server = crate::httpbin::Httpbin::start(args.listen, "httpbin")
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        write_ready_file(
            args.ready_file.as_deref(),
            &serde_json::json!({ "httpbin": server.addr }),
        )?;
        eprintln!("httpbin listening on http://{}/ (Ctrl-C to stop)", server.addr);
        wait_for_signal().await;
        server.stop();
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (Kubernetes) or Ctrl-C.
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
