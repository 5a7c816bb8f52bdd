//! Kubernetes Events on Components: which `events.k8s.io/v1` Events a status event the writer
//! applied produces ([`phase_events`], a pure function), and the [`EventRecorder`] that writes
//! them through the [`EventStore`] seam, aggregating repeats, and the [`EventQueue`] that
//! records them off the status path.
//!
//! Aggregation follows client-go's events recorder (and kube's `runtime::events::Recorder`):
//! an Event identical to one recorded within [`SERIES_WINDOW`] is not created again; the first
//! one's `series` is patched instead (`count` = occurrences, `lastObservedTime`), which
//! `kubectl describe` shows as `(x3 over 5m)`. Two departures from kube's recorder, which is
//! why it is not used: "identical" includes the note (kube keys on type, reason and action
//! only, so a second failure with another reason would bump the first failure's count and
//! still show the first reason), and the Event carries the job id in its annotations
//! ([`JOB_ID_ANNOTATION`], updated to the latest job on a repeat), which kube's recorder
//! cannot set.
//!
//! The recorder's cache is in memory: after a restart, or for an Event the API server has
//! expired (a patch answered 404), a fresh Event is created.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use helmq_schemas::component::{Component, GROUP};
use helmq_schemas::event::{RECOVERED_PREFIX, StatusEvent, StatusPhase};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store::{EventStore, StoreError};

/// Annotation of each Event: the id of the job whose status event produced it (the latest
/// one when it repeated).
pub const JOB_ID_ANNOTATION: &str = "helm.deployment-orchestrator.io/job-id";
/// A repeat within this time of the last occurrence bumps the series (client-go's and kube's
/// window); a later one is a new Event.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// The API server's limit on `note`, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;
/// `reportingController` of the Events.
pub const REPORTING_CONTROLLER: &str = "helmq-producer";

/// The severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Progress.
    Normal,
    /// Something needs a look.
    Warning,
}

impl EventType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One Event to record on a Component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason (`Ready`, `Failed`, ...): the `kubectl describe` Reason column.
    pub reason: &'static str,
    /// CamelCase action the reason is the outcome of (`Claim`, `Apply`, `Recover`, `Delete`).
    pub action: &'static str,
    /// The short note (at most [`MAX_NOTE_BYTES`]).
    pub note: String,
    /// The job the status event reported on (empty for the producer's own events).
    pub job_id: String,
}

/// The Events an applied status event produces, in order: one per phase it writes, and a
/// `Recovered` before `Ready` when the worker first recovered a release left pending. A
/// `Terminated` event produces none: the writer then removes the finalizer and the Component
/// goes away with its Events.
pub fn phase_events(event: &StatusEvent) -> Vec<PhaseEvent> {
    let one = |type_, reason, action, note: &str| PhaseEvent {
        type_,
        reason,
        action,
        note: truncate(note, MAX_NOTE_BYTES),
        job_id: event.job_id.clone(),
    };
    let message = event.message.as_str();
    use EventType::{Normal, Warning};
    match event.phase {
        StatusPhase::Claimed => vec![one(Normal, "Claimed", "Claim", message)],
        StatusPhase::Deploying => vec![one(Normal, "Deploying", "Apply", message)],
        StatusPhase::Ready if event.release.as_ref().is_some_and(|r| r.drift.is_some()) => {
            drift_events(event)
                .into_iter()
                .map(|(type_, reason)| one(type_, reason, "CheckDrift", message))
                .collect()
        }
        StatusPhase::Ready => match message.strip_prefix(RECOVERED_PREFIX) {
            Some(_) => {
                let (recovery, rest) = message.split_once("; ").unwrap_or((message, message));
                vec![
                    one(Normal, "Recovered", "Recover", recovery),
                    one(Normal, "Ready", "Apply", rest),
                ]
            }
            None => vec![one(Normal, "Ready", "Apply", message)],
        },
        StatusPhase::Failed => vec![one(Warning, "Failed", "Apply", message)],
        StatusPhase::Terminating => vec![one(Normal, "Terminating", "Delete", message)],
        StatusPhase::TerminationFailed => {
            vec![one(Warning, "TerminationFailed", "Delete", message)]
        }
        StatusPhase::Terminated => Vec::new(),
    }
}

