//! [`FakeEventStore`]: an in-memory [`EventStore`] that behaves like the API server for the
//! event recorder's tests: creating an Event whose name exists is a [`StoreError::Conflict`],
//! patching one that does not is a [`StoreError::NotFound`], and it can be made unavailable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::events::v1::Event;

use super::events::EventStore;
use super::names;
use super::{ObjectKey, StoreError};

/// An in-memory Kubernetes API for `events.k8s.io/v1` Events. Clones share one store.
#[derive(Debug, Clone, Default)]
pub struct FakeEventStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<(String, String), Event>,
    unavailable: bool,
    creates: usize,
    patches: usize,
}

impl FakeEventStore {
    /// An empty store.
    pub fn new() -> Self {
        FakeEventStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// Deletes every stored Event (as the API server does when they expire).
    pub fn expire_all(&self) {
        self.state().objects.clear();
    }

    /// The stored Events regarding the object `namespace/name`, oldest first (by
    /// `eventTime`, then name).
    pub fn regarding(&self, namespace: &str, name: &str) -> Vec<Event> {
        let mut events: Vec<Event> = self
            .state()
            .objects
            .values()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.namespace.as_deref() == Some(namespace) && r.name.as_deref() == Some(name)
                })
            })
            .cloned()
            .collect();
        events.sort_by(|a, b| {
            let at = |e: &Event| e.event_time.as_ref().map(|t| t.0);
            at(a)
                .cmp(&at(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        events
    }

    /// `(creates, patches)` that succeeded so far.
    pub fn writes(&self) -> (usize, usize) {
        let state = self.state();
        (state.creates, state.patches)
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("the fake events API is unavailable".into())
}

impl EventStore for FakeEventStore {
    async fn create(&self, event: &Event) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.unavailable {
            return Err(unavailable());
        }
        let (namespace, name) = names(event);
        if state
            .objects
            .contains_key(&(namespace.clone(), name.clone()))
        {
            return Err(StoreError::Conflict(ObjectKey::new(namespace, name)));
        }
        state.objects.insert((namespace, name), event.clone());
        state.creates += 1;
        Ok(())
    }

    async fn patch_series(&self, event: &Event) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.unavailable {
            return Err(unavailable());
        }
        let (namespace, name) = names(event);
        let Some(stored) = state.objects.get_mut(&(namespace.clone(), name.clone())) else {
            return Err(StoreError::NotFound(ObjectKey::new(namespace, name)));
        };
        stored.series.clone_from(&event.series);
        if let Some(annotations) = &event.metadata.annotations {
            stored
                .metadata
                .annotations
                .get_or_insert_default()
                .extend(annotations.clone());
        }
        state.patches += 1;
        Ok(())
    }
}
