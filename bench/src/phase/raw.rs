//! The raw JetStream baseline: 500-byte messages published asynchronously (bounded acks in
//! flight) into a work-queue stream on file storage, then consumed and acked by a pull
//! consumer. What the same server and machine can do with no helmq at all: once the fastest
//! way (`messages()`, which keeps pull requests of many messages outstanding), and once with
//! the pipeline's protocol (as many tasks as the pipeline has slots, each fetching one message
//! at a time and acking it without waiting for the server).

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
    /// Consumed and acked per second, the fastest way.
    pub consume_per_s: f64,
    /// Consumed and acked per second with the pipeline's protocol.
    pub consume_slots_per_s: f64,
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
    let meter = CpuMeter::start(env.server_pid());
    let started = Instant::now();
    publish(&env, count).await?;
    let published = started.elapsed();
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

    // A work queue takes one consumer of all its subjects at a time.
    drop(messages);
    raw.delete_consumer("raw").await?;
    publish(&env, count).await?;
    let slots = ctx.pools * ctx.slots;
    let consume_slots = consume_in_slots(&mut raw, count, slots).await?;

    let figures = Raw {
        publish_per_s: count as f64 / published.as_secs_f64(),
        consume_per_s: count as f64 / consume.as_secs_f64(),
        consume_slots_per_s: count as f64 / consume_slots.as_secs_f64(),
    };
    report.set(
        "raw_consume_slots_msgs_per_s",
        round3(figures.consume_slots_per_s),
    );
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
    report.row(
        &format!("raw fetch 1 + ack per slot, {slots} slots: the pipeline's protocol (msgs/s)"),
        format!("{:.0}", figures.consume_slots_per_s),
        "",
        None,
    );
    Ok(figures)
}

/// Publishes `count` messages, [`PUBLISH_IN_FLIGHT`] acks in flight.
async fn publish(env: &Env, count: usize) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; MESSAGE_BYTES]);
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
    Ok(())
}

/// Consumes the `count` messages in the stream as the worker pools do: `slots` tasks, each
/// fetching one message at a time and acking it without waiting for the server; timed until
/// the work queue is empty.
async fn consume_in_slots(
    raw: &mut stream::Stream,
    count: usize,
    slots: usize,
) -> anyhow::Result<Duration> {
    let consumer = raw
        .create_consumer(pull::Config {
            durable_name: Some("raw-slots".into()),
            ..Default::default()
        })
        .await?;
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..slots)
        .map(|_| {
            let (consumer, taken) = (consumer.clone(), taken.clone());
            tokio::spawn(async move {
                while taken.load(std::sync::atomic::Ordering::Relaxed) < count {
                    let Ok(mut batch) = consumer
                        .fetch()
                        .max_messages(1)
                        .expires(Duration::from_millis(200))
                        .messages()
                        .await
                    else {
                        continue;
                    };
                    while let Some(Ok(message)) = batch.next().await {
                        taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = message.ack().await;
                    }
                }
            })
        })
        .collect();
    while raw.info().await?.state.messages > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    Ok(elapsed)
}