/// The Event of a drift check's answer: a Warning `DriftDetected` or a Normal `DriftCorrected`
/// naming the objects and fields, a Warning `DriftCheckFailed` saying why the check could not
/// compare or correct; none for a check that found nothing (one every interval
/// would bury the Events that matter).
fn drift_events(event: &StatusEvent) -> Option<(EventType, &'static str)> {
    let report = event.release.as_ref()?.drift.as_ref()?;
    match (report.failed, report.drifted, report.corrected) {
        (true, ..) => Some((EventType::Warning, "DriftCheckFailed")),
        (false, 0, _) => None,
        (false, _, false) => Some((EventType::Warning, "DriftDetected")),
        (false, _, true) => Some((EventType::Normal, "DriftCorrected")),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let ellipsis = '…';
    let mut end = max - ellipsis.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

/// The reference to `component` an Event is about.
pub fn regarding(component: &Component) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{GROUP}/v1alpha1")),
        kind: Some("Component".to_owned()),
        namespace: component.metadata.namespace.clone(),
        name: component.metadata.name.clone(),
        uid: component.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// What one [`EventRecorder::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new Event was created.
    Created,
    /// A repeat: the earlier Event's series now counts this many occurrences.
    Repeated(i32),
}

/// What identifies "the same Event": the object (by uid too, so a re-created Component starts
/// afresh) and everything `kubectl describe` shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    name: String,
    uid: Option<String>,
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    note: String,
}

/// Records [`PhaseEvent`]s as `events.k8s.io/v1` Events through an [`EventStore`],
/// aggregating repeats (see the module docs).
#[derive(Debug)]
pub struct EventRecorder<E> {
    store: E,
    instance: String,
    cache: Mutex<HashMap<Key, Event>>,
    /// When the cache was last rid of Events past [`SERIES_WINDOW`].
    pruned: Mutex<Timestamp>,
    /// The last name stamp used: two Events of one instant still get distinct names.
    stamp: Mutex<i128>,
}

/// How often the cache is rid of Events past [`SERIES_WINDOW`]: a scan of the whole cache on
/// every Event would cost more than the Event itself once thousands are cached.
const PRUNE_EVERY: SignedDuration = SignedDuration::from_secs(30);

