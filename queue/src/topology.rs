//! The JetStream topology helmq runs on: the jobs, status and dead-letter streams, the workers'
//! and the writer's durable pull consumers, and the KV buckets for release leases, the latest
//! intent per Component and the final intents of terminated Components. [`Topology::ensure`] creates what is missing and is a no-op when all is
//! in place; it never changes an existing stream or consumer — one whose config cannot work with
//! helmq is reported, other differences (limits an operator may have tuned) are listed.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamError, CreateStreamErrorKind,
};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{Context, kv};

use helmq_schemas::event::MAX_EVENT_BYTES;
use helmq_schemas::subject::{DLQ_PREFIX, JOBS_PREFIX, STATUS_PREFIX};

/// Stream of jobs (work queue).
pub const JOBS_STREAM: &str = "HELMQ_JOBS";
/// Stream of status events (limits retention, read by the writer and orchestrators).
pub const STATUS_STREAM: &str = "HELMQ_STATUS";
/// Stream of dead-lettered jobs.
pub const DLQ_STREAM: &str = "HELMQ_DLQ";
/// The durable pull consumer every worker replica shares.
pub const WORKERS_CONSUMER: &str = "helmq-workers";
/// The durable pull consumer of the status writer.
pub const WRITER_CONSUMER: &str = "helmq-writer";
/// KV bucket of per-release leases.
pub const LEASES_BUCKET: &str = "helmq_leases";
/// KV bucket of the newest generation requested per Component.
pub const INTENTS_BUCKET: &str = "helmq_intents";
/// KV bucket of the final intents of terminated Components, kept for
/// [`Topology::tombstone_ttl`] so a late copy of their jobs is recognised and skipped.
pub const TOMBSTONES_BUCKET: &str = "helmq_tombstones";

/// Errors setting up or checking the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// An existing stream whose config cannot work with helmq.
    #[error(
        "stream {stream} exists with {field} {found}, helmq needs {expected}; \
         helmq does not change existing streams: delete or migrate it"
    )]
    IncompatibleStream {
        /// The stream.
        stream: &'static str,
        /// The field that differs.
        field: &'static str,
        /// What the server has.
        found: String,
        /// What helmq needs.
        expected: String,
    },
    /// An existing consumer whose config cannot work with helmq.
    #[error(
        "consumer {consumer} on {stream} exists with {field} {found}, helmq needs {expected}; \
         delete it and run setup again"
    )]
    IncompatibleConsumer {
        /// The stream.
        stream: &'static str,
        /// The consumer.
        consumer: &'static str,
        /// The field that differs.
        field: &'static str,
        /// What the server has.
        found: String,
        /// What helmq needs.
        expected: String,
    },
    /// A JetStream API request failed.
    #[error("cannot {action}: {reason}")]
    Request {
        /// What was being done, e.g. `create stream HELMQ_JOBS`.
        action: String,
        /// What the server or client said.
        reason: String,
    },
    /// A part of the topology is missing (from [`Topology::check`]).
    #[error("{0} is missing: run `helmqctl setup` (or start a producer or worker with --setup)")]
    Missing(String),
}

/// How long a creation refused for want of peers is tried again: a cluster whose meta leader
/// was just elected may not know its other nodes yet ("no suitable peers for placement").
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between two such attempts.
const PLACEMENT_PAUSE: Duration = Duration::from_millis(500);

/// Runs `create` again while the server refuses it for want of peers, up to
/// [`PLACEMENT_PATIENCE`]; any other outcome is returned as it is.
async fn placed<T, E, F>(mut create: impl FnMut() -> F) -> Result<T, E>
where
    E: std::error::Error + 'static,
    F: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + PLACEMENT_PATIENCE;
    loop {
        match create().await {
            Err(e) if lacks_peers(&e) && tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "JetStream has no peers for placement yet, trying again");
                tokio::time::sleep(PLACEMENT_PAUSE).await;
            }
            outcome => return outcome,
        }
    }
}

