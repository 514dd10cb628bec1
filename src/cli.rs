//! Command-line interface. Flags and the Istio-compatible environment variables are read here
//! and nowhere else; they become a `ConfigFile` overlay, then one typed `Config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::commands;

#[derive(Parser, Debug)]
#[command(
    name = "signet",
    version,
    about = "Per-signer mTLS sidecar: each tenant's workloads trust only their own signer",
    long_about = "Signet runs as a sidecar in front of an app (inbound mTLS) and for its calls (outbound mTLS). \
Each sidecar holds a certificate from its tenant's signer and accepts only peers whose chain anchors to that \
same signer, as Istio does with per-namespace cert-manager ClusterIssuers.\n\nStart with: signet demo"
)]
pub struct Cli {
    /// Log filter, e.g. info, warn, signet_proxy=debug (RUST_LOG is honoured too).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and inspect signers (CAs), one per tenant.
    #[command(subcommand)]
    Signer(SignerCommand),
    /// Issue and inspect workload certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print the trust bundle (meshConfig.caCertificates YAML) for signer directories.
    Bundle(BundleArgs),
    /// The authority: Istio's CA API in front of per-tenant signers, and its tokens.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Run a sidecar: inbound mTLS in front of an app, outbound mTLS for its calls.
    Proxy(Box<ProxyArgs>),
    /// Run the two-tenant scenario locally: foo→foo answers, foo→bar fails CERTIFICATE_VERIFY_FAILED.
    Demo(DemoArgs),
    /// Serve a small built-in httpbin (/html, /get, /headers, /status/CODE), the demo's app.
    Httpbin(HttpbinArgs),
    /// Benchmarks: `signet bench handshake` loads a TLS server with full or resumed mTLS handshakes.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum SignerCommand {
    /// Create a self-signed ECDSA P-256 signer in DIR/NAME/{tls.crt,tls.key,ca.crt}.
    New(SignerNewArgs),
}

#[derive(Args, Debug)]
pub struct SignerNewArgs {
    /// Signer name: `foo` (expanded with --signer-domain) or a full `domain/name`.
    pub name: String,
    /// Parent directory; the signer goes into DIR/<short name>.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// How long the CA certificate is valid.
    #[arg(long, default_value = "3650d")]
    pub validity: String,
    /// Replace an existing signer directory (its key is lost).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug, Clone)]
pub struct DomainArg {
    /// Domain for bare signer names (Istio's CERT_SIGNER_DOMAIN).
    #[arg(long = "signer-domain", env = "CERT_SIGNER_DOMAIN", default_value = signet_certs::DEFAULT_SIGNER_DOMAIN)]
    pub signer_domain: String,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a key and CSR for a SPIFFE ID and have a signer sign it; writes tls.crt, tls.key, ca.crt.
    Issue(CertIssueArgs),
    /// Show a certificate file: SPIFFE ID, validity, issuer, and which signer of a bundle it belongs to.
    Show(CertShowArgs),
}

#[derive(Args, Debug)]
pub struct CertIssueArgs {
    /// The signer directory (from `signet signer new`, or a cert-manager secret directory).
    #[arg(long, value_name = "DIR")]
    pub signer_dir: PathBuf,
    /// The signer's name, if it differs from the directory name.
    #[arg(long, value_name = "NAME")]
    pub signer: Option<String>,
    /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/foo/sa/httpbin.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub id: String,
    /// Extra DNS SAN (repeatable), e.g. httpbin.foo, so plain TLS clients such as curl can verify the name.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Lifetime.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Move the validity window into the past (e.g. to make an expired certificate for tests).
    #[arg(long, default_value = "0s")]
    pub backdate: String,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug)]
