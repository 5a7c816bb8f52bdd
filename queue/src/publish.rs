//! Publishing jobs: the [`JobQueue`] seam and its JetStream implementation. Every job carries
//! its dedupe id as `Nats-Msg-Id`, so the server drops a repeat inside the duplicate window and
//! says so.

use std::future::Future;

use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;

use helmq_schemas::event::{JobEvent, MAX_EVENT_BYTES};
use helmq_schemas::subject::job_subject;

use crate::topology::JOBS_STREAM;

/// Errors publishing a job.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No stream listens on the subject.
    #[error("no {0} stream on the server: run `helmqctl setup` first")]
    NoStream(&'static str),
    /// The encoded job is over the size limit.
    #[error("job is {size} bytes, over the {limit} byte limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The server refused the message for good (over its `max_payload`, or the stream's
    /// largest message or header size): publishing it again cannot help.
    #[error("publishing {id} was refused: {reason}")]
    Refused {
        /// The id of what was published.
        id: String,
        /// What the server or client said.
        reason: String,
    },
    /// The server did not acknowledge the publish.
    #[error("publishing {id} failed: {reason}")]
    Failed {
        /// The id of what was published.
        id: String,
        /// What the client reported.
        reason: String,
    },
}

impl PublishError {
    /// Whether publishing the same message again can never succeed: it is too large for the
    /// client's limit, the server's or the stream's.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PublishError::TooLarge { .. } | PublishError::Refused { .. }
        )
    }
}

/// What the server did with a published job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored at this stream sequence.
    Stored {
        /// Stream sequence.
        sequence: u64,
    },
    /// Dropped as a duplicate of the message already stored at this sequence.
    Duplicate {
        /// Sequence of the earlier message.
        sequence: u64,
    },
}

/// Where jobs go: the seam the producer and `helmqctl` publish through.
pub trait JobQueue: Send + Sync {
    /// Publishes one job with its dedupe id and reports whether it was stored.
    fn publish_job(
        &self,
        job: &JobEvent,
    ) -> impl Future<Output = Result<PublishOutcome, PublishError>> + Send;
}

/// [`JobQueue`] on JetStream.
#[derive(Debug, Clone)]
pub struct JetStreamQueue {
    js: Context,
}

impl JetStreamQueue {
    /// A queue publishing through `js`.
    pub fn new(js: Context) -> Self {
        JetStreamQueue { js }
    }
}

impl JobQueue for JetStreamQueue {
    async fn publish_job(&self, job: &JobEvent) -> Result<PublishOutcome, PublishError> {
        let payload = job.encode();
        if payload.len() > MAX_EVENT_BYTES {
            return Err(PublishError::TooLarge {
                size: payload.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(job.dedupe_id())
            .expected_stream(JOBS_STREAM);
        let subject = job_subject(&job.component.namespace, &job.component.name);
        let ack = send(&self.js, subject, message, &job.id, JOBS_STREAM).await?;
        Ok(if ack.duplicate {
            PublishOutcome::Duplicate {
                sequence: ack.sequence,
            }
        } else {
            PublishOutcome::Stored {
                sequence: ack.sequence,
            }
        })
    }
}

/// Publishes `message` and waits for the stream's ack.
pub(crate) async fn send(
    js: &Context,
    subject: String,
    message: PublishMessage,
    id: &str,
    stream: &'static str,
) -> Result<async_nats::jetstream::publish::PublishAck, PublishError> {
    let error = |e: async_nats::jetstream::context::PublishError| {
        let reason = e.to_string();
        let id = id.to_owned();
        if e.kind() == PublishErrorKind::StreamNotFound {
            PublishError::NoStream(stream)
        } else if is_refusal(&e) {
            PublishError::Refused { id, reason }
        } else {
            PublishError::Failed { id, reason }
        }
    };
    js.send_publish(subject, message)
        .await
        .map_err(error)?
        .await
        .map_err(error)
}

/// Whether a publish failed on a size limit: the client's check against the server's
/// `max_payload`, or the stream's `max_msg_size` / header limit in the server's answer.
fn is_refusal(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    if error.kind() == PublishErrorKind::MaxPayloadExceeded {
        return true;
    }
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| {
            matches!(
                e.error_code(),
                ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            )
        })
}
