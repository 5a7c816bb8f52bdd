//! What this process last saw of each Component, from its own watch, writes and fresh reads:
//! the copy [`KubeComponentStore`](super::KubeComponentStore) answers
//! [`ComponentStore::get_cached`](super::ComponentStore::get_cached) from without asking the
//! API server.
//!
//! The copies are kept only while a watch of the store runs in this process (the watcher's,
//! on the leader): a watch keeps every object in scope current, and the end of the last watch
//! forgets them all, so a replica that does not watch reads from the API server as before.
//! The answer to a write or a fresh read refreshes the copy of an object the watch already
//! knows (the watch itself may still be behind), never adds one: an answer that arrives after
//! a deletion the watch reported would otherwise bring the deleted object back.
//!
//! A copy is the object's JSON without its `managedFields` (an entry per writer, each listing
//! every field that writer set), which no reader of a copy needs; it is decoded again on each
//! read. As JSON a copy takes a fraction of the memory the decoded object does. An object that
//! cannot be read as a Component is not kept: it is read from the API server, as before.
//!
//! Of two copies of one object the newer is kept by resourceVersion. Kubernetes calls
//! resourceVersions opaque; the API server's are etcd revisions, and where either does not
//! read as a number the later arrival wins. A copy that is still stale costs only what a stale
//! copy from the API server's watch cache costs: its write is conditional on the
//! resourceVersion and answered with a conflict, after which the caller reads afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use helmq_schemas::component::Component;

use super::raw::{self, Observed};
use super::{Change, ObjectKey};

/// The copies, shared by every clone of a store.
#[derive(Debug, Default)]
pub(super) struct Recent {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Watches of the store running now.
    watches: usize,
    objects: HashMap<ObjectKey, Kept>,
}

/// One object as last seen.
#[derive(Debug)]
struct Kept {
    /// Its `resourceVersion`.
    version: Option<String>,
    /// The object as JSON, without `managedFields`.
    json: Box<str>,
}

impl Kept {
    fn of(component: &Component) -> Option<Kept> {
        let mut component = component.clone();
        component.metadata.managed_fields = None;
        let json = serde_json::to_string(&component).ok()?;
        Some(Kept {
            version: component.metadata.resource_version,
            json: json.into_boxed_str(),
        })
    }

    /// True when this copy is at least as new as `held` (or when either version is not a
    /// number).
    fn newer_than(&self, held: &Kept) -> bool {
        let number = |copy: &Kept| copy.version.as_deref()?.parse::<u64>().ok();
        match (number(self), number(held)) {
            (Some(new), Some(old)) => new >= old,
            _ => true,
        }
    }
}

impl Recent {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock cannot leave the map half-changed: every
        // change is one insert or remove.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a watch as running until the returned guard is dropped.
    pub(super) fn watching(self: &Arc<Self>) -> WatchGuard {
        self.state().watches += 1;
        WatchGuard {
            recent: self.clone(),
        }
    }

    /// Takes in what a watch of the store reports.
    pub(super) fn saw(&self, change: &Change) {
        let mut state = self.state();
        match change {
            Change::Applied(component) => state.keep(component, true),
            Change::Unreadable(unreadable) => {
                state.forget(&ObjectKey::of(&unreadable.component));
            }
            Change::Deleted(component) => state.forget(&ObjectKey::of(component.as_ref())),
            // A full listing follows; what it no longer holds must not linger.
            Change::Restarted => state.objects.clear(),
            Change::Error(_) => {}
        }
    }

    /// Takes in what a write or a fresh read of this process was answered with.
    pub(super) fn answered(&self, observed: &Observed) {
        let mut state = self.state();
        match observed {
            Observed::Component(component) => state.keep(component, false),
            Observed::Unreadable(unreadable) => {
                state.forget(&ObjectKey::of(&unreadable.component));
            }
        }
    }

    /// The copy of `key`, while a watch runs and has seen it.
    pub(super) fn get(&self, key: &ObjectKey) -> Option<Observed> {
        let state = self.state();
        if state.watches == 0 {
            return None;
        }
        state.objects.get(key).map(|copy| raw::decode(&copy.json))
    }
}

