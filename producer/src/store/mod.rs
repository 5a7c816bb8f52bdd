//! The `ComponentStore` seam: everything the producer and the writer need from the Kubernetes
//! API about `Component` resources, with the real adapter ([`KubeComponentStore`]) and an
//! in-memory fake (`fake::FakeComponentStore`) that behaves like the API server for tests.
//!
//! The [`LeaseStore`] seam does the same for the `coordination.k8s.io/v1` Lease of leader
//! election ([`KubeLeaseStore`], `fake::FakeLeaseStore`).
//!
//! The fakes are compiled only for tests: this crate's own, and dependents that enable the
//! `testing` feature. The binaries never contain them.
//!
//! Every write carries the `metadata.resourceVersion` the caller read, so a concurrent change
//! is reported as [`StoreError::Conflict`] (HTTP 409) and re-read by the caller, never
//! overwritten.

#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(any(test, feature = "testing"))]
mod fake_lease;
mod kube_lease;
mod kube_store;
mod lease;

use std::future::Future;

use futures::stream::BoxStream;
use helmq_schemas::component::{Component, ComponentStatus};

pub use kube_lease::KubeLeaseStore;
pub use kube_store::KubeComponentStore;
pub use lease::LeaseStore;

/// Errors of [`ComponentStore`] operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read (HTTP 409): re-read and decide again.
    #[error("conflict: {namespace}/{name} changed since it was read")]
    Conflict {
        /// Namespace of the Component.
        namespace: String,
        /// Name of the Component.
        name: String,
    },
    /// The object does not exist (any more).
    #[error("component {namespace}/{name} not found")]
    NotFound {
        /// Namespace of the Component.
        namespace: String,
        /// Name of the Component.
        name: String,
    },
    /// The API server refused the request for good (validation, permissions).
    #[error("api server rejected the request ({code}): {message}")]
    Rejected {
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The API server could not be reached or failed; retrying later may succeed.
    #[error("api server unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// True when a later retry of the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Rejected { code, .. } => *code == 429 || *code >= 500,
            StoreError::Conflict { .. } | StoreError::NotFound { .. } => false,
        }
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum Change {
    /// A Component was listed, added or modified.
    Applied(Box<Component>),
    /// A Component disappeared.
    Deleted(Box<Component>),
    /// The watch (re)started: a full listing follows.
    Restarted,
    /// The watch failed; it backs off and resumes by itself.
    Error(String),
}

/// Access to `Component` resources, as the producer and the writer need it.
pub trait ComponentStore: Send + Sync + 'static {
    /// The Component `namespace/name`, or `None` when it does not exist.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Component>, StoreError>> + Send;

    /// Every Component in the store's scope (all namespaces or the configured ones).
    fn list(&self) -> impl Future<Output = Result<Vec<Component>, StoreError>> + Send;

    /// A never-ending stream of changes in the store's scope: it starts with a full listing
    /// ([`Change::Restarted`] then one [`Change::Applied`] per object) and resumes by itself
    /// after errors, re-listing so nothing is lost.
    fn changes(&self) -> BoxStream<'static, Change>;

    /// Adds our claim finalizer to `component`, on the condition that it is unchanged since
    /// it was read (its `resourceVersion`). Returns the updated object.
    fn add_finalizer(
        &self,
        component: &Component,
    ) -> impl Future<Output = Result<Component, StoreError>> + Send;

    /// Removes our claim finalizer from `component` on the same condition. Returns the updated
    /// object, or `None` when removing it let the API server delete the object.
    fn remove_finalizer(
        &self,
        component: &Component,
    ) -> impl Future<Output = Result<Option<Component>, StoreError>> + Send;

    /// Writes `status` through the status subresource, on the condition that `component` is
    /// unchanged since it was read. Returns the updated object.
    fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> impl Future<Output = Result<Component, StoreError>> + Send;
}

/// `namespace/name` of a Component (empty parts when the metadata lacks them).
pub fn key_of(component: &Component) -> (String, String) {
    (
        component.metadata.namespace.clone().unwrap_or_default(),
        component.metadata.name.clone().unwrap_or_default(),
    )
}

/// The finalizers of `component` without ours.
pub(crate) fn finalizers_without_ours(component: &Component) -> Vec<String> {
    component
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| f.as_str() != helmq_schemas::component::HELM_FINALIZER)
        .cloned()
        .collect()
}

/// The finalizers of `component` with ours appended (once).
pub(crate) fn finalizers_with_ours(component: &Component) -> Vec<String> {
    let mut all: Vec<String> = component.metadata.finalizers.clone().unwrap_or_default();
    if !all
        .iter()
        .any(|f| f == helmq_schemas::component::HELM_FINALIZER)
    {
        all.push(helmq_schemas::component::HELM_FINALIZER.to_owned());
    }
    all
}
