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

use super::verify::{AllowList, PeerClientVerifier, PeerServerVerifier, Trust};
use super::{Policy, TlsError};

/// The seam issuance uses; it knows nothing of rustls configs.
pub trait Credentials: Send + Sync {
    /// Replaces the roots this sidecar trusts (and the other signers it can name).
    fn set_trust(&self, trust: Trust) -> Result<(), TlsError>;
    /// Installs a new certificate (leaf first) and key after checking them against the trust.
    fn set_certificate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<IdentityInfo>, TlsError>;
}

/// The published identity, for the admin endpoint, XFCC and logs.
#[derive(Clone, Debug)]
pub struct IdentityInfo {
    pub id: SpiffeId,
    pub signer: SignerName,
    pub chain: Vec<CertInfo>,
    pub roots: Vec<CertInfo>,
    pub trust_version: String,
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
    pub policy: Policy,
    /// One entry per inbound listener, by index.
    pub inbound: Vec<InboundTls>,
    /// The (expected peer identity, ALPN) pairs outbound connections will ask for.
    pub outbound: Vec<(Option<SpiffeId>, ClientAlpn)>,
}

/// One published generation of configs.
pub struct TlsState {
    pub identity: Arc<IdentityInfo>,
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
    pub fn identity(&self) -> Option<Arc<IdentityInfo>> {
        self.current.load().as_ref().map(|s| s.identity.clone())
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
    fn check_chain(&self, trust: &Trust, chain: &[CertificateDer<'static>]) -> Result<(CertInfo, SpiffeId), TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Certificate("the certificate file holds no certificate".into()))?;
        let info = CertInfo::parse(leaf).map_err(|e| TlsError::Certificate(e.to_string()))?;
        let id = info.spiffe_id().map_err(|e| TlsError::Certificate(e.to_string()))?;
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
        Ok((info, id))
    }

    fn publish(&self, inputs: &mut Inputs) -> Result<Option<Arc<IdentityInfo>>, TlsError> {
        let (Some(trust), Some(cert)) = (inputs.trust.clone(), inputs.cert.clone()) else {
            return Ok(None);
        };
        let (_, id) = self.check_chain(&trust, &cert.cert)?;
        let chain = cert
            .cert
            .iter()
            .filter_map(|c| CertInfo::parse(c).ok())
            .collect::<Vec<_>>();
        let identity = Arc::new(IdentityInfo {
            id,
            signer: trust.signer().clone(),
            not_after: chain.first().map(|c| c.not_after).unwrap_or(SystemTime::UNIX_EPOCH),
            chain,
            roots: trust
                .root_certs()
                .iter()
                .filter_map(|c| CertInfo::parse(c).ok())
                .collect(),
            trust_version: trust.version().to_string(),
        });
        let resolver = Arc::new(SingleCertAndKey::from(cert.clone()));
        let versions = self.settings.policy.versions();

        let mut servers = Vec::with_capacity(self.settings.inbound.len());
        for inbound in &self.settings.inbound {
            let verifier = PeerClientVerifier::new(trust.clone(), inbound.allow.clone(), &self.provider)?;
            let mut config = ServerConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(versions)?
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = inbound.alpn.clone();
            // Resumed sessions skip certificate checks, so a rotated-out signer would stay
            // trusted; resumption stays off until tickets are tied to the trust version.
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
            servers.push(Arc::new(config));
        }

        let mut clients = HashMap::new();
        for (expected, alpn) in &self.settings.outbound {
            let verifier = PeerServerVerifier::new(
                trust.clone(),
                expected.clone(),
                self.provider.signature_verification_algorithms,
            );
            let mut config = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(versions)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_cert_resolver(resolver.clone());
            config.resumption = Resumption::disabled();
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
        Ok(Some(identity))
    }
}

impl Credentials for TlsStore {
    fn set_trust(&self, trust: Trust) -> Result<(), TlsError> {
        let mut inputs = self.lock();
        let previous = inputs.trust.replace(Arc::new(trust));
        if let Err(e) = self.publish(&mut inputs) {
            inputs.trust = previous;
            return Err(e);
        }
        Ok(())
    }

    fn set_certificate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<IdentityInfo>, TlsError> {
        let mut inputs = self.lock();
        if inputs.trust.is_none() {
            return Err(TlsError::Trust("no trust roots loaded yet".into()));
        }
        let certified = CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::Certificate("the private key does not belong to the certificate".into())
            }
            other => TlsError::Certificate(format!("the private key is not usable: {other}")),
        })?;
        let previous = inputs.cert.replace(Arc::new(certified));
        match self.publish(&mut inputs) {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(TlsError::Trust("no trust roots loaded yet".into())),
            Err(e) => {
                inputs.cert = previous;
                Err(e)
            }
        }
    }
}
