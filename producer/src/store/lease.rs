//! The [`LeaseStore`] seam: what leader election needs from the Kubernetes API about one
//! `coordination.k8s.io/v1` Lease.

use std::future::Future;

use k8s_openapi::api::coordination::v1::Lease;

use super::StoreError;

/// Access to `Lease` objects, as leader election needs it: read, create, and replace on the
/// condition that the object is unchanged since it was read.
pub trait LeaseStore: Send + Sync + 'static {
    /// The Lease `namespace/name`, or `None` when it does not exist.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Creates `lease` (namespace and name from its metadata). An existing Lease of that name
    /// is a [`StoreError::Conflict`]: someone else created it first.
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Replaces the stored Lease with `lease`, on the condition that the stored one still has
    /// `lease.metadata.resourceVersion` (the version the caller read); otherwise
    /// [`StoreError::Conflict`]. Returns the stored object.
    fn replace(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;
}
