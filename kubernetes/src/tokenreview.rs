//! Authentication by TokenReview, as istiod does it: the token must be valid for one of the
//! audiences (`istio-ca` by default) and belong to a service account.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use signet_authority::{Refused, Requester};
use signet_certs::Refusal;

use crate::api::describe;
use crate::refused;

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

pub async fn review(client: &kube::Client, token: &str, audiences: &[String]) -> Result<Requester, Refused> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            refused(
                Refusal::ClusterUnavailable,
                format!("the TokenReview could not be made: {}", describe(&e)),
            )
        })?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(refused(
            Refusal::UnknownToken,
            format!(
                "the Kubernetes API did not accept the token for audience {}: {why}",
                audiences.join(", ")
            ),
        ));
    }
    // The API server returns the audiences the token is valid for among those asked; an empty
    // intersection means it ignored them (an old server): refuse rather than assume.
    if !audiences.is_empty()
        && let Some(valid) = &status.audiences
        && !valid.iter().any(|a| audiences.contains(a))
    {
        return Err(refused(
            Refusal::UnknownToken,
            format!("the token is not valid for audience {}", audiences.join(", ")),
        ));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let groups = user.groups.unwrap_or_default();
    let not_sa = || {
        refused(
            Refusal::NotServiceAccount,
            format!(
                "the token belongs to {:?}, not to a service account; a workload calls with its pod's service-account token",
                signet_certs::printable(&username)
            ),
        )
    };
    if !groups.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
        return Err(not_sa());
    }
    let Some((namespace, service_account)) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(not_sa());
    };
    let requester = Requester {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    };
    requester
        .spiffe_id("cluster.local")
        .map_err(|e| refused(Refusal::IdentityInvalid, e.to_string()))?;
    Ok(requester)
}