impl State {
    /// Keeps a copy of `component` if it is newer than the copy held; only a watch adds
    /// objects.
    fn keep(&mut self, component: &Component, add: bool) {
        if self.watches == 0 {
            return;
        }
        let key = ObjectKey::of(component);
        if !add && !self.objects.contains_key(&key) {
            return;
        }
        match Kept::of(component) {
            Some(copy) => match self.objects.get_mut(&key) {
                Some(held) if copy.newer_than(held) => *held = copy,
                Some(_) => {}
                None => {
                    self.objects.insert(key, copy);
                }
            },
            None => self.forget(&key),
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
    }
}

/// A running watch of the store; the last one to end forgets every copy.
#[derive(Debug)]
pub(super) struct WatchGuard {
    recent: Arc<Recent>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut state = self.recent.state();
        state.watches = state.watches.saturating_sub(1);
        if state.watches == 0 {
            state.objects = HashMap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use helmq_schemas::component::{Component, ComponentStatus};
    use helmq_tests::build::component;

    use super::*;

    fn web(version: &str, message: &str) -> Box<Component> {
        let status = ComponentStatus {
            message: Some(message.into()),
            ..Default::default()
        };
        let web = component("web")
            .namespace("team-a")
            .resource_version(version)
            .status(status);
        Box::new(web.build())
    }

    fn message(recent: &Recent) -> Option<String> {
        recent
            .get(&ObjectKey::new("team-a", "web"))
            .and_then(|o| o.component().status.clone()?.message)
    }

    #[test]
    fn nothing_is_kept_or_answered_without_a_running_watch() {
        let recent = Arc::new(Recent::default());
        recent.saw(&Change::Applied(web("5", "seen")));
        assert_eq!(message(&recent), None);

        let guard = recent.watching();
        recent.saw(&Change::Applied(web("5", "seen")));
        assert_eq!(message(&recent).as_deref(), Some("seen"));
        drop(guard);
        assert_eq!(message(&recent), None);
        // A new watch starts from nothing.
        let _guard = recent.watching();
        assert_eq!(message(&recent), None);
    }

    #[test]
    fn the_newer_copy_wins_whoever_reports_it_last() {
        let recent = Arc::new(Recent::default());
        let _guard = recent.watching();
        recent.saw(&Change::Applied(web("5", "listed")));
        recent.answered(&Observed::Component(web("7", "written")));
        assert_eq!(message(&recent).as_deref(), Some("written"));
        // The watch catching up with an older version does not undo the write.
        recent.saw(&Change::Applied(web("6", "older")));
        assert_eq!(message(&recent).as_deref(), Some("written"));
        recent.saw(&Change::Applied(web("8", "newer")));
        assert_eq!(message(&recent).as_deref(), Some("newer"));
        // Versions that are not numbers: the later arrival wins.
        recent.saw(&Change::Applied(web("x", "opaque")));
        assert_eq!(message(&recent).as_deref(), Some("opaque"));
    }

    #[test]
    fn a_copy_is_the_object_without_its_managed_fields_and_unreadables_are_not_kept() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

        let recent = Arc::new(Recent::default());
        let _guard = recent.watching();
        let mut listed = web("5", "listed");
        listed.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("helmq-producer".into()),
            ..Default::default()
        }]);
        recent.saw(&Change::Applied(listed.clone()));
        let copy = recent.get(&ObjectKey::new("team-a", "web")).unwrap();
        listed.metadata.managed_fields = None;
        assert_eq!(copy, Observed::Component(listed.clone()));

        let unreadable = super::super::Unreadable {
            component: *web("6", "unreadable"),
            error: "spec.config: invalid".into(),
        };
        recent.saw(&Change::Unreadable(Box::new(unreadable)));
        assert_eq!(message(&recent), None, "read from the API server instead");
    }

    #[test]
    fn a_write_refreshes_only_what_the_watch_knows_and_deletion_forgets() {
        let recent = Arc::new(Recent::default());
        let _guard = recent.watching();
        recent.answered(&Observed::Component(web("7", "written")));
        assert_eq!(message(&recent), None, "a write never adds an object");

        recent.saw(&Change::Applied(web("5", "listed")));
        recent.saw(&Change::Deleted(web("9", "gone")));
        recent.answered(&Observed::Component(web("8", "late answer")));
        assert_eq!(message(&recent), None, "a late answer cannot revive it");

        recent.saw(&Change::Applied(web("10", "again")));
        recent.saw(&Change::Restarted);
        assert_eq!(message(&recent), None, "a restart forgets until relisted");
    }
}
