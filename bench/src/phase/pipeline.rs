//! The pipeline in one process, on the real path: jobs published through the producer's
//! queue → worker pools (`run_pool`, leases, intents, status events) with Helm in memory →
//! `HELMQ_STATUS` → the status writer → the in-memory API server. Measures throughput (all
//! jobs at once) and dispatch latency (a fixed offered load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use helmq_producer::metrics::Metrics as ProducerMetrics;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore};
use helmq_producer::writer::{EventQueue, EventRecorder, Writer, WriterConfig};
use helmq_queue::JetStreamStatus;
use helmq_schemas::JobEvent;
use helmq_worker::{Settings, SpawnedPool};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Context;
use crate::driver::BenchDriver;
use crate::env::{CpuMeter, Env, publish_all};
use crate::jobs;
use crate::probe::{Mark, Probe};
use crate::report::Report;
use crate::stats::{Spread, ms, round3, spread};
use crate::store::TimedStore;

/// No status applied for this long ends a phase with an error.
const STALL: Duration = Duration::from_secs(60);

/// How an in-process pipeline's jobs and pools are shaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Tenants (namespaces) the jobs are spread over, job `i` in tenant `i % tenants` (0 or 1:
    /// every job in `bench`).
    pub tenants: usize,
    /// Each pool's `--tenant-concurrency` (0: no limit).
    pub tenant_limit: usize,
}

impl Shape {
    /// The namespace of job `index`.
    fn namespace(self, index: usize) -> String {
        if self.tenants <= 1 {
            jobs::NAMESPACE.to_owned()
        } else {
            jobs::tenant(index % self.tenants)
        }
    }
}

