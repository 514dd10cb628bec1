//! `TlsStore`: the seam between whoever obtains certificates and the listeners.
//!
//! Issuance calls [`Credentials::set_trust`] / [`Credentials::set_certificate`]; the store checks
//! the new material against the signer's roots, builds every `ServerConfig`/`ClientConfig` the
//! sidecar needs once, and publishes them together through `arc-swap`. Each accept or connect
//! loads the current state (an `Arc` clone, no lock, no rebuild); before the first certificate,
//! or once it has expired, there is no state and handshakes fail closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};
use signet_certs::{CertInfo, SignerName, SpiffeId};

use super::resume::Sessions;
use super::verify::{AllowList, PeerClientVerifier, PeerServerVerifier, Trust};
use super::{CryptoPolicy, TlsError};

/// The seam issuance uses; it knows nothing of rustls configs.
pub trait Credentials: Send + Sync {
    /// Replaces the roots this sidecar trusts (and the other signers it can name). The current
    /// certificate stays in use; the result says whether it still chains to the new roots (if
    /// not, the caller should obtain a new one).
    fn set_trust(&self, trust: Trust) -> Result<TrustUpdate, TlsError>;
    /// Installs a new certificate (leaf first) and key, together with new trust when given,
    /// after checking the chain against that trust. On error nothing changes.
    fn set_certificate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: Option<Trust>,
    ) -> Result<Arc<WorkloadIdentity>, TlsError>;
}

/// What a trust update means for the current certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustUpdate {
    /// A certificate is held and it chains to the new roots.
    pub certificate_chains: bool,
}

/// The published identity, for the admin endpoint, XFCC and logs.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    pub id: SpiffeId,
    pub signer: SignerName,
    pub chain: Vec<CertInfo>,
    pub roots: Vec<CertInfo>,
    pub trust_version: String,
    /// SHA-256 of the root the chain anchors to.
    pub anchor_sha256: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// TLS settings of one inbound listener.
#[derive(Clone, Debug, Default)]
pub struct InboundTls {
    pub alpn: Vec<Vec<u8>>,
    pub allow: AllowList,
}

/// Which ALPN an outbound connection offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAlpn {
    /// h2 and http/1.1 (the HTTP outbound proxy).
    Http,
    /// None: raw TCP tunnels.
    None,
}

/// Everything that shapes the configs besides the certificate and the trust.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    pub policy: CryptoPolicy,
    /// TLS 1.3 session resumption, bound to the trust version (see `resume`).
    pub resumption: bool,
    /// Remember verified peer chains (one signature check per reconnect instead of two).
    pub verify_cache: bool,
    /// One entry per inbound listener, by index.
    pub inbound: Vec<InboundTls>,
    /// The (expected peer identity, ALPN) pairs outbound connections will ask for.
    pub outbound: Vec<(Option<SpiffeId>, ClientAlpn)>,
}

/// One published generation of configs.
pub struct TlsState {
    pub identity: Arc<WorkloadIdentity>,
    pub generation: u64,
    servers: Vec<Arc<ServerConfig>>,
    clients: HashMap<(Option<SpiffeId>, ClientAlpn), Arc<ClientConfig>>,
}

impl TlsState {
    pub fn server(&self, listener: usize) -> Option<Arc<ServerConfig>> {
        self.servers.get(listener).cloned()
    }

    pub fn client(&self, expected: &Option<SpiffeId>, alpn: ClientAlpn) -> Option<Arc<ClientConfig>> {
        self.clients.get(&(expected.clone(), alpn)).cloned()
    }

    /// False once the certificate has expired: an expired certificate is never presented.
    pub fn is_valid_now(&self) -> bool {
        SystemTime::now() <= self.identity.not_after
    }
}

struct Inputs {
    trust: Option<Arc<Trust>>,
    cert: Option<Arc<CertifiedKey>>,
    /// Ticket keys and client sessions, kept while the trust version stays the same.
    sessions: Option<Sessions>,
    generation: u64,
}

pub struct TlsStore {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<TlsState>,
    // Held only while building and publishing, never across an await.
    inputs: Mutex<Inputs>,
}

impl TlsStore {
    pub fn new(settings: TlsSettings) -> Self {
        TlsStore {
            provider: settings.policy.provider(),
            settings,
            current: ArcSwapOption::empty(),
            inputs: Mutex::new(Inputs {
                trust: None,
                cert: None,
                sessions: None,
                generation: 0,
            }),
        }
    }

    /// The configs to use for the connection at hand, or `None` (fail closed) when there is no
    /// valid certificate.
    pub fn current(&self) -> Option<Arc<TlsState>> {
        self.current.load_full().filter(|s| s.is_valid_now())
    }

