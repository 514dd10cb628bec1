//! Command-line interface. Flags and the Istio-compatible environment variables are read here
//! and nowhere else. A sidecar's flags become one `ConfigFile` layer, laid over the config
//! file's, then resolved once into the typed `Config` (see `signet_proxy::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use signet_certs::{HumanDuration, IdPattern, MinVersion, SpiffeId};
use signet_proxy::config::{
    AuthorityFile, CaptureFile, IdentityFile, InboundFile, LimitsFile, OutboundFile, ServiceFile, TcpRouteFile,
    TimeoutsFile, TlsFile,
};
use signet_proxy::{ConfigFile, Protocol, Setting, XfccMode};

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
    #[command(subcommand)]
    pub command: Command,
    /// Log filter: a level, and/or TARGET=LEVEL pairs, e.g. warn or info,signet_proxy=debug (RUST_LOG is honoured too) [default: info].
    #[arg(long, global = true, value_name = "FILTER", display_order = 1000)]
    pub log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the two-tenant scenario locally: foo→foo answers, foo→bar fails CERTIFICATE_VERIFY_FAILED.
    Demo(DemoArgs),
    /// Create signers (CAs), one per tenant.
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
    /// Install or remove the rules that redirect a network namespace's TCP to the sidecar (istio-iptables).
    Iptables(crate::iptables::IptablesArgs),
    /// Serve a small built-in httpbin (/html, /get, /headers, /ip, /status/CODE, /bytes/N), the demo's app.
    Httpbin(HttpbinArgs),
    /// Benchmarks: `signet bench handshake` loads a TLS server with full or resumed mTLS handshakes.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum SignerCommand {
    /// Create a self-signed ECDSA P-256 signer in DIR/NAME/{tls.crt,tls.key,ca.crt}.
    New(SignerNewArgs),
    /// Sign approved Kubernetes CSRs (certificates.k8s.io/v1) for these signers, as cert-manager does.
    Controller(SignerControllerArgs),
}

/// Where signers' keys are on disk (cert-manager's CA secret layout).
#[derive(Args, Debug, Default)]
pub struct SignerDirArgs {
    /// A signer directory (repeatable); its name is the signer's short name. NAME=DIR names it explicitly.
    #[arg(long = "signer-dir", value_name = "[NAME=]DIR")]
    pub signer_dir: Vec<String>,
    /// A directory whose subdirectories are signer directories (as `signet signer new --dir` makes them).
    #[arg(long, value_name = "DIR")]
    pub signers_dir: Option<PathBuf>,
}

/// Reaching the Kubernetes API.
#[derive(Args, Debug)]
pub struct KubeArgs {
    /// Kubeconfig file [default: $KUBECONFIG, ~/.kube/config, else the pod's service account].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// A signer whose key is a Kubernetes Secret in cert-manager's CA layout (tls.crt, tls.key, ca.crt) (repeatable).
    #[arg(long = "signer-secret", value_name = "NAME=NAMESPACE/SECRET")]
    pub signer_secret: Vec<String>,
    /// How often signer Secrets are read again (a rotated CA key is picked up).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub secret_interval: HumanDuration,
}

#[derive(Args, Debug)]
pub struct SignerControllerArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub dirs: SignerDirArgs,
    /// The longest certificate issued; a request for longer (expirationSeconds, or the request-duration annotation) gets this.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub max_ttl: HumanDuration,
    /// Publish each signer's roots as a ClusterTrustBundle (certificates.k8s.io/v1beta1) named <signer>:signet.
    #[arg(long)]
    pub publish_trust_bundles: bool,
    /// Also sign the PodCertificateRequests (certificates.k8s.io/v1, Kubernetes 1.37+) of its signers: pod certificates a kubelet asks for, with the pod's SPIFFE ID. Needs get/list/watch on podcertificaterequests and update on podcertificaterequests/status.
    #[arg(long)]
    pub pod_certificates: bool,
    /// The trust domain of the SPIFFE IDs in pod certificates.
    #[arg(
        long,
        env = "TRUST_DOMAIN",
        value_name = "TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    /// Admin listener (/metrics, /ready); off unless given.
    #[arg(long, value_name = "LISTEN")]
    pub admin: Option<String>,
    /// How often signer directories are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub watch_interval: HumanDuration,
    /// Once started, write the admin address to FILE as JSON ({"admin": ...}).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug)]
