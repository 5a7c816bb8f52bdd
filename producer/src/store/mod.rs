//! The `ComponentStore` seam: everything the producer and the writer need from the Kubernetes
//! API about `Component` resources, with the real adapter ([`KubeComponentStore`]) and an
//! in-memory fake (`fake::FakeComponentStore`) that behaves like the API server for tests.
//!
//! The [`EventStore`] seam does the same for the `events.k8s.io/v1` Events the writer
//! records ([`KubeEventStore`], `fake::FakeEventStore`).
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
//!
//! Every failure has an [`ErrorClass`] ([`StoreError::class`], [`classify`] for kube's
//! errors): permanent (the same request will be refused again: it cannot be built, or the
//! server answered 400/403/404/422 and the like), a conflict (re-read and decide again) or
//! transient (429, 5xx, transport: retry later with a capped backoff).

mod events;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(any(test, feature = "testing"))]
mod fake_events;
#[cfg(any(test, feature = "testing"))]
mod fake_lease;
mod kube_lease;
mod kube_store;
mod lease;
pub mod raw;
mod recent;
pub mod sources;

use std::future::Future;

use futures::stream::BoxStream;
use helmq_schemas::component::{Component, ComponentStatus};

pub use events::{EventStore, KubeEventStore};
pub use kube_lease::KubeLeaseStore;
pub use kube_store::KubeComponentStore;
pub use lease::LeaseStore;
pub use raw::{Observed, Unreadable};

/// Errors of [`ComponentStore`] operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read (HTTP 409): re-read and decide again.
    #[error("conflict: {0} changed since it was read")]
    Conflict(ObjectKey),
    /// The object does not exist (any more).
    #[error("component {0} not found")]
    NotFound(ObjectKey),
    /// The API server refused the request for good (validation, permissions).
    #[error("api server rejected the request ({code}): {message}")]
    Rejected {
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The request cannot be made or its answer cannot be read (e.g. a name that does not
    /// fit in a URI, an object that does not fit our types): it will fail the same way again.
    #[error("invalid request: {0}")]
    Invalid(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The API server could not be reached or failed; retrying later may succeed.
    #[error("api server unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What a failed API call calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The same request will fail again: give up on it (dead-letter, report).
    Permanent,
    /// The object changed since it was read (409): re-read and decide again.
    Conflict,
    /// A later retry may succeed (429, 5xx, transport): retry with a capped backoff.
    Transient,
}

impl StoreError {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Conflict(_) => ErrorClass::Conflict,
            StoreError::NotFound(_) | StoreError::Invalid(_) => ErrorClass::Permanent,
            StoreError::Rejected { code, .. } => classify_code(*code),
            StoreError::Unavailable(_) => ErrorClass::Transient,
        }
    }

    /// True when a later retry of the same request may succeed.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// The class of an HTTP status code the API server answered with.
pub fn classify_code(code: u16) -> ErrorClass {
    match code {
        409 => ErrorClass::Conflict,
        // 401: credentials expire and are refreshed; 408: the server timed the request out.
        401 | 408 | 429 => ErrorClass::Transient,
        400..=499 => ErrorClass::Permanent,
        // 5xx, and codes an API server should not send.
        _ => ErrorClass::Transient,
    }
}

/// The class of an error of the kube client: API answers by their code
/// ([`classify_code`]); a request that cannot be built or an answer that cannot be read is
/// permanent; anything else (transport, TLS, timeouts, auth refresh) is transient.
pub fn classify(error: &kube::Error) -> ErrorClass {
    match error {
        kube::Error::Api(status) => classify_code(status.code),
        kube::Error::BuildRequest(_)
        | kube::Error::HttpError(_)
        | kube::Error::SerdeError(_)
        | kube::Error::FromUtf8(_) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
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
    /// An object was listed, added or modified that is not a readable Component.
    Unreadable(Box<Unreadable>),
    /// The watch failed; it backs off and resumes by itself.
    Error(String),
}

/// Everything in a store's scope.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The Components.
    pub components: Vec<Component>,
    /// The objects that are not readable Components.
    pub unreadable: Vec<Unreadable>,
}

/// Access to `Component` resources, as the producer and the writer need it.
pub trait ComponentStore: Send + Sync + 'static {
    /// The Component `namespace/name` (or the object there that cannot be read as one), or
    /// `None` when it does not exist.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Observed>, StoreError>> + Send;

    /// [`ComponentStore::get`] from a copy that may lag a little behind (this process's own
    /// watch, or the API server's watch cache), for a read whose write is conditional on the
    /// object being unchanged: a stale copy only costs a conflict. By default the same as
    /// `get`.
    fn get_cached(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Observed>, StoreError>> + Send {
        self.get(namespace, name)
    }

    /// Every Component in the store's scope (all namespaces or the configured ones), and the
    /// objects there that cannot be read as one.
    fn list(&self) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// A never-ending stream of changes in the store's scope: it starts with a full listing
    /// ([`Change::Restarted`] then one [`Change::Applied`] or [`Change::Unreadable`] per
    /// object) and resumes by itself after errors, re-listing so nothing is lost.
    fn changes(&self) -> BoxStream<'static, Change>;

    /// A never-ending stream of the labelled ConfigMaps and Secrets (`valuesFrom` sources)
    /// that changed in the store's scope; none by default.
    fn source_changes(&self) -> BoxStream<'static, sources::SourceRef> {
        futures::stream::StreamExt::boxed(futures::stream::pending())
    }

    /// Adds our claim finalizer to `component`, on the condition that it is unchanged since
    /// it was read (its `resourceVersion`). Returns the updated object, readable or not.
    fn add_finalizer(
        &self,
        component: &Component,
    ) -> impl Future<Output = Result<Observed, StoreError>> + Send;

    /// Removes our claim finalizer from `component` on the same condition. Returns the updated
    /// object (readable or not), or `None` when removing it let the API server delete the object.
    fn remove_finalizer(
        &self,
        component: &Component,
    ) -> impl Future<Output = Result<Option<Observed>, StoreError>> + Send;

    /// Writes `status` through the status subresource, on the condition that `component` is
    /// unchanged since it was read. Returns the updated object, readable or not.
    fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> impl Future<Output = Result<Observed, StoreError>> + Send;
}

