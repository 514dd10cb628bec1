//! `TlsStore`: the TLS side of the [`Credentials`] seam.
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
use rustls::client::{ClientSessionStore, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};
use signet_certs::{CertInfo, CryptoPolicy, SignerTrust, SpiffeId, WORKLOAD_USAGES, crypto};

use super::diagnose::{HandshakeError, Reason, describe_webpki};
use super::resume::Sessions;
use super::verify::{AllowList, PathError, PeerClientVerifier, PeerServerVerifier, Trust};
use crate::credentials::{Credentials, CredentialsError, TrustUpdate, WorkloadIdentity};

/// TLS settings of one inbound listener.
#[derive(Clone, Debug, Default)]
pub struct InboundTls {
    pub alpn: Vec<Vec<u8>>,
    pub allow: AllowList,
}

/// Which ALPN an outbound connection offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAlpn {
    /// http/1.1: the app's HTTP/1.x requests (and upgrades) keep their version to the peer.
    Http1,
    /// h2: the app's HTTP/2 requests (gRPC) keep theirs.
    H2,
    /// None: raw TCP tunnels (and CONNECT).
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
    /// Trust domains accepted besides the own one, where the bundle names none.
    pub trust_domain_aliases: Vec<String>,
}

/// What an outbound connection asks for: the peer's expected identity and the ALPN.
type ClientKey = (Option<SpiffeId>, ClientAlpn);

/// One published generation of configs.
pub struct TlsState {
    pub identity: Arc<WorkloadIdentity>,
    pub generation: u64,
    /// Per inbound listener: its config and the verifier inside it.
    servers: Vec<(Arc<ServerConfig>, Arc<PeerClientVerifier>)>,
    /// Per (expected identity, ALPN): the config and the verifier inside it.
    clients: HashMap<ClientKey, (Arc<ClientConfig>, Arc<PeerServerVerifier>)>,
    /// The clients' session cache, when resumption is on.
    client_sessions: Option<Arc<dyn ClientSessionStore>>,
}

impl TlsState {
    pub fn server(&self, listener: usize) -> Option<Arc<ServerConfig>> {
        self.servers.get(listener).map(|(config, _)| config.clone())
    }

    pub fn client(&self, expected: &Option<SpiffeId>, alpn: ClientAlpn) -> Option<Arc<ClientConfig>> {
        self.clients
            .get(&(expected.clone(), alpn))
            .map(|(config, _)| config.clone())
    }