pub struct SignerNewArgs {
    /// Signer name: `foo` (expanded with --signer-domain) or a full `domain/name`.
    pub name: String,
    /// Parent directory; the signer directory is DIR/<short name>.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// How long the signer's CA certificate is valid.
    #[arg(long, value_name = "DURATION", default_value = "3650d")]
    pub validity: HumanDuration,
    /// Replace an existing signer directory (its key is lost).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug, Clone)]
pub struct DomainArg {
    /// Domain for bare signer names (Istio's CERT_SIGNER_DOMAIN).
    #[arg(long = "signer-domain", value_name = "DOMAIN", env = "CERT_SIGNER_DOMAIN", default_value = signet_certs::DEFAULT_SIGNER_DOMAIN)]
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
    /// The signer directory: made by `signet signer new`, or a cert-manager secret with tls.crt, tls.key, ca.crt.
    #[arg(long, value_name = "DIR")]
    pub signer_dir: PathBuf,
    /// The signer's name, if it differs from the signer directory's name.
    #[arg(long, value_name = "NAME")]
    pub signer: Option<String>,
    /// The workload's SPIFFE ID: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub id: SpiffeId,
    /// Extra DNS SAN (repeatable), e.g. httpbin.foo, so plain TLS clients such as curl can verify the name.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Lifetime of the certificate.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub ttl: HumanDuration,
    /// Move the validity window into the past (e.g. to make an expired certificate for tests).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub backdate: HumanDuration,
    /// Output directory (tls.crt, tls.key with mode 0600, ca.crt).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug)]
pub struct CertShowArgs {
    /// A PEM certificate file (tls.crt) or a directory holding tls.crt.
    pub path: PathBuf,
    /// A trust bundle, to name the signer the certificate anchors to (checked by signature).
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
    Serve(Box<AuthorityServeArgs>),
    /// Mint a bearer token for a namespace's service account (the local stand-in for its Kubernetes token).
    Token(AuthorityTokenArgs),
}

#[derive(Args, Debug)]
pub struct AuthorityServeArgs {
    #[command(flatten)]
    pub dirs: SignerDirArgs,
    /// Trust bundle: the roots returned with each chain (several per signer during a rotation).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Signing policy (YAML): per-namespace signers, default signer, approvable signers, lifetimes, DNS SANs.
    #[arg(long, value_name = "FILE")]
    pub signing_policy: Option<PathBuf>,
    /// Tokens file (token → namespace + service account); see `signet authority token`. Not with --kubernetes.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub tokens: Option<PathBuf>,
    /// Kubernetes mode, as istiod's RA: callers are authenticated by TokenReview and each CSR is signed
    /// through the certificates.k8s.io/v1 API (by cert-manager or `signet signer controller`).
    #[arg(long)]
    pub kubernetes: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// With --kubernetes: audience a caller's token must be valid for (repeatable) [default: istio-ca].
    #[arg(
        long = "token-audience",
        value_name = "AUDIENCE",
        env = "TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub token_audience: Vec<String>,
    /// With --kubernetes: how long a CSR may wait for its certificate before the request fails (retriably).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub csr_timeout: HumanDuration,
    /// With --kubernetes: also take signers' roots from ClusterTrustBundles (by spec.signerName).
    #[arg(long)]
    pub cluster_trust_bundles: bool,
    /// With --kubernetes: do not approve CSRs; leave each to a person (kubectl certificate approve/deny)
    /// or another approver, within --csr-timeout.
    #[arg(long)]
    pub manual_approval: bool,
    /// gRPC listener.
    #[arg(long, value_name = "LISTEN", default_value = "127.0.0.1:15012")]
    pub listen: String,
    /// Admin listener (/requests, /metrics, /ready); off unless given.
    #[arg(long, value_name = "LISTEN")]
    pub admin: Option<String>,
    /// DNS name in the authority's own certificate; clients verify it.
    #[arg(long, value_name = "NAME", default_value = signet_certs::AUTHORITY_SERVER_NAME)]
    pub server_name: String,
    /// The signer that issues the authority's own certificate.
    #[arg(long, value_name = "NAME", default_value = "istio-system")]
    pub serving_signer: String,
    /// How often signer directories, bundle, signing policy and tokens are checked for changes (SIGHUP reloads at once).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub watch_interval: HumanDuration,
    /// Once listening, write the bound addresses to FILE as JSON ({"authority": ..., "admin": ...}).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub domain: DomainArg,
}

#[derive(Args, Debug)]
pub struct AuthorityTokenArgs {
    /// The tokens file to add the token to (created with mode 0600 if missing).
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// The service account's namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: String,
    /// The service account.
    #[arg(long, value_name = "NAME")]
    pub service_account: String,
    /// Write the token to FILE (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Signer directories (tls.crt, tls.key, ca.crt); each directory's name is its signer's short name.
    #[arg(required = true, value_name = "SIGNER_DIR")]
    pub signers: Vec<PathBuf>,
    /// Write to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub domain: DomainArg,
}

/// `signet proxy`. Every flag has a YAML twin (see README, "Sidecar configuration"); flags win.
#[derive(Args, Debug, Default)]
pub struct ProxyArgs {
    /// Sidecar config file (YAML); the flags below override it.
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
    /// Roots of this sidecar's signer, when no --bundle is given (overrides --cert-dir's ca.crt).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Trust bundle (caCertificates YAML, as `signet bundle` writes it or Istio's meshConfig holds it).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of this sidecar's signer, reloaded like the bundle; peers they list are refused.
    #[arg(long, value_name = "FILE")]
    pub crl: Option<PathBuf>,
    /// This workload's signer name; only its roots are trusted. Optional with --bundle: read off the certificate.
    #[arg(long, env = "ISTIO_META_CERT_SIGNER", value_name = "NAME")]
    pub signer: Option<String>,
    /// Domain for a bare --signer (Istio's CERT_SIGNER_DOMAIN) [default: clusterissuers.cert-manager.io].
    #[arg(long, env = "CERT_SIGNER_DOMAIN", value_name = "DOMAIN")]
    pub signer_domain: Option<String>,
    /// Inbound listener in front of the local app (repeatable), e.g. 127.0.0.1:15006=127.0.0.1:8000.
    #[arg(long = "inbound", value_name = "LISTEN=APP")]
    pub inbound: Vec<String>,
    /// Protocol of the --inbound listeners: tcp (copy bytes) or http (adds x-forwarded-client-cert) [default: tcp].
    #[arg(long, value_name = "tcp|http")]
    pub protocol: Option<Protocol>,
    /// Accept only these peers on --inbound listeners (repeatable; spiffe://td/ns/foo/* matches a namespace).
    #[arg(long = "allow", value_name = "SPIFFE_ID")]
    pub allow: Vec<IdPattern>,
    /// Outbound HTTP proxy listener; the app sets http_proxy=http://LISTEN.
    #[arg(long, value_name = "LISTEN")]
    pub outbound: Option<String>,
    /// Outbound TCP listener tunnelling to one service of the table (repeatable).
    #[arg(long = "tcp", value_name = "LISTEN=SERVICE")]
    pub tcp: Vec<String>,
    /// Service table entry (repeatable): where the peer sidecar listens and the identity it must present.
    #[arg(long = "service", value_name = "HOST:PORT=ADDRESS[,SPIFFE_ID]")]
    pub service: Vec<String>,
    /// Inbound listeners (--inbound, --capture-inbound) take mTLS only (strict) or plaintext too (permissive, for migrations) [default: strict].
    #[arg(long, value_name = "MODE")]
    pub inbound_mode: Option<signet_proxy::config::InboundMode>,
    /// Listener for the app's outbound connections redirected by `signet iptables` (Istio: 0.0.0.0:15001).
    #[arg(long, value_name = "LISTEN")]
    pub capture_outbound: Option<String>,
    /// Listener for inbound connections redirected by `signet iptables` (Istio: 0.0.0.0:15006); each goes to the app on 127.0.0.1 at the port it was sent to.
    #[arg(long, value_name = "LISTEN")]
    pub capture_inbound: Option<String>,
    /// Captured connections to destinations not in the service table: passthrough or block [default: passthrough].
    #[arg(long, value_name = "MODE")]
    pub unknown_destinations: Option<signet_proxy::config::UnknownDestinations>,
    /// How long the captured outbound waits for the app's first bytes before taking it for a server-first protocol [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    pub sniff_timeout: Option<HumanDuration>,
    /// How the captured outbound carries a service of the table (repeatable): auto (by the app's first bytes), http or tcp (a byte tunnel), e.g. httpbin.bar:8000=tcp.
    #[arg(long = "service-protocol", value_name = "HOST:PORT=PROTOCOL")]
    pub service_protocol: Vec<String>,
    /// A virtual ip:port the app may dial for a service of the table (repeatable), e.g. httpbin.foo:8000=10.96.0.10:8000.
    #[arg(long = "service-address", value_name = "HOST:PORT=IP:PORT")]
    pub service_address: Vec<String>,
    /// Admin listener (/ready, /metrics, /certs, /listeners); off unless given.
    #[arg(long, value_name = "LISTEN")]
    pub admin: Option<String>,
    /// Time allowed for a TLS handshake [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<HumanDuration>,
    /// Time allowed to connect to a peer sidecar or the app [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<HumanDuration>,
    /// On SIGTERM/Ctrl-C, how long open connections may finish [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<HumanDuration>,
    /// An HTTP connection with no request in flight for this long is closed [default: 90s].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,
    /// A request's headers (and a connection's first request) must arrive within this [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub header_read_timeout: Option<HumanDuration>,
    /// A TCP tunnel with no byte either way for this long is closed [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub tcp_idle_timeout: Option<HumanDuration>,
    /// Connections are closed at this age, HTTP ones after their requests in flight [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub max_connection_age: Option<HumanDuration>,
    /// Connections each data listener may hold [default: what the file-descriptor limit allows].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// The largest request header block in bytes, every listener, h1 and h2; larger gets 431 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// x-forwarded-client-cert on http inbound: SANITIZE_SET or APPEND_FORWARD [default: SANITIZE_SET].
    #[arg(long, value_name = "MODE")]
    pub xfcc: Option<XfccMode>,
    /// Lowest TLS version: 1.3 or 1.2 (ECDHE+AEAD suites only) [default: 1.3].
    #[arg(long, value_name = "VERSION")]
    pub tls_min_version: Option<MinVersion>,
    /// Offer the X25519MLKEM768 hybrid key exchange first.
    #[arg(long)]
    pub post_quantum: bool,
    /// Turn off TLS 1.3 session resumption (on by default; sessions never outlive a trust change).
    #[arg(long)]
    pub no_resumption: bool,
    /// Verify every peer chain in full (by default a chain verified under the current trust is remembered).
    #[arg(long)]
    pub no_verify_cache: bool,
    /// Data-plane worker threads [default: one per CPU; 1 runs a current-thread runtime].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Provision the certificate from this authority (host:port) instead of files.
    #[arg(long, value_name = "ADDRESS")]
    pub authority: Option<String>,
    /// Root(s) of the authority's certificate (e.g. signers/istio-system/ca.crt).
    #[arg(long, value_name = "FILE")]
    pub authority_ca: Option<PathBuf>,
    /// The DNS name in the authority's certificate [default: signet-authority.istio-system.svc].
    #[arg(long, value_name = "NAME")]
    pub authority_server_name: Option<String>,
    /// The workload's bearer token file (re-read on every request).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The SPIFFE ID to request from the authority [default, in a pod: spiffe://TRUST_DOMAIN/ns/POD_NAMESPACE/sa/SERVICE_ACCOUNT].
    #[arg(long, value_name = "SPIFFE_ID")]
    pub id: Option<SpiffeId>,
    /// The pod's namespace (downward API metadata.namespace), for the default --id.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// The pod's service account (downward API spec.serviceAccountName), for the default --id.
    #[arg(long, env = "SERVICE_ACCOUNT", value_name = "NAME")]
    pub service_account: Option<String>,
    /// The mesh's trust domain, for the default --id [default: cluster.local].
    #[arg(long, env = "TRUST_DOMAIN", value_name = "TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// DNS SAN to request (repeatable; the signing policy must allow it).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Requested certificate lifetime (Istio's SECRET_TTL) [default: the signing policy's].
    #[arg(long, env = "SECRET_TTL", value_name = "DURATION")]
    pub ttl: Option<HumanDuration>,
    /// Renew at this fraction of the lifetime (Istio's SECRET_GRACE_PERIOD_RATIO) [default: 0.5].
    #[arg(long, env = "SECRET_GRACE_PERIOD_RATIO", value_name = "RATIO")]
    pub renew_at: Option<f64>,
    /// How often certificate files and the trust bundle are checked for changes (SIGHUP: at once) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub watch_interval: Option<HumanDuration>,
    /// Once every listener is bound, write their addresses to FILE as JSON (as /listeners answers).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Also accept peers of this trust domain (repeatable; by default only the own trust domain, unless the bundle names trust domains).
    #[arg(long = "trust-domain-alias", value_name = "TRUST_DOMAIN")]
    pub trust_domain_alias: Vec<String>,
}

impl ProxyArgs {
    /// The flags as one configuration layer: no logic beyond splitting `LEFT=RIGHT` values.
    /// The identity a pod's sidecar requests when none is configured, as Istio's agent derives
    /// it: `spiffe://<TRUST_DOMAIN>/ns/<POD_NAMESPACE>/sa/<SERVICE_ACCOUNT>`. Applied only when
    /// the merged config provisions from an authority and names no identity.
    pub fn pod_identity(&self, merged: &mut ConfigFile) -> Result<(), String> {
        let Some(identity) = merged.identity.as_mut() else {
            return Ok(());
        };
        if identity.authority.is_none() || identity.spiffe_id.is_some() {
            return Ok(());
        }
        match (&self.pod_namespace, &self.service_account) {
            (Some(ns), Some(sa)) => {
                let td = self.trust_domain.as_deref().unwrap_or("cluster.local");
                let id = SpiffeId::workload(td, ns, sa).map_err(|e| {
                    format!("the pod identity (POD_NAMESPACE {ns:?}, SERVICE_ACCOUNT {sa:?}, TRUST_DOMAIN {td:?}): {e}")
                })?;
                identity.spiffe_id = Some(id);
                Ok(())
            }
            (Some(_), None) => Err("POD_NAMESPACE is set but SERVICE_ACCOUNT is not; set both (downward API: metadata.namespace and spec.serviceAccountName), or give --id".into()),
            (None, Some(_)) => Err("SERVICE_ACCOUNT is set but POD_NAMESPACE is not; set both (downward API: metadata.namespace and spec.serviceAccountName), or give --id".into()),
            (None, None) => Ok(()),
        }
    }

