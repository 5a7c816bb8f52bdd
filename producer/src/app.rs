//! Wiring: runs the watcher (behind leader election with `--leader-elect`) and/or the writer
//! with the operations endpoint, under one shutdown token, and drains NATS at the end.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use helmq_queue::{JetStreamQueue, JetStreamStatus, Topology};
use helmq_telemetry::Readiness;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::args::Args;
use crate::leader::{LeaderElector, Leadership};
use crate::metrics::Metrics;
use crate::store::{ComponentStore, EventStore, LeaseStore};
use crate::watcher::{Watcher, WatcherError};
use crate::writer::{EventQueue, EventRecorder, Writer, WriterError};

/// How often readiness re-checks the topology.
const READINESS_INTERVAL: Duration = Duration::from_secs(10);

/// Errors that end the process.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Connecting to NATS failed.
    #[error(transparent)]
    Connect(#[from] helmq_queue::ConnectError),
    /// The operations endpoint could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The watcher stopped.
    #[error("watcher: {0}")]
    Watcher(#[from] WatcherError),
    /// The writer stopped.
    #[error("writer: {0}")]
    Writer(#[from] WriterError),
    /// The operations endpoint stopped serving.
    #[error("task failed: http: {0}")]
    Http(#[source] std::io::Error),
    /// A task panicked or was aborted.
    #[error("task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Runs what `args.mode` asks for until `shutdown` is cancelled or a loop fails; then stops
/// every loop (each finishes the item in hand) and returns. `leases` is used for
/// `--leader-elect` only; `events` for the Events recorded on Components with their statuses.
pub async fn run<S: ComponentStore + Clone, L: LeaseStore, E: EventStore>(
    args: &Args,
    store: S,
    leases: L,
    events: E,
    js: jetstream::Context,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let listener = tokio::net::TcpListener::bind(args.service.http.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: args.service.http.listen,
            source,
        })?;
    tracing::info!(addr = %args.service.http.listen, mode = ?args.mode, "helmq-producer starting");

    let mut tasks: JoinSet<Result<(), AppError>> = JoinSet::new();
    {
        let (registry, readiness, token) =
            (Arc::new(registry), readiness.clone(), shutdown.clone());
        tasks.spawn(async move {
            helmq_telemetry::serve(listener, registry, readiness, token)
                .await
                .map_err(AppError::Http)
        });
    }
    {
        let (js, readiness, token) = (js.clone(), readiness.clone(), shutdown.clone());
        tasks.spawn(
            async move {
                check_readiness(js, readiness, token).await;
                Ok(())
            }
            .instrument(tracing::info_span!("readiness")),
        );
    }
    // One recorder for the Events of every status this process writes: its repeats aggregate
    // whoever wrote them.
    let events = EventQueue::spawn(
        EventRecorder::new(events, args.replica_name()),
        metrics.clone(),
    );
    if args.mode.watcher() {
        let watcher = Watcher::new(
            store.clone(),
            JetStreamQueue::new(js.clone()),
            JetStreamStatus::new(js.clone()),
            args.watcher_config(),
            metrics.clone(),
        )
        .with_events(events.clone());
        spawn_watcher(&mut tasks, args, watcher, leases, &metrics, &shutdown);
    }
    if args.mode.writer() {
        let writer = Writer::new(store, events, js, args.writer_config(), metrics);
        let token = shutdown.clone();
        tasks.spawn(
            async move { Ok(writer.run(token).await?) }.instrument(tracing::info_span!("writer")),
        );
    }

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(AppError::Task).and_then(|r| r);
        if let Err(error) = result {
            tracing::error!(%error, "stopping");
            readiness.not_ready(error.to_string());
            first_error.get_or_insert(error);
        }
        // Any loop ending ends the process: the others stop too.
        shutdown.cancel();
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Spawns the watcher into `tasks`, behind leader election with `--leader-elect`, and keeps
/// `helmq_producer_leader` current.
fn spawn_watcher<S: ComponentStore, L: LeaseStore>(
    tasks: &mut JoinSet<Result<(), AppError>>,
    args: &Args,
    mut watcher: Watcher<S, JetStreamQueue, JetStreamStatus>,
    leases: L,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    // Only the watcher is gated: writers share one durable consumer, so several are safe.
    if args.leader_elect {
        let elector = LeaderElector::new(leases, args.election_config());
        watcher = watcher.with_leadership(elector.leadership());
        tasks.spawn(show_leadership(
            elector.leadership(),
            metrics.leader.clone(),
            shutdown.clone(),
        ));
        let token = shutdown.clone();
        tasks.spawn(
            async move {
                elector.run(token).await;
                Ok(())
            }
            .instrument(tracing::info_span!("leader")),
        );
    } else {
        metrics.leader.set(1);
    }
    let token = shutdown.clone();
    tasks.spawn(
        async move { Ok(watcher.run(token).await?) }.instrument(tracing::info_span!("watcher")),
    );
}

/// Keeps `gauge` at 1 while `leadership` says this replica leads, else 0.
async fn show_leadership(
    mut leadership: Leadership,
    gauge: prometheus_client::metrics::gauge::Gauge,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    loop {
        let leading = leadership.is_leader();
        gauge.set(i64::from(leading));
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = leadership.wait_until(!leading) => {
                if !changed && !leading {
                    // The elector is gone (it stops at shutdown): it leads no more. Returning
                    // now would end the process.
                    gauge.set(0);
                    shutdown.cancelled().await;
                    return Ok(());
                }
            }
        }
    }
}

/// Ready while the JetStream topology is in place.
async fn check_readiness(
    js: jetstream::Context,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let topology = Topology::default();
    helmq_telemetry::keep_checking(&readiness, READINESS_INTERVAL, &shutdown, || async {
        topology.check(&js).await.map_err(|e| e.to_string())
    })
    .await;
    readiness.not_ready("shutting down");
}
