//! What each subcommand does. Errors come back as one line for `signet: error: ...`.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use signet_certs::{
    CertInfo, IssueOptions, IssuedCertificate, Signer, SignerName, SpiffeId, TrustBundle, WorkloadKey, files,
    format_duration, parse_duration, read_certs, write_private, write_public,
};
use signet_proxy::admin::rfc3339;
use signet_proxy::config::{
    AuthorityFile, IdentityFile, IdentitySource, InboundFile, OutboundFile, ServiceFile, TcpRouteFile, TimeoutsFile,
    TlsFile,
};
use signet_proxy::{ConfigFile, Sidecar};

use crate::cli::{
    AuthorityCommand, AuthorityServeArgs, AuthorityTokenArgs, BundleArgs, CertCommand, CertIssueArgs, CertShowArgs,
    Command, ProxyArgs, SignerCommand, SignerNewArgs,
};

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Signer(SignerCommand::New(args)) => signer_new(args),
        Command::Cert(CertCommand::Issue(args)) => cert_issue(args),
        Command::Cert(CertCommand::Show(args)) => cert_show(args),
        Command::Bundle(args) => bundle(args),
        Command::Authority(AuthorityCommand::Serve(args)) => authority_serve(args),
        Command::Authority(AuthorityCommand::Token(args)) => authority_token(args),
        Command::Bench(crate::cli::BenchCommand::Handshake(args)) => crate::bench::run(*args),
        Command::Bench(crate::cli::BenchCommand::Server(args)) => crate::bench::serve(args),
        Command::Proxy(args) => proxy(*args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Httpbin(args) => {
            let addr = args
                .listen
                .parse()
                .map_err(|_| format!("--listen {:?} is not an IP:port address", args.listen))?;
            runtime(None)?.block_on(async {
                let server = crate::httpbin::Httpbin::start(addr, "httpbin")
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("httpbin listening on http://{}/ (Ctrl-C to stop)", server.addr);
                let _ = tokio::signal::ctrl_c().await;
                Ok::<_, String>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn signer_new(args: SignerNewArgs) -> Result<ExitCode, String> {
    let name = SignerName::parse(&args.name, &args.domain.signer_domain).map_err(|e| e.to_string())?;
    let validity = parse_duration(&args.validity).map_err(|e| format!("--validity: {e}"))?;
    let dir = args.dir.join(name.short());
    if dir.join(files::KEY).exists() && !args.force {
        return Err(format!(
            "{} already holds a signer key; use another --dir or --force to replace it (the old key is lost)",
            dir.display()
        ));
    }
    let signer = Signer::create(name, validity).map_err(|e| e.to_string())?;
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

/// The signer name of a signer directory: `--signer-name`, else the directory's name.
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

/// Makes a key and CSR for `id` and has `signer` sign it: the same path a sidecar's CSR takes.
pub(crate) fn issue(
    signer: &Signer,
    id: &SpiffeId,
    dns: &[String],
    options: &IssueOptions,
) -> Result<(IssuedCertificate, WorkloadKey), String> {
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let csr = key.request(id, dns).map_err(|e| e.to_string())?;
    let issued = signer.sign(&csr.pem, options).map_err(|e| e.to_string())?;
    Ok((issued, key))
}

pub(crate) fn write_identity(out: &Path, issued: &IssuedCertificate, key: &WorkloadKey) -> Result<(), String> {
    write_public(&out.join(files::CERT), issued.chain_pem().as_bytes()).map_err(|e| e.to_string())?;
    write_private(&out.join(files::KEY), key.to_pem().as_bytes()).map_err(|e| e.to_string())?;
    write_public(&out.join(files::CA), issued.roots_pem().as_bytes()).map_err(|e| e.to_string())
}

fn cert_issue(args: CertIssueArgs) -> Result<ExitCode, String> {
    let domain = &args.domain.signer_domain;
    let name = signer_name_of(&args.signer_dir, args.signer.as_deref(), domain)?;
    let signer = Signer::load_dir(&args.signer_dir, name).map_err(|e| e.to_string())?;
    let id: SpiffeId = args.id.parse().map_err(|e| format!("--id: {e}"))?;
    let options = IssueOptions {
        ttl: parse_duration(&args.ttl).map_err(|e| format!("--ttl: {e}"))?,
        backdate: parse_duration(&args.backdate).map_err(|e| format!("--backdate: {e}"))?,
    };
    let (issued, key) = issue(&signer, &id, &args.dns, &options)?;
    write_identity(&args.out, &issued, &key)?;
    println!(
        "issued {id} by signer {} (valid until {}, serial {}) into {}/{{tls.crt,tls.key,ca.crt}}",
        signer.name(),
        rfc3339(issued.leaf.not_after),
        issued.leaf.serial,
        args.out.display()
    );
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
        // A root's subject equal to the chain's last issuer names the signer; the sidecar checks signatures.
        let last = CertInfo::parse(chain.last().map(|c| c.as_ref()).unwrap_or_default()).map_err(|e| e.to_string())?;
        let signers: Vec<String> = bundle
            .entries()
            .iter()
            .filter(|e| {
                e.roots.iter().any(|r| {
                    CertInfo::parse(r)
                        .map(|ri| ri.subject == last.issuer || ri.sha256 == last.sha256)
                        .unwrap_or(false)
                })
            })
            .flat_map(|e| e.signers.iter().map(|s| s.to_string()))
            .collect();
        match signers.as_slice() {
            [] => println!("signer:      none in the bundle (issuer \"{}\")", last.issuer),
            names => println!("signer:      {}", names.join(", ")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bundle(args: BundleArgs) -> Result<ExitCode, String> {
    let domain = &args.domain.signer_domain;
    let mut signers = Vec::new();
    for dir in &args.signers {
        let name = signer_name_of(dir, None, domain)?;
        let ca = dir.join(files::CA);
        let roots = if ca.exists() {
            read_certs(&ca).map_err(|e| e.to_string())?
        } else {
            Signer::load_dir(dir, name.clone())
                .map_err(|e| e.to_string())?
                .roots()
                .to_vec()
        };
        signers.push((name, roots));
    }
    let bundle =
        TrustBundle::from_signers(signers.iter().map(|(n, r)| (n, r.as_slice()))).map_err(|e| e.to_string())?;
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

/// Turns proxy flags into a `ConfigFile` overlay.
fn flags_overlay(args: &ProxyArgs, file_authority: Option<&AuthorityFile>) -> Result<ConfigFile, String> {
    let split = |flag: &str, v: &str| -> Result<(String, String), String> {
        v.split_once('=')
            .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
            .ok_or_else(|| format!("{flag} {v:?}: expected LEFT=RIGHT"))
    };
    let mut over = ConfigFile {
        signer: args.signer.clone(),
        signer_domain: args.signer_domain.clone(),
        trust_bundle: args.bundle.clone(),
        admin: args.admin.clone(),
        ..Default::default()
    };
    // Authority flags refine the config file's authority field by field; --authority starts one.
    let refines = args.authority_ca.is_some() || args.token_file.is_some() || args.authority_server_name.is_some();
    let authority = match (&args.authority, file_authority) {
        (Some(address), base) => Some(AuthorityFile {
            address: address.clone(),
            ca_root: args
                .authority_ca
                .clone()
                .or(base.map(|b| b.ca_root.clone()))
                .ok_or("--authority needs --authority-ca FILE (the root of the authority's certificate)")?,
            server_name: args
                .authority_server_name
                .clone()
                .or(base.and_then(|b| b.server_name.clone())),
            token_file: args.token_file.clone().or(base.and_then(|b| b.token_file.clone())),
        }),
        (None, Some(base)) if refines => Some(AuthorityFile {
            address: base.address.clone(),
            ca_root: args.authority_ca.clone().unwrap_or_else(|| base.ca_root.clone()),
            server_name: args.authority_server_name.clone().or(base.server_name.clone()),
            token_file: args.token_file.clone().or(base.token_file.clone()),
        }),
        (None, None) if refines => {
            return Err(
                "--authority-ca, --token-file and --authority-server-name go with --authority ADDRESS (or identity.authority in the config file)"
                    .into(),
            );
        }
        (None, _) => None,
    };
    if args.cert_dir.is_some()
        || args.cert.is_some()
        || args.key.is_some()
        || args.ca.is_some()
        || authority.is_some()
        || args.id.is_some()
        || !args.dns.is_empty()
        || args.ttl.is_some()
        || args.renew_at.is_some()
    {
        over.identity = Some(IdentityFile {
            cert_dir: args.cert_dir.clone(),
            cert: args.cert.clone(),
            key: args.key.clone(),
            ca: args.ca.clone(),
            authority,
            spiffe_id: args.id.clone(),
            dns: args.dns.clone(),
            ttl: args.ttl.clone(),
            renew_at: args.renew_at,
        });
    }
    over.watch_interval = args.watch_interval.clone();
    if (args.protocol.is_some() || !args.allow.is_empty()) && args.inbound.is_empty() {
        return Err("--protocol and --allow apply to --inbound listeners; give --inbound LISTEN=APP too".into());
    }
    for v in &args.inbound {
        let (listen, app) = split("--inbound", v)?;
        over.inbound.push(InboundFile {
            listen,
            app,
            protocol: args.protocol.unwrap_or_default(),
            allow: args.allow.clone(),
        });
    }
    if args.outbound.is_some() || !args.tcp.is_empty() {
        let mut tcp = Vec::new();
        for v in &args.tcp {
            let (listen, service) = split("--tcp", v)?;
            tcp.push(TcpRouteFile { listen, service });
        }
        over.outbound = Some(OutboundFile {
            http: args.outbound.clone(),
            tcp,
        });
    }
    for v in &args.service {
        let (name, rest) = split("--service", v)?;
        let (address, identity) = match rest.split_once(',') {
            Some((a, id)) => (a.trim().to_string(), Some(id.trim().to_string())),
            None => (rest, None),
        };
        over.services.insert(name, ServiceFile { address, identity });
    }
    if args.handshake_timeout.is_some() || args.connect_timeout.is_some() || args.drain_timeout.is_some() {
        over.timeouts = Some(TimeoutsFile {
            handshake: args.handshake_timeout.clone(),
            connect: args.connect_timeout.clone(),
            drain: args.drain_timeout.clone(),
            idle: None,
        });
    }
    if let Some(x) = &args.xfcc {
        let mode = match x.to_ascii_uppercase().replace('-', "_").as_str() {
            "SANITIZE_SET" => signet_proxy::XfccMode::SanitizeSet,
            "APPEND_FORWARD" => signet_proxy::XfccMode::AppendForward,
            _ => return Err(format!("--xfcc {x:?}: use SANITIZE_SET or APPEND_FORWARD")),
        };
        over.xfcc = Some(mode);
    }
    if args.tls_min_version.is_some() || args.post_quantum || args.no_resumption || args.no_verify_cache {
        let min_version = match args.tls_min_version.as_deref() {
            None => None,
            Some("1.3") => Some(signet_proxy::tls::MinVersion::Tls13),
            Some("1.2") => Some(signet_proxy::tls::MinVersion::Tls12),
            Some(other) => return Err(format!("--tls-min-version {other:?}: use 1.3 or 1.2")),
        };
        over.tls = Some(TlsFile {
            min_version,
            post_quantum: args.post_quantum.then_some(true),
            resumption: args.no_resumption.then_some(false),
            verify_cache: args.no_verify_cache.then_some(false),
        });
    }
    Ok(over)
}

fn proxy(args: ProxyArgs) -> Result<ExitCode, String> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path).map_err(|e| e.to_string())?,
        None => ConfigFile::default(),
    };
    let over = flags_overlay(&args, file.identity.as_ref().and_then(|i| i.authority.as_ref()))?;
    let config = file.overlay(over).resolve().map_err(|e| e.to_string())?;
    let authority = authority_for(&config);
    let rt = runtime(args.workers)?;
    rt.block_on(async move {
        let sidecar = Sidecar::start(config, authority).await.map_err(|e| e.to_string())?;
        serve_until_signal(|| sidecar.reload()).await;
        tracing::info!("shutting down: no new connections, draining open ones");
        sidecar.shutdown().await;
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The authority client for a config that provisions its identity.
pub(crate) fn authority_for(
    config: &signet_proxy::Config,
) -> Option<std::sync::Arc<dyn signet_certs::AuthorityClient>> {
    match &config.identity {
        IdentitySource::Authority(a) => Some(std::sync::Arc::new(signet_authority::GrpcClient {
            address: a.authority.address.clone(),
            server_name: a
                .authority
                .server_name
                .clone()
                .unwrap_or_else(|| signet_authority::DEFAULT_SERVER_NAME.to_string()),
            ca_root: a.authority.ca_root.clone(),
            token_file: a.authority.token_file.clone(),
            timeout: std::time::Duration::from_secs(20),
        })),
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

fn signer_dirs(args: &AuthorityServeArgs) -> Result<Vec<(SignerName, std::path::PathBuf)>, String> {
    let domain = &args.domain.signer_domain;
    let mut out = Vec::new();
    if let Some(parent) = &args.signers_dir {
        let entries = std::fs::read_dir(parent).map_err(|e| format!("--signers-dir {}: {e}", parent.display()))?;
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
            Some((n, d)) => (Some(n), std::path::PathBuf::from(d)),
            None => (None, std::path::PathBuf::from(spec)),
        };
        out.push((signer_name_of(&dir, name, domain)?, dir));
    }
    if out.is_empty() {
        return Err(
            "no signers: give --signers-dir DIR (each subdirectory a signer directory) or --signer-dir DIR".into(),
        );
    }
    Ok(out)
}

fn authority_serve(args: AuthorityServeArgs) -> Result<ExitCode, String> {
    let domain = args.domain.signer_domain.clone();
    let addr = |flag: &str, v: &str| -> Result<std::net::SocketAddr, String> {
        v.parse().map_err(|_| format!("{flag} {v:?} is not an IP:port address"))
    };
    let config = signet_authority::ServerSettings {
        sources: signet_authority::Sources {
            signers: signer_dirs(&args)?,
            bundle: args.bundle.clone(),
            policy: args.signing_policy.clone(),
            tokens: args.tokens.clone(),
            signer_domain: domain.clone(),
        },
        listen: addr("--listen", &args.listen)?,
        admin: args.admin.as_deref().map(|a| addr("--admin", a)).transpose()?,
        server_name: args.server_name.clone(),
        serving_signer: SignerName::parse(&args.serving_signer, &domain)
            .map_err(|e| format!("--serving-signer: {e}"))?,
        watch_interval: parse_duration(&args.watch_interval)
            .map_err(|e| format!("--watch-interval: {e}"))
            .and_then(|d| {
                if d < signet_proxy::config::MIN_WATCH_INTERVAL {
                    Err("--watch-interval: must be at least 50ms".to_string())
                } else {
                    Ok(d)
                }
            })?,
    };
    runtime(None)?.block_on(async move {
        let service = signet_authority::AuthorityServer::start(config).await?;
        serve_until_signal(|| {
            if let Err(e) = service.reload() {
                tracing::error!("reload failed, keeping the previous signers/bundle/policy/tokens: {e}");
            }
        })
        .await;
        tracing::info!("authority shutting down");
        service.shutdown().await;
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn authority_token(args: AuthorityTokenArgs) -> Result<ExitCode, String> {
    let mut file: signet_authority::TokensFile = match std::fs::read_to_string(&args.tokens) {
        Ok(text) => serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("{}: invalid tokens file: {e}", args.tokens.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => signet_authority::TokensFile::default(),
        Err(e) => return Err(format!("{}: {e}", args.tokens.display())),
    };
    let token = signet_authority::new_token();
    let entry = signet_authority::TokenEntry {
        token: token.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
    };
    signet_authority::Tokens::from_entries(std::slice::from_ref(&entry))?;
    file.tokens.push(entry);
    let yaml = serde_yaml_ng::to_string(&file).map_err(|e| e.to_string())?;
    write_private(&args.tokens, yaml.as_bytes()).map_err(|e| e.to_string())?;
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
