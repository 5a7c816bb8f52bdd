//! `helmq-worker`: the part operators scale out. Each process runs `--concurrency` slots that
//! pull jobs one at a time from the shared durable consumer on `HELMQ_JOBS`, run Helm through
//! a [`driver::HelmDriver`] with a lease per release, and publish status events.
//!
//! Modules: [`args`] (flags), [`settings`] (what the flags decide), [`allowlist`] (chart
//! sources and namespaces), [`policy`] (pure decisions), [`failure`] (a failed helm or kubectl
//! run: class, cause and readable text), [`driver`] (the Helm seam,
//! [`driver::HelmCli`] and `driver::MemoryDriver`), [`exclusivity`] (leases and latest intent
//! on KV), [`pool`] (slots and drain), `parking` (pulled deliveries waiting for their turn,
//! kept alive, given back at shutdown), `fair` (which of them starts next: round robin across
//! tenants, applies and deletes before drift checks, per-tenant limits), `context` (what a pool's jobs share), `admission`
//! (whether a payload is a job this worker takes), `job` (one job from delivery to the
//! settlement it asks for), `helm_run` (a job's Helm work, lease held), `settle` (the one
//! place a job's message is acked, Nak'ed or dead-lettered), `dead_letter` (dead letters and
//! jobs past `max_deliver`), [`readable`] (status messages that say what to do next),
//! [`remediation`] (what a failed install or upgrade left, and what is done about it),
//! [`metrics`].
//!
//! Who uses whom (a module uses only modules below it, never one above):
//! `pool` → `job` → `helm_run` → `remediation` → `driver`; `pool` → `parking` → `fair`;
//! `pool`, `parking`, `job` → `settle` → `dead_letter` → `admission` → `context` →
//! `exclusivity`, `metrics` → `fair`, `settings` → `policy`, `allowlist`;
//! `driver`, `readable`, `admission` → `failure` → `policy`.
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod admission;
pub mod allowlist;
pub mod args;
mod context;
mod dead_letter;
pub mod drift;
pub mod driver;
pub mod exclusivity;
pub mod failure;
mod fair;
mod helm_run;
mod intent_watch;
mod job;
pub mod metrics;
pub mod ownership;
mod parking;
pub mod policy;
pub mod pool;
pub mod readable;
pub mod remediation;
pub mod settings;
mod settle;
pub mod values;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use helmq_queue::{ConnectError, Connection, JetStreamStatus, Topology, TopologyError};
use helmq_telemetry::Readiness;

pub use args::Args;
#[cfg(any(test, feature = "testing"))]
pub use driver::MemoryDriver;
pub use driver::{HelmCli, HelmDriver};
pub use metrics::Metrics;
#[cfg(feature = "testing")]
pub use pool::SpawnedPool;
pub use pool::run_pool;
pub use settings::Settings;

/// How often `/readyz` re-checks the connection and the topology.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait for the connection to close after `drain()`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors that stop the worker.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The allowlist flags are missing or invalid.
    #[error(transparent)]
    Allowlist(#[from] allowlist::Refusal),
    /// Cannot connect to NATS.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `--setup` failed.
    #[error("setup failed: {0}")]
    Setup(#[from] TopologyError),
    /// The operations endpoint cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The pool could not start.
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
}

/// Runs the worker with `driver` until SIGTERM/SIGINT (or `shutdown`), then drains: stops
/// pulling, lets running jobs finish within the deadline, Naks the rest, drains the NATS
/// connection and waits for it to close.
pub async fn run<D: HelmDriver>(
    args: Args,
    driver: D,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let allowlist = args.allowlist()?;
    if allowlist.any_source() {
        warn!("--allow-any-source: jobs may install charts from any repository or registry");
    }
    if allowlist.any_namespace() {
        warn!("--allow-any-namespace: jobs may install releases into any namespace");
    }
    if args.allow_shared_releases {
        warn!("--allow-shared-releases: jobs may act on releases other Components own");
    }
    if args.default_service_account.is_none() {
        warn!(
            "single-tenant mode: no --default-service-account, so jobs without config.serviceAccountName run Helm with this worker's own rights"
        );
    }
    let worker_id = args.worker_id();
    let connection =
        Connection::open(&args.service.nats, &format!("helmq-worker {worker_id}")).await?;
    let client = connection.client().clone();
    let js = async_nats::jetstream::new(client.clone());
    let topology = Topology::default();
    if args.setup {
        let report = topology.ensure(&js).await?;
        info!(created = ?report.created, differences = ?report.differences, "topology ready");
    }

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    driver.register_metrics(registry.sub_registry_with_prefix("helmq_worker"));
    metrics.allow_any(&allowlist, args.allow_shared_releases);
    metrics.single_tenant(args.default_service_account.as_deref());
    let readiness = Readiness::default();
    let http_stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.service.http.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: args.service.http.listen,
            source,
        })?;
    let http = tokio::spawn(helmq_telemetry::serve(
        listener,
        Arc::new(registry),
        readiness.clone(),
        http_stop.clone(),
    ));
    let ready_task = tokio::spawn(watch_readiness(
        client.clone(),
        js.clone(),
        topology,
        readiness.clone(),
        shutdown.clone(),
    ));

    let settings = Settings {
        health: readiness.clone(),
        ..args.settings(allowlist)
    };
    let result = run_pool(
        js.clone(),
        client.clone(),
        Arc::new(driver),
        JetStreamStatus::new(js),
        settings,
        metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    readiness.not_ready("shutting down");
    let _ = ready_task.await;

    connection.drain(CLOSE_TIMEOUT).await;
    http_stop.cancel();
    let _ = http.await;
    result.map_err(RunError::from)
}

/// Keeps `/readyz` current: ready while connected and the topology is in place.
async fn watch_readiness(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    topology: Topology,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    helmq_telemetry::keep_checking(&readiness, READINESS_INTERVAL, &shutdown, || async {
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected to NATS".to_owned());
        }
        topology.check(&js).await.map_err(|e| e.to_string())
    })
    .await;
}
