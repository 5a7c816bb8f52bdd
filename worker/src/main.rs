//! `helmq-worker`: pulls jobs from JetStream and runs Helm.

use clap::Parser;

/// Pulls Helm jobs from JetStream, runs `helm upgrade --install` / `helm uninstall` and
/// publishes status events.
#[derive(Debug, Parser)]
#[command(name = "helmq-worker", version, about)]
struct Args {
    /// NATS connection.
    #[command(flatten)]
    nats: helmq_queue::NatsArgs,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("helmq-worker is not built yet: the worker pool arrives with issue 3")
}
