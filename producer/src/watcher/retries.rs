//! The watcher's retry queue: per object, either the retry it waits for (when, and after how
//! many failures in a row) or the resourceVersion it failed for good at. One entry per object
//! key, as kube-runtime's `scheduler` keeps one request per object; the watch loop takes what
//! is due at each retry tick.

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::store::ObjectKey;

/// Where one object stands after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// Retried at `due`; it failed `failures` times in a row.
    Waiting {
        /// Failures in a row.
        failures: u32,
        /// When to retry.
        due: Instant,
    },
    /// Failed for good at this resourceVersion: left alone until it changes.
    GivenUp(Option<String>),
}

/// The objects whose handling failed: retried when due, or left alone until they change.
#[derive(Debug, Default)]
pub(super) struct Retries {
    entries: BTreeMap<ObjectKey, Entry>,
    /// How many entries are [`Entry::Waiting`].
    waiting: usize,
}

impl Retries {
    /// Whether any object waits for a retry.
    pub(super) fn any_waiting(&self) -> bool {
        self.waiting > 0
    }

    /// Failures in a row of `key` so far (0 when it waits for no retry).
    pub(super) fn failures(&self, key: &ObjectKey) -> u32 {
        match self.entries.get(key) {
            Some(Entry::Waiting { failures, .. }) => *failures,
            _ => 0,
        }
    }

    /// Whether `key` failed for good at `version` (and is left alone at it).
    pub(super) fn given_up_at(&self, key: &ObjectKey, version: Option<&String>) -> bool {
        matches!(self.entries.get(key), Some(Entry::GivenUp(v)) if v.as_ref() == version)
    }

    /// Retries `key` at `due`, after `failures` failures in a row.
    pub(super) fn retry_at(&mut self, key: ObjectKey, failures: u32, due: Instant) {
        self.set(key, Some(Entry::Waiting { failures, due }));
    }

    /// Leaves `key` alone until its resourceVersion is no longer `version`.
    pub(super) fn give_up(&mut self, key: ObjectKey, version: Option<String>) {
        self.set(key, Some(Entry::GivenUp(version)));
    }

    /// Forgets `key`: handled, or gone.
    pub(super) fn remove(&mut self, key: &ObjectKey) {
        self.set(key.clone(), None);
    }

    /// The objects whose retry is due at `now`, in key order.
    pub(super) fn due(&self, now: Instant) -> Vec<ObjectKey> {
        self.entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Waiting { due, .. } if *due <= now))
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn set(&mut self, key: ObjectKey, entry: Option<Entry>) {
        let waits = |e: &Entry| matches!(e, Entry::Waiting { .. });
        let now_waiting = entry.as_ref().is_some_and(waits);
        let was_waiting = match entry {
            Some(entry) => self.entries.insert(key, entry),
            None => self.entries.remove(&key),
        }
        .as_ref()
        .is_some_and(waits);
        self.waiting = self.waiting + usize::from(now_waiting) - usize::from(was_waiting);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    #[test]
    fn a_retry_is_due_at_its_time_and_counts_failures() {
        let start = Instant::now();
        let mut retries = Retries::default();
        assert!(!retries.any_waiting());
        assert_eq!(retries.failures(&key("a")), 0);
        retries.retry_at(key("a"), 1, start + Duration::from_secs(5));
        retries.retry_at(key("b"), 3, start + Duration::from_secs(1));
        assert!(retries.any_waiting());
        assert_eq!(retries.failures(&key("b")), 3);
        assert_eq!(retries.due(start), Vec::<ObjectKey>::new());
        assert_eq!(retries.due(start + Duration::from_secs(1)), [key("b")]);
        assert_eq!(
            retries.due(start + Duration::from_secs(5)),
            [key("a"), key("b")]
        );
        // A later failure replaces the entry: one per key.
        retries.retry_at(key("b"), 4, start + Duration::from_secs(9));
        assert_eq!(retries.due(start + Duration::from_secs(5)), [key("a")]);
        retries.remove(&key("a"));
        retries.remove(&key("b"));
        assert!(!retries.any_waiting());
        assert!(retries.due(start + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_given_up_object_is_left_alone_at_its_version_only() {
        let start = Instant::now();
        let mut retries = Retries::default();
        retries.retry_at(key("a"), 2, start);
        retries.give_up(key("a"), Some("7".into()));
        assert!(!retries.any_waiting(), "given up: no retry");
        assert!(retries.due(start).is_empty());
        assert_eq!(retries.failures(&key("a")), 0);
        assert!(retries.given_up_at(&key("a"), Some(&"7".into())));
        assert!(!retries.given_up_at(&key("a"), Some(&"8".into())));
        assert!(!retries.given_up_at(&key("b"), Some(&"7".into())));
        // It changed and failed again, transiently: retried, no longer given up.
        retries.retry_at(key("a"), 1, start);
        assert!(!retries.given_up_at(&key("a"), Some(&"7".into())));
        assert!(retries.any_waiting());
        retries.remove(&key("a"));
        retries.remove(&key("a"));
        assert!(!retries.any_waiting());
    }
}
