//! The JetStream seam shared by the producer, the workers and `helmqctl`: connecting with the
//! operator's auth options, the topology (streams, the workers' durable consumer, KV buckets)
//! and publishing jobs with their dedupe id.

pub mod connect;
pub mod dlq;
pub mod publish;
pub mod status;
pub mod topology;

pub use connect::{ConnectError, Connection, NatsArgs, ServerVersion, connect};
pub use publish::{JetStreamQueue, JobQueue, PublishError, PublishOutcome};
pub use status::{JetStreamStatus, StatusSink};
pub use topology::{Topology, TopologyError, TopologyReport};

/// The `worker` field of the status events the producer publishes itself (`Claimed`, config
/// failures, `Terminated` without a release), so readers can tell them from a worker's.
pub const PRODUCER_WORKER: &str = "producer";
