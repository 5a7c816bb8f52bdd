//! The raw JetStream baseline: 500-byte messages published asynchronously (bounded acks in
//! flight) into a work-queue stream on file storage, then consumed and acked by a pull
//! consumer. What the same server and machine can do with no helmq at all.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::Context;
use crate::env::{CpuMeter, Env, PUBLISH_IN_FLIGHT};
use crate::report::Report;
use crate::stats::round3;

/// Bytes per message.
pub const MESSAGE_BYTES: usize = 500;

/// What the baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct Raw {
    /// Published and acked per second.
    pub publish_per_s: f64,
    /// Consumed and acked per second.
    pub consume_per_s: f64,
}

/// Runs the baseline with `ctx.count(20_000)` messages.
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<Raw> {
    let count = ctx.count(20_000);
    let env = Env::start(ctx, false).await?;
    let mut raw = env
        .js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; MESSAGE_BYTES]);

    let meter = CpuMeter::start(env.server_pid());
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..count {
        if acks.len() >= PUBLISH_IN_FLIGHT
            && let Some(ack) = acks.next().await
        {
            ack?;
        }
        let ack = env
            .js
            .publish(format!("raw.{}", i % 64), payload.clone())
            .await?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let publish = started.elapsed();
    let publish_cpu = meter.finish(Duration::ZERO);

    let consumer = raw
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ..Default::default()
        })
        .await?;
    let meter = CpuMeter::start(env.server_pid());
    let started = Instant::now();
    let mut messages = consumer.messages().await?.take(count);
    while let Some(message) = messages.next().await {
        message?
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
    }
    // The last acks are on their way: done when the work queue is empty.
    while raw.info().await?.state.messages > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let consume = started.elapsed();
    let consume_cpu = meter.finish(Duration::ZERO);

    let figures = Raw {
        publish_per_s: count as f64 / publish.as_secs_f64(),
        consume_per_s: count as f64 / consume.as_secs_f64(),
    };
    report.set("raw_messages", count);
    report.set("raw_message_bytes", MESSAGE_BYTES);
    report.set("raw_publish_msgs_per_s", round3(figures.publish_per_s));
    report.set("raw_consume_msgs_per_s", round3(figures.consume_per_s));
    report.set("raw_publish_cpu", publish_cpu);
    report.set("raw_consume_cpu", consume_cpu);
    report.row(
        &format!("raw publish, {count} x {MESSAGE_BYTES} B (msgs/s)"),
        format!("{:.0}", figures.publish_per_s),
        "",
        None,
    );
    report.row(
        "raw consume+ack (msgs/s)",
        format!("{:.0}", figures.consume_per_s),
        "",
        None,
    );
    Ok(figures)
}
