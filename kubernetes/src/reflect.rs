//! List, then watch from the list's version, forever: the loop behind the ClusterTrustBundle
//! cache and the signer controller. A watch that ends is resumed from the last version seen;
//! one that is too old (410 Gone) or fails starts over with a list, after a backoff.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::{StreamExt, pin_mut};
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::api::describe;

/// What changed: the whole set (after a list), or one object.
pub enum Change<K> {
    Reset(Vec<K>),
    Applied(K),
    Deleted(K),
}

const WATCH_SECONDS: u32 = 290;
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs until `stop`; `what` names the objects in logs ("ClusterTrustBundles").
pub async fn reflect<K>(api: Api<K>, what: &str, stop: CancellationToken, mut on: impl FnMut(Change<K>))
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut backoff = BACKOFF_FIRST;
    let mut failing = false;
    let list_params = ListParams::default();
    'list: loop {
        let list = tokio::select! {
            _ = stop.cancelled() => return,
            r = api.list(&list_params) => r,
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                if !failing {
                    tracing::warn!("listing {what}: {}; trying again with backoff", describe(&e));
                }
                failing = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if failing {
            tracing::info!("listing {what} works again");
            failing = false;
        }
        backoff = BACKOFF_FIRST;
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        on(Change::Reset(list.items));
        loop {
            let params = WatchParams::default().timeout(WATCH_SECONDS);
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                r = api.watch(&params, &rv) => r,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("watching {what}: {}; listing again", describe(&e));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue 'list;
                }
            };
            pin_mut!(stream);
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = stream.next() => e,
                };
                match event {
                    None => break,
                    Some(Ok(WatchEvent::Added(o))) | Some(Ok(WatchEvent::Modified(o))) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        on(Change::Applied(o));
                    }
                    Some(Ok(WatchEvent::Deleted(o))) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        on(Change::Deleted(o));
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                    Some(Ok(WatchEvent::Error(e))) => {
                        if e.code != 410 {
                            tracing::warn!("watching {what}: {} {}; listing again", e.code, e.message);
                        }
                        continue 'list;
                    }
                    Some(Err(e)) => {
                        tracing::debug!("the watch of {what} ended: {}", describe(&e));
                        break;
                    }
                }
            }
        }
    }
}
