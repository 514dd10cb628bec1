//! The provisioning loop under paused time: renewal at the planned fraction of the lifetime,
//! exponential backoff, and the current certificate kept while renewal fails. The authority is a
//! fake in front of a real signer; the certificates and the TLS store are real.

use std::sync::Mutex;

use signet_certs::{AuthorityFuture, CsrOrder, IssueOptions, IssuedChain, Signer, SignerName};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{ConfigFile, IdentitySource};
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::tls::{TlsSettings, TlsStore};

/// Signs with a real signer; call `n` fails when `plan[n]` is false. Records when it was called.
struct FakeAuthority {
    signer: Signer,
    ttl: Duration,
    plan: Vec<bool>,
    calls: Mutex<Vec<Instant>>,
}

impl AuthorityClient for FakeAuthority {
    fn sign<'a>(&'a self, order: &'a CsrOrder) -> AuthorityFuture<'a> {
        Box::pin(async move {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Instant::now());
                calls.len() - 1
            };
            if !self.plan.get(n).copied().unwrap_or(true) {
                return Err(AuthorityError::Unreachable {
                    address: "fake".into(),
                    detail: "connection refused".into(),
                });
            }
            let options = IssueOptions {
                ttl: self.ttl,
                backdate: Duration::ZERO,
            };
            let issued = self.signer.sign(&order.csr_pem, &options).unwrap();
            Ok(IssuedChain {
                chain: issued.chain,
                roots: issued.roots,
            })
        })
    }

    fn describe(&self) -> String {
        "the fake authority".into()
    }
}

impl FakeAuthority {
    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }
}

struct Running {
    fake: Arc<FakeAuthority>,
    store: Arc<TlsStore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

fn start(ttl: Duration, plan: Vec<bool>) -> Running {
    let config: ConfigFile = serde_yaml_ng::from_str(
        r#"
signer: foo
identity:
  spiffeId: spiffe://cluster.local/ns/foo/sa/httpbin
  authority: {address: "fake:15012", ca: unused.crt}
inbound: [{listen: "127.0.0.1:0", app: "127.0.0.1:9"}]
"#,
    )
    .unwrap();
    let config = Arc::new(config.resolve().unwrap());
    let IdentitySource::Provisioned(settings) = config.identity.clone() else {
        panic!("provisioned")
    };
    let fake = Arc::new(FakeAuthority {
        signer: Signer::create(
            SignerName::with_default_domain("foo").unwrap(),
            Duration::from_secs(86_400),
        )
        .unwrap(),
        ttl,
        plan,
        calls: Mutex::new(Vec::new()),
    });
    let store = Arc::new(TlsStore::new(TlsSettings::default()));
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let ctx = Arc::new(IdentityCtx {
        config,
        credentials: store.clone(),
        metrics: metrics.clone(),
        reload: Arc::new(Notify::new()),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(run(ctx, settings, fake.clone()));
    Running {
        fake,
        store,
        metrics,
        shutdown,
    }
}

/// Lets paused time run until the authority has been called `n` times.
async fn until_calls(r: &Running, n: usize) -> Vec<Duration> {
    while r.fake.calls().len() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.fake.calls().windows(2).map(|w| w[1] - w[0]).collect()
}

fn within(d: Duration, low: f64, high: f64) -> bool {
    (low..=high).contains(&d.as_secs_f64())
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_then_backs_off_and_keeps_the_certificate() {
    // Success, three failures, success.
    let r = start(Duration::from_secs(3600), vec![true, false, false, false, true]);
    until_calls(&r, 1).await;
    let first = r.store.identity().expect("published after the first answer");
    let gaps = until_calls(&r, 4).await;
    // notBefore is backdated 60 s for clock skew, so half of the 3660 s window is 1770 s from
    // issue, ±1 % of the lifetime; X.509 times have whole seconds, so notBefore may be up to 1 s
    // earlier still.
    assert!(within(gaps[0], 1732.0, 1807.0), "renewal after {:?}", gaps[0]);
    // 0.5 s, then 1 s, each ±20 %.
    assert!(within(gaps[1], 0.4, 0.6), "first retry after {:?}", gaps[1]);
    assert!(within(gaps[2], 0.8, 1.2), "second retry after {:?}", gaps[2]);
    let during = r.store.identity().unwrap();
    assert_eq!(
        during.chain[0].serial, first.chain[0].serial,
        "the valid certificate is kept"
    );
    assert_eq!(r.metrics.renewals(), 0);

    let gaps = until_calls(&r, 5).await;
    assert!(within(gaps[3], 1.6, 2.4), "third retry after {:?}", gaps[3]);
    // The fifth call succeeds: a new certificate, counted as a renewal.
    while r.metrics.renewals() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(r.store.identity().unwrap().chain[0].serial, first.chain[0].serial);
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn without_a_certificate_it_retries_until_the_first_one_arrives() {
    let r = start(Duration::from_secs(600), vec![false, false, true]);
    let gaps = until_calls(&r, 3).await;
    assert!(within(gaps[0], 0.4, 0.6) && within(gaps[1], 0.8, 1.2), "{gaps:?}");
    while r.store.identity().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.store.is_ready());
    // Not a renewal: the first certificate.
    assert_eq!(r.metrics.renewals(), 0);
    // The next request comes at half-life: (600 + 60) / 2 - 60 = 270 s ± 6.6 s, and up to 1 s
    // earlier, as notBefore is truncated to a whole second (CI saw 262.9 s).
    let gaps = until_calls(&r, 4).await;
    assert!(within(gaps[2], 262.0, 277.0), "{gaps:?}");
    r.shutdown.cancel();
}
