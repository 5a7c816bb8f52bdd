//! [`KubeComponentStore`]: the [`ComponentStore`] seam over the Kubernetes API (`kube`).
//!
//! Reads (get, list, watch, and the objects writes answer with) take the raw JSON and decode
//! it one object at a time ([`raw`](super::raw)): an object that is not a readable
//! [`Component`] is [`Unreadable`] and never fails the listing or the watch of the others;
//! a read or a write answers with an [`Observed`], readable or not.
//! The watch keeps the API server's resourceVersion semantics as kube-runtime's watcher does:
//! list (in pages), watch from the list's resourceVersion with bookmarks, resume from the last
//! version seen when the stream ends, list again on 410 Gone, and back off (capped) after
//! errors.
//!
//! [`ComponentStore::get_cached`] answers from what this process's own watch, writes and
//! fresh reads last saw while a watch runs here ([`recent`](super::recent)), and from the
//! API server's watch cache otherwise.
//!
//! Writes are JSON merge patches that carry `metadata.resourceVersion`: the API server treats
//! it as a precondition and answers 409 when the object changed, which maps to
//! [`StoreError::Conflict`]. Status goes through the `/status` subresource only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use futures::{AsyncBufReadExt, TryStreamExt};
use helmq_schemas::component::{Component, ComponentStatus};
use helmq_schemas::config::ValuesKind;
use kube::Client;
use kube::Resource;
use kube::api::{GetParams, ListParams, Patch, PatchParams, WatchParams};
use kube::core::Request;
use serde_json::json;

use super::raw::{self, Event, Observed};
use super::recent::Recent;
use super::{
    Change, ComponentStore, ErrorClass, Listing, ObjectKey, StoreError, classify,
    finalizers_with_ours, finalizers_without_ours, names,
};

/// Objects per list page.
const PAGE_SIZE: u32 = 500;
/// How long the API server keeps one watch request open (kube-runtime's default).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// First delay after a failed list or watch, doubled per failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(800);
/// The longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// [`ComponentStore`] on a Kubernetes API server.
#[derive(Clone)]
pub struct KubeComponentStore {
    client: Client,
    /// `None`: all namespaces; otherwise only these.
    namespaces: Option<Vec<String>>,
    /// The kinds of labelled `valuesFrom` sources watched.
    source_kinds: Vec<ValuesKind>,
    /// What this process's watch, writes and fresh reads last saw, shared by every clone.
    recent: Arc<Recent>,
}

