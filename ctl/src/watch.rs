//! `helmqctl watch`: follows the status events of one Component, one namespace or all, from
//! now or from some time back, through an ordered consumer of its own.

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use helmq_queue::request;
use helmq_schemas::event::StatusEvent;
use helmq_schemas::subject::status_filter;

use crate::render::{self, Output};
use crate::{CtlError, deliver_since, follow_status};

/// Which status events to follow, and how many.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this Component (with `namespace`).
    pub name: Option<String>,
    /// Start this far back instead of with new events.
    pub since: Option<Duration>,
    /// Stop after this many events.
    pub count: Option<usize>,
}

/// Writes the status events `filter` selects to `out` as they come, until `filter.count`
/// (or forever).
pub async fn watch(
    js: &Context,
    filter: &Filter,
    output: Output,
    out: &mut (dyn Write + Send),
) -> Result<(), CtlError> {
    let deliver_policy = match filter.since {
        Some(since) => deliver_since(time::OffsetDateTime::now_utc(), since),
        None => DeliverPolicy::New,
    };
    let config = pull::OrderedConfig {
        filter_subject: status_filter(filter.namespace.as_deref(), filter.name.as_deref()),
        deliver_policy,
        ..Default::default()
    };
    let mut messages = follow_status(
        js,
        "watch",
        config,
        ("open the status stream", "follow the status stream"),
    )
    .await?;
    render::watch_header(out, output)?;
    let mut shown = 0;
    while filter.count.is_none_or(|c| shown < c) {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(request("follow the status stream"))?;
        match StatusEvent::decode(&message.payload) {
            Ok(event) => render::status_event(out, output, &event)?,
            Err(e) => writeln!(
                out,
                "# skipped an unreadable event on {}: {e}",
                message.subject
            )?,
        }
        out.flush()?;
        shown += 1;
    }
    Ok(())
}
