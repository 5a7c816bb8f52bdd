//! Changes of the ConfigMaps (and, with `--watch-secrets`, Secrets) that `valuesFrom` reads and
//! that opt in with the label `helm.deployment-orchestrator.io/watch: "true"`: a metadata-only
//! list and watch (the producer never asks for their data), in every namespace of the store's
//! scope, as [`SourceRef`]s. The initial listing reports nothing (the resync covers what changed while no
//! one watched); a watch that fails is started again after a pause that doubles up to a
//! minute, and one the API server refuses (no RBAC for it) is logged and retried the same way,
//! so without the rights changes are still picked up at the next resync.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use helmq_schemas::component::WATCH_LABEL;
use helmq_schemas::config::ValuesKind;
use helmq_telemetry::retry::backoff;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// A ConfigMap or Secret that changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRef {
    /// `ConfigMap` or `Secret`.
    pub kind: ValuesKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The first pause after a failed watch; doubled per failure in a row.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause.
const LONGEST_PAUSE: Duration = Duration::from_secs(60);

/// Changes of labelled objects of `kinds` in `namespaces` (`None`: all). Never ends.
pub fn source_changes(
    client: &Client,
    namespaces: Option<&[String]>,
    kinds: &[ValuesKind],
) -> BoxStream<'static, SourceRef> {
    let scopes: Vec<Option<String>> = match namespaces {
        None => vec![None],
        Some(list) => list.iter().cloned().map(Some).collect(),
    };
    let streams = scopes.into_iter().flat_map(|scope| {
        kinds.iter().map(move |kind| match kind {
            ValuesKind::ConfigMap => {
                changes::<ConfigMap>(client.clone(), scope.clone(), ValuesKind::ConfigMap)
            }
            ValuesKind::Secret => {
                changes::<Secret>(client.clone(), scope.clone(), ValuesKind::Secret)
            }
        })
    });
    futures::stream::select_all(streams).boxed()
}

/// The changes of one kind in one scope: list (for the resourceVersion), then watch from it;
/// again after a pause when the watch fails or ends.
fn changes<K>(
    client: Client,
    namespace: Option<String>,
    kind: ValuesKind,
) -> BoxStream<'static, SourceRef>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let selector = format!("{WATCH_LABEL}=true");
    futures::stream::unfold(0u32, move |failures| {
        let api = api.clone();
        let selector = selector.clone();
        async move {
            if failures > 0 {
                let pause = backoff(FIRST_PAUSE, LONGEST_PAUSE, failures, true);
                tokio::time::sleep(pause).await;
            }
            let changes = match watch_once(&api, &selector, kind).await {
                Ok(changes) => changes,
                Err(error) => {
                    tracing::warn!(%error, kind = kind.as_str(), "cannot watch labelled values sources; changes wait for the resync");
                    return Some((futures::stream::empty().boxed(), failures + 1));
                }
            };
            // A watch that ran and ended (the server closes them) starts again at once.
            Some((changes, 0))
        }
    })
    .flatten()
    .boxed()
}

/// One list-then-watch: the changes the watch reports until it ends.
async fn watch_once<K>(
    api: &Api<K>,
    selector: &str,
    kind: ValuesKind,
) -> Result<BoxStream<'static, SourceRef>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let listed = api
        .list_metadata(&ListParams::default().labels(selector).limit(1))
        .await?;
    let version = listed.metadata.resource_version.unwrap_or_default();
    let events = api
        .watch_metadata(&WatchParams::default().labels(selector), &version)
        .await?;
    Ok(events
        .filter_map(move |event| async move {
            match event {
                Ok(WatchEvent::Added(meta) | WatchEvent::Modified(meta)) => Some(SourceRef {
                    kind,
                    namespace: meta.metadata.namespace.unwrap_or_default(),
                    name: meta.metadata.name.unwrap_or_default(),
                }),
                Ok(_) | Err(_) => None,
            }
        })
        .boxed())
}