impl std::fmt::Debug for KubeComponentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeComponentStore")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl KubeComponentStore {
    /// GET of `namespace/name` with `params`; `None` when it does not exist.
    async fn get_with(
        &self,
        namespace: &str,
        name: &str,
        params: &GetParams,
    ) -> Result<Option<Observed>, StoreError> {
        let request = Self::request(namespace).get(name, params);
        match self.one(request, namespace, name).await {
            Ok(observed) => Ok(Some(observed)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// A store over `client`, watching all namespaces (`namespaces` empty) or only the ones
    /// listed.
    pub fn new(client: Client, namespaces: Vec<String>) -> Self {
        KubeComponentStore {
            client,
            namespaces: if namespaces.is_empty() {
                None
            } else {
                Some(namespaces)
            },
            source_kinds: vec![ValuesKind::ConfigMap],
            recent: Arc::default(),
        }
    }

    /// Also watch labelled Secrets, not only ConfigMaps (`--watch-secrets`: needs list/watch on
    /// Secrets).
    #[must_use]
    pub fn with_secret_watch(mut self, on: bool) -> Self {
        if on {
            self.source_kinds = vec![ValuesKind::ConfigMap, ValuesKind::Secret];
        }
        self
    }

    /// The collection paths of the store's scope: all namespaces or each configured one.
    fn scopes(&self) -> Vec<Request> {
        match &self.namespaces {
            None => vec![Request::new(Component::url_path(&(), None))],
            Some(list) => list
                .iter()
                .map(|ns| Request::new(Component::url_path(&(), Some(ns))))
                .collect(),
        }
    }

    fn request(namespace: &str) -> Request {
        Request::new(Component::url_path(&(), Some(namespace)))
    }

    /// Sends `request` and decodes the one object it answers with.
    async fn one(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
        namespace: &str,
        name: &str,
    ) -> Result<Observed, StoreError> {
        let request =
            request.map_err(|e| map_error(kube::Error::BuildRequest(e), namespace, name))?;
        let text = self
            .client
            .request_text(request)
            .await
            .map_err(|e| map_error(e, namespace, name))?;
        Ok(raw::decode(&text))
    }

    async fn patch(
        &self,
        component: &Component,
        patch: &serde_json::Value,
        subresource: Option<&str>,
    ) -> Result<Observed, StoreError> {
        let (namespace, name) = names(component);
        let params = PatchParams::default();
        let patch = Patch::Merge(patch);
        let request = match subresource {
            Some(sub) => Self::request(&namespace).patch_subresource(sub, &name, &params, &patch),
            None => Self::request(&namespace).patch(&name, &params, &patch),
        };
        let observed = self.one(request, &namespace, &name).await?;
        self.recent.answered(&observed);
        Ok(observed)
    }
}

/// One page of `scope`, from `token` on.
async fn list_page(
    client: &Client,
    scope: &Request,
    token: Option<&str>,
) -> Result<raw::Page, kube::Error> {
    let mut params = ListParams::default().limit(PAGE_SIZE);
    if let Some(token) = token {
        params = params.continue_token(token);
    }
    let request = scope.list(&params).map_err(kube::Error::BuildRequest)?;
    let text = client.request_text(request).await?;
    raw::decode_page(&text).map_err(kube::Error::SerdeError)
}

/// Every object of `scope` and the resourceVersion to watch from.
async fn list_all(
    client: &Client,
    scope: &Request,
) -> Result<(Vec<Observed>, String), kube::Error> {
    let mut page = list_page(client, scope, None).await?;
    let mut items = std::mem::take(&mut page.items);
    while let Some(token) = page.next.take() {
        page = list_page(client, scope, Some(&token)).await?;
        items.append(&mut page.items);
    }
    Ok((items, page.resource_version))
}

type Lines = Pin<Box<dyn Stream<Item = std::io::Result<String>> + Send>>;

/// Opens a watch of `scope` from `version`.
async fn open_watch(client: &Client, scope: &Request, version: &str) -> Result<Lines, kube::Error> {
    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    let mut request = scope
        .watch(&params, version)
        .map_err(kube::Error::BuildRequest)?;
    // No compressed watch streams (kube does the same for its own watches).
    request.headers_mut().insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    let body = client.request_stream(request).await?;
    Ok(body.lines().into_stream().boxed())
}

/// Where one scope's watch stands.
enum WatchState {
    /// (Re)list everything, then watch.
    List,
    /// Watch from this resourceVersion; `Some`: the open stream.
    Watch(String, Option<Lines>),
}

/// One scope's list-then-watch loop.
struct Follow {
    client: Client,
    scope: Request,
    state: WatchState,
    /// Failures in a row, for the backoff.
    failures: u32,
}

/// The delay after `failures` failures in a row: [`FIRST_BACKOFF`] doubled per earlier
/// failure, at most [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => helmq_telemetry::retry::backoff(FIRST_BACKOFF, MAX_BACKOFF, n, false),
    }
}

/// True for the API server's 410 Gone: the resourceVersion is too old, list again.
fn gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 410)
}

/// The change a decoded object makes; `Applied` or `Deleted`.
fn change(decoded: Observed, deleted: bool) -> Change {
    match (decoded, deleted) {
        (Observed::Component(c), false) => Change::Applied(c),
        (Observed::Component(c), true) => Change::Deleted(c),
        (Observed::Unreadable(u), false) => Change::Unreadable(u),
        (Observed::Unreadable(u), true) => Change::Deleted(Box::new(u.component)),
    }
}

impl Follow {
    fn failed(&mut self, error: &kube::Error) -> Vec<Change> {
        self.failures = self.failures.saturating_add(1);
        vec![Change::Error(error.to_string())]
    }

    /// The next changes (possibly none); waits out the backoff first.
    async fn step(&mut self) -> Vec<Change> {
        if self.failures > 0 {
            tokio::time::sleep(backoff(self.failures)).await;
        }
        match &mut self.state {
            WatchState::List => match list_all(&self.client, &self.scope).await {
                Ok((items, version)) => {
                    self.failures = 0;
                    self.state = WatchState::Watch(version, None);
                    std::iter::once(Change::Restarted)
                        .chain(items.into_iter().map(|d| change(d, false)))
                        .collect()
                }
                Err(error) => self.failed(&error),
            },
            WatchState::Watch(version, stream @ None) => {
                match open_watch(&self.client, &self.scope, version).await {
                    Ok(lines) => {
                        *stream = Some(lines);
                        Vec::new()
                    }
                    Err(error) if gone(&error) => {
                        self.state = WatchState::List;
                        Vec::new()
                    }
                    Err(error) => self.failed(&error),
                }
            }
            WatchState::Watch(version, Some(lines)) => match lines.next().await {
                // The server closed the watch (its timeout): resume from the last version.
                None => {
                    self.state = WatchState::Watch(std::mem::take(version), None);
                    Vec::new()
                }
                Some(Err(error)) => {
                    self.state = WatchState::Watch(std::mem::take(version), None);
                    self.failed(&kube::Error::ReadEvents(error))
                }
                Some(Ok(line)) => self.on_line(&line),
            },
        }
    }

