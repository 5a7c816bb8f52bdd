//! `helmq-producer`: watches Components and publishes jobs; runs the status writer.

use clap::Parser;
use helmq_producer::Args;
use helmq_producer::store::{KubeComponentStore, KubeEventStore, KubeLeaseStore};
use helmq_queue::Connection;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    helmq_telemetry::init_tracing(&args.service.log);
    let shutdown = CancellationToken::new();
    helmq_telemetry::cancel_on_signals(shutdown.clone());

    let kube = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot configure the kubernetes client: {e}"))?;
    let store = KubeComponentStore::new(kube.clone(), args.namespaces.clone())
        .with_secret_watch(args.watch_secrets);
    let leases = KubeLeaseStore::new(kube.clone());
    let events = KubeEventStore::new(kube);
    let nats = Connection::open(&args.service.nats, "helmq-producer").await?;
    let js = nats.jetstream();

    let result = helmq_producer::run(&args, store, leases, events, js, shutdown).await;
    nats.drain(args.drain_deadline).await;
    Ok(result?)
}
