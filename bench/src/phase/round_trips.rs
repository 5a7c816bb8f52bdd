//! Awaited NATS round trips per job, measured on the wire rather than counted in the code: one
//! pool of one slot reaches the server through a TCP proxy that delays every byte by
//! [`DELAY`] in each direction, and jobs are sent one at a time. Each job's time is split at
//! its Helm call (the in-memory driver marks it):
//!
//! - before Helm: from the publish (on a direct connection) to the driver's call, less the
//!   delivery's one-way [`DELAY`];
//! - after Helm: from the driver's return until the job has left the stream, less the ack's
//!   one-way [`DELAY`];
//!
//! each divided by the round trip (2 × [`DELAY`]). The same with a proxy without delay is
//! subtracted, so that what the machine itself takes is not counted. Measured for the first
//! job of a Component and for a later generation of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use helmq_queue::{JetStreamQueue, JetStreamStatus, JobQueue as _};
use helmq_schemas::event::JobEvent;
use helmq_worker::{Settings, SpawnedPool};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Context;
use crate::driver::BenchDriver;
use crate::env::Env;
use crate::jobs;
use crate::probe::{Mark, Probe};
use crate::report::Report;

/// The proxy's delay in each direction: far above what loopback and scheduling add, so that
/// one round trip stands out (2 × 10 ms).
pub const DELAY: Duration = Duration::from_millis(10);
/// Jobs per measurement.
const JOBS: usize = 20;
/// Chunks in flight in one direction of the proxy: far more than a job's traffic.
const CHUNKS: usize = 1024;
/// No progress for this long ends the phase with an error.
const STALL: Duration = Duration::from_secs(30);

/// Round trips of one kind of job: before Helm, after Helm, and in all.
#[derive(Debug, Clone, Copy)]
struct Trips {
    before: f64,
    after: f64,
}

/// Measures; the figures go into `report` (`nats_round_trips_per_job`).
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    for delay in [Duration::ZERO, DELAY] {
        measured.push(measure(ctx, delay).await?);
    }
    let (direct, delayed) = (&measured[0], &measured[1]);
    let trips = |kind: usize| {
        let rtt = 2.0 * DELAY.as_secs_f64();
        let one_way = DELAY.as_secs_f64();
        Trips {
            before: (delayed[kind].0 - direct[kind].0 - one_way) / rtt,
            after: (delayed[kind].1 - direct[kind].1 - one_way) / rtt,
        }
    };
    let (new, update) = (trips(0), trips(1));
    let figure = |t: Trips| json!({"before_helm": round1(t.before), "after_helm": round1(t.after), "total": round1(t.before + t.after)});
    report.set(
        "nats_round_trips_per_job",
        json!({"first_job_of_a_component": figure(new), "later_generation": figure(update),
               "delay_each_way_ms": DELAY.as_millis()}),
    );
    let worst = (new.before + new.after).max(update.before + update.after);
    report.row(
        &format!(
            "awaited NATS round trips per job, happy path (first {:.1} + {:.1}, later {:.1} + {:.1} before + after Helm)",
            new.before, new.after, update.before, update.after
        ),
        format!("{worst:.1}"),
        "<= 5",
        Some(worst <= 5.4),
    );
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Mean seconds before and after Helm, for first jobs and for later generations, with the
/// pool behind a proxy that delays each direction by `delay`.
async fn measure(ctx: &Context, delay: Duration) -> anyhow::Result<[(f64, f64); 2]> {
    let env = Env::start(ctx, true).await?;
    let target: std::net::SocketAddr = env.url().trim_start_matches("nats://").parse()?;
    let proxy = DelayProxy::start(target, delay).await?;
    let client = async_nats::connect(format!("nats://{}", proxy.addr)).await?;
    let mut settings = Settings::new("bench-round-trips");
    settings.concurrency = 1;
    // Job i of the first round, and job JOBS + i: the same Component's next generation, on
    // a release of its own so that the driver's marks tell the two apart.
    let first: Vec<JobEvent> = (0..JOBS)
        .map(|i| jobs::apply(i, jobs::uuid(0xe, i)))
        .collect();
    let later: Vec<JobEvent> = first
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let mut component = job.component.clone();
            component.generation += 1;
            let config = jobs::config(&jobs::name(JOBS + i));
            JobEvent::new(job.action, component, config, 300, jiff::Timestamp::now())
        })
        .collect();
    let probe = Arc::new(Probe::new(2 * JOBS));
    let driver = BenchDriver::default().with_probe(probe.clone());
    let pool = SpawnedPool::spawn(client, driver, settings, JetStreamStatus::new);
    env.wait_idle_slots(1, STALL).await?;
    let queue = JetStreamQueue::new(env.js.clone());
    let mut result = [(0.0, 0.0); 2];
    for (round, (jobs, slot)) in [first, later].iter().zip(result.iter_mut()).enumerate() {
        let (mut before, mut after) = (0.0, 0.0);
        for (i, job) in jobs.iter().enumerate() {
            let index = round * JOBS + i;
            let published = probe.elapsed();
            queue.publish_job(job).await?;
            let called = wait_mark(&probe, index, Mark::DriverCalled).await?;
            let returned = wait_mark(&probe, index, Mark::DriverReturned).await?;
            wait_settled(&env).await?;
            let settled = probe.elapsed();
            before += (called - published).as_secs_f64();
            after += (settled - returned).as_secs_f64();
        }
        *slot = (before / JOBS as f64, after / JOBS as f64);
    }
    pool.shutdown.cancel();
    let _ = pool.task.await;
    drop(proxy);
    Ok(result)
}

/// Waits until the jobs stream is empty, polling closely.
async fn wait_settled(env: &Env) -> anyhow::Result<()> {
    let started = Instant::now();
    while env.jobs_left().await? > 0 {
        anyhow::ensure!(started.elapsed() < STALL, "a job was never settled");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// Waits for `mark` of job `index`; when it happened, after the probe's start.
async fn wait_mark(probe: &Probe, index: usize, mark: Mark) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Some(at) = probe.at(index, mark) {
            return Ok(at);
        }
        anyhow::ensure!(
            started.elapsed() < STALL,
            "job {index} never reached {mark:?}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// A TCP proxy that delays every chunk by a fixed time in each direction, in order, without
/// limiting throughput; stops accepting when dropped.
struct DelayProxy {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    async fn start(target: std::net::SocketAddr, delay: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    tokio::join!(
                        pipe(from_client, to_server, delay),
                        pipe(from_server, to_client, delay)
                    );
                });
            }
        });
        Ok(DelayProxy { addr, task })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(CHUNKS);
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            let due = tokio::time::Instant::now() + delay;
            if tx.send((due, buffer[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
