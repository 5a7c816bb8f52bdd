//! [`KubeComponentStore`]: the [`ComponentStore`] seam over the Kubernetes API (`kube`).
//!
//! Writes are JSON merge patches that carry `metadata.resourceVersion`: the API server treats
//! it as a precondition and answers 409 when the object changed, which maps to
//! [`StoreError::Conflict`]. Status goes through the `/status` subresource only.

use futures::stream::{BoxStream, StreamExt};
use helmq_schemas::component::{Component, ComponentStatus};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::{
    Change, ComponentStore, ErrorClass, StoreError, classify, finalizers_with_ours,
    finalizers_without_ours,
};

/// [`ComponentStore`] on a Kubernetes API server.
#[derive(Clone)]
pub struct KubeComponentStore {
    client: Client,
    /// `None`: all namespaces; otherwise only these.
    namespaces: Option<Vec<String>>,
}

impl std::fmt::Debug for KubeComponentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeComponentStore")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl KubeComponentStore {
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
        }
    }

    fn scoped_apis(&self) -> Vec<Api<Component>> {
        match &self.namespaces {
            None => vec![Api::all(self.client.clone())],
            Some(list) => list
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect(),
        }
    }

    fn api(&self, namespace: &str) -> Api<Component> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

fn names(component: &Component) -> (String, String) {
    super::key_of(component)
}

/// Maps a kube error by its [`classify`] class: 409 → conflict, 404 → not found, other API
/// answers → rejected (with their code), other permanent errors (a request that cannot be
/// built, an answer that cannot be read) → invalid, the rest (transport, TLS, timeouts) →
/// unavailable.
pub(super) fn map_error(error: kube::Error, namespace: &str, name: &str) -> StoreError {
    let class = classify(&error);
    match error {
        kube::Error::Api(status) if status.code == 409 => StoreError::Conflict {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        kube::Error::Api(status) if status.code == 404 => StoreError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
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
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Component>, StoreError> {
        self.api(namespace)
            .get_opt(name)
            .await
            .map_err(|e| map_error(e, namespace, name))
    }

    async fn list(&self) -> Result<Vec<Component>, StoreError> {
        let mut all = Vec::new();
        for api in self.scoped_apis() {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| map_error(e, "", ""))?;
            all.extend(list.items);
        }
        Ok(all)
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        let streams = self.scoped_apis().into_iter().map(|api| {
            watcher(api, watcher::Config::default())
                .default_backoff()
                .filter_map(|event| async move {
                    match event {
                        Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                            Some(Change::Applied(Box::new(c)))
                        }
                        Ok(watcher::Event::Delete(c)) => Some(Change::Deleted(Box::new(c))),
                        Ok(watcher::Event::Init) => Some(Change::Restarted),
                        Ok(watcher::Event::InitDone) => None,
                        Err(e) => Some(Change::Error(e.to_string())),
                    }
                })
                .boxed()
        });
        futures::stream::select_all(streams).boxed()
    }

    async fn add_finalizer(&self, component: &Component) -> Result<Component, StoreError> {
        let (namespace, name) = names(component);
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version(component),
                "finalizers": finalizers_with_ours(component),
            }
        });
        self.api(&namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| map_error(e, &namespace, &name))
    }

    async fn remove_finalizer(
        &self,
        component: &Component,
    ) -> Result<Option<Component>, StoreError> {
        let (namespace, name) = names(component);
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version(component),
                "finalizers": finalizers_without_ours(component),
            }
        });
        match self
            .api(&namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                let gone = updated.metadata.deletion_timestamp.is_some()
                    && updated
                        .metadata
                        .finalizers
                        .as_ref()
                        .is_none_or(Vec::is_empty);
                Ok((!gone).then_some(updated))
            }
            // Removing the last finalizer of a deleting object may race with its removal.
            Err(kube::Error::Api(status))
                if status.code == 404 && component.metadata.deletion_timestamp.is_some() =>
            {
                Ok(None)
            }
            Err(e) => Err(map_error(e, &namespace, &name)),
        }
    }

    async fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> Result<Component, StoreError> {
        let (namespace, name) = names(component);
        let patch = json!({
            "metadata": { "resourceVersion": resource_version(component) },
            "status": status,
        });
        self.api(&namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| map_error(e, &namespace, &name))
    }
}
