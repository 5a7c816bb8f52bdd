//! [`KubeLeaseStore`]: the [`LeaseStore`] seam over the Kubernetes API (`kube`).
//!
//! `replace` is a PUT of the whole object carrying the `metadata.resourceVersion` that was
//! read: the API server treats it as a precondition and answers 409 when the Lease changed
//! meanwhile, which maps to [`StoreError::Conflict`] (as does a 409 `AlreadyExists` on
//! create).

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, PostParams};

use super::kube_store::map_error;
use super::{LeaseStore, StoreError};

/// [`LeaseStore`] on a Kubernetes API server.
#[derive(Clone)]
pub struct KubeLeaseStore {
    client: Client,
}

impl std::fmt::Debug for KubeLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLeaseStore").finish_non_exhaustive()
    }
}

impl KubeLeaseStore {
    /// A store over `client`.
    pub fn new(client: Client) -> Self {
        KubeLeaseStore { client }
    }

    fn api(&self, namespace: &str) -> Api<Lease> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

fn names(lease: &Lease) -> (String, String) {
    (
        lease.metadata.namespace.clone().unwrap_or_default(),
        lease.metadata.name.clone().unwrap_or_default(),
    )
}

impl LeaseStore for KubeLeaseStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, StoreError> {
        self.api(namespace)
            .get_opt(name)
            .await
            .map_err(|e| map_error(e, namespace, name))
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let (namespace, name) = names(lease);
        self.api(&namespace)
            .create(&PostParams::default(), lease)
            .await
            .map_err(|e| map_error(e, &namespace, &name))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let (namespace, name) = names(lease);
        self.api(&namespace)
            .replace(&name, &PostParams::default(), lease)
            .await
            .map_err(|e| map_error(e, &namespace, &name))
    }
}
