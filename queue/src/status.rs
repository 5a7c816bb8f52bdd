//! Publishing status events: the [`StatusSink`] seam (workers and the producer publish through
//! it) and its JetStream implementation. Each event carries its dedupe id, so republishing one
//! after a lost ack is harmless.

use std::future::Future;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::PublishMessage;

use helmq_schemas::event::StatusEvent;
use helmq_schemas::subject::status_subject;

use crate::publish::PublishError;
use crate::topology::STATUS_STREAM;

/// Where status events go.
pub trait StatusSink: Send + Sync {
    /// Publishes one event and waits for the server to store it.
    fn publish_status(
        &self,
        event: &StatusEvent,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// [`StatusSink`] on JetStream (`HELMQ_STATUS`).
#[derive(Debug, Clone)]
pub struct JetStreamStatus {
    js: Context,
}

impl JetStreamStatus {
    /// A sink publishing through `js`.
    pub fn new(js: Context) -> Self {
        JetStreamStatus { js }
    }
}

impl StatusSink for JetStreamStatus {
    async fn publish_status(&self, event: &StatusEvent) -> Result<(), PublishError> {
        let subject = status_subject(&event.component.namespace, &event.component.name);
        let message = PublishMessage::build()
            .payload(event.encode().into())
            .message_id(event.dedupe_id())
            .expected_stream(STATUS_STREAM);
        crate::publish::send(&self.js, subject, message, &event.job_id, STATUS_STREAM).await?;
        Ok(())
    }
}