    /// Verifies the chain of a client that resumed a session on `listener` again, in full.
    pub fn recheck_inbound(&self, listener: usize, chain: &[CertificateDer<'_>]) -> Result<(), HandshakeError> {
        match self.servers.get(listener) {
            Some((_, verifier)) => verifier.recheck(chain),
            None => Err(HandshakeError::new(
                Reason::NotReady,
                "no configuration for this listener",
            )),
        }
    }

    /// Verifies the chain of a server whose session was resumed again, in full.
    pub fn recheck_outbound(
        &self,
        expected: &Option<SpiffeId>,
        alpn: ClientAlpn,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), HandshakeError> {
        match self.clients.get(&(expected.clone(), alpn)) {
            Some((_, verifier)) => verifier.recheck(chain),
            None => Err(HandshakeError::new(
                Reason::NotReady,
                "no configuration for this service",
            )),
        }
    }

    /// Drops every session ticket held for `server` (the next handshake with it is a full one).
    pub fn forget_sessions(&self, server: &ServerName<'static>) {
        if let Some(cache) = &self.client_sessions {
            while cache.take_tls13_ticket(server).is_some() {}
            cache.remove_tls12_session(server);
        }
    }

    /// False once the certificate has expired: an expired certificate is never presented.
    pub fn is_valid_now(&self) -> bool {
        self.identity.is_valid_at(SystemTime::now())
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
    /// The crypto policy's provider, made once: every config this store builds shares it.
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

    /// A valid certificate that the current trust accepts is published.
    pub fn is_ready(&self) -> bool {
        self.current().is_some_and(|s| s.identity.refused.is_none())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inputs> {
        // A panic while building configs leaves the inputs consistent (they are replaced whole).
        self.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `chain` against `trust`: it must chain to the signer's roots for both client and
    /// server use, be valid now, and carry exactly one SPIFFE ID. Returns the SPIFFE ID and the
    /// fingerprint of the root it anchors to.
    fn check_chain(
        &self,
        trust: &Trust,
        chain: &[CertificateDer<'static>],
    ) -> Result<(SpiffeId, String), CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let info = CertInfo::parse(leaf)?;
        let id = info.spiffe_id()?;
        if let Some(allowed) = trust
            .trust_domains()
            .filter(|tds| !tds.iter().any(|td| td == id.trust_domain()))
        {
            return Err(CredentialsError::TrustDomain {
                id,
                signer: trust.signer().clone(),
                allowed: allowed.to_vec(),
            });
        }
        let now = SystemTime::now();
        if now > info.not_after {
            return Err(CredentialsError::Expired { id, at: info.not_after });
        }
        if now < info.not_before {
            return Err(CredentialsError::NotYetValid {
                id,
                at: info.not_before,
            });
        }
        let algs = &self.provider.signature_verification_algorithms;
        let unix_now = UnixTime::now();
        for usage in WORKLOAD_USAGES {
            let Err(e) = trust.validate(leaf, &chain[1..], unix_now, usage, algs) else {
                continue;
            };
            let signer = trust.signer().clone();
            return Err(match e {
                PathError::RootOutOfDate {
                    subject,
                    not_before,
                    not_after,
                } => CredentialsError::RootOutOfDate {
                    id,
                    signer,
                    detail: if now < not_before {
                        format!(
                            "root \"{subject}\" is not valid before {}",
                            signet_certs::rfc3339(not_before)
                        )
                    } else {
                        format!("root \"{subject}\" expired at {}", signet_certs::rfc3339(not_after))
                    },
                },
                PathError::MissingUsage | PathError::Invalid(webpki::Error::RequiredEkuNotFoundContext(_)) => {
                    CredentialsError::MissingUsage {
                        id,
                        usage: usage.name(),
                    }
                }
                PathError::RootPathLength { subject, limit } => CredentialsError::Unusable {
                    id,
                    detail: format!(
                        "the chain has more intermediates than root \"{subject}\" allows (pathLenConstraint {limit})"
                    ),
                },
                PathError::Invalid(webpki::Error::CertRevoked) => CredentialsError::Revoked { id, signer },
                PathError::Invalid(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => {
                    match trust.anchored_signer(chain) {
                        Some(theirs) => CredentialsError::OtherSigner {
                            id,
                            theirs: theirs.clone(),
                            ours: signer,
                        },
                        None if trust.issued_by_retired_root(chain) => CredentialsError::RetiredRoot { id, signer },
                        None => CredentialsError::NoRootOfSigner { id, signer },
                    }
                }
                PathError::Invalid(e) => CredentialsError::Unusable {
                    id,
                    detail: describe_webpki(&e),
                },
            });
        }
        // Which of the signer's roots (several during a rotation) this chain anchors to.
        let anchor = trust
            .root_certs()
            .iter()
            .find(|root| signet_certs::Anchors::new(std::slice::from_ref(*root)).issued(chain))
            .map(|root| signet_certs::sha256_hex(root))
            .unwrap_or_default();
        Ok((id, anchor))
    }

    /// Builds and publishes configs from `inputs`. With `strict`, the certificate must chain to
    /// the trust; otherwise a stale certificate is published with the new trust (and reported).
    fn publish(
        &self,
        inputs: &mut Inputs,
        strict: bool,
    ) -> Result<Option<(Arc<WorkloadIdentity>, bool)>, CredentialsError> {
        let (Some(trust), Some(cert)) = (inputs.trust.clone(), inputs.cert.clone()) else {
            return Ok(None);
        };
        let (refused, id, anchor) = match self.check_chain(&trust, &cert.cert) {
            Ok((id, anchor)) => (None, id, anchor),
            Err(e) if strict => return Err(e),
            Err(e) => {
                // The certificate was checked when it was installed; the trust changed under it
                // (its root was removed, it was revoked).
                let leaf = cert.cert.first().ok_or(CredentialsError::NoCertificate)?;
                (Some(e.to_string()), CertInfo::parse(leaf)?.spiffe_id()?, String::new())
            }
        };
        let chains = refused.is_none();
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
            refused,
        });
        let resolver = Arc::new(SingleCertAndKey::from(cert.clone()));
        let versions = self.settings.policy.versions();
        // Peers are held to the trust domains this identity accepts.
        let trust = Arc::new(trust.for_identity(&identity.id, &self.settings.trust_domain_aliases));

        // Resumed sessions skip certificate checks: a new trust version gets new ticket keys and
        // an empty client cache, so no session verified under the old roots survives.
        let sessions = if self.settings.resumption {
            if inputs.sessions.as_ref().map(|s| s.trust_version.as_str()) != Some(trust.version()) {
                inputs.sessions = Some(Sessions::new(
                    &self.settings.policy,
                    trust.version(),
                    self.settings.inbound.len(),
                )?);
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
            );
            let verifier = Arc::new(verifier);
            let mut config = ServerConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(versions)?
                .with_client_cert_verifier(verifier.clone())
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
            servers.push((Arc::new(config), verifier));
        }

        let mut clients = HashMap::new();
        for (expected, alpn) in &self.settings.outbound {
            let verifier = Arc::new(PeerServerVerifier::new(
                trust.clone(),
                expected.clone(),
                self.provider.signature_verification_algorithms,
                self.settings.verify_cache,
            ));
            let mut config = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(versions)?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_client_cert_resolver(resolver.clone());
            config.resumption = match &sessions {
                Some(s) => Resumption::store(s.client_cache.clone()),
                None => Resumption::disabled(),
            };
            config.alpn_protocols = match alpn {
                ClientAlpn::Http1 => crypto::alpn(&[b"http/1.1"]),
                ClientAlpn::H2 => crypto::alpn(&[b"h2"]),
                ClientAlpn::None => Vec::new(),
            };
            clients.insert((expected.clone(), *alpn), (Arc::new(config), verifier));
        }

        inputs.generation += 1;
        self.current.store(Some(Arc::new(TlsState {
            identity: identity.clone(),
            generation: inputs.generation,
            servers,
            clients,
            client_sessions: sessions.as_ref().map(|s| s.client_cache.clone()),
        })));
        Ok(Some((identity, chains)))
    }
}

impl Credentials for TlsStore {
    fn set_trust(&self, trust: SignerTrust) -> Result<TrustUpdate, CredentialsError> {
        let trust = Trust::new(trust)?;
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
        trust: Option<SignerTrust>,
    ) -> Result<Arc<WorkloadIdentity>, CredentialsError> {
        let trust = trust.map(Trust::new).transpose()?;
        if chain.is_empty() {
            return Err(CredentialsError::NoCertificate);
        }
        let certified = CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CredentialsError::KeyMismatch,
            other => CredentialsError::KeyUnusable(other.to_string()),
        })?;
        let mut inputs = self.lock();
        let previous_trust = match trust {
            Some(t) => inputs.trust.replace(Arc::new(t)),
            None => inputs.trust.clone(),
        };
        if inputs.trust.is_none() {
            return Err(CredentialsError::NoTrust);
        }
        let previous_cert = inputs.cert.replace(Arc::new(certified));
        match self.publish(&mut inputs, true) {
            Ok(Some((identity, _))) => Ok(identity),
            // `publish` returns `None` only without trust or certificate, both set just above.
            Ok(None) => Err(CredentialsError::NoTrust),
            Err(e) => {
                inputs.cert = previous_cert;
                inputs.trust = previous_trust;
                Err(e)
            }
        }
    }

    fn identity(&self) -> Option<Arc<WorkloadIdentity>> {
        self.current.load().as_ref().map(|s| s.identity.clone())
    }
}