/// Whether `error`, or an error it wraps, is the server's "no suitable peers for placement".
fn lacks_peers(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(create) = e.downcast_ref::<CreateStreamError>()
            && let CreateStreamErrorKind::JetStream(js) = create.kind()
            && js.error_code() == async_nats::jetstream::ErrorCode::CLUSTER_NO_PEERS
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn request(action: impl Into<String>) -> impl FnOnce(String) -> TopologyError {
    let action = action.into();
    move |reason| TopologyError::Request { action, reason }
}

/// Tunables of the topology; the defaults suit a single-node server.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Stream replicas (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// How long status events are kept.
    pub status_max_age: Duration,
    /// How long dead letters are kept.
    pub dlq_max_age: Duration,
    /// Redelivery timeout of an unacked job; workers send Progress acks well within it.
    pub ack_wait: Duration,
    /// Deliveries of one job before JetStream gives up (a safety net above the workers' own
    /// attempt budget; the MAX_DELIVERIES advisory moves such a job to the DLQ).
    pub max_deliver: i64,
    /// Jobs in flight across all workers.
    pub max_ack_pending: i64,
    /// Lifetime of a release lease that is not renewed.
    pub lease_ttl: Duration,
    /// How long the final intent of a terminated Component is kept: a redelivered, retried or
    /// replayed job of that object arriving within it is skipped instead of run.
    pub tombstone_ttl: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            status_max_age: Duration::from_secs(24 * 3600),
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            max_ack_pending: 1000,
            lease_ttl: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// What [`Topology::ensure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyReport {
    /// Parts created by this call.
    pub created: Vec<String>,
    /// Parts that were already in place.
    pub existing: Vec<String>,
    /// Differences left as they are (tuned limits), one line each.
    pub differences: Vec<String>,
}

/// Room for headers on top of the largest event.
const MAX_MESSAGE_BYTES: i32 = (MAX_EVENT_BYTES + 64 * 1024) as i32;

impl Topology {
    /// The jobs stream: a work queue, one subject per Component.
    pub fn jobs_stream(&self) -> stream::Config {
        stream::Config {
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            ..self.stream(
                JOBS_STREAM,
                "helmq deployment jobs (helmq.job/v1)",
                JOBS_PREFIX,
            )
        }
    }

    /// The status stream: limits retention so the writer and orchestrators can all read it.
    pub fn status_stream(&self) -> stream::Config {
        stream::Config {
            max_age: self.status_max_age,
            ..self.stream(
                STATUS_STREAM,
                "helmq status events (helmq.status/v1)",
                STATUS_PREFIX,
            )
        }
    }

    /// The dead-letter stream: the original job, the last error and the attempt count.
    pub fn dlq_stream(&self) -> stream::Config {
        stream::Config {
            max_age: self.dlq_max_age,
            ..self.stream(DLQ_STREAM, "helmq dead-lettered jobs", DLQ_PREFIX)
        }
    }

    /// What every helmq stream shares: file storage, limits retention (a stream may override
    /// it), this topology's replicas and duplicate window, room for the largest event, and
    /// every subject under `prefix`.
    fn stream(&self, name: &str, description: &str, prefix: &str) -> stream::Config {
        stream::Config {
            name: name.into(),
            description: Some(description.into()),
            subjects: vec![format!("{prefix}.>")],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_message_size: MAX_MESSAGE_BYTES,
            ..Default::default()
        }
    }

    /// The workers' shared durable pull consumer over the whole jobs stream.
    pub fn workers_consumer(&self) -> pull::Config {
        self.durable(
            WORKERS_CONSUMER,
            "helmq workers (all replicas pull from this one)",
        )
    }

    /// The status writer's durable pull consumer.
    pub fn writer_consumer(&self) -> pull::Config {
        self.durable(WRITER_CONSUMER, "helmq status writer")
    }

