//! A fresh `nats-server` with the helmq topology per phase (so no phase sees another's
//! messages), waits on the jobs stream, and where the CPU of a phase went.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context as Js};
use futures::{StreamExt, TryStreamExt};
use helmq_queue::topology::{JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER, WRITER_CONSUMER};
use helmq_queue::{JetStreamQueue, JobQueue, Topology};
use helmq_schemas::JobEvent;
use helmq_tests::NatsServer;
use serde_json::json;

use crate::Context;
use crate::child::Proc;
use crate::probe::{Mark, Probe};

/// Publishes at most this many jobs at once (each waits for its own ack).
pub const PUBLISH_IN_FLIGHT: usize = 256;

/// A server, a connection and JetStream.
#[derive(Debug)]
pub struct Env {
    /// The server (killed, its store removed, on drop).
    pub server: NatsServer,
    /// A connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: Js,
}

impl Env {
    /// Starts a server; with `topology`, creates helmq's streams, consumers and buckets.
    pub async fn start(ctx: &Context, topology: bool) -> anyhow::Result<Env> {
        let server = NatsServer::start_binary(&ctx.nats_server);
        let client = async_nats::connect(server.url()).await?;
        let js = jetstream::new(client.clone());
        if topology {
            Topology::default().ensure(&js).await?;
        }
        Ok(Env { server, client, js })
    }