/// A running in-process pipeline and the jobs for its Components.
struct InProcess {
    env: Env,
    probe: Arc<Probe>,
    jobs: Vec<JobEvent>,
    clients: Vec<async_nats::Client>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl InProcess {
    /// A server, `count` Components in the in-memory API server, `ctx.pools` pools of
    /// `ctx.slots` slots and one status writer, each on its own connection.
    async fn start(ctx: &Context, count: usize, shape: Shape) -> anyhow::Result<InProcess> {
        let env = Env::start(ctx, true).await?;
        let probe = Arc::new(Probe::new(count));
        let fake = FakeComponentStore::new();
        let mut jobs = Vec::with_capacity(count);
        for index in 0..count {
            let namespace = shape.namespace(index);
            let created = fake.create(jobs::component_in(&namespace, index))?;
            let uid = created.metadata.uid.clone().unwrap_or_default();
            jobs.push(jobs::apply_in(&namespace, index, uid));
        }
        let stop = CancellationToken::new();
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        for pool in 0..ctx.pools {
            let client = env.connect().await?;
            let mut settings = Settings::new(format!("bench-{pool}"));
            settings.concurrency = ctx.slots;
            settings.tenant_concurrency = shape.tenant_limit;
            let driver = BenchDriver::default().with_probe(probe.clone());
            let pool = SpawnedPool::spawn(client.clone(), driver, settings, JetStreamStatus::new);
            let token = stop.clone();
            tasks.push(tokio::spawn(async move {
                token.cancelled().await;
                pool.shutdown.cancel();
                if let Ok(Err(error)) = pool.task.await {
                    eprintln!("worker pool stopped: {error}");
                }
            }));
            clients.push(client);
        }
        let client = env.connect().await?;
        let metrics = ProducerMetrics::default();
        let events = EventRecorder::new(FakeEventStore::new(), "helmq-bench");
        let writer = Writer::new(
            TimedStore::new(fake, probe.clone()),
            EventQueue::spawn(events, metrics.clone()),
            async_nats::jetstream::new(client.clone()),
            WriterConfig::default(),
            metrics,
        );
        let token = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(error) = writer.run(token).await {
                eprintln!("status writer stopped: {error}");
            }
        }));
        clients.push(client);
        // Let every slot's first pull request reach the server.
        env.wait_idle_slots(ctx.pools * ctx.slots, Duration::from_secs(30))
            .await?;
        Ok(InProcess {
            env,
            probe,
            jobs,
            clients,
            stop,
            tasks,
        })
    }

    /// NATS messages the pools' connections and the writer's connection sent and received,
    /// per job: how many round trips the job path costs.
    fn messages_per_job(&self, count: usize) -> serde_json::Value {
        let per_job = |clients: &[async_nats::Client]| {
            let (mut sent, mut received) = (0, 0);
            for client in clients {
                let stats = client.statistics();
                sent += stats
                    .out_messages
                    .load(std::sync::atomic::Ordering::Relaxed);
                received += stats.in_messages.load(std::sync::atomic::Ordering::Relaxed);
            }
            json!({
                "sent": round3(sent as f64 / count as f64),
                "received": round3(received as f64 / count as f64),
            })
        };
        let (writer, pools) = self
            .clients
            .split_last()
            .map_or((&[][..], &[][..]), |(w, p)| (std::slice::from_ref(w), p));
        json!({"worker_pools": per_job(pools), "status_writer": per_job(writer)})
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What one throughput run measured.
#[derive(Debug)]
pub struct Throughput {
    /// Jobs per second, first publish to last `Ready` applied.
    pub per_s: f64,
    elapsed: Duration,
    published: Duration,
    job_bytes: usize,
    cpu: serde_json::Value,
    messages: serde_json::Value,
}

/// `count` jobs of `shape` published at once; timed from the first publish to the last
/// `Ready` applied.
pub async fn measure_throughput(
    ctx: &Context,
    count: usize,
    shape: Shape,
) -> anyhow::Result<Throughput> {
    let mut pipeline = InProcess::start(ctx, count, shape).await?;
    let job_bytes = pipeline.jobs.first().map_or(0, |j| j.encode().len());
    let meter = CpuMeter::start(pipeline.env.server_pid());
    let started = Instant::now();
    let jobs = std::mem::take(&mut pipeline.jobs);
    let publish = {
        let (js, probe) = (pipeline.env.js.clone(), pipeline.probe.clone());
        tokio::spawn(async move { publish_all(&js, jobs, Some(&probe)).await })
    };
    pipeline.probe.wait_applied(count as u64, STALL).await?;
    let elapsed = started.elapsed();
    publish.await??;
    let cpu = meter.finish(Duration::ZERO);
    let messages = pipeline.messages_per_job(count);
    let published = (0..count)
        .filter_map(|i| pipeline.probe.at(i, Mark::Published))
        .max()
        .unwrap_or_default();
    pipeline.stop().await;
    Ok(Throughput {
        per_s: count as f64 / elapsed.as_secs_f64(),
        elapsed,
        published,
        job_bytes,
        cpu,
        messages,
    })
}

/// Throughput: `ctx.count(20_000)` jobs published at once; jobs/s from the first publish to
/// the last `Ready` applied. Returns jobs/s.
pub async fn throughput(ctx: &Context, report: &mut Report) -> anyhow::Result<f64> {
    let count = ctx.count(20_000);
    let run = measure_throughput(ctx, count, Shape::default()).await?;
    let per_s = run.per_s;
    report.set("pipeline_jobs", count);
    report.set("pipeline_job_bytes", run.job_bytes);
    report.set("pipeline_pools", ctx.pools);
    report.set("pipeline_slots_per_pool", ctx.slots);
    report.set("pipeline_jobs_per_s", round3(per_s));
    report.set("pipeline_seconds", round3(run.elapsed.as_secs_f64()));
    report.set(
        "pipeline_publish_seconds",
        round3(run.published.as_secs_f64()),
    );
    report.set("pipeline_cpu", run.cpu);
    report.set("pipeline_nats_messages_per_job", run.messages);
    report.row(
        &format!(
            "pipeline, {count} jobs, {} pools x {} slots (jobs/s)",
            ctx.pools, ctx.slots
        ),
        format!("{per_s:.0}"),
        ">= 10000",
        Some(per_s >= 10_000.0),
    );
    Ok(per_s)
}

/// What one dispatch-latency run measured.
#[derive(Debug)]
pub struct Latency {
    /// Publish → the driver's `apply` called.
    pub dispatch: Spread,
    /// The driver's return → `Ready` applied.
    pub apply: Spread,
    /// Publish → `Ready` applied.
    pub end_to_end: Spread,
    /// Jobs per second offered, as achieved.
    pub achieved_per_s: f64,
    cpu: serde_json::Value,
}

/// `rate` jobs/s of `shape` offered for `seconds`, each publish on its own task.
pub async fn measure_latency(
    ctx: &Context,
    rate: usize,
    seconds: usize,
    shape: Shape,
) -> anyhow::Result<Latency> {
    let count = rate * seconds;
    let pipeline = InProcess::start(ctx, count, shape).await?;
    let meter = CpuMeter::start(pipeline.env.server_pid());
    let interval = Duration::from_secs(1) / u32::try_from(rate)?;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut publishes = Vec::with_capacity(count);
    for job in pipeline.jobs.iter().cloned() {
        ticks.tick().await;
        let (js, probe) = (pipeline.env.js.clone(), pipeline.probe.clone());
        // Each publish on its own task: a slow ack never delays the next one.
        publishes.push(tokio::spawn(async move {
            publish_all(&js, vec![job], Some(&probe)).await
        }));
    }
    let offered_for = started.elapsed();
    for publish in publishes {
        publish.await??;
    }
    pipeline.probe.wait_applied(count as u64, STALL).await?;
    let cpu = meter.finish(Duration::ZERO);
    let probe = &pipeline.probe;
    let dispatch = spread(probe.intervals(count, Mark::Published, Mark::DriverCalled));
    let apply = spread(probe.intervals(count, Mark::DriverReturned, Mark::Applied));
    let end_to_end = spread(probe.intervals(count, Mark::Published, Mark::Applied));
    pipeline.stop().await;
    let (Some(dispatch), Some(apply), Some(end_to_end)) = (dispatch, apply, end_to_end) else {
        anyhow::bail!("no job was timed");
    };
    Ok(Latency {
        dispatch,
        apply,
        end_to_end,
        achieved_per_s: count as f64 / offered_for.as_secs_f64(),
        cpu,
    })
}

/// p50 / p90 / p99 / max in ms, for the table.
pub fn spread_row(s: &Spread) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    )
}

