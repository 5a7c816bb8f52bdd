//! [`FakeComponentStore`]: an in-memory [`ComponentStore`] that behaves like the API server in
//! the ways the protocols depend on, for tests of the loops:
//!
//! - every write bumps `metadata.resourceVersion`; a write carrying a stale one is a
//!   [`StoreError::Conflict`] (409);
//! - `metadata.generation` starts at 1 and bumps only on spec changes, never on status or
//!   metadata writes;
//! - status is a separate subresource: [`ComponentStore::patch_status`] changes only status;
//! - deleting an object with finalizers only sets `deletionTimestamp`; the object goes away
//!   once its last finalizer is removed; no finalizer may be added while it is being deleted;
//! - watchers get a listing and then every change.
//!
//! The extra methods (`create`, `edit_spec`, `delete`, foreign finalizers) play the user and
//! the Composition controller. [`FakeComponentStore::set_unavailable`] simulates an API server
//! outage; [`FakeComponentStore::fail_component`] makes the writes of one Component fail
//! (permanently, transiently or with a conflict) while the others go on;
//! [`FakeComponentStore::set_random_faults`] fails a share of all calls at random (a seeded,
//! repeatable sequence) with 409, 429, 500 or a timeout.
//!
//! [`FakeLeaseStore`] does the same for the Leases of leader election.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use helmq_schemas::component::{Component, ComponentSpec, ComponentStatus, HELM_FINALIZER};
use helmq_schemas::config::ValuesKind;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::broadcast;

pub use super::fake_events::FakeEventStore;
pub use super::fake_lease::FakeLeaseStore;
use super::{Change, ComponentStore, ErrorClass, Listing, ObjectKey, Observed, StoreError};

/// Changes buffered per watcher before it is considered lagging (it then re-lists, as a real
/// watch does after a "resource version too old").
const WATCH_BUFFER: usize = 4096;

/// An in-memory Kubernetes API for `Component` resources. Clones share one store.
#[derive(Debug, Clone)]
pub struct FakeComponentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<Change>,
    sources: broadcast::Sender<super::sources::SourceRef>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<ObjectKey, Component>,
    last_rv: u64,
    last_uid: u64,
    unavailable: bool,
    /// Components whose client writes fail, and how.
    failing: BTreeMap<ObjectKey, ErrorClass>,
    /// Random failures of every call, when set.
    random: Option<Random>,
    /// Failures injected by [`FakeComponentStore::set_random_faults`] so far, by kind.
    injected: InjectedFaults,
    /// Status writes lose `handlerStatus.issuedJob`, as with a CRD older than the producer.
    old_crd: bool,
    /// `get_cached` answers with the version before each object's last change (nothing for
    /// an object changed only once), as a watch cache that lags one change behind.
    lagging_cache: bool,
    /// Each object's version before its last change (kept while `lagging_cache` is set).
    previous: BTreeMap<ObjectKey, Component>,
    /// Status writes whose `message` contains this are refused (422).
    refused_message: Option<String>,
}

/// Random failures of API calls: what [`FakeComponentStore::set_random_faults`] takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomFaults {
    /// Seed of the random sequence: the same seed fails the same calls of the same sequence.
    pub seed: u64,
    /// Share of calls that fail, from 0 to 1.
    pub rate: f64,
    /// How long a timed-out call hangs before it fails as a transport error.
    pub hang: Duration,
}

/// Failures [`FakeComponentStore::set_random_faults`] injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// 409 Conflict (writes only).
    pub conflicts: u64,
    /// 429 Too Many Requests.
    pub throttled: u64,
    /// 500 Internal Server Error.
    pub server_errors: u64,
    /// Calls that hung and failed as a transport error; for writes, half of them were carried
    /// out before the answer was lost (as when a connection drops after the server acted).
    pub timeouts: u64,
}

impl InjectedFaults {
    /// Every injected failure.
    pub fn total(&self) -> u64 {
        self.conflicts + self.throttled + self.server_errors + self.timeouts
    }
}