    /// A durable pull consumer with explicit acks and this topology's redelivery limits.
    fn durable(&self, name: &str, description: &str) -> pull::Config {
        pull::Config {
            durable_name: Some(name.into()),
            description: Some(description.into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    fn buckets(&self) -> [kv::Config; 3] {
        [
            kv::Config {
                bucket: LEASES_BUCKET.into(),
                description: "helmq per-release leases".into(),
                history: 1,
                max_age: self.lease_ttl,
                storage: StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: INTENTS_BUCKET.into(),
                description: "helmq newest requested generation per Component".into(),
                history: 1,
                storage: StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: TOMBSTONES_BUCKET.into(),
                description: "helmq final intents of terminated Components".into(),
                history: 1,
                max_age: self.tombstone_ttl,
                storage: StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
        ]
    }

    /// Creates every missing part; a no-op when all is in place.
    pub async fn ensure(&self, js: &Context) -> Result<TopologyReport, TopologyError> {
        let mut report = TopologyReport::default();
        for (name, wanted) in [
            (JOBS_STREAM, self.jobs_stream()),
            (STATUS_STREAM, self.status_stream()),
            (DLQ_STREAM, self.dlq_stream()),
        ] {
            ensure_stream(js, name, wanted, &mut report).await?;
        }
        for (stream_name, consumer_name, wanted) in [
            (JOBS_STREAM, WORKERS_CONSUMER, self.workers_consumer()),
            (STATUS_STREAM, WRITER_CONSUMER, self.writer_consumer()),
        ] {
            ensure_consumer(js, stream_name, consumer_name, wanted, &mut report).await?;
        }
        for wanted in self.buckets() {
            ensure_bucket(js, wanted, &mut report).await?;
        }
        Ok(report)
    }

    /// Checks that every part exists (for readiness probes); creates nothing.
    pub async fn check(&self, js: &Context) -> Result<(), TopologyError> {
        for name in [JOBS_STREAM, STATUS_STREAM, DLQ_STREAM] {
            if lookup_stream(js, name).await?.is_none() {
                return Err(TopologyError::Missing(format!("stream {name}")));
            }
        }
        for (stream_name, consumer_name) in [
            (JOBS_STREAM, WORKERS_CONSUMER),
            (STATUS_STREAM, WRITER_CONSUMER),
        ] {
            let Some(stream) = lookup_stream(js, stream_name).await? else {
                return Err(TopologyError::Missing(format!("stream {stream_name}")));
            };
            if stream.consumer_info(consumer_name).await.is_err() {
                return Err(TopologyError::Missing(format!(
                    "consumer {consumer_name} on {stream_name}"
                )));
            }
        }
        for bucket in [LEASES_BUCKET, INTENTS_BUCKET, TOMBSTONES_BUCKET] {
            if lookup_stream(js, &format!("KV_{bucket}")).await?.is_none() {
                return Err(TopologyError::Missing(format!("KV bucket {bucket}")));
            }
        }
        Ok(())
    }
}

async fn lookup_stream(js: &Context, name: &str) -> Result<Option<stream::Stream>, TopologyError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js_err)
                if js_err.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(request(format!("look up stream {name}"))(e.to_string())),
        },
    }
}

