//! [`FakeLeaseStore`]: an in-memory [`LeaseStore`] that behaves like the API server for
//! leader election tests: every write bumps `metadata.resourceVersion`, a replace carrying a
//! stale one is a [`StoreError::Conflict`] (409), and so is creating a Lease that exists.
//!
//! [`FakeLeaseStore::connection`] gives one candidate its own link to the shared store, which
//! [`FakeLeaseStore::cut_off`] can sever (a network partition of that candidate alone).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{LeaseStore, ObjectKey, StoreError, names};

/// An in-memory Kubernetes API for `Lease` objects. Clones share one store (and one link).
#[derive(Debug, Clone, Default)]
pub struct FakeLeaseStore {
    state: Arc<Mutex<Leases>>,
    /// This connection is cut off from the store.
    cut: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Leases {
    objects: BTreeMap<(String, String), Lease>,
    last_rv: u64,
    unavailable: bool,
}

impl FakeLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        FakeLeaseStore::default()
    }

    fn state(&self) -> MutexGuard<'_, Leases> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every [`LeaseStore`] call fail with [`StoreError::Unavailable`] (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// Another connection to the same store, with its own link (see [`Self::cut_off`]).
    pub fn connection(&self) -> FakeLeaseStore {
        FakeLeaseStore {
            state: self.state.clone(),
            cut: Arc::default(),
        }
    }

    /// Makes every call through this connection (and its clones) fail with
    /// [`StoreError::Unavailable`], or work again; other connections are unaffected.
    pub fn cut_off(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// The store, unless it or this connection is down.
    fn reachable(&self) -> Result<MutexGuard<'_, Leases>, StoreError> {
        let state = self.state();
        if state.unavailable || self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(state)
    }

    /// The stored Lease, read directly (no outage simulation), for test assertions.
    pub fn snapshot(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.state()
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Writes `lease` under the state's lock: the precondition was checked by the caller.
    fn store(state: &mut Leases, mut lease: Lease) -> Lease {
        state.last_rv += 1;
        lease.metadata.resource_version = Some(state.last_rv.to_string());
        state.objects.insert(names(&lease), lease.clone());
        lease
    }
}

impl LeaseStore for FakeLeaseStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Lease>, StoreError> {
        let state = self.reachable()?;
        Ok(state
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned())
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let mut state = self.reachable()?;
        let (namespace, name) = names(lease);
        if state
            .objects
            .contains_key(&(namespace.clone(), name.clone()))
        {
            return Err(StoreError::Conflict(ObjectKey::new(namespace, name)));
        }
        let mut created = lease.clone();
        created.metadata.uid = Some(format!("lease-uid-{}", state.last_rv + 1));
        created.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
        Ok(Self::store(&mut state, created))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let mut state = self.reachable()?;
        let (namespace, name) = names(lease);
        let Some(stored) = state.objects.get(&(namespace.clone(), name.clone())) else {
            return Err(StoreError::NotFound(ObjectKey::new(namespace, name)));
        };
        // Like the API server: no resourceVersion is an unconditional write.
        if let Some(rv) = &lease.metadata.resource_version
            && stored.metadata.resource_version.as_ref() != Some(rv)
        {
            return Err(StoreError::Conflict(ObjectKey::new(namespace, name)));
        }
        let mut replaced = lease.clone();
        replaced.metadata.uid = stored.metadata.uid.clone();
        replaced.metadata.creation_timestamp = stored.metadata.creation_timestamp.clone();
        Ok(Self::store(&mut state, replaced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: &str) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.namespace = Some("ns".into());
        lease.metadata.name = Some("l".into());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            ..LeaseSpec::default()
        });
        lease
    }

    #[tokio::test]
    async fn create_once_then_replace_only_from_the_current_version() {
        let store = FakeLeaseStore::new();
        let created = store.create(&lease("a")).await.unwrap();
        assert!(matches!(
            store.create(&lease("b")).await,
            Err(StoreError::Conflict(_))
        ));
        let mut mine = created.clone();
        mine.spec = lease("a2").spec;
        let replaced = store.replace(&mine).await.unwrap();
        assert_ne!(
            replaced.metadata.resource_version,
            created.metadata.resource_version
        );
        // The first read is stale now.
        let mut stale = created;
        stale.spec = lease("b").spec;
        assert!(matches!(
            store.replace(&stale).await,
            Err(StoreError::Conflict(_))
        ));
        let stored = store.get("ns", "l").await.unwrap().unwrap();
        assert_eq!(stored.spec.unwrap().holder_identity.as_deref(), Some("a2"));
        let other = store.connection();
        other.cut_off(true);
        assert!(other.get("ns", "l").await.unwrap_err().is_transient());
        assert!(store.get("ns", "l").await.is_ok());
        store.set_unavailable(true);
        assert!(store.get("ns", "l").await.unwrap_err().is_transient());
    }
}