impl<E: EventStore> EventRecorder<E> {
    /// A recorder writing through `store`; `instance` is the `reportingInstance` (the pod name).
    pub fn new(store: E, instance: impl Into<String>) -> Self {
        EventRecorder {
            store,
            instance: instance.into(),
            cache: Mutex::default(),
            pruned: Mutex::new(Timestamp::UNIX_EPOCH),
            stamp: Mutex::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<Key, Event>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `event` about `regarding` as happened at `now`.
    pub async fn record(
        &self,
        regarding: &ObjectReference,
        event: &PhaseEvent,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let key = Key {
            namespace: regarding.namespace.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone(),
            type_: event.type_,
            reason: event.reason,
            action: event.action,
            note: event.note.clone(),
        };
        let within = |e: &Event| last_seen(e).is_some_and(|at| at + SERIES_WINDOW > now);
        let earlier = {
            let mut cache = self.cache();
            let mut pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
            if now >= *pruned + PRUNE_EVERY {
                cache.retain(|_, e| within(e));
                *pruned = now;
            }
            cache.get(&key).filter(|e| within(e)).cloned()
        };
        if let Some(mut repeat) = earlier {
            let count = repeat.series.as_ref().map_or(2, |s| s.count + 1);
            repeat.series = Some(EventSeries {
                count,
                last_observed_time: MicroTime(now),
            });
            set_job_id(&mut repeat.metadata, &event.job_id);
            match self.store.patch_series(&repeat).await {
                Ok(()) => {
                    self.cache().insert(key, repeat);
                    return Ok(Recorded::Repeated(count));
                }
                // Expired on the server: start a new one.
                Err(StoreError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let fresh = self.new_event(regarding, event, now);
        self.store.create(&fresh).await?;
        self.cache().insert(key, fresh);
        Ok(Recorded::Created)
    }

    fn new_event(&self, regarding: &ObjectReference, event: &PhaseEvent, now: Timestamp) -> Event {
        let object = regarding.name.as_deref().unwrap_or("component");
        // `<object>.<hex nanoseconds>` like client-go's, within the 253 bytes of a name.
        let stamp = {
            let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
            *last = now.as_nanosecond().max(*last + 1);
            *last
        };
        let suffix = format!(".{stamp:x}");
        let mut end = object.len().min(253 - suffix.len());
        while !object.is_char_boundary(end) {
            end -= 1;
        }
        let mut metadata = ObjectMeta {
            name: Some(format!("{}{suffix}", &object[..end])),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        };
        set_job_id(&mut metadata, &event.job_id);
        Event {
            metadata,
            event_time: Some(MicroTime(now)),
            type_: Some(event.type_.as_str().to_owned()),
            reason: Some(event.reason.to_owned()),
            action: Some(event.action.to_owned()),
            note: Some(event.note.clone()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

fn set_job_id(metadata: &mut ObjectMeta, job_id: &str) {
    if !job_id.is_empty() {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(JOB_ID_ANNOTATION.to_owned(), job_id.to_owned());
    }
}

/// When `event` was last seen.
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
}

/// The longest one Kubernetes Event may take to be recorded before the recording task moves on.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Status writes whose Kubernetes Events may wait to be recorded: a few seconds of a burst of
/// thousands of Components, a few MiB at most; beyond it [`EventQueue::queue`] waits for room.
pub const EVENT_QUEUE: usize = 1024;

/// The Events of one status write, waiting to be recorded.
#[derive(Debug)]
struct Pending {
    regarding: ObjectReference,
    events: Vec<PhaseEvent>,
    span: tracing::Span,
}

/// Where whoever writes a status (the writer, and the watcher for the `Claimed` it writes
/// with the issued job) queues the Events of the write, off the status path: a task of its own
/// records them in order, each bounded by [`EVENT_TIMEOUT`]. A failure is logged and counted
/// (`helmq_writer_event_failures`) but never fails, retries or delays a status write. Clones
/// share the task, which ends once every clone is dropped and what they queued is recorded.
#[derive(Debug, Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<Pending>,
    metrics: Metrics,
}

impl EventQueue {
    /// Spawns the task recording through `recorder` (at most [`EVENT_QUEUE`] writes waiting).
    pub fn spawn<E: EventStore>(recorder: EventRecorder<E>, metrics: Metrics) -> EventQueue {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(record_events(recorder, rx, metrics.clone()));
        EventQueue { tx, metrics }
    }

    /// Queues the Events of `event`, just written into `component`'s status.
    pub async fn queue(&self, component: &Component, event: &StatusEvent) {
        let pending = Pending {
            regarding: regarding(component),
            events: phase_events(event),
            span: tracing::Span::current(),
        };
        if pending.events.is_empty() {
            return;
        }
        // Fails only once the task is gone (a panic in it): counted like any lost Event.
        if self.tx.send(pending).await.is_err() {
            self.metrics.event_failures.inc();
            tracing::warn!("the event recorder is gone; the events of this status are lost");
        }
    }
}

/// Records the queued Events in order until every sender is dropped; failures are logged and
/// counted, never returned.
async fn record_events<E: EventStore>(
    recorder: EventRecorder<E>,
    mut queue: mpsc::Receiver<Pending>,
    metrics: Metrics,
) {
    while let Some(pending) = queue.recv().await {
        let span = pending.span.clone();
        record_pending(&recorder, &pending, &metrics)
            .instrument(span)
            .await;
    }
}

/// Records the Events of one status write.
async fn record_pending<E: EventStore>(
    recorder: &EventRecorder<E>,
    pending: &Pending,
    metrics: &Metrics,
) {
    for phase_event in &pending.events {
        let record = recorder.record(&pending.regarding, phase_event, Timestamp::now());
        match tokio::time::timeout(EVENT_TIMEOUT, record).await {
            Ok(Ok(recorded)) => {
                metrics.events_recorded.inc();
                tracing::debug!(reason = phase_event.reason, ?recorded, "event recorded");
            }
            Ok(Err(error)) => {
                metrics.event_failures.inc();
                tracing::warn!(%error, reason = phase_event.reason, "cannot record the event");
            }
            Err(_) => {
                metrics.event_failures.inc();
                tracing::warn!(reason = phase_event.reason, timeout = ?EVENT_TIMEOUT, "recording the event timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fake::FakeEventStore;
    use helmq_schemas::event::ComponentRef;

    fn status(phase: StatusPhase, message: &str) -> StatusEvent {
        StatusEvent::new(
            "job-7",
            ComponentRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: None,
                generation: 1,
            },
            phase,
            message,
            1,
            "worker-1",
            Timestamp::from_second(1_700_000_000).unwrap(),
        )
    }

    #[test]
    fn each_phase_produces_its_event() {
        use EventType::{Normal, Warning};
        let recovery = "recovered release web from pending-upgrade by rolling back to revision 1";
        let ready = "release web revision 3 is deployed (chart hello 0.1.0)";
        let both = format!("{recovery}; {ready}");
        type Want<'a> = &'a [(EventType, &'a str, &'a str, &'a str)];
        let cases: &[(StatusPhase, &str, Want)] = &[
            (
                StatusPhase::Claimed,
                "Claimed by helm handler",
                &[(Normal, "Claimed", "Claim", "Claimed by helm handler")],
            ),
            (
                StatusPhase::Deploying,
                "attempt 1",
                &[(Normal, "Deploying", "Apply", "attempt 1")],
            ),
            (
                StatusPhase::Ready,
                ready,
                &[(Normal, "Ready", "Apply", ready)],
            ),
            (
                StatusPhase::Ready,
                &both,
                &[
                    (Normal, "Recovered", "Recover", recovery),
                    (Normal, "Ready", "Apply", ready),
                ],
            ),
            (
                StatusPhase::Failed,
                "chart not found",
                &[(Warning, "Failed", "Apply", "chart not found")],
            ),
            (
                StatusPhase::Terminating,
                "uninstalling",
                &[(Normal, "Terminating", "Delete", "uninstalling")],
            ),
            (
                StatusPhase::TerminationFailed,
                "forbidden",
                &[(Warning, "TerminationFailed", "Delete", "forbidden")],
            ),
            (StatusPhase::Terminated, "release web uninstalled", &[]),
        ];
        for (phase, message, want) in cases {
            let got: Vec<_> = phase_events(&status(*phase, message))
                .into_iter()
                .map(|e| {
                    assert_eq!(e.job_id, "job-7");
                    (e.type_, e.reason, e.action, e.note)
                })
                .collect();
            let want: Vec<_> = want
                .iter()
                .map(|(t, r, a, n)| (*t, *r, *a, (*n).to_owned()))
                .collect();
            assert_eq!(got, want, "{phase:?} {message}");
        }
    }

    #[test]
    fn drift_checks_record_an_event_only_when_they_found_or_failed_something() {
        use helmq_schemas::event::{DriftReport, ReleaseInfo};
        let with = |report: DriftReport| {
            status(StatusPhase::Ready, "drift ...").with_release(ReleaseInfo {
                name: "web".into(),
                namespace: "default".into(),
                revision: None,
                chart_version: None,
                helm_status: None,
                deployed: None,
                drift: Some(report),
            })
        };
        let found = DriftReport {
            checked: 2,
            drifted: 1,
            ..DriftReport::default()
        };
        let reasons = |report| -> Vec<(EventType, &str)> {
            phase_events(&with(report))
                .into_iter()
                .map(|e| (e.type_, e.reason))
                .collect()
        };
        assert_eq!(reasons(DriftReport::default()), []);
        assert_eq!(
            reasons(found.clone()),
            [(EventType::Warning, "DriftDetected")]
        );
        let corrected = DriftReport {
            corrected: true,
            ..found.clone()
        };
        assert_eq!(reasons(corrected), [(EventType::Normal, "DriftCorrected")]);
        let failed = DriftReport {
            failed: true,
            ..DriftReport::default()
        };
        assert_eq!(reasons(failed), [(EventType::Warning, "DriftCheckFailed")]);
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let note = &phase_events(&status(StatusPhase::Failed, &long))[0].note;
        assert!(note.len() <= MAX_NOTE_BYTES, "{}", note.len());
        assert!(note.ends_with('…'));
        assert_eq!(truncate("short", 10), "short");
    }

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            namespace: Some("default".into()),
            name: Some("web".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    fn failed(note: &str, job: &str) -> PhaseEvent {
        PhaseEvent {
            type_: EventType::Warning,
            reason: "Failed",
            action: "Apply",
            note: note.into(),
            job_id: job.into(),
        }
    }

    #[tokio::test]
    async fn repeats_bump_the_series_within_the_window_and_start_afresh_after() {
        let store = FakeEventStore::new();
        let recorder = EventRecorder::new(store.clone(), "producer-0");
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let at = |secs: i64| t0 + SignedDuration::from_secs(secs);
        let web = reference("u1");
        let steps: &[(&ObjectReference, PhaseEvent, i64, Recorded)] = &[
            (&web, failed("boom", "j1"), 0, Recorded::Created),
            (&web, failed("boom", "j2"), 60, Recorded::Repeated(2)),
            (&web, failed("boom", "j3"), 120, Recorded::Repeated(3)),
            // Another reason is another Event.
            (&web, failed("other", "j4"), 130, Recorded::Created),
            // The window runs from the last occurrence.
            (&web, failed("boom", "j5"), 120 + 359, Recorded::Repeated(4)),
            (
                &web,
                failed("boom", "j6"),
                120 + 359 + 361,
                Recorded::Created,
            ),
        ];
        for (regarding, event, secs, want) in steps {
            let got = recorder.record(regarding, event, at(*secs)).await.unwrap();
            assert_eq!(got, *want, "{} at {secs}", event.job_id);
        }
        let events = store.regarding("default", "web");
        let summary: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.note.clone().unwrap(),
                    e.series.as_ref().map(|s| s.count),
                    e.metadata.annotations.as_ref().unwrap()[JOB_ID_ANNOTATION].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("boom".into(), Some(4), "j5".into()),
                ("other".into(), None, "j4".into()),
                ("boom".into(), None, "j6".into()),
            ]
        );
        let first = &events[0];
        assert_eq!(first.type_.as_deref(), Some("Warning"));
        assert_eq!(
            first.reporting_controller.as_deref(),
            Some(REPORTING_CONTROLLER)
        );
        assert_eq!(first.reporting_instance.as_deref(), Some("producer-0"));
        assert_eq!(
            first.series.as_ref().unwrap().last_observed_time.0,
            at(120 + 359)
        );
        assert_eq!(store.writes(), (3, 3));
    }

    #[tokio::test]
    async fn an_expired_event_is_created_again_and_a_re_created_object_starts_afresh() {
        let store = FakeEventStore::new();
        let recorder = EventRecorder::new(store.clone(), "producer-0");
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let later = now + SignedDuration::from_secs(1);
        recorder
            .record(&reference("u1"), &failed("boom", "j1"), now)
            .await
            .unwrap();
        store.expire_all();
        let again = recorder
            .record(&reference("u1"), &failed("boom", "j2"), later)
            .await;
        assert_eq!(again.unwrap(), Recorded::Created);
        // Two Events of one instant (Recovered, then Ready) get distinct names.
        let ready = PhaseEvent {
            reason: "Ready",
            ..failed("boom", "j2")
        };
        let same_instant = recorder.record(&reference("u1"), &ready, later).await;
        assert_eq!(same_instant.unwrap(), Recorded::Created);
        let other_uid = recorder
            .record(&reference("u2"), &failed("boom", "j3"), later)
            .await;
        assert_eq!(other_uid.unwrap(), Recorded::Created);
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_and_the_next_one_works() {
        let store = FakeEventStore::new();
        let recorder = EventRecorder::new(store.clone(), "producer-0");
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        store.set_unavailable(true);
        let error = recorder
            .record(&reference("u1"), &failed("boom", "j1"), now)
            .await
            .unwrap_err();
        assert!(error.is_transient(), "{error}");
        store.set_unavailable(false);
        let next = recorder
            .record(&reference("u1"), &failed("boom", "j2"), now)
            .await;
        assert_eq!(next.unwrap(), Recorded::Created);
    }
}
