//! The JetStream seam shared by the producer, the workers and `helmqctl`: connecting with the
//! operator's auth options, the topology (streams, the workers' durable consumer, KV buckets)
//! and publishing jobs with their dedupe id.
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod connect;
pub mod dlq;
pub mod publish;
pub mod status;
pub mod topology;

pub use connect::{ConnectError, Connection, NatsArgs, ServerVersion, connect};
pub use publish::{JetStreamQueue, JobQueue, PublishError, PublishOutcome};
pub use status::{JetStreamStatus, StatusSink};
pub use topology::{Topology, TopologyError, TopologyReport};

/// A JetStream request that failed, saying what was being done.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action}: {source}")]
pub struct RequestError {
    /// What was being done, e.g. `open the dead-letter stream`.
    pub action: String,
    /// What the server or client said.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Turns a failed request's error into a [`RequestError`] saying what was being done:
/// `.map_err(request("read the status stream"))?`.
pub fn request<E>(action: impl Into<String>) -> impl FnOnce(E) -> RequestError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let action = action.into();
    move |source| RequestError {
        action,
        source: Box::new(source),
    }
}

/// The `worker` field of the status events the producer publishes itself (`Claimed`, config
/// failures, `Terminated` without a release), so readers can tell them from a worker's.
pub const PRODUCER_WORKER: &str = "producer";
