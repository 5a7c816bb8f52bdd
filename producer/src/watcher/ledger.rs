//! The watcher's ledger: per object, what this replica already published for its current
//! uid, generation and refresh, and the generation it last reported as unreadable, so that the many
//! watch events of one Component neither re-publish nor re-report.

use std::collections::{BTreeSet, HashMap};

use helmq_schemas::component::Component;

use crate::plan::{Published, recorded_refresh};
use crate::store::ObjectKey;

/// What is remembered of one object.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The object's uid: another object of the same name starts afresh.
    uid: String,
    /// The generation and what was published for it.
    published: Option<(Round, Published)>,
    /// The generation last reported as unreadable.
    reported: Option<i64>,
}

/// What was published (and reported) per object.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    entries: HashMap<ObjectKey, Entry>,
}

fn uid_of(component: &Component) -> &str {
    component.metadata.uid.as_deref().unwrap_or_default()
}

fn generation_of(component: &Component) -> i64 {
    component.metadata.generation.unwrap_or(0)
}

/// What a publish record holds for: a generation and the refresh of its apply job issued last
/// (a re-apply of the generation is published afresh).
type Round = (i64, u32);

fn round_of(component: &Component) -> Round {
    (generation_of(component), recorded_refresh(component))
}

impl Ledger {
    /// What was published for `component`'s uid and generation.
    pub(super) fn published(&self, component: &Component) -> Published {
        match self.entries.get(&ObjectKey::of(component)) {
            Some(Entry {
                uid,
                published: Some((round, published)),
                ..
            }) if uid == uid_of(component) && *round == round_of(component) => *published,
            _ => Published::default(),
        }
    }

    /// Notes, with `note`, something published for `component`'s uid and generation.
    pub(super) fn record(&mut self, component: &Component, note: impl FnOnce(&mut Published)) {
        let round = round_of(component);
        let entry = self.entry(component);
        let published = match &mut entry.published {
            Some((r, published)) if *r == round => published,
            other => &mut other.insert((round, Published::default())).1,
        };
        note(published);
    }

    /// Whether `component`'s generation is reported as unreadable for the first time (and
    /// notes that it is).
    pub(super) fn first_report(&mut self, component: &Component) -> bool {
        let generation = generation_of(component);
        let entry = self.entry(component);
        let first = entry.reported != Some(generation);
        entry.reported = Some(generation);
        first
    }

    /// Forgets `component` (deleted), unless another object of its name took its place.
    pub(super) fn forget(&mut self, component: &Component) {
        let key = ObjectKey::of(component);
        if self
            .entries
            .get(&key)
            .is_some_and(|e| e.uid == uid_of(component))
        {
            self.entries.remove(&key);
        }
    }

    /// Keeps only the objects whose uid is in `live`.
    pub(super) fn retain_live(&mut self, live: &BTreeSet<String>) {
        self.entries.retain(|_, entry| live.contains(&entry.uid));
    }

    /// The entry of `component`, fresh when its uid is new.
    fn entry(&mut self, component: &Component) -> &mut Entry {
        let uid = uid_of(component);
        let entry = self.entries.entry(ObjectKey::of(component)).or_default();
        if entry.uid != uid {
            *entry = Entry {
                uid: uid.to_owned(),
                ..Entry::default()
            };
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn component(name: &str, uid: &str, generation: i64) -> Component {
        helmq_tests::build::component(name)
            .uid(uid)
            .generation(generation)
            .build()
    }

    #[test]
    fn what_was_published_holds_for_one_uid_and_generation() {
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let mut ledger = Ledger::default();
        let web = component("web", "u1", 1);
        assert_eq!(ledger.published(&web), Published::default());
        ledger.record(&web, |p| p.apply = Some(at));
        ledger.record(&web, |p| p.failed = true);
        let want = Published {
            apply: Some(at),
            failed: true,
            ..Published::default()
        };
        assert_eq!(ledger.published(&web), want);
        assert_eq!(
            ledger.published(&component("web", "u1", 2)),
            Published::default()
        );
        assert_eq!(
            ledger.published(&component("web", "u2", 1)),
            Published::default()
        );
        assert_eq!(
            ledger.published(&component("api", "u1", 1)),
            Published::default()
        );
        // A new generation starts afresh.
        ledger.record(&component("web", "u1", 2), |p| p.terminated = true);
        assert_eq!(ledger.published(&web), Published::default());
        assert!(ledger.published(&component("web", "u1", 2)).terminated);
    }

    #[test]
    fn an_unreadable_generation_is_reported_once() {
        let mut ledger = Ledger::default();
        let web = component("web", "u1", 1);
        assert!(ledger.first_report(&web));
        assert!(!ledger.first_report(&web));
        assert!(ledger.first_report(&component("web", "u1", 2)));
        assert!(
            ledger.first_report(&component("web", "u2", 2)),
            "a new object"
        );
    }

    #[test]
    fn deleted_and_gone_objects_are_forgotten() {
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let mut ledger = Ledger::default();
        let (web, api) = (component("web", "u1", 1), component("api", "u2", 1));
        ledger.record(&web, |p| p.apply = Some(at));
        ledger.record(&api, |p| p.apply = Some(at));
        // A deletion of an older object of the same name leaves the new one's record.
        ledger.forget(&component("web", "u0", 1));
        assert!(ledger.published(&web).apply.is_some());
        ledger.forget(&web);
        assert!(ledger.published(&web).apply.is_none());
        ledger.retain_live(&BTreeSet::from(["u9".to_owned()]));
        assert!(ledger.published(&api).apply.is_none());
    }
}