/// Dispatch latency at 500 jobs/s offered for 20 s: publish → driver call and driver
/// return → `Ready` applied.
pub async fn latency(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let rate = 500;
    let seconds = if ctx.quick { 4 } else { 20 };
    let Latency {
        dispatch,
        apply,
        end_to_end,
        achieved_per_s,
        cpu,
    } = measure_latency(ctx, rate, seconds, Shape::default()).await?;
    report.set("dispatch_offered_jobs_per_s", rate);
    report.set("dispatch_achieved_jobs_per_s", round3(achieved_per_s));
    report.set("dispatch_p50_ms", ms(dispatch.p50));
    report.set("dispatch_p90_ms", ms(dispatch.p90));
    report.set("dispatch_p99_ms", ms(dispatch.p99));
    report.set("dispatch_max_ms", ms(dispatch.max));
    report.set("apply_p50_ms", ms(apply.p50));
    report.set("apply_p90_ms", ms(apply.p90));
    report.set("apply_p99_ms", ms(apply.p99));
    report.set("apply_max_ms", ms(apply.max));
    report.set("publish_to_applied_p50_ms", ms(end_to_end.p50));
    report.set("publish_to_applied_p99_ms", ms(end_to_end.p99));
    report.set("dispatch_cpu", cpu);
    report.row(
        &format!("dispatch at {rate}/s, publish->driver p50/p90/p99/max (ms)"),
        spread_row(&dispatch),
        "p99 <= 10",
        Some(dispatch.p99 <= Duration::from_millis(10)),
    );
    report.row(
        "driver return->status applied p50/p90/p99/max (ms)",
        spread_row(&apply),
        "",
        None,
    );
    Ok(())
}
