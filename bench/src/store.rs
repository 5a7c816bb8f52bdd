//! [`TimedStore`]: the in-memory API server (`FakeComponentStore`) with a [`Probe`] that
//! notes when the writer patches a Component's status to `Ready`.

use std::sync::Arc;

use futures::stream::BoxStream;
use helmq_producer::store::fake::FakeComponentStore;
use helmq_producer::store::{Change, ComponentStore, Listing, Observed, StoreError};
use helmq_schemas::component::{Component, ComponentStatus, Phase};

use crate::jobs::index_of;
use crate::probe::{Mark, Probe};

/// A [`FakeComponentStore`] whose `Ready` status writes are timed.
#[derive(Debug, Clone)]
pub struct TimedStore {
    inner: FakeComponentStore,
    probe: Arc<Probe>,
}

impl TimedStore {
    /// Times the status writes to `inner` in `probe`.
    pub fn new(inner: FakeComponentStore, probe: Arc<Probe>) -> TimedStore {
        TimedStore { inner, probe }
    }
}

impl ComponentStore for TimedStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Observed>, StoreError> {
        self.inner.get(namespace, name).await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list().await
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        self.inner.changes()
    }

    async fn add_finalizer(&self, component: &Component) -> Result<Observed, StoreError> {
        self.inner.add_finalizer(component).await
    }

    async fn remove_finalizer(
        &self,
        component: &Component,
    ) -> Result<Option<Observed>, StoreError> {
        self.inner.remove_finalizer(component).await
    }

    async fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> Result<Observed, StoreError> {
        let updated = self.inner.patch_status(component, status).await?;
        if status.phase == Some(Phase::Ready)
            && let Some(index) = component.metadata.name.as_deref().and_then(index_of)
        {
            self.probe.mark(index, Mark::Applied);
        }
        Ok(updated)
    }
}