async fn ensure_stream(
    js: &Context,
    name: &'static str,
    wanted: stream::Config,
    report: &mut TopologyReport,
) -> Result<(), TopologyError> {
    let label = format!("stream {name}");
    let Some(stream) = lookup_stream(js, name).await? else {
        placed(|| js.create_stream(wanted.clone()))
            .await
            .map_err(|e| request(format!("create {label}"))(e.to_string()))?;
        report.created.push(label);
        return Ok(());
    };
    let found = &stream.cached_info().config;
    let incompatible =
        |field: &'static str, found: String, expected: String| TopologyError::IncompatibleStream {
            stream: name,
            field,
            found,
            expected,
        };
    if found.retention != wanted.retention {
        return Err(incompatible(
            "retention",
            format!("{:?}", found.retention),
            format!("{:?}", wanted.retention),
        ));
    }
    if found.subjects != wanted.subjects {
        return Err(incompatible(
            "subjects",
            format!("{:?}", found.subjects),
            format!("{:?}", wanted.subjects),
        ));
    }
    if found.storage != wanted.storage {
        return Err(incompatible(
            "storage",
            format!("{:?}", found.storage),
            format!("{:?}", wanted.storage),
        ));
    }
    let mut note = |field: &str, found: String, wanted: String| {
        if found != wanted {
            report.differences.push(format!(
                "{label}: {field} is {found} (helmq default {wanted})"
            ));
        }
    };
    note(
        "replicas",
        found.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
    );
    note(
        "max_age",
        format!("{:?}", found.max_age),
        format!("{:?}", wanted.max_age),
    );
    note(
        "duplicate_window",
        format!("{:?}", found.duplicate_window),
        format!("{:?}", wanted.duplicate_window),
    );
    note(
        "max_message_size",
        found.max_message_size.to_string(),
        wanted.max_message_size.to_string(),
    );
    report.existing.push(label);
    Ok(())
}

async fn ensure_consumer(
    js: &Context,
    stream_name: &'static str,
    consumer_name: &'static str,
    wanted: pull::Config,
    report: &mut TopologyReport,
) -> Result<(), TopologyError> {
    let label = format!("consumer {consumer_name} on {stream_name}");
    let stream = lookup_stream(js, stream_name)
        .await?
        .ok_or_else(|| TopologyError::Missing(format!("stream {stream_name}")))?;
    let info = match stream.consumer_info(consumer_name).await {
        Ok(info) => info,
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
            stream
                .create_consumer(wanted)
                .await
                .map_err(|e| request(format!("create {label}"))(e.to_string()))?;
            report.created.push(label);
            return Ok(());
        }
        Err(e) => return Err(request(format!("look up {label}"))(e.to_string())),
    };
    let found = &info.config;
    let incompatible =
        |field: &'static str, found: String, expected: &str| TopologyError::IncompatibleConsumer {
            stream: stream_name,
            consumer: consumer_name,
            field,
            found,
            expected: expected.to_owned(),
        };
    if let Some(subject) = &found.deliver_subject {
        return Err(incompatible(
            "deliver_subject",
            subject.clone(),
            "a pull consumer (none)",
        ));
    }
    if found.ack_policy != AckPolicy::Explicit {
        return Err(incompatible(
            "ack_policy",
            format!("{:?}", found.ack_policy),
            "Explicit",
        ));
    }
    if !found.filter_subject.is_empty() || !found.filter_subjects.is_empty() {
        return Err(incompatible(
            "filter",
            format!("{:?}{:?}", found.filter_subject, found.filter_subjects),
            "no filter (the whole stream)",
        ));
    }
    if found.ack_wait != wanted.ack_wait {
        report.differences.push(format!(
            "{label}: ack_wait is {:?} (helmq default {:?})",
            found.ack_wait, wanted.ack_wait
        ));
    }
    if found.max_deliver != wanted.max_deliver {
        report.differences.push(format!(
            "{label}: max_deliver is {} (helmq default {})",
            found.max_deliver, wanted.max_deliver
        ));
    }
    report.existing.push(label);
    Ok(())
}

async fn ensure_bucket(
    js: &Context,
    wanted: kv::Config,
    report: &mut TopologyReport,
) -> Result<(), TopologyError> {
    let label = format!("KV bucket {}", wanted.bucket);
    match lookup_stream(js, &format!("KV_{}", wanted.bucket)).await? {
        Some(stream) => {
            let found = &stream.cached_info().config;
            if found.max_age != wanted.max_age {
                report.differences.push(format!(
                    "{label}: max_age is {:?} (helmq default {:?})",
                    found.max_age, wanted.max_age
                ));
            }
            report.existing.push(label);
        }
        None => {
            placed(|| js.create_key_value(wanted.clone()))
                .await
                .map_err(|e| request(format!("create {label}"))(e.to_string()))?;
            report.created.push(label);
        }
    }
    Ok(())
}