#[derive(Debug)]
struct Random {
    faults: RandomFaults,
    rng: fastrand::Rng,
}

/// What the random fault mode decided for one call.
enum Draw {
    /// The call goes through.
    Pass,
    /// The call fails at once with this error.
    Fail(StoreError),
    /// The call hangs for this long, then fails as a transport error; `applied`: a write is
    /// carried out first.
    Hang { hang: Duration, applied: bool },
}

/// The error of a timed-out call.
fn timed_out() -> StoreError {
    StoreError::Unavailable("request timed out (injected)".into())
}

impl Default for FakeComponentStore {
    fn default() -> Self {
        FakeComponentStore::new()
    }
}

fn not_found(namespace: &str, name: &str) -> StoreError {
    StoreError::NotFound(ObjectKey::new(namespace, name))
}

impl FakeComponentStore {
    /// An empty store.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let (sources, _) = broadcast::channel(WATCH_BUFFER);
        FakeComponentStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                events,
                sources,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, change: Change) {
        // No receiver is fine: nobody watches yet.
        let _ = self.inner.events.send(change);
    }

    /// Reports a change of the labelled ConfigMap or Secret `namespace/name`, as the API
    /// server's watch would.
    pub fn touch_source(&self, kind: ValuesKind, namespace: &str, name: &str) {
        let _ = self.inner.sources.send(super::sources::SourceRef {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }

    /// Makes `get_cached` lag one change behind every object (or answer like `get` again).
    pub fn set_lagging_cache(&self, lagging: bool) {
        self.state().lagging_cache = lagging;
    }

    /// Makes status writes drop `handlerStatus.issuedJob` (or keep it again), as an API server
    /// does whose Component CRD is older than the producer: it prunes fields its schema lacks.
    pub fn set_old_crd(&self, old: bool) {
        self.state().old_crd = old;
    }

    /// Makes status writes whose `message` contains `needle` fail as an API server refuses an
    /// invalid object (422), or (`None`) none again.
    pub fn set_refused_message(&self, needle: Option<&str>) {
        self.state().refused_message = needle.map(str::to_owned);
    }

    /// Makes every [`ComponentStore`] call fail with [`StoreError::Unavailable`] (or work
    /// again), like an API server that is down.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// Fails `faults.rate` of every [`ComponentStore`] call from now on (`None`: none), each
    /// failure drawn at random from a 409 (writes only), a 429, a 500 and a timeout. The watch
    /// is not affected. Replaces the sequence of an earlier call.
    pub fn set_random_faults(&self, faults: Option<RandomFaults>) {
        self.state().random = faults.map(|faults| Random {
            faults,
            rng: fastrand::Rng::with_seed(faults.seed),
        });
    }

    /// The failures the random fault mode injected so far.
    pub fn injected_faults(&self) -> InjectedFaults {
        self.state().injected
    }

    /// Draws the fate of one call from the random fault mode.
    fn draw(&self, write: bool) -> Draw {
        let mut state = self.state();
        let Some(random) = state.random.as_mut() else {
            return Draw::Pass;
        };
        if random.rng.f64() >= random.faults.rate {
            return Draw::Pass;
        }
        // Reads have no resourceVersion to conflict with: they get the other three.
        let kinds = if write { 4 } else { 3 };
        let (kind, applied, hang) = (
            random.rng.u8(..kinds),
            random.rng.bool(),
            random.faults.hang,
        );
        let injected = &mut state.injected;
        match kind {
            0 => {
                injected.throttled += 1;
                Draw::Fail(StoreError::Rejected {
                    code: 429,
                    message: "too many requests (injected)".into(),
                })
            }
            1 => {
                injected.server_errors += 1;
                Draw::Fail(StoreError::Rejected {
                    code: 500,
                    message: "internal error (injected)".into(),
                })
            }
            2 => {
                injected.timeouts += 1;
                Draw::Hang {
                    hang,
                    applied: write && applied,
                }
            }
            _ => {
                injected.conflicts += 1;
                Draw::Fail(StoreError::Conflict(ObjectKey::new("", "")))
            }
        }
    }

    /// A read through the random fault mode.
    async fn read_faults(&self) -> Result<(), StoreError> {
        match self.draw(false) {
            Draw::Pass => Ok(()),
            Draw::Fail(error) => Err(error),
            Draw::Hang { hang, .. } => {
                tokio::time::sleep(hang).await;
                Err(timed_out())
            }
        }
    }

    /// A client write through the random fault mode, then [`Self::checked_write`].
    async fn write_with_faults(
        &self,
        component: &Component,
        change: impl FnOnce(&mut Component) -> Result<(), StoreError>,
    ) -> Result<Option<Component>, StoreError> {
        match self.draw(true) {
            Draw::Pass => self.checked_write(component, change),
            Draw::Fail(StoreError::Conflict(_)) => {
                Err(StoreError::Conflict(ObjectKey::of(component)))
            }
            Draw::Fail(error) => Err(error),
            Draw::Hang { hang, applied } => {
                if applied {
                    // The server acts; only its answer is lost.
                    let _ = self.checked_write(component, change);
                }
                tokio::time::sleep(hang).await;
                Err(timed_out())
            }
        }
    }

    /// Makes every client write (claim, finalizer removal, status) of `namespace/name` fail
    /// with an error of `class` until [`Self::clear_failure`]: a 422 (permanent), a 503
    /// (transient) or a 409 (conflict). Reads and other Components are unaffected.
    pub fn fail_component(&self, namespace: &str, name: &str, class: ErrorClass) {
        self.state()
            .failing
            .insert(ObjectKey::new(namespace, name), class);
    }

    /// Ends [`Self::fail_component`] for `namespace/name`.
    pub fn clear_failure(&self, namespace: &str, name: &str) {
        self.state()
            .failing
            .remove(&ObjectKey::new(namespace, name));
    }

    /// Creates `component` as a user would: assigns uid, resourceVersion, generation 1 and
    /// the creation timestamp. Refuses an existing name.
    pub fn create(&self, mut component: Component) -> Result<Component, StoreError> {
        let key = ObjectKey::of(&component);
        let created = {
            let mut state = self.state();
            if state.objects.contains_key(&key) {
                return Err(StoreError::Rejected {
                    code: 409,
                    message: format!("components {:?} already exists", key.name),
                });
            }
            state.last_uid += 1;
            state.last_rv += 1;
            let meta = &mut component.metadata;
            // Kubernetes uids are UUIDs, and events carrying anything else are refused.
            meta.uid = Some(format!("00000000-0000-4000-8000-{:012x}", state.last_uid));
            meta.resource_version = Some(state.last_rv.to_string());
            meta.generation = Some(1);
            meta.creation_timestamp = Some(Time(jiff::Timestamp::now()));
            meta.deletion_timestamp = None;
            state.objects.insert(key, component.clone());
            component
        };
        self.notify(Change::Applied(Box::new(created.clone())));
        Ok(created)
    }

    /// Changes the spec as a user would (`kubectl edit`): bumps generation and
    /// resourceVersion.
    pub fn edit_spec(
        &self,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut ComponentSpec),
    ) -> Result<Component, StoreError> {
        self.mutate(namespace, name, |c| {
            let before = c.spec.clone();
            edit(&mut c.spec);
            if c.spec != before {
                c.metadata.generation = Some(c.metadata.generation.unwrap_or(0) + 1);
            }
            Ok(())
        })?
        .ok_or_else(|| not_found(namespace, name))
    }

    /// Sets annotation `key` to `value`, or removes it when `None`, as `kubectl annotate` does
    /// (metadata only: the generation stays).
    pub fn annotate(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<Component, StoreError> {
        self.mutate(namespace, name, |c| {
            let annotations = c.metadata.annotations.get_or_insert_with(Default::default);
            match value {
                Some(value) => annotations.insert(key.to_owned(), value.to_owned()),
                None => annotations.remove(key),
            };
            Ok(())
        })?
        .ok_or_else(|| not_found(namespace, name))
    }

    /// Deletes as `kubectl delete` does: sets `deletionTimestamp` while finalizers remain,
    /// removes the object when there are none.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.mutate(namespace, name, |c| {
            if c.metadata.deletion_timestamp.is_none() {
                c.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Adds a finalizer owned by someone else (another handler, the Composition controller).
    pub fn add_foreign_finalizer(
        &self,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<Component, StoreError> {
        self.mutate(namespace, name, |c| {
            add_finalizer_checked(c, finalizer)?;
            Ok(())
        })?
        .ok_or_else(|| not_found(namespace, name))
    }

    /// Removes a finalizer owned by someone else; the object goes away if it was the last one
    /// of a deleting object.
    pub fn remove_foreign_finalizer(
        &self,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), StoreError> {
        self.mutate(namespace, name, |c| {
            if let Some(list) = c.metadata.finalizers.as_mut() {
                list.retain(|f| f != finalizer);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The stored object, read directly (no outage simulation), for test assertions.
    pub fn snapshot(&self, namespace: &str, name: &str) -> Option<Component> {
        self.state()
            .objects
            .get(&ObjectKey::new(namespace, name))
            .cloned()
    }

    /// Applies `change` to the stored object, bumps its resourceVersion, removes it when it
    /// is deleting without finalizers, and notifies watchers. `Ok(None)`: it was removed.
    fn mutate(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Component) -> Result<(), StoreError>,
    ) -> Result<Option<Component>, StoreError> {
        let key = ObjectKey::new(namespace, name);
        let outcome = {
            let mut state = self.state();
            let mut object = state
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| not_found(namespace, name))?;
            let before = state.lagging_cache.then(|| object.clone());
            change(&mut object)?;
            if let Some(before) = before {
                state.previous.insert(key.clone(), before);
            }
            state.last_rv += 1;
            object.metadata.resource_version = Some(state.last_rv.to_string());
            let finalizers_empty = object
                .metadata
                .finalizers
                .as_ref()
                .is_none_or(Vec::is_empty);
            if object.metadata.deletion_timestamp.is_some() && finalizers_empty {
                state.objects.remove(&key);
                Err(object)
            } else {
                state.objects.insert(key, object.clone());
                Ok(object)
            }
        };
        match outcome {
            Ok(object) => {
                self.notify(Change::Applied(Box::new(object.clone())));
                Ok(Some(object))
            }
            Err(removed) => {
                self.notify(Change::Deleted(Box::new(removed)));
                Ok(None)
            }
        }
    }

    /// Like [`Self::mutate`], with the API server's checks for a client write: outage and the
    /// resourceVersion precondition.
    fn checked_write(
        &self,
        component: &Component,
        change: impl FnOnce(&mut Component) -> Result<(), StoreError>,
    ) -> Result<Option<Component>, StoreError> {
        let key = ObjectKey::of(component);
        {
            let state = self.state();
            if state.unavailable {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            if let Some(class) = state.failing.get(&key) {
                return Err(injected(*class, key.namespace, key.name));
            }
            let stored = state
                .objects
                .get(&key)
                .ok_or_else(|| not_found(&key.namespace, &key.name))?;
            if let Some(rv) = &component.metadata.resource_version
                && stored.metadata.resource_version.as_ref() != Some(rv)
            {
                return Err(StoreError::Conflict(key));
            }
        }
        self.mutate(&key.namespace, &key.name, change)
    }

    fn check_available(&self) -> Result<(), StoreError> {
        if self.state().unavailable {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(())
    }

    fn listing(&self) -> Vec<Change> {
        let state = self.state();
        std::iter::once(Change::Restarted)
            .chain(
                state
                    .objects
                    .values()
                    .map(|c| Change::Applied(Box::new(c.clone()))),
            )
            .collect()
    }
}

/// The error [`FakeComponentStore::fail_component`] injects for `class`.
fn injected(class: ErrorClass, namespace: String, name: String) -> StoreError {
    match class {
        ErrorClass::Permanent => StoreError::Rejected {
            code: 422,
            message: format!("components {name:?} is invalid (injected failure)"),
        },
        ErrorClass::Transient => StoreError::Rejected {
            code: 503,
            message: "the server is currently unable to handle the request (injected)".into(),
        },
        ErrorClass::Conflict => StoreError::Conflict(ObjectKey::new(namespace, name)),
    }
}

fn add_finalizer_checked(c: &mut Component, finalizer: &str) -> Result<(), StoreError> {
    if c.metadata.deletion_timestamp.is_some() {
        return Err(StoreError::Rejected {
            code: 422,
            message: "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted".into(),
        });
    }
    let list = c.metadata.finalizers.get_or_insert_with(Vec::new);
    if !list.iter().any(|f| f == finalizer) {
        list.push(finalizer.to_owned());
    }
    Ok(())
}

struct WatchState {
    store: FakeComponentStore,
    rx: broadcast::Receiver<Change>,
    pending: VecDeque<Change>,
}

impl ComponentStore for FakeComponentStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Observed>, StoreError> {
        self.check_available()?;
        self.read_faults().await?;
        Ok(self.snapshot(namespace, name).map(Observed::from))
    }

    async fn get_cached(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Observed>, StoreError> {
        self.check_available()?;
        self.read_faults().await?;
        let state = self.state();
        let key = ObjectKey::new(namespace, name);
        let copy = if state.lagging_cache {
            state.previous.get(&key)
        } else {
            state.objects.get(&key)
        };
        Ok(copy.cloned().map(Observed::from))
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.check_available()?;
        self.read_faults().await?;
        Ok(Listing {
            components: self.state().objects.values().cloned().collect(),
            unreadable: Vec::new(),
        })
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        // Subscribe before listing so no change falls between the two.
        let rx = self.inner.events.subscribe();
        let state = WatchState {
            store: self.clone(),
            rx,
            pending: self.listing().into(),
        };
        futures::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(change) = s.pending.pop_front() {
                    return Some((change, s));
                }
                match s.rx.recv().await {
                    Ok(change) => return Some((change, s)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        s.pending = s.store.listing().into();
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    fn source_changes(&self) -> BoxStream<'static, super::sources::SourceRef> {
        let rx = self.inner.sources.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(source) => return Some((source, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    async fn add_finalizer(&self, component: &Component) -> Result<Observed, StoreError> {
        let ObjectKey { namespace, name } = ObjectKey::of(component);
        self.write_with_faults(component, |c| add_finalizer_checked(c, HELM_FINALIZER))
            .await?
            .map(Observed::from)
            .ok_or_else(|| not_found(&namespace, &name))
    }

    async fn remove_finalizer(
        &self,
        component: &Component,
    ) -> Result<Option<Observed>, StoreError> {
        let removed = self.write_with_faults(component, |c| {
            if let Some(list) = c.metadata.finalizers.as_mut() {
                list.retain(|f| f != HELM_FINALIZER);
            }
            Ok(())
        });
        Ok(removed.await?.map(Observed::from))
    }

    async fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> Result<Observed, StoreError> {
        let ObjectKey { namespace, name } = ObjectKey::of(component);
        let refused = self.state().refused_message.clone();
        if let Some(needle) = refused.filter(|n| {
            status
                .message
                .as_ref()
                .is_some_and(|m| m.contains(n.as_str()))
        }) {
            return Err(StoreError::Rejected {
                code: 422,
                message: format!("status.message: Invalid value: contains {needle:?}"),
            });
        }
        let mut status = status.clone();
        if self.state().old_crd
            && let Some(handler) = status.handler_status.as_mut()
        {
            handler.issued_job = None;
        }
        self.write_with_faults(component, move |c| {
            c.status = Some(status);
            Ok(())
        })
        .await?
        .map(Observed::from)
        .ok_or_else(|| not_found(&namespace, &name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::component::{COORDINATION_FINALIZER, Phase};

    fn component(name: &str) -> Component {
        helmq_tests::build::component(name).build()
    }

    #[tokio::test]
    async fn stale_writes_conflict_and_generation_bumps_only_on_spec_changes() {
        let store = FakeComponentStore::new();
        let created = store.create(component("web")).unwrap();
        assert_eq!(created.metadata.generation, Some(1));

        let claimed = store
            .add_finalizer(&created)
            .await
            .unwrap()
            .into_component();
        assert_eq!(claimed.metadata.generation, Some(1));
        assert_ne!(
            claimed.metadata.resource_version,
            created.metadata.resource_version
        );
        // The first read is now stale.
        assert!(matches!(
            store.add_finalizer(&created).await,
            Err(StoreError::Conflict(_))
        ));

        let status = ComponentStatus {
            phase: Some(Phase::Claimed),
            ..Default::default()
        };
        let with_status = store
            .patch_status(&claimed, &status)
            .await
            .unwrap()
            .into_component();
        assert_eq!(with_status.metadata.generation, Some(1));
        assert_eq!(with_status.spec, claimed.spec);

        let edited = store
            .edit_spec("default", "web", |s| s.config = Some(serde_json::json!({})))
            .unwrap();
        assert_eq!(edited.metadata.generation, Some(2));
        assert_eq!(edited.status, Some(status));
        let same = store.edit_spec("default", "web", |_| {}).unwrap();
        assert_eq!(same.metadata.generation, Some(2));
    }

    #[tokio::test]
    async fn deletion_waits_for_every_finalizer() {
        let store = FakeComponentStore::new();
        let created = store.create(component("web")).unwrap();
        let claimed = store
            .add_finalizer(&created)
            .await
            .unwrap()
            .into_component();
        store
            .add_foreign_finalizer("default", "web", COORDINATION_FINALIZER)
            .unwrap();
        store.delete("default", "web").unwrap();
        let deleting = store.snapshot("default", "web").unwrap();
        assert!(deleting.metadata.deletion_timestamp.is_some());
        assert!(matches!(
            store.remove_finalizer(&claimed).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.add_finalizer(&deleting).await,
            Err(StoreError::Rejected { code: 422, .. })
        ));
        let still = store.remove_finalizer(&deleting).await.unwrap();
        assert!(still.is_some());
        store
            .remove_foreign_finalizer("default", "web", COORDINATION_FINALIZER)
            .unwrap();
        assert!(store.snapshot("default", "web").is_none());
    }

    #[tokio::test]
    async fn an_outage_fails_every_call_until_it_ends() {
        let store = FakeComponentStore::new();
        let created = store.create(component("web")).unwrap();
        store.set_unavailable(true);
        assert!(matches!(
            store.get("default", "web").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            store
                .add_finalizer(&created)
                .await
                .unwrap_err()
                .is_transient()
        );
        store.set_unavailable(false);
        assert!(store.add_finalizer(&created).await.is_ok());
    }

    #[tokio::test]
    async fn a_failing_component_fails_its_writes_only() {
        let store = FakeComponentStore::new();
        let a = store.create(component("a")).unwrap();
        let b = store.create(component("b")).unwrap();
        for class in [
            ErrorClass::Permanent,
            ErrorClass::Transient,
            ErrorClass::Conflict,
        ] {
            store.fail_component("default", "a", class);
            let error = store.add_finalizer(&a).await.unwrap_err();
            assert_eq!(error.class(), class, "{error}");
            assert!(store.get("default", "a").await.unwrap().is_some());
        }
        assert!(store.add_finalizer(&b).await.is_ok());
        store.clear_failure("default", "a");
        assert!(store.add_finalizer(&a).await.is_ok());
    }

    /// Runs 400 claims of fresh Components and 400 reads under 30% random faults with `seed`;
    /// returns which calls failed (and how) and what was injected.
    async fn faulty_calls(seed: u64) -> (Vec<String>, InjectedFaults, FakeComponentStore) {
        let store = FakeComponentStore::new();
        let hang = Duration::from_secs(5);
        store.set_random_faults(Some(RandomFaults {
            seed,
            rate: 0.3,
            hang,
        }));
        let mut outcomes = Vec::new();
        for i in 0..400 {
            let created = store.create(component(&format!("c{i}"))).unwrap();
            let started = tokio::time::Instant::now();
            let outcome = match store.add_finalizer(&created).await {
                Ok(_) => "ok".to_owned(),
                Err(StoreError::Unavailable(e)) => {
                    assert_eq!(started.elapsed(), hang, "a timeout hangs first");
                    format!("unavailable: {e}")
                }
                Err(StoreError::Rejected { code, .. }) => code.to_string(),
                Err(StoreError::Conflict(key)) => {
                    assert_eq!(key.name, format!("c{i}"));
                    "409".to_owned()
                }
                Err(other) => panic!("unexpected {other}"),
            };
            outcomes.push(outcome);
            let read = match store.get("default", &format!("c{i}")).await {
                Ok(found) => {
                    assert!(found.is_some());
                    "ok".to_owned()
                }
                Err(StoreError::Rejected { code, .. }) => code.to_string(),
                Err(StoreError::Unavailable(e)) => format!("unavailable: {e}"),
                Err(other) => panic!("a read cannot fail with {other}"),
            };
            outcomes.push(read);
        }
        (outcomes, store.injected_faults(), store)
    }

    #[tokio::test(start_paused = true)]
    async fn random_faults_fail_a_share_of_calls_in_a_repeatable_sequence() {
        let (outcomes, injected, store) = faulty_calls(7).await;
        let failed = outcomes.iter().filter(|o| *o != "ok").count() as u64;
        assert_eq!(failed, injected.total());
        // 30% of 800 calls, give or take what chance allows.
        assert!((170..=310).contains(&failed), "{failed} of 800 failed");
        for kind in [
            injected.conflicts,
            injected.throttled,
            injected.server_errors,
            injected.timeouts,
        ] {
            assert!(kind > 0, "every kind occurs: {injected:?}");
        }
        assert_eq!(
            outcomes.iter().filter(|o| *o == "409").count() as u64,
            injected.conflicts
        );
        // Some timed-out claims were carried out anyway (the answer was lost), some not.
        let timed_out_claims: Vec<usize> = outcomes
            .iter()
            .step_by(2)
            .enumerate()
            .filter(|(_, o)| o.starts_with("unavailable"))
            .map(|(i, _)| i)
            .collect();
        let applied = timed_out_claims
            .iter()
            .filter(|i| {
                store
                    .snapshot("default", &format!("c{i}"))
                    .and_then(|c| c.metadata.finalizers)
                    .is_some_and(|f| f.contains(&HELM_FINALIZER.to_owned()))
            })
            .count();
        assert!(
            applied > 0 && applied < timed_out_claims.len(),
            "{applied} of {}",
            timed_out_claims.len()
        );

        let (again, _, _) = faulty_calls(7).await;
        assert_eq!(again, outcomes, "the same seed fails the same calls");
        let (other, _, _) = faulty_calls(8).await;
        assert_ne!(other, outcomes, "another seed, another sequence");

        store.set_random_faults(None);
        assert!(store.get("default", "c0").await.is_ok());
    }

    #[tokio::test]
    async fn watchers_get_a_listing_then_changes() {
        let store = FakeComponentStore::new();
        store.create(component("a")).unwrap();
        let mut changes = store.changes();
        assert!(matches!(changes.next().await, Some(Change::Restarted)));
        assert!(
            matches!(changes.next().await, Some(Change::Applied(c)) if c.metadata.name.as_deref() == Some("a"))
        );
        store.create(component("b")).unwrap();
        assert!(
            matches!(changes.next().await, Some(Change::Applied(c)) if c.metadata.name.as_deref() == Some("b"))
        );
        store.delete("default", "b").unwrap();
        assert!(
            matches!(changes.next().await, Some(Change::Deleted(c)) if c.metadata.name.as_deref() == Some("b"))
        );
    }
}