    /// A new connection to the server.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(self.server.url()).await?)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.server.url().to_owned()
    }

    /// The server's process id.
    pub fn server_pid(&self) -> u32 {
        self.server.pid().unwrap_or_default()
    }

    /// Messages in `HELMQ_JOBS` (acked jobs leave the work queue).
    pub async fn jobs_left(&self) -> anyhow::Result<u64> {
        Ok(self
            .js
            .get_stream(JOBS_STREAM)
            .await?
            .info()
            .await?
            .state
            .messages)
    }

    /// Pull requests waiting on the workers' consumer (one per idle slot).
    pub async fn idle_slots(&self) -> anyhow::Result<usize> {
        let mut consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(JOBS_STREAM)
            .await?
            .get_consumer(WORKERS_CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("consumer {WORKERS_CONSUMER}: {e}"))?;
        Ok(consumer.info().await?.num_waiting)
    }

    /// Waits until `slots` slots wait for jobs (the workers are up), at most `limit`.
    pub async fn wait_idle_slots(&self, slots: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.idle_slots().await? < slots {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {slots} worker slots waiting for jobs after {limit:?}",
                self.idle_slots().await?
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until `HELMQ_JOBS` holds `count` messages (`== count`); fails when the count does
    /// not change for `stall` or one of `procs` exits. Returns when it happened.
    pub async fn wait_jobs(
        &self,
        count: u64,
        stall: Duration,
        procs: &mut [&mut Proc],
    ) -> anyhow::Result<Instant> {
        let mut last = u64::MAX;
        let mut since = Instant::now();
        loop {
            for proc in procs.iter_mut() {
                proc.check_running()?;
            }
            let now = self.jobs_left().await?;
            if now == count {
                return Ok(Instant::now());
            }
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > stall {
                anyhow::bail!(
                    "stalled: {now} jobs in the stream (waiting for {count}) for {stall:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the status writer has applied every status event in the stream.
    pub async fn wait_writer_done(&self, stall: Duration) -> anyhow::Result<Instant> {
        let stream = self.js.get_stream(STATUS_STREAM).await?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(WRITER_CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("consumer {WRITER_CONSUMER}: {e}"))?;
        let mut last = (u64::MAX, usize::MAX);
        let mut since = Instant::now();
        loop {
            let info = consumer.info().await?;
            let now = (info.num_pending, info.num_ack_pending);
            if now == (0, 0) {
                return Ok(Instant::now());
            }
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > stall {
                anyhow::bail!("stalled: the writer has {now:?} (pending, unacked) for {stall:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Where the time of the jobs of batch `run` went, from their status events: `queue` from
/// publishing to the worker's `Deploying` (pull, intent, lease), `run` from `Deploying` to
/// `Ready` (Helm, or the driver in memory), as p50/p90/p99/max in ms. The worker's times
/// are wall-clock times of this machine, compared with `probe`'s.
pub async fn job_timeline(
    js: &Js,
    probe: &Probe,
    run: u32,
    count: usize,
) -> anyhow::Result<serde_json::Value> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use helmq_schemas::event::{StatusEvent, StatusPhase};

    let stream = js.get_stream(STATUS_STREAM).await?;
    let total = stream.get_info().await?.state.messages;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let uid_prefix = format!("{run:08x}-");
    let mut deploying = vec![None; count];
    let mut ready = vec![None; count];
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    while let Some(message) = messages.next().await {
        let event = StatusEvent::decode(&message?.payload)?;
        let ours = event
            .component
            .uid
            .as_deref()
            .is_some_and(|u| u.starts_with(&uid_prefix));
        let Some(index) = crate::jobs::index_of(&event.component.name).filter(|_| ours) else {
            continue;
        };
        let slot = match event.phase {
            StatusPhase::Deploying => deploying.get_mut(index),
            StatusPhase::Ready => ready.get_mut(index),
            _ => None,
        };
        if let Some(slot) = slot {
            slot.get_or_insert(event.at);
        }
    }
    let between = |from: jiff::Timestamp, to: jiff::Timestamp| {
        Duration::try_from(to.duration_since(from)).unwrap_or_default()
    };
    let mut queue = Vec::new();
    let mut run_time = Vec::new();
    for index in 0..count {
        if let (Some(published), Some(start)) =
            (probe.wall(index, Mark::Published), deploying[index])
        {
            queue.push(between(published, start));
        }
        if let (Some(start), Some(end)) = (deploying[index], ready[index]) {
            run_time.push(between(start, end));
        }
    }
    let show = |values: Vec<Duration>| {
        let n = values.len();
        crate::stats::spread(values).map(|s| {
            json!({
                "jobs": n,
                "p50_ms": crate::stats::ms(s.p50),
                "p90_ms": crate::stats::ms(s.p90),
                "p99_ms": crate::stats::ms(s.p99),
                "max_ms": crate::stats::ms(s.max),
            })
        })
    };
    Ok(json!({
        "publish_to_deploying": show(queue),
        "deploying_to_ready": show(run_time),
    }))
}

/// Publishes `jobs` through the producer's [`JetStreamQueue`], [`PUBLISH_IN_FLIGHT`] at once,
/// marking each in `probe` as it is handed over.
pub async fn publish_all(
    js: &Js,
    jobs: Vec<JobEvent>,
    probe: Option<&Probe>,
) -> anyhow::Result<()> {
    let queue = JetStreamQueue::new(js.clone());
    futures::stream::iter(jobs)
        .map(|job| {
            let queue = &queue;
            async move {
                if let (Some(probe), Some(index)) =
                    (probe, crate::jobs::index_of(&job.component.name))
                {
                    probe.mark(index, Mark::Published);
                }
                queue.publish_job(&job).await
            }
        })
        .buffer_unordered(PUBLISH_IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// CPU time used during a phase: the whole machine, the server, this process.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    started: Instant,
    machine: Duration,
    server: Duration,
    server_pid: u32,
    bench: Duration,
}

impl CpuMeter {
    /// Starts counting.
    pub fn start(server_pid: u32) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            machine: helmq_tests::procfs::machine_busy().unwrap_or_default(),
            server: helmq_tests::procfs::cpu_time(server_pid).unwrap_or_default(),
            server_pid,
            bench: helmq_tests::procfs::cpu_time(std::process::id()).unwrap_or_default(),
        }
    }

    /// CPU seconds since the start: the machine, nats-server, this process, the `children`
    /// (their whole lives: they were started in the phase), and everything else on the
    /// machine (other users: the contention).
    pub fn finish(&self, children: Duration) -> serde_json::Value {
        let machine = helmq_tests::procfs::machine_busy()
            .unwrap_or_default()
            .saturating_sub(self.machine);
        let server = helmq_tests::procfs::cpu_time(self.server_pid)
            .unwrap_or_default()
            .saturating_sub(self.server);
        let bench = helmq_tests::procfs::cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(self.bench);
        let others = machine.saturating_sub(server + bench + children);
        let secs = |d: Duration| crate::stats::round3(d.as_secs_f64());
        json!({
            "wall_s": secs(self.started.elapsed()),
            "machine_busy_cpu_s": secs(machine),
            "nats_server_cpu_s": secs(server),
            "bench_process_cpu_s": secs(bench),
            "child_processes_cpu_s": secs(children),
            "other_processes_cpu_s": secs(others),
        })
    }
}