    fn on_line(&mut self, line: &str) -> Vec<Change> {
        let WatchState::Watch(version, _) = &mut self.state else {
            return Vec::new();
        };
        let event = match raw::decode_event(line) {
            Ok(Some(event)) => event,
            Ok(None) => return Vec::new(),
            Err(error) => return vec![Change::Error(format!("unreadable watch event: {error}"))],
        };
        self.failures = 0;
        let mut seen = |d: &Observed| {
            if let Some(v) = &d.meta().resource_version {
                version.clone_from(v);
            }
        };
        match event {
            Event::Applied(d) => {
                seen(&d);
                vec![change(d, false)]
            }
            Event::Deleted(d) => {
                seen(&d);
                vec![change(d, true)]
            }
            Event::Bookmark(v) => {
                *version = v;
                Vec::new()
            }
            Event::Error(status) if status.code == 410 => {
                self.state = WatchState::List;
                Vec::new()
            }
            Event::Error(status) => {
                let error = kube::Error::Api(status);
                self.state = WatchState::Watch(std::mem::take(version), None);
                self.failed(&error)
            }
        }
    }
}

/// Maps a kube error by its [`classify`] class: 409 → conflict, 404 → not found, other API
/// answers → rejected (with their code), other permanent errors (a request that cannot be
/// built, an answer that cannot be read) → invalid, the rest (transport, TLS, timeouts) →
/// unavailable.
pub(super) fn map_error(error: kube::Error, namespace: &str, name: &str) -> StoreError {
    let class = classify(&error);
    match error {
        kube::Error::Api(status) if status.code == 409 => {
            StoreError::Conflict(ObjectKey::new(namespace, name))
        }
        kube::Error::Api(status) if status.code == 404 => {
            StoreError::NotFound(ObjectKey::new(namespace, name))
        }
        kube::Error::Api(status) => StoreError::Rejected {
            code: status.code,
            message: status.message.clone(),
        },
        other if class == ErrorClass::Permanent => StoreError::Invalid(Box::new(other)),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

fn resource_version(component: &Component) -> serde_json::Value {
    component
        .metadata
        .resource_version
        .clone()
        .map(serde_json::Value::String)
        .unwrap_or(serde_json::Value::Null)
}

impl ComponentStore for KubeComponentStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Observed>, StoreError> {
        let observed = self
            .get_with(namespace, name, &GetParams::default())
            .await?;
        if let Some(observed) = &observed {
            self.recent.answered(observed);
        }
        Ok(observed)
    }

    async fn get_cached(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Observed>, StoreError> {
        if let Some(observed) = self.recent.get(&ObjectKey::new(namespace, name)) {
            return Ok(Some(observed));
        }
        // resourceVersion=0: served from the API server's watch cache, not etcd.
        self.get_with(namespace, name, &GetParams::any()).await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for scope in self.scopes() {
            let (items, _) = list_all(&self.client, &scope)
                .await
                .map_err(|e| map_error(e, "", ""))?;
            for item in items {
                match item {
                    Observed::Component(c) => listing.components.push(*c),
                    Observed::Unreadable(u) => listing.unreadable.push(*u),
                }
            }
        }
        Ok(listing)
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        let streams = self.scopes().into_iter().map(|scope| {
            let follow = Follow {
                client: self.client.clone(),
                scope,
                state: WatchState::List,
                failures: 0,
            };
            futures::stream::unfold(follow, |mut follow| async move {
                let changes = follow.step().await;
                Some((futures::stream::iter(changes), follow))
            })
            .flatten()
            .boxed()
        });
        // The copies are kept while this stream lives.
        let (watching, recent) = (self.recent.watching(), self.recent.clone());
        futures::stream::select_all(streams)
            .inspect(move |change| {
                let _watching = &watching;
                recent.saw(change);
            })
            .boxed()
    }

    fn source_changes(&self) -> BoxStream<'static, super::sources::SourceRef> {
        super::sources::source_changes(&self.client, self.namespaces.as_deref(), &self.source_kinds)
    }

    async fn add_finalizer(&self, component: &Component) -> Result<Observed, StoreError> {
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version(component),
                "finalizers": finalizers_with_ours(component),
            }
        });
        self.patch(component, &patch, None).await
    }

    async fn remove_finalizer(
        &self,
        component: &Component,
    ) -> Result<Option<Observed>, StoreError> {
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version(component),
                "finalizers": finalizers_without_ours(component),
            }
        });
        let released = |updated: &Component| {
            updated.metadata.deletion_timestamp.is_some()
                && updated
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_none_or(Vec::is_empty)
        };
        match self.patch(component, &patch, None).await {
            Ok(updated) => Ok((!released(updated.component())).then_some(updated)),
            // Removing the last finalizer of a deleting object may race with its removal.
            Err(StoreError::NotFound(_)) if component.metadata.deletion_timestamp.is_some() => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> Result<Observed, StoreError> {
        let patch = json!({
            "metadata": { "resourceVersion": resource_version(component) },
            "status": status,
        });
        self.patch(component, &patch, Some("status")).await
    }
}