    /// The last published identity, even if expired (for the admin endpoint).
    pub fn identity(&self) -> Option<Arc<WorkloadIdentity>> {
        self.current.load().as_ref().map(|s| s.identity.clone())
    }

    /// The signature algorithms of this store's crypto provider.
    pub fn algorithms(&self) -> rustls::crypto::WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }

    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inputs> {
        // A panic while building configs leaves the inputs consistent (they are replaced whole).
        self.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `chain` against `trust`: it must chain to the signer's roots for both client and
    /// server use, be valid now, and carry exactly one SPIFFE ID.
    fn check_chain(
        &self,
        trust: &Trust,
        chain: &[CertificateDer<'static>],
    ) -> Result<(CertInfo, SpiffeId, String), TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Certificate("the certificate file holds no certificate".into()))?;
        let info = CertInfo::parse(leaf).map_err(|e| TlsError::Certificate(e.to_string()))?;
        let id = info.spiffe_id().map_err(|e| TlsError::Certificate(e.to_string()))?;
        trust
            .check_trust_domain(&id)
            .map_err(|e| TlsError::Certificate(format!("the certificate is not usable: {}", e.detail)))?;
        let now = SystemTime::now();
        if now > info.not_after {
            return Err(TlsError::Certificate(format!(
                "the certificate for {id} expired at {}; issue a new one",
                crate::admin::rfc3339(info.not_after)
            )));
        }
        if now < info.not_before {
            return Err(TlsError::Certificate(format!(
                "the certificate for {id} is not valid before {}; check the clocks",
                crate::admin::rfc3339(info.not_before)
            )));
        }
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::Certificate(format!("the certificate is malformed: {e:?}")))?;
        let algs = self.provider.signature_verification_algorithms;
        let unix_now = UnixTime::now();
        for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
            if let Err(e) =
                ee.verify_for_usage(algs.all, &trust.roots().roots, &chain[1..], unix_now, usage, None, None)
            {
                let detail = match (&e, trust.anchored_signer(leaf, &chain[1..], usage, &algs)) {
                    (webpki::Error::UnknownIssuer, Some(other)) => format!(
                        "it is issued by signer {other}, not {}; issue it from {}'s signer",
                        trust.signer(),
                        trust.signer().short()
                    ),
                    (webpki::Error::UnknownIssuer, None) => format!(
                        "it does not chain to any root of signer {} in the trust bundle",
                        trust.signer()
                    ),
                    (other, _) => format!("{other:?}"),
                };
                return Err(TlsError::Certificate(format!(
                    "the certificate for {id} is not usable: {detail}"
                )));
            }
        }
        // Which of the signer's roots (several during a rotation) this chain anchors to.
        let anchor = trust
            .root_certs()
            .iter()
            .find(|root| {
                webpki::anchor_from_trusted_cert(root).is_ok_and(|a| {
                    ee.verify_for_usage(
                        algs.all,
                        &[a],
                        &chain[1..],
                        unix_now,
                        webpki::KeyUsage::client_auth(),
                        None,
                        None,
                    )
                    .is_ok()
                })
            })
            .map(|root| signet_certs::sha256_hex(root))
            .unwrap_or_default();
        Ok((info, id, anchor))
    }

    /// Builds and publishes configs from `inputs`. With `strict`, the certificate must chain to
    /// the trust; otherwise a stale certificate is published with the new trust (and reported).
    fn publish(&self, inputs: &mut Inputs, strict: bool) -> Result<Option<(Arc<WorkloadIdentity>, bool)>, TlsError> {
        let (Some(trust), Some(cert)) = (inputs.trust.clone(), inputs.cert.clone()) else {
            return Ok(None);
        };
        let (chains, id, anchor) = match self.check_chain(&trust, &cert.cert) {
            Ok((_, id, anchor)) => (true, id, anchor),
            Err(e) if strict => return Err(e),
            Err(_) => {
                let id = cert
                    .cert
                    .first()
                    .and_then(|c| CertInfo::parse(c).ok())
                    .and_then(|i| i.spiffe_id().ok())
                    .ok_or_else(|| TlsError::Certificate("the current certificate has no SPIFFE ID".into()))?;
                (false, id, String::new())
            }
        };
        let chain = cert
            .cert
            .iter()
            .filter_map(|c| CertInfo::parse(c).ok())
            .collect::<Vec<_>>();
        let identity = Arc::new(WorkloadIdentity {
            id,
            signer: trust.signer().clone(),
            not_before: chain.first().map(|c| c.not_before).unwrap_or(SystemTime::UNIX_EPOCH),
            not_after: chain.first().map(|c| c.not_after).unwrap_or(SystemTime::UNIX_EPOCH),
            chain,
            roots: trust
                .root_certs()
                .iter()
                .filter_map(|c| CertInfo::parse(c).ok())
                .collect(),
            trust_version: trust.version().to_string(),
            anchor_sha256: anchor,
        });
        let resolver = Arc::new(SingleCertAndKey::from(cert.clone()));
        let versions = self.settings.policy.versions();

        // Resumed sessions skip certificate checks: a new trust version gets new ticket keys and
        // an empty client cache, so no session verified under the old roots survives.
        let sessions = if self.settings.resumption {
            if inputs.sessions.as_ref().map(|s| s.trust_version.as_str()) != Some(trust.version()) {
                inputs.sessions = Some(Sessions::new(trust.version(), self.settings.inbound.len())?);
            }
            inputs.sessions.clone()
        } else {
            None
        };
        let mut servers = Vec::with_capacity(self.settings.inbound.len());
        for inbound in &self.settings.inbound {
            let verifier = PeerClientVerifier::new(
                trust.clone(),
                inbound.allow.clone(),
                &self.provider,
                self.settings.verify_cache,
            )?;
            let mut config = ServerConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(versions)?
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = inbound.alpn.clone();
            // Only stateless TLS 1.3 tickets, sealed with keys of this trust version.
            config.session_storage = Arc::new(NoServerSessionStorage {});
            match sessions.as_ref().and_then(|s| s.ticketers.get(servers.len())) {
                Some(ticketer) => {
                    config.ticketer = ticketer.clone();
                    // One ticket per handshake: a sidecar reconnects one connection at a time.
                    config.send_tls13_tickets = 1;
                }
                None => config.send_tls13_tickets = 0,
            }
            servers.push(Arc::new(config));
        }

        let mut clients = HashMap::new();
        for (expected, alpn) in &self.settings.outbound {
            let verifier = PeerServerVerifier::new(
                trust.clone(),
                expected.clone(),
                self.provider.signature_verification_algorithms,
                self.settings.verify_cache,
            );
            let mut config = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(versions)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_cert_resolver(resolver.clone());
            config.resumption = match &sessions {
                Some(s) => Resumption::store(s.client_cache.clone()),
                None => Resumption::disabled(),
            };
            if *alpn == ClientAlpn::Http {
                config.alpn_protocols = super::policy::ALPN_HTTP.iter().map(|p| p.to_vec()).collect();
            }
            clients.insert((expected.clone(), *alpn), Arc::new(config));
        }

        inputs.generation += 1;
        self.current.store(Some(Arc::new(TlsState {
            identity: identity.clone(),
            generation: inputs.generation,
            servers,
            clients,
        })));
        Ok(Some((identity, chains)))
    }
}

