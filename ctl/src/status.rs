//! `helmqctl status`: the helmq streams and consumers (depth, lag, in-flight), the dead letters
//! stored, and the workers heard from lately in the status events.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use helmq_queue::topology::{
    DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER, WRITER_CONSUMER,
};
use helmq_queue::{PRODUCER_WORKER, request};
use helmq_schemas::event::StatusEvent;

use crate::{CtlError, deliver_since, follow_status};

/// One stream's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// One consumer's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    /// Stream.
    pub stream: String,
    /// Consumer name.
    pub name: String,
    /// Messages not yet delivered (lag).
    pub pending: u64,
    /// Delivered, not yet acknowledged (in flight).
    pub in_flight: usize,
    /// Redelivered messages.
    pub redelivered: usize,
    /// Pull requests waiting (idle pullers).
    pub waiting: usize,
}

/// A worker seen in recent status events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerSeen {
    /// Worker id.
    pub worker: String,
    /// Events it published in the window.
    pub events: u64,
    /// When it was last heard from.
    pub last_seen: String,
}

/// What `helmqctl status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStatus {
    /// The helmq streams present.
    pub streams: Vec<StreamStatus>,
    /// The helmq consumers present.
    pub consumers: Vec<ConsumerStatus>,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// Workers seen in the window.
    pub workers: Vec<WorkerSeen>,
    /// Parts missing (setup not run).
    pub missing: Vec<String>,
}

/// Reads the streams and consumers, and the workers seen in the status events of the last
/// `workers_since`.
pub async fn queue_status(js: &Context, workers_since: Duration) -> Result<QueueStatus, CtlError> {
    let mut status = QueueStatus {
        streams: Vec::new(),
        consumers: Vec::new(),
        dead_letters: 0,
        workers: Vec::new(),
        missing: Vec::new(),
    };
    for name in [JOBS_STREAM, STATUS_STREAM, DLQ_STREAM] {
        let Ok(mut stream) = js.get_stream(name).await else {
            status.missing.push(format!("stream {name}"));
            continue;
        };
        let info = stream
            .info()
            .await
            .map_err(request(format!("read stream {name}")))?;
        if name == DLQ_STREAM {
            status.dead_letters = info.state.messages;
        }
        status.streams.push(StreamStatus {
            name: name.into(),
            messages: info.state.messages,
            bytes: info.state.bytes,
        });
        let consumer = match name {
            JOBS_STREAM => WORKERS_CONSUMER,
            STATUS_STREAM => WRITER_CONSUMER,
            _ => continue,
        };
        match stream.consumer_info(consumer).await {
            Ok(info) => status.consumers.push(ConsumerStatus {
                stream: name.into(),
                name: consumer.into(),
                pending: info.num_pending,
                in_flight: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
            }),
            Err(_) => status
                .missing
                .push(format!("consumer {consumer} on {name}")),
        }
    }
    if !status.missing.iter().any(|m| m.contains(STATUS_STREAM)) {
        status.workers = workers_seen(js, workers_since).await?;
    }
    Ok(status)
}

/// Distinct `worker` fields of the status events of the last `since` (the producer's own
/// events left out).
async fn workers_seen(js: &Context, since: Duration) -> Result<Vec<WorkerSeen>, CtlError> {
    const MAX_SCANNED: usize = 100_000;
    let config = pull::OrderedConfig {
        deliver_policy: deliver_since(time::OffsetDateTime::now_utc(), since),
        ..Default::default()
    };
    let reading = "read the status stream";
    let mut messages = follow_status(js, "status", config, (reading, reading)).await?;
    let mut seen: BTreeMap<String, WorkerSeen> = BTreeMap::new();
    let mut scanned = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        scanned += 1;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(event) = StatusEvent::decode(&message.payload)
            && event.worker != PRODUCER_WORKER
        {
            let entry = seen.entry(event.worker.clone()).or_insert(WorkerSeen {
                worker: event.worker.clone(),
                events: 0,
                last_seen: String::new(),
            });
            entry.events += 1;
            entry.last_seen = event.at.to_string();
        }
        if pending == 0 || scanned >= MAX_SCANNED {
            break;
        }
    }
    Ok(seen.into_values().collect())
}
