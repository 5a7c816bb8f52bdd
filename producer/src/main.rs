//! `helmq-producer`: watches Components and publishes jobs; runs the status writer.

use clap::Parser;

/// Watches `Component` resources, claims them and publishes Helm jobs to JetStream; applies
/// status events back to the Components.
#[derive(Debug, Parser)]
#[command(name = "helmq-producer", version, about)]
struct Args {
    /// NATS connection.
    #[command(flatten)]
    nats: helmq_queue::NatsArgs,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("helmq-producer is not built yet: the watcher and writer arrive with issue 4")
}
