//! The CLI edge of Signet in a cluster: the authority's `--kubernetes` mode and
//! `signet signer controller`. Built with the `kubernetes` cargo feature (on by default).

use std::process::ExitCode;

use signet_authority::ClusterHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::{AuthorityServeArgs, SignerControllerArgs};

#[cfg(feature = "kubernetes")]
pub async fn authority_cluster(args: &AuthorityServeArgs, stop: CancellationToken) -> Result<ClusterHandle, String> {
    use std::sync::Arc;

    use signet_kubernetes::{ClusterSettings, DEFAULT_AUDIENCE, KubernetesCluster, SecretRef, connect};

    let domain = &args.domain.signer_domain;
    let secret_signers = args
        .kube
        .signer_secret
        .iter()
        .map(|s| SecretRef::parse(s, domain).map_err(|e| format!("--signer-secret {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if args.csr_timeout.0.is_zero() {
        return Err("--csr-timeout must be more than 0s".into());
    }
    let audiences = if args.token_audience.is_empty() {
        vec![DEFAULT_AUDIENCE.to_string()]
    } else {
        args.token_audience.clone()
    };
    // The policy is read again (and checked) by the authority; here only for the signers its
    // `approve` permission must name.
    let policy = match &args.signing_policy {
        Some(p) => signet_authority::SigningPolicy::load(p, domain).map_err(|e| e.to_string())?,
        None => signet_authority::SigningPolicy::defaults_in(domain),
    };
    let (client, server) = connect(args.kube.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let settings = ClusterSettings {
        approvable_signers: policy.approvable_signers(),
        audiences,
        csr_timeout: args.csr_timeout.0,
        trust_bundles: args.cluster_trust_bundles,
        approve: !args.manual_approval,
        secret_signers,
        secret_interval: args.kube.secret_interval.0,
    };
    let cluster = KubernetesCluster::start(client, &server, settings, stop).await?;
    tracing::info!("Kubernetes mode: {}", signet_authority::Cluster::describe(&cluster));
    Ok(ClusterHandle(Arc::new(cluster)))
}

#[cfg(feature = "kubernetes")]
pub fn signer_controller(args: SignerControllerArgs) -> Result<ExitCode, String> {
    use signet_kubernetes::access::require;
    use signet_kubernetes::controller::{CONTROLLER_RBAC, DirSigners, Keys, controller_permissions};
    use signet_kubernetes::{Controller, ControllerSettings, SecretRef, SecretSigners, connect};
    use signet_proxy::serve::Lifecycle;

    use crate::commands::{parse_listen, runtime, signer_dirs, wait_for_signal, write_ready_file};

    let domain = args.domain.signer_domain.clone();
    let secrets = args
        .kube
        .signer_secret
        .iter()
        .map(|s| SecretRef::parse(s, &domain).map_err(|e| format!("--signer-secret {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let dirs = signer_dirs(&args.dirs, &domain, false)?;
    match (secrets.is_empty(), dirs.is_empty()) {
        (true, true) => {
            return Err(
                "no signers: give --signer-secret NAME=NAMESPACE/SECRET (repeatable), or --signer-dir / --signers-dir"
                    .into(),
            );
        }
        (false, false) => {
            return Err("give the signers either as --signer-secret or as --signer-dir/--signers-dir, not both".into());
        }
        _ => {}
    }
    if args.max_ttl.0 < std::time::Duration::from_secs(600) {
        return Err("--max-ttl must be at least 10m (Kubernetes' shortest expirationSeconds)".into());
    }
    if args.pod_certificates && args.max_ttl.0 < signet_kubernetes::pod_certificates::MIN_LIFETIME {
        return Err(
            "--max-ttl must be at least 1h with --pod-certificates (the API's shortest pod certificate)".into(),
        );
    }
    format!("spiffe://{}/ns/a/sa/b", args.trust_domain)
        .parse::<signet_certs::SpiffeId>()
        .map_err(|e| format!("--trust-domain {:?}: {e}", args.trust_domain))?;
    let admin = args.admin.as_deref().map(|a| parse_listen("--admin", a)).transpose()?;
    runtime(None)?.block_on(async move {
        let life = Lifecycle::default();
        let (client, server) = connect(args.kube.kubeconfig.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let settings = ControllerSettings {
            max_ttl: args.max_ttl.0,
            publish_trust_bundles: args.publish_trust_bundles,
            pod_certificates: args.pod_certificates,
            trust_domain: args.trust_domain.clone(),
            admin,
        };
        let signers: Vec<_> = if secrets.is_empty() {
            dirs.iter().map(|(name, _)| name.clone()).collect()
        } else {
            secrets.iter().map(|r| r.signer.clone()).collect()
        };
        let wanted = controller_permissions(&signers, &secrets, &settings);
        require(&client, "the signer controller", CONTROLLER_RBAC, &wanted).await?;
        let keys = if secrets.is_empty() {
            Keys::Dirs(
                DirSigners::start(dirs, args.watch_interval.0, life.shutdown.clone()).map_err(|e| e.to_string())?,
            )
        } else {
            Keys::Secrets(
                SecretSigners::start(
                    client.clone(),
                    secrets,
                    args.kube.secret_interval.0,
                    life.shutdown.clone(),
                )
                .await
                .map_err(|e| e.to_string())?,
            )
        };
        let controller = Controller::new(client, keys, settings);
        let bound = controller
            .start(&life)
            .await
            .map_err(|e| format!("--admin: cannot listen: {e}"))?;
        tracing::info!("signer controller connected to {server}");
        write_ready_file(args.ready_file.as_deref(), &serde_json::json!({ "admin": bound }))?;
        wait_for_signal().await;
        tracing::info!("signer controller shutting down");
        life.stop(std::time::Duration::from_secs(5)).await;
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "kubernetes"))]
const NOT_BUILT: &str =
    "this signet was built without Kubernetes support; rebuild with the `kubernetes` feature (on by default)";

#[cfg(not(feature = "kubernetes"))]
pub async fn authority_cluster(_: &AuthorityServeArgs, _: CancellationToken) -> Result<ClusterHandle, String> {
    Err(NOT_BUILT.into())
}

#[cfg(not(feature = "kubernetes"))]
pub fn signer_controller(_: SignerControllerArgs) -> Result<ExitCode, String> {
    Err(NOT_BUILT.into())
}
