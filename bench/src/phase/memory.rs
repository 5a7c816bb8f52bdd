//! Memory with 10,000 jobs queued, all in processes: `bench producer` (the producer's code
//! over the in-memory API server holding 10,000 Components) claims them and queues 10,000 apply
//! jobs; then one `bench worker` (32 slots, Helm in memory) drains the queue while the
//! producer's status writer applies the statuses. Peak RSS of both once all jobs are queued
//! and at the end; also how fast the producer queued and the processes drained.

use std::time::{Duration, Instant};

use crate::Context;
use crate::env::{CpuMeter, Env};
use crate::report::Report;
use crate::stats::round3;

/// No progress for this long ends the phase with an error.
const STALL: Duration = Duration::from_secs(60);

/// Peak RSS of the processes of this phase, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// The producer once the jobs are queued.
    pub producer_queued: f64,
    /// The producer at the end.
    pub producer: f64,
    /// The worker.
    pub worker: f64,
}

/// Runs the phase with `ctx.count(10_000)` Components.
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<Memory> {
    let count = ctx.count(10_000);
    let env = Env::start(ctx, true).await?;
    let url = env.url();
    let meter = CpuMeter::start(env.server_pid());
    let started = Instant::now();
    let args = [
        "producer",
        "--nats-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--log",
        "warn",
        "--components",
        &count.to_string(),
    ]
    .map(str::to_owned);
    let mut producer = ctx.spawn("memory-producer", &ctx.bench_bin, &args)?;
    env.wait_jobs(count as u64, STALL, &mut [&mut producer])
        .await?;
    let queued_after = started.elapsed();
    producer.check_running()?;
    let producer_queued = producer.peak_rss_mib();

    let drain_started = Instant::now();
    let mut worker = super::bench_worker(ctx, &url, "memory-worker", 32, Duration::ZERO)?;
    env.wait_jobs(0, STALL, &mut [&mut producer, &mut worker])
        .await?;
    env.wait_writer_done(STALL).await?;
    let drained_after = drain_started.elapsed();
    worker.check_running()?;
    producer.check_running()?;
    let figures = Memory {
        producer_queued,
        producer: producer.peak_rss_mib(),
        worker: worker.peak_rss_mib(),
    };
    let cpu = meter.finish(producer.cpu() + worker.cpu());
    worker.stop(Duration::from_secs(10));
    producer.stop(Duration::from_secs(10));

    report.set("memory_jobs", count);
    report.set(
        "memory_producer_queue_jobs_per_s",
        round3(count as f64 / queued_after.as_secs_f64()),
    );
    report.set(
        "memory_processes_drain_jobs_per_s",
        round3(count as f64 / drained_after.as_secs_f64()),
    );
    report.set(
        "memory_producer_rss_queued_mib",
        round3(figures.producer_queued),
    );
    report.set("memory_cpu", cpu);
    report.row(
        &format!("producer: {count} Components claimed and queued (jobs/s)"),
        format!("{:.0}", count as f64 / queued_after.as_secs_f64()),
        "",
        None,
    );
    report.row(
        "processes: 1 worker x 32 drains them, writer applies (jobs/s)",
        format!("{:.0}", count as f64 / drained_after.as_secs_f64()),
        "",
        None,
    );
    Ok(figures)
}