    pub fn layer(&self) -> Result<ConfigFile, String> {
        let split = |flag: &str, v: &str| -> Result<(String, String), String> {
            v.split_once('=')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
                .ok_or_else(|| format!("{flag} {v:?}: expected LEFT=RIGHT"))
        };
        if (self.protocol.is_some() || !self.allow.is_empty()) && self.inbound.is_empty() {
            return Err("--protocol and --allow apply to --inbound listeners; give --inbound LISTEN=APP too".into());
        }
        let mut inbound = Vec::new();
        for v in &self.inbound {
            let (listen, app) = split("--inbound", v)?;
            inbound.push(InboundFile {
                listen,
                app,
                protocol: self.protocol.unwrap_or_default(),
                allow: self.allow.clone(),
                mode: self.inbound_mode.unwrap_or_default(),
            });
        }
        let mut tcp = Vec::new();
        for v in &self.tcp {
            let (listen, service) = split("--tcp", v)?;
            tcp.push(TcpRouteFile { listen, service });
        }
        let mut services = std::collections::BTreeMap::new();
        for v in &self.service {
            let (name, rest) = split("--service", v)?;
            let (address, identity) = match rest.split_once(',') {
                Some((a, id)) => (
                    a.trim().to_string(),
                    Some(id.trim().parse().map_err(|e| format!("--service {v:?}: {e}"))?),
                ),
                None => (rest, None),
            };
            services.insert(
                name,
                ServiceFile {
                    address,
                    identity,
                    addresses: Vec::new(),
                    protocol: None,
                },
            );
        }
        for v in &self.service_address {
            let (name, address) = split("--service-address", v)?;
            let entry = services
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .map(|(_, s)| s)
                .ok_or_else(|| format!("--service-address {v:?}: {name} is not a --service; give --service {name}=ADDRESS[,SPIFFE_ID] too"))?;
            entry.addresses.push(address);
        }
        for v in &self.service_protocol {
            let (name, protocol) = split("--service-protocol", v)?;
            let protocol = protocol.parse().map_err(|e| format!("--service-protocol {v:?}: {e}"))?;
            let entry = services
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .map(|(_, s)| s)
                .ok_or_else(|| format!("--service-protocol {v:?}: {name} is not a --service; give --service {name}=ADDRESS[,SPIFFE_ID] too"))?;
            entry.protocol = Some(protocol);
        }
        let capture = CaptureFile {
            outbound: self.capture_outbound.clone(),
            inbound: self.capture_inbound.clone(),
            inbound_allow: Vec::new(),
            inbound_mode: self.inbound_mode,
            unknown_destinations: self.unknown_destinations,
            sniff_timeout: self.sniff_timeout,
        };
        if self.inbound_mode.is_some() && self.inbound.is_empty() && self.capture_inbound.is_none() {
            return Err("--inbound-mode applies to inbound listeners; give --inbound LISTEN=APP or --capture-inbound LISTEN too".into());
        }
        let names_capture = capture.outbound.is_some()
            || capture.inbound.is_some()
            || capture.unknown_destinations.is_some()
            || capture.sniff_timeout.is_some();
        let authority = AuthorityFile {
            address: self.authority.clone(),
            ca: self.authority_ca.clone(),
            server_name: self.authority_server_name.clone(),
            token_file: self.token_file.clone(),
        };
        let names_authority = authority.address.is_some()
            || authority.ca.is_some()
            || authority.server_name.is_some()
            || authority.token_file.is_some();
        let identity = IdentityFile {
            cert_dir: self.cert_dir.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            authority: names_authority.then_some(authority),
            spiffe_id: self.id.clone(),
            dns: self.dns.clone(),
            ttl: self.ttl,
            renew_at: self.renew_at,
        };
        let names_identity = identity.cert_dir.is_some()
            || identity.cert.is_some()
            || identity.key.is_some()
            || identity.ca.is_some()
            || identity.authority.is_some()
            || identity.spiffe_id.is_some()
            || !identity.dns.is_empty()
            || identity.ttl.is_some()
            || identity.renew_at.is_some();
        let timeouts = TimeoutsFile {
            handshake: self.handshake_timeout,
            connect: self.connect_timeout,
            drain: self.drain_timeout,
            idle: self.idle_timeout,
            header_read: self.header_read_timeout,
            tcp_idle: self.tcp_idle_timeout,
            max_connection_age: self.max_connection_age,
        };
        let limits = LimitsFile {
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
        };
        let tls = TlsFile {
            min_version: self.tls_min_version,
            post_quantum: self.post_quantum.then_some(true),
            resumption: self.no_resumption.then_some(false),
            verify_cache: self.no_verify_cache.then_some(false),
        };
        Ok(ConfigFile {
            signer: self.signer.clone(),
            signer_domain: self.signer_domain.clone(),
            identity: names_identity.then_some(identity),
            trust_bundle: self.bundle.clone(),
            crl: self.crl.clone(),
            inbound,
            outbound: (self.outbound.is_some() || !tcp.is_empty()).then(|| OutboundFile {
                http: self.outbound.clone(),
                tcp,
            }),
            capture: names_capture.then_some(capture),
            services,
            admin: self.admin.clone(),
            timeouts: (timeouts.handshake.is_some()
                || timeouts.connect.is_some()
                || timeouts.drain.is_some()
                || timeouts.idle.is_some()
                || timeouts.header_read.is_some()
                || timeouts.tcp_idle.is_some()
                || timeouts.max_connection_age.is_some())
            .then_some(timeouts),
            limits: (limits.max_connections.is_some() || limits.max_header_bytes.is_some()).then_some(limits),
            xfcc: self.xfcc,
            tls: (tls.min_version.is_some()
                || tls.post_quantum.is_some()
                || tls.resumption.is_some()
                || tls.verify_cache.is_some())
            .then_some(tls),
            watch_interval: self.watch_interval,
            trust_domain_aliases: self.trust_domain_alias.clone(),
        })
    }
}

/// The flag that sets a setting, if there is one.
fn flag_of(setting: &Setting) -> Option<&'static str> {
    Some(match setting {
        Setting::Signer => "--signer",
        Setting::CertDir => "--cert-dir",
        Setting::Cert => "--cert",
        Setting::Key => "--key",
        Setting::Ca => "--ca",
        Setting::TrustBundle => "--bundle",
        Setting::Crl => "--crl",
        Setting::AuthorityAddress => "--authority",
        Setting::AuthorityCa => "--authority-ca",
        Setting::AuthorityServerName => "--authority-server-name",
        Setting::TokenFile => "--token-file",
        Setting::SpiffeId => "--id",
        Setting::Dns => "--dns",
        Setting::Ttl => "--ttl",
        Setting::RenewAt => "--renew-at",
        Setting::Inbound(_) | Setting::InboundListen(_) | Setting::InboundApp(_) => "--inbound",
        Setting::OutboundHttp => "--outbound",
        Setting::OutboundTcp(_) => "--tcp",
        Setting::CaptureOutbound => "--capture-outbound",
        Setting::CaptureInbound => "--capture-inbound",
        Setting::SniffTimeout => "--sniff-timeout",
        Setting::Service(_) => "--service",
        Setting::Admin => "--admin",
        Setting::WatchInterval => "--watch-interval",
        Setting::TrustDomainAlias(_) => "--trust-domain-alias",
        Setting::Timeout("handshake") => "--handshake-timeout",
        Setting::Timeout("connect") => "--connect-timeout",
        Setting::Timeout("drain") => "--drain-timeout",
        Setting::Timeout("idle") => "--idle-timeout",
        Setting::Timeout("headerRead") => "--header-read-timeout",
        Setting::Timeout("tcpIdle") => "--tcp-idle-timeout",
        Setting::Timeout("maxConnectionAge") => "--max-connection-age",
        Setting::Limit("maxConnections") => "--max-connections",
        Setting::Limit("maxHeaderBytes") => "--max-header-bytes",
        _ => return None,
    })
}

/// A setting as errors name it for someone at the command line: the YAML path and the flag.
pub fn setting_name(setting: &Setting) -> String {
    match flag_of(setting) {
        Some(flag) => format!("{} ({flag})", setting.yaml()),
        None => setting.yaml(),
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Each workload in its own network namespace with transparent capture (iptables), and the task's
    /// `curl http://httpbin.foo:8000/html` run as written in the curl pod. Needs root.
    #[arg(long)]
    pub pods: bool,
    /// After the scenario, keep everything running and print curl commands to try (Ctrl-C stops).
    #[arg(long)]
    pub keep_running: bool,
    /// Keep the generated signers, certificates and bundle in DIR [default: a temporary directory, removed at exit].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Show the sidecars' logs (rejections, failures) on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct HttpbinArgs {
    /// Where to listen.
    #[arg(long, value_name = "LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Once listening, write the bound address to FILE as JSON ({"httpbin": ...}).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value is one line, like every other error; usage errors keep clap's help.
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("signet: {first}");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let default_level = match &cli.command {
        Command::Demo(d) if !d.verbose => "error",
        _ => "info",
    };
    if let Err(e) = init_logging(cli.log_level.as_deref(), default_level) {
        eprintln!("signet: error: {e}");
        return ExitCode::from(2);
    }
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("signet: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `--log-level`, else `RUST_LOG`, else `default_level`.
fn init_logging(flag: Option<&str>, default_level: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let parse = |source: &str, text: &str| {
        text.parse::<Targets>()
            .map_err(|e| format!("{source} {text:?}: {e}; use a level (error, warn, info, debug, trace) and/or TARGET=LEVEL pairs, e.g. info,signet_proxy=debug"))
    };
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (source, text) = match (flag, &env) {
        (Some(f), _) => ("--log-level", f),
        (None, Some(env)) => ("RUST_LOG", env.as_str()),
        (None, None) => ("the default log level", default_level),
    };
    let mut filter = parse(source, text)?;
    // kube-rs logs each failed request itself, in its own words; Signet reports the failure in
    // one line of its own. Its logs show only when asked for by name (kube_client=debug).
    if !text.contains("kube") {
        filter = filter.with_target("kube_client", tracing_subscriber::filter::LevelFilter::OFF);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).try_init();
    Ok(())
}
