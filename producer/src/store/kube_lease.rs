//! [`KubeLeaseStore`]: the [`LeaseStore`] seam over the Kubernetes API (`kube`).
//!
//! `replace` is a PUT of the whole object carrying the `metadata.resourceVersion` that was
//! read: the API server treats it as a precondition and answers 409 when the Lease changed
//! meanwhile, which maps to [`StoreError::Conflict`] (as does a 409 `AlreadyExists` on
//! create).

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::PostParams;

use super::kube_store::map_error;
use super::{LeaseStore, Namespaced, StoreError, names};

/// [`LeaseStore`] on a Kubernetes API server.
#[derive(Clone, Debug)]
pub struct KubeLeaseStore {
    leases: Namespaced<Lease>,
}

impl KubeLeaseStore {
    /// A store over `client`.
    pub fn new(client: Client) -> Self {
        KubeLeaseStore {
            leases: Namespaced::new(client),
        }
    }
}

impl LeaseStore for KubeLeaseStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, StoreError> {
        self.leases
            .api(namespace)
            .get_opt(name)
            .await
            .map_err(|e| map_error(e, namespace, name))
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let (namespace, name) = names(lease);
        self.leases
            .api(&namespace)
            .create(&PostParams::default(), lease)
            .await
            .map_err(|e| map_error(e, &namespace, &name))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let (namespace, name) = names(lease);
        self.leases
            .api(&namespace)
            .replace(&name, &PostParams::default(), lease)
            .await
            .map_err(|e| map_error(e, &namespace, &name))
    }
}
