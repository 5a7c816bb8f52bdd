//! The [`EventStore`] seam: what the writer's event recorder needs from the Kubernetes API
//! about `events.k8s.io/v1` Events (create one, patch the series of one it created), and
//! [`KubeEventStore`], its adapter over `kube`.
//!
//! RBAC: exactly `create` and `patch` on `events` in `events.k8s.io` (`deploy/rbac/producer.yaml`);
//! the recorder keeps what it created in memory, so it never reads Events back.

use std::future::Future;

use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Patch, PatchParams, PostParams};

use super::kube_store::map_error;
use super::{Namespaced, StoreError, names};

/// Access to `events.k8s.io/v1` Events, as the event recorder needs it.
pub trait EventStore: Send + Sync + 'static {
    /// Creates `event` (namespace and name from its metadata).
    fn create(&self, event: &Event) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Merge-patches the stored Event named like `event` with its `series` and
    /// `metadata.annotations` (a repeat of it was seen); [`StoreError::NotFound`] when the
    /// Event is gone (expired: the API server keeps Events for an hour by default).
    fn patch_series(&self, event: &Event) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// [`EventStore`] on a Kubernetes API server.
#[derive(Clone, Debug)]
pub struct KubeEventStore {
    events: Namespaced<Event>,
}

impl KubeEventStore {
    /// A store over `client`.
    pub fn new(client: Client) -> Self {
        KubeEventStore {
            events: Namespaced::new(client),
        }
    }
}

impl EventStore for KubeEventStore {
    async fn create(&self, event: &Event) -> Result<(), StoreError> {
        let (namespace, name) = names(event);
        self.events
            .api(&namespace)
            .create(&PostParams::default(), event)
            .await
            .map(drop)
            .map_err(|e| map_error(e, &namespace, &name))
    }

    async fn patch_series(&self, event: &Event) -> Result<(), StoreError> {
        let (namespace, name) = names(event);
        let patch = serde_json::json!({
            "metadata": {"annotations": event.metadata.annotations},
            "series": event.series,
        });
        self.events
            .api(&namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| map_error(e, &namespace, &name))
    }
}
