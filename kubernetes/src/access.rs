//! What a Signet component does in the cluster, checked when it starts: one
//! SelfSubjectAccessReview per permission it will use, so that a missing RBAC rule is reported
//! at once, by name, in one line, instead of as a 403 on the first workload's request (or, for
//! a rule only a fault path uses, never until that fault). Every authenticated user may ask
//! SelfSubjectAccessReviews (the `system:basic-user` role).

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::Api;
use kube::api::PostParams;

use crate::api::describe;

/// One permission: `verb` on `group`/`resource`[/`subresource`], optionally of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// What it is used for, in a few words.
    pub why: &'static str,
}

impl Permission {
    pub fn new(verb: &'static str, group: &'static str, resource: &'static str, why: &'static str) -> Self {
        Permission {
            verb,
            group,
            resource,
            subresource: "",
            namespace: None,
            name: None,
            why,
        }
    }

    pub fn subresource(mut self, subresource: &'static str) -> Self {
        self.subresource = subresource;
        self
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn within(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}

impl std::fmt::Display for Permission {
    /// `create certificatesigningrequests.certificates.k8s.io`, `update
    /// certificatesigningrequests.certificates.k8s.io/approval`, `approve
    /// signers.certificates.k8s.io "example.com/foo"`, `get secrets "ca" in namespace n`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// The permissions of `wanted` the client's identity lacks.
pub async fn missing(client: &kube::Client, wanted: &[Permission]) -> Result<Vec<Permission>, String> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut out = Vec::new();
    for p in wanted {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(p.verb.into()),
                    group: Some(p.group.into()),
                    resource: Some(p.resource.into()),
                    subresource: (!p.subresource.is_empty()).then(|| p.subresource.into()),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await.map_err(|e| {
            format!(
                "cannot check its permissions (SelfSubjectAccessReview): {}",
                describe(&e)
            )
        })?;
        if !answer.status.is_some_and(|s| s.allowed) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Fails, in one line naming each missing permission and what it is for, unless the client's
/// identity has all of `wanted`. `who` is the component ("the authority"), `rbac` where its
/// rules are written.
pub async fn require(client: &kube::Client, who: &str, rbac: &str, wanted: &[Permission]) -> Result<(), String> {
    let lacking = missing(client, wanted).await?;
    if lacking.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = lacking.iter().map(|p| format!("{p} (to {})", p.why)).collect();
    Err(format!(
        "{who} lacks {} permission{} it uses: {}; grant {} (as {rbac} does)",
        lacking.len(),
        if lacking.len() == 1 { "" } else { "s" },
        list.join("; "),
        if lacking.len() == 1 { "it" } else { "them" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_kubectl_auth_can_i_would_take_them() {
        let p = Permission::new("update", "certificates.k8s.io", "certificatesigningrequests", "approve")
            .subresource("approval");
        assert_eq!(
            p.to_string(),
            "update certificatesigningrequests.certificates.k8s.io/approval"
        );
        let p = Permission::new("get", "", "secrets", "read a key")
            .named("ca")
            .within("signers");
        assert_eq!(p.to_string(), "get secrets \"ca\" in namespace signers");
    }
}