impl Credentials for TlsStore {
    fn set_trust(&self, trust: Trust) -> Result<TrustUpdate, TlsError> {
        let mut inputs = self.lock();
        let previous = inputs.trust.replace(Arc::new(trust));
        match self.publish(&mut inputs, false) {
            Ok(published) => Ok(TrustUpdate {
                certificate_chains: published.is_some_and(|(_, chains)| chains),
            }),
            Err(e) => {
                inputs.trust = previous;
                Err(e)
            }
        }
    }

    fn set_certificate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: Option<Trust>,
    ) -> Result<Arc<WorkloadIdentity>, TlsError> {
        let mut inputs = self.lock();
        let certified = CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::Certificate("the private key does not belong to the certificate".into())
            }
            other => TlsError::Certificate(format!("the private key is not usable: {other}")),
        })?;
        let previous_trust = match trust {
            Some(t) => inputs.trust.replace(Arc::new(t)),
            None => inputs.trust.clone(),
        };
        if inputs.trust.is_none() {
            return Err(TlsError::Trust("no trust roots loaded yet".into()));
        }
        let previous_cert = inputs.cert.replace(Arc::new(certified));
        match self.publish(&mut inputs, true) {
            Ok(Some((identity, _))) => Ok(identity),
            Ok(None) => unreachable_state(),
            Err(e) => {
                inputs.cert = previous_cert;
                inputs.trust = previous_trust;
                Err(e)
            }
        }
    }
}

/// `publish` returns `None` only without trust or certificate, both set just before.
fn unreachable_state() -> Result<Arc<WorkloadIdentity>, TlsError> {
    Err(TlsError::Trust("no trust roots loaded yet".into()))
}