pub struct CertShowArgs {
    /// A PEM certificate file (tls.crt) or a directory holding tls.crt.
    pub path: PathBuf,
    /// A trust bundle, to name the signer the certificate anchors to.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Connect, handshake (mTLS), optionally GET, close, as fast as the server allows; report rates and latency.
    Handshake(Box<crate::bench::HandshakeArgs>),
    /// A bare tokio-rustls mTLS server on one thread (the in-language ceiling for comparisons).
    Server(crate::bench::ServerArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuthorityCommand {
    /// Serve istio.v1.auth.IstioCertificateService (gRPC over TLS): check CSRs, sign with the namespace's signer.
    Serve(AuthorityServeArgs),
    /// Mint a bearer token for a namespace's service account (the local stand-in for its Kubernetes token).
    Token(AuthorityTokenArgs),
}

#[derive(Args, Debug)]
pub struct AuthorityServeArgs {
    /// A signer directory (repeatable); its name is the signer's short name. NAME=DIR names it explicitly.
    #[arg(long = "signer-dir", value_name = "[NAME=]DIR")]
    pub signer_dir: Vec<String>,
    /// A directory whose subdirectories are signer directories (as `signet signer new --dir` makes them).
    #[arg(long, value_name = "DIR")]
    pub signers_dir: Option<PathBuf>,
    /// Trust bundle: the roots returned with each chain (several per signer during a rotation).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Signing policy: per-namespace signers, default signer, approvable signers, lifetimes, DNS SANs.
    #[arg(long, value_name = "FILE")]
    pub signing_policy: Option<PathBuf>,
    /// Tokens file (token → namespace + service account); see `signet ca token`.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// gRPC listener.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub listen: String,
    /// Admin listener (/requests, /metrics, /ready).
    #[arg(long, value_name = "LISTEN")]
    pub admin: Option<String>,
    /// DNS name in the service's own certificate; clients verify it.
    #[arg(long, default_value = signet_authority::DEFAULT_SERVER_NAME)]
    pub server_name: String,
    /// The signer that issues the service's own certificate.
    #[arg(long, default_value = "istio-system")]
    pub serving_signer: String,
    /// How often signer, bundle, policy and tokens files are checked for changes (SIGHUP reloads at once).
    #[arg(long, default_value = "1s")]
    pub watch_interval: String,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug)]
pub struct AuthorityTokenArgs {
    /// The tokens file to add the token to (created 0600 if missing).
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// Write the token to FILE (0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Signer directories (each with ca.crt); the directory name is the signer's short name.
    #[arg(required = true, value_name = "SIGNER_DIR")]
    pub signers: Vec<PathBuf>,
    /// Write to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug, Default)]
pub struct ProxyArgs {
    /// Sidecar config file (YAML); flags below override it.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory with tls.crt, tls.key and ca.crt (what `signet cert issue` writes).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Certificate chain file, leaf first (overrides --cert-dir).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key file (overrides --cert-dir).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Roots of this sidecar's signer, when no --bundle is given.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Trust bundle (caCertificates YAML, as `signet bundle` prints or Istio's meshConfig holds).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// This workload's signer; only its roots are trusted.
    #[arg(long, env = "ISTIO_META_CERT_SIGNER", value_name = "NAME")]
    pub signer: Option<String>,
    /// Domain for a bare --signer (Istio's CERT_SIGNER_DOMAIN).
    #[arg(long, env = "CERT_SIGNER_DOMAIN", value_name = "DOMAIN")]
    pub signer_domain: Option<String>,
    /// Inbound listener in front of the local app (repeatable).
    #[arg(long = "inbound", value_name = "LISTEN=APP")]
    pub inbound: Vec<String>,
    /// Protocol of the --inbound listeners: tcp (bytes) or http (adds x-forwarded-client-cert).
    #[arg(long, value_name = "tcp|http")]
    pub protocol: Option<signet_proxy::Protocol>,
    /// Accept only these peer SPIFFE IDs on --inbound listeners (repeatable; a trailing * matches a prefix).
    #[arg(long = "allow", value_name = "SPIFFE_ID")]
    pub allow: Vec<String>,
    /// Outbound HTTP proxy listener; the app sets http_proxy=http://LISTEN.
    #[arg(long, value_name = "LISTEN")]
    pub outbound: Option<String>,
    /// Outbound TCP listener tunnelling to one service (repeatable).
    #[arg(long = "tcp", value_name = "LISTEN=SERVICE")]
    pub tcp: Vec<String>,
    /// Service table entry (repeatable): the peer sidecar's address and the identity it must present.
    #[arg(long = "service", value_name = "HOST:PORT=ADDRESS[,SPIFFE_ID]")]
    pub service: Vec<String>,
    /// Admin listener (/ready, /metrics, /certs).
    #[arg(long, value_name = "LISTEN")]
    pub admin: Option<String>,
    /// Time allowed for a TLS handshake.
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Time allowed to connect to a peer sidecar or the app.
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// On SIGTERM/Ctrl-C, how long open connections may finish.
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// x-forwarded-client-cert handling on http inbound: SANITIZE_SET (default) or APPEND_FORWARD.
    #[arg(long, value_name = "MODE")]
    pub xfcc: Option<String>,
    /// Lowest TLS version: 1.3 (default) or 1.2 (ECDHE+AEAD suites only).
    #[arg(long, value_name = "VERSION")]
    pub tls_min_version: Option<String>,
    /// Offer the X25519MLKEM768 hybrid key exchange first.
    #[arg(long)]
    pub post_quantum: bool,
    /// Turn off TLS 1.3 session resumption (on by default; sessions never outlive a trust change).
    #[arg(long)]
    pub no_resumption: bool,
    /// Verify every peer chain in full (by default a chain verified under the current trust is remembered).
    #[arg(long)]
    pub no_verify_cache: bool,
    /// Data-plane worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Provision the certificate from this authority (host:port) instead of files.
    #[arg(long, value_name = "ADDRESS")]
    pub authority: Option<String>,
    /// Root(s) of the authority's certificate (e.g. signers/istio-system/ca.crt).
    #[arg(long, value_name = "FILE")]
    pub authority_ca: Option<PathBuf>,
    /// The DNS name in the authority's certificate.
    #[arg(long, value_name = "NAME")]
    pub authority_server_name: Option<String>,
    /// The workload's bearer token file (re-read on every request).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The SPIFFE ID to request.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub id: Option<String>,
    /// DNS SAN to request (repeatable; the signer's policy must allow it).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Requested certificate lifetime (Istio's SECRET_TTL).
    #[arg(long, env = "SECRET_TTL", value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Renew at this fraction of the lifetime (Istio's SECRET_GRACE_PERIOD_RATIO).
    #[arg(long, env = "SECRET_GRACE_PERIOD_RATIO", value_name = "RATIO")]
    pub renew_at: Option<f64>,
    /// How often certificate files and the trust bundle are checked for changes (SIGHUP reloads at once).
    #[arg(long, value_name = "DURATION")]
    pub watch_interval: Option<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// After the scenario, keep everything running and print curl commands to try (Ctrl-C stops).
    #[arg(long)]
    pub keep_running: bool,
    /// Keep the generated signers, certificates and bundle in DIR (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Show the sidecars' logs (rejections, failures) on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct HttpbinArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Demo(d) if !d.verbose => "error",
        _ => "info",
    };
    init_logging(cli.log_level.as_deref(), default_level);
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("signet: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(flag: Option<&str>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = flag
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