/// `namespace/name` of an object: the key it is retried and remembered by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// The key `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of `object` (empty parts when its metadata lacks them).
    pub fn of(object: &impl kube::Resource) -> ObjectKey {
        let metadata = object.meta();
        ObjectKey::new(
            metadata.namespace.clone().unwrap_or_default(),
            metadata.name.clone().unwrap_or_default(),
        )
    }
}

/// `(namespace, name)` of `object`, as the stores key and address it.
pub(crate) fn names(object: &impl kube::Resource) -> (String, String) {
    let ObjectKey { namespace, name } = ObjectKey::of(object);
    (namespace, name)
}

/// A client for the namespaced objects of kind `K`, for the stores that only create and change
/// objects of one kind (Events, Leases); shown without the client's internals.
pub(crate) struct Namespaced<K> {
    client: kube::Client,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Namespaced<K> {
    /// Over `client`.
    pub(crate) fn new(client: kube::Client) -> Self {
        Namespaced {
            client,
            kind: std::marker::PhantomData,
        }
    }
}

impl<K> Namespaced<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    /// The API of its objects in `namespace`.
    pub(crate) fn api(&self, namespace: &str) -> kube::Api<K> {
        kube::Api::namespaced(self.client.clone(), namespace)
    }
}

impl<K> Clone for Namespaced<K> {
    fn clone(&self) -> Self {
        Namespaced::new(self.client.clone())
    }
}

impl<K> std::fmt::Debug for Namespaced<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaced").finish_non_exhaustive()
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("test", "Test").with_code(code),
        ))
    }

    #[test]
    fn kube_errors_are_classified() {
        let unbuildable = http::Request::get("/a b").body(()).unwrap_err();
        let unreadable = serde_json::from_str::<Component>("{").unwrap_err();
        let cases: Vec<(&str, kube::Error, ErrorClass)> = vec![
            ("400", api(400), ErrorClass::Permanent),
            ("401", api(401), ErrorClass::Transient),
            ("403", api(403), ErrorClass::Permanent),
            ("404", api(404), ErrorClass::Permanent),
            ("405", api(405), ErrorClass::Permanent),
            ("408", api(408), ErrorClass::Transient),
            ("409", api(409), ErrorClass::Conflict),
            ("410", api(410), ErrorClass::Permanent),
            ("422", api(422), ErrorClass::Permanent),
            ("429", api(429), ErrorClass::Transient),
            ("500", api(500), ErrorClass::Transient),
            ("503", api(503), ErrorClass::Transient),
            ("504", api(504), ErrorClass::Transient),
            (
                "unbuildable request",
                kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(unbuildable)),
                ErrorClass::Permanent,
            ),
            (
                "unreadable answer",
                kube::Error::SerdeError(unreadable),
                ErrorClass::Permanent,
            ),
            (
                "transport",
                kube::Error::Service("connection refused".into()),
                ErrorClass::Transient,
            ),
            (
                "tls required",
                kube::Error::TlsRequired,
                ErrorClass::Transient,
            ),
        ];
        for (name, error, want) in cases {
            assert_eq!(classify(&error), want, "{name}: {error}");
        }
    }

    #[test]
    fn store_errors_have_the_class_of_their_cause() {
        let rejected = |code| StoreError::Rejected {
            code,
            message: String::new(),
        };
        let key = || ObjectKey::new("ns", "c");
        let cases = [
            (rejected(422), ErrorClass::Permanent, false),
            (rejected(403), ErrorClass::Permanent, false),
            (rejected(429), ErrorClass::Transient, true),
            (rejected(503), ErrorClass::Transient, true),
            (rejected(409), ErrorClass::Conflict, false),
            (StoreError::Conflict(key()), ErrorClass::Conflict, false),
            (StoreError::NotFound(key()), ErrorClass::Permanent, false),
            (
                StoreError::Invalid("bad uri".into()),
                ErrorClass::Permanent,
                false,
            ),
            (
                StoreError::Unavailable("down".into()),
                ErrorClass::Transient,
                true,
            ),
        ];
        for (error, class, transient) in cases {
            assert_eq!(error.class(), class, "{error}");
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }
}
