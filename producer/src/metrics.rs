//! Prometheus metrics of the producer and the writer, registered once and shared by both.

use helmq_telemetry::register_all;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of [`Metrics::events_published`]: whether the server stored it or dropped a
/// duplicate.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// What was published.
    pub kind: String,
    /// `stored` or `duplicate`.
    pub outcome: String,
}

/// Every counter of the process.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Jobs and status events published by the producer.
    pub events_published: Family<PublishLabels, Counter>,
    /// Status events the writer applied (several of one Component in one batch take one
    /// status write: see `coalesced_events`).
    pub statuses_applied: Counter,
    /// Status events applied in the same status write as a later event of their Component
    /// (status writes = `statuses_applied` − this).
    pub coalesced_events: Counter,
    /// Optimistic-concurrency conflicts met (claim, finalizer, status), each re-read.
    pub conflicts: Counter,
    /// Status events dropped because the status already shows a newer position.
    pub stale_events_dropped: Counter,
    /// Status events dropped because their Component is gone or has another uid.
    pub orphan_events_dropped: Counter,
    /// Status events dropped because they answer no job the producer issued for their
    /// Component (no uid, another job id, a generation not reached, the other action's phase).
    pub unissued_events_dropped: Counter,
    /// Status events dead-lettered (not JSON, unknown schema, refused for good by the API
    /// server, still failing at the last delivery).
    pub dead_letters: Counter,
    /// Status events put back for a later delivery after a transient API error.
    pub status_retries: Counter,
    /// Kubernetes Events recorded on Components (created, or a repeat counted), by the writer
    /// and, for `Claimed`, the watcher.
    pub events_recorded: Counter,
    /// Kubernetes Events that could not be recorded (logged; the status write stands).
    pub event_failures: Counter,
    /// Watch (re)starts, including the first listing.
    pub watch_restarts: Counter,
    /// Watch errors (the watcher backs off and resumes).
    pub watch_errors: Counter,
    /// Resync passes.
    pub resyncs: Counter,
    /// Changes of labelled `valuesFrom` sources (ConfigMaps, Secrets) seen.
    pub values_source_changes: Counter,
    /// Objects that cannot be read as Components, once per object and generation.
    pub unreadable_components: Counter,
    /// Failures handling a Component (API or NATS), each retried by its class or given up.
    pub handling_failures: Counter,
    /// Seconds from a status event's publication to its status write: how far the writer is
    /// behind the status stream.
    pub writer_lag: Lag,
    /// 1 while this replica runs the watcher (it leads, or runs without leader election).
    pub leader: Gauge,
}

/// [`Metrics::writer_lag`]: 5 ms to about 5 minutes.
#[derive(Debug, Clone)]
pub struct Lag(pub Histogram);

impl Default for Lag {
    fn default() -> Self {
        Lag(Histogram::new(exponential_buckets(0.005, 2.5, 13)))
    }
}

impl Metrics {
    /// Fresh counters, registered in `registry` under `helmq_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        m.register_writer(registry);
        m.register_producer(registry);
        m
    }

    /// The writer's metrics, `helmq_writer_*` (and `helmq_conflicts`, shared with the watcher).
    fn register_writer(&self, registry: &mut Registry) {
        let m = self;
        register_all(
            registry,
            [
                (
                    "helmq_writer_statuses_applied",
                    "status events applied to their component's status",
                    &m.statuses_applied,
                ),
                (
                    "helmq_writer_events_coalesced",
                    "status events applied in the same status write as a later event of their component",
                    &m.coalesced_events,
                ),
                (
                    "helmq_conflicts",
                    "resourceVersion conflicts met and re-read",
                    &m.conflicts,
                ),
                (
                    "helmq_writer_stale_events_dropped",
                    "status events older than the status they would change",
                    &m.stale_events_dropped,
                ),
                (
                    "helmq_writer_orphan_events_dropped",
                    "status events for Components that are gone or were re-created",
                    &m.orphan_events_dropped,
                ),
                (
                    "helmq_writer_unissued_events_dropped",
                    "status events that answer no job the producer issued for their Component",
                    &m.unissued_events_dropped,
                ),
                (
                    "helmq_writer_dead_letters",
                    "status events dead-lettered",
                    &m.dead_letters,
                ),
                (
                    "helmq_writer_status_retries",
                    "status events put back for a later delivery after a transient API error",
                    &m.status_retries,
                ),
                (
                    "helmq_writer_events_recorded",
                    "kubernetes events recorded on components (created or counted as a repeat)",
                    &m.events_recorded,
                ),
                (
                    "helmq_writer_event_failures",
                    "kubernetes events that could not be recorded (the status write is not affected)",
                    &m.event_failures,
                ),
            ],
        );
        registry.register(
            "helmq_writer_lag_seconds",
            "time from a status event's publication to its status write",
            m.writer_lag.0.clone(),
        );
    }

    /// The watcher's metrics, `helmq_producer_*`.
    fn register_producer(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "helmq_producer_events_published",
            "jobs and status events published by the producer",
            m.events_published.clone(),
        );
        register_all(
            registry,
            [
                (
                    "helmq_producer_watch_restarts",
                    "watch (re)starts with a full listing",
                    &m.watch_restarts,
                ),
                (
                    "helmq_producer_watch_errors",
                    "watch errors (backed off and resumed)",
                    &m.watch_errors,
                ),
                ("helmq_producer_resyncs", "resync passes", &m.resyncs),
                (
                    "helmq_producer_values_source_changes",
                    "changes of labelled valuesFrom ConfigMaps and Secrets seen",
                    &m.values_source_changes,
                ),
                (
                    "helmq_producer_unreadable_components",
                    "objects that cannot be read as Components (skipped and failed), once per generation",
                    &m.unreadable_components,
                ),
                (
                    "helmq_producer_handling_failures",
                    "failures handling a Component (retried with backoff, or given up when permanent)",
                    &m.handling_failures,
                ),
            ],
        );
        registry.register(
            "helmq_producer_leader",
            "1 while this replica runs the watcher (it leads, or runs without leader election)",
            m.leader.clone(),
        );
    }

    /// Counts one publish.
    pub fn published(&self, kind: &str, duplicate: bool) {
        self.events_published
            .get_or_create(&PublishLabels {
                kind: kind.to_owned(),
                outcome: if duplicate { "duplicate" } else { "stored" }.to_owned(),
            })
            .inc();
    }
}
